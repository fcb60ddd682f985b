//! The demo app in a real browser: headless Chromium over WebDriver (`tests/support/browser.rs`)
//! against the demo run as a child process (`tests/support/app.rs`) on a free port, with its
//! sled store in a temporary directory.
//!
//! - Each flow has its own demo and its own browser (an empty cookie jar and cache), and
//!   asserts what the page shows and which cookies the browser holds.
//! - Flows run one at a time ([`one_at_a_time`]): a Chromium is heavy for a 2-core machine.
//! - Each flow saves screenshots to `target/browser-screenshots/`.
//! - The demo listens on `127.0.0.1`; the page of the cross-site flow comes from `localhost`,
//!   another site for `SameSite`.
//!
//! Alone: `cargo build --all-features --examples && cargo test --all-features --test browser`
//! (Debian's `chromium` and `chromium-driver` installed, as `scripts/test` does).

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/app.rs"]
mod app;
#[path = "support/browser.rs"]
mod browser;

use app::App;
use browser::Browser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, MutexGuard};

/// Held by each flow for its whole run.
async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::const_new(());
    TURN.lock().await
}

/// The demo as a child process, working in a temporary directory (its sled store is
/// `data/demo-sessions` under it).
struct Demo {
    app: App,
    dir: tempfile::TempDir,
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let app = App::start("demo", Some(dir.path()), &[]);
        Demo { app, dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.app.port)
    }

    /// Stops the demo gracefully (SIGTERM) and starts it again on the same directory; it
    /// listens on another free port (cookies are shared by every port of a host).
    fn restart(&mut self) {
        let status = self.app.terminate();
        assert!(status.success(), "SIGTERM is a graceful stop: {status}");
        self.app = App::start("demo", Some(self.dir.path()), &[]);
    }
}

/// Logs in through the form as `demo`, with `password`.
async fn log_in(browser: &Browser, demo: &Demo, password: &str) {
    browser.goto(&demo.url("/login")).await;
    browser.fill("User", "demo").await;
    browser.fill("Password", password).await;
    browser.click_button("Log in").await;
}

fn flash(level: &str, text: &str) -> Vec<(String, String)> {
    vec![(level.to_owned(), text.to_owned())]
}

/// L6: a visitor who has only looked holds no session cookie; the first value stored sets it.
#[tokio::test]
async fn l6_a_first_visit_gets_no_cookie_until_something_is_stored() {
    let _turn = one_at_a_time().await;
    let demo = Demo::start();
    let browser = Browser::start().await;

    browser.goto(&demo.url("/login")).await;
    assert!(browser.main_text().await.contains("Log in"));
    browser.screenshot("first-visit").await;
    assert!(
        browser.cookies().await.is_empty(),
        "the login form stores nothing, so no cookie: {:?}",
        browser.cookies().await
    );

    browser.goto(&demo.url("/")).await;
    assert!(browser.main_text().await.contains("Visits this session: 1"));
    assert!(
        browser.session_cookie().await.is_some(),
        "counting the visit stored a value: the session cookie comes with it"
    );
}

/// The home page counts this session's visits; the cookie stays the same meanwhile.
#[tokio::test]
async fn the_counter_increments_on_each_visit() {
    let _turn = one_at_a_time().await;
    let demo = Demo::start();
    let browser = Browser::start().await;

    browser.goto(&demo.url("/")).await;
    let cookie = browser.session_cookie().await.unwrap();
    for visits in 1..=3 {
        if visits > 1 {
            browser.reload().await;
        }
        let text = browser.main_text().await;
        assert!(
            text.contains(&format!("Visits this session: {visits}")),
            "{text}"
        );
    }
    browser.screenshot("counter").await;
    assert_eq!(
        browser.session_cookie().await.unwrap().value(),
        cookie.value(),
        "the same session throughout"
    );
}

/// F4: a wrong password shows the error flash once, across the redirect, and not after a
/// reload.
#[tokio::test]
async fn f4_a_wrong_password_shows_the_error_flash_once() {
    let _turn = one_at_a_time().await;
    let demo = Demo::start();
    let browser = Browser::start().await;

    log_in(&browser, &demo, "wrong").await;
    assert_eq!(browser.path().await, "/login");
    assert_eq!(
        browser.flashes().await,
        flash("error", "Wrong user name or password.")
    );
    browser.screenshot("wrong-password").await;

    browser.reload().await;
    assert_eq!(browser.flashes().await, vec![], "shown once only");
    assert!(browser.main_text().await.contains("Log in"));
}

/// F4, L1, C1: the right password shows the success flash once, across the redirect; the
/// session cookie is a new one (no fixation), `HttpOnly` and `SameSite=Lax`.
#[tokio::test]
async fn f4_l1_c1_a_login_shows_the_success_flash_once_and_rotates_an_httponly_cookie() {
    let _turn = one_at_a_time().await;
    let demo = Demo::start();
    let browser = Browser::start().await;

    browser.goto(&demo.url("/")).await;
    let visitor = browser.session_cookie().await.unwrap();
    log_in(&browser, &demo, "demo").await;
    assert_eq!(browser.path().await, "/");
    assert_eq!(
        browser.flashes().await,
        flash("success", "Welcome back, demo!")
    );
    assert!(browser.main_text().await.contains("Hello, demo"));
    browser.screenshot("logged-in").await;

    let member = browser.session_cookie().await.unwrap();
    assert_ne!(member.value(), visitor.value(), "login rotates the id");
    assert_eq!(member.http_only(), Some(true), "{member:?}");
    assert_eq!(
        member.same_site().map(|s| s.to_string()).as_deref(),
        Some("Lax"),
        "{member:?}"
    );
    assert!(
        !browser.document_cookie().await.contains("sessioner"),
        "page scripts cannot read the session cookie: {:?}",
        browser.document_cookie().await
    );

    browser.reload().await;
    assert_eq!(browser.flashes().await, vec![], "shown once only");
    assert!(browser.main_text().await.contains("Hello, demo"));
}

/// Logout shows the info flash; Back then does not show the private page from a cache.
#[tokio::test]
async fn logout_shows_the_info_flash_and_back_does_not_show_the_private_page() {
    let _turn = one_at_a_time().await;
    let demo = Demo::start();
    let browser = Browser::start().await;

    log_in(&browser, &demo, "demo").await;
    // A private page at an address of its own: the page after logout does not replace it in
    // the browser's cache.
    browser.goto(&demo.url("/now")).await;
    assert!(browser.main_text().await.contains("Hello, demo"));
    browser.click_button("Log out demo").await;
    assert_eq!(browser.path().await, "/");
    assert_eq!(
        browser.flashes().await,
        flash("info", "You have been logged out.")
    );
    assert!(browser.main_text().await.contains("Welcome, visitor"));
    browser.screenshot("logged-out").await;

    browser.back().await;
    assert_eq!(browser.path().await, "/now");
    let text = browser.main_text().await;
    browser.screenshot("logged-out-back").await;
    assert!(
        !text.contains("Hello, demo"),
        "Back showed the private page after logout: {text}"
    );
    assert!(text.contains("Welcome, visitor"), "{text}");
}

/// A graceful restart of the demo (SIGTERM, started again on its sled directory) keeps the
/// browser logged in.
#[tokio::test]
async fn a_restart_of_the_demo_keeps_the_browser_logged_in() {
    let _turn = one_at_a_time().await;
    let mut demo = Demo::start();
    let browser = Browser::start().await;

    log_in(&browser, &demo, "demo").await;
    let cookie = browser.session_cookie().await.unwrap();
    demo.restart();
    browser.goto(&demo.url("/")).await;
    let text = browser.main_text().await;
    browser.screenshot("after-restart").await;
    assert!(
        text.contains("Hello, demo"),
        "logged out by a restart: {text}"
    );
    assert_eq!(
        browser.session_cookie().await.unwrap().value(),
        cookie.value()
    );
}

/// C1: a page on another site (`localhost`) that posts a form to the demo's `/logout` sends no
/// session cookie with it (`SameSite=Lax`): the visitor is still logged in, with the same
/// cookie.
#[tokio::test]
async fn c1_a_cross_site_form_post_to_logout_carries_no_session_cookie() {
    let _turn = one_at_a_time().await;
    let demo = Demo::start();
    let browser = Browser::start().await;

    log_in(&browser, &demo, "demo").await;
    let cookie = browser.session_cookie().await.unwrap();
    let elsewhere = serve_a_form_posting_to(&demo.url("/logout")).await;
    browser.goto(&elsewhere).await;
    // The form submits itself; the demo's answer redirects to its home page.
    browser.wait_for_url(&demo.url("/")).await;
    let text = browser.main_text().await;
    browser.screenshot("cross-site-logout").await;
    assert!(
        text.contains("Hello, demo"),
        "logged out from elsewhere: {text}"
    );
    assert_eq!(browser.flashes().await, vec![]);
    assert_eq!(
        browser.session_cookie().await.unwrap().value(),
        cookie.value(),
        "the session cookie was replaced from elsewhere"
    );
}

/// A page on `http://localhost:PORT/` (another site than `127.0.0.1`) whose form posts itself
/// to `target` as soon as it loads; its address.
async fn serve_a_form_posting_to(target: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = format!(
        "<!doctype html><title>Another site</title>\
         <form method=post action=\"{target}\"><button>Log out</button></form>\
         <script>document.forms[0].submit()</script>"
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = vec![0; 4096];
            let _ = stream.read(&mut head).await;
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    format!("http://localhost:{port}/")
}
