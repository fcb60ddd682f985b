//! Headless Chromium (Debian's `chromium` and `chromium-driver` packages, which `scripts/test`
//! installs) driven over WebDriver with `fantoccini`.
//!
//! - Each [`Browser`] is its own `chromedriver` on a port it picks itself (`--port=0`, read back
//!   from its first lines), with one Chromium on a fresh profile: an empty cookie jar, no cache.
//! - `chromedriver` and every Chromium process it starts share a process group of their own,
//!   killed whole when the [`Browser`] is dropped, also when a test fails half-way; their
//!   profile and temporary files (`TMPDIR`) live in one temporary directory, removed after.
//! - Chromium is started with nothing that reaches for the network on its own (no updates,
//!   sync, password leak checks or first-run pages): the machine has loopback only.
//! - Every wait is bounded: WebDriver's page-load and script timeouts, and [`PATIENCE`] for
//!   `chromedriver` to start.
//! - [`Browser::screenshot`] writes `target/browser-screenshots/NAME.png`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use fantoccini::cookies::Cookie;
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// How long `chromedriver` may take to start, and a page to load or a script to run.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The browser's viewport: room for the demo's card and a flash, small enough for a README.
const WINDOW: (u32, u32) = (800, 600);

/// Where [`Browser::screenshot`] writes: `target/browser-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("browser-screenshots")
}

/// One `chromedriver` with one headless Chromium session (fields drop in this order: the
/// processes are gone before their directory, the profile and temporary files, is removed).
pub struct Browser {
    pub client: Client,
    _driver: Driver,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and a Chromium on a fresh profile.
    pub async fn start() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::start(dir.path());
        let client = connect(driver.port, &dir.path().join("profile")).await;
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(PATIENCE),
                Some(PATIENCE),
                Some(Duration::ZERO),
            ))
            .await
            .unwrap();
        Browser {
            client,
            _driver: driver,
            _dir: dir,
        }
    }

    /// Navigates to `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Reloads the page (a GET of the current address), and waits until it has loaded.
    pub async fn reload(&self) {
        self.client.refresh().await.unwrap();
    }

    /// The Back button, and waits until the page shown has loaded.
    pub async fn back(&self) {
        self.client.back().await.unwrap();
    }

    /// The current address's path.
    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// The text of the page's `main` element, as the visitor reads it.
    pub async fn main_text(&self) -> String {
        self.client
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Every flash message on the page, as (level, text): the level is the CSS class after
    /// `flash` (`success`, `error`, `info`, `warning`).
    pub async fn flashes(&self) -> Vec<(String, String)> {
        let found = self
            .client
            .execute(
                "return [...document.querySelectorAll('.flash')]
                    .map(e => [e.classList[1] || '', e.textContent.trim()]);",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(found).unwrap()
    }

    /// Types `value` into the input labelled `label` (found through its `<label>`, as a
    /// screen reader would).
    pub async fn fill(&self, label: &str, value: &str) {
        let xpath = format!("//label[normalize-space(text())='{label}']//input");
        let input = self.client.find(Locator::XPath(&xpath)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }

    /// Clicks the button showing `text`, and waits until the page it leads to has loaded.
    pub async fn click_button(&self, text: &str) {
        let xpath = format!("//button[normalize-space()='{text}']");
        let button = self.client.find(Locator::XPath(&xpath)).await.unwrap();
        let before = self.page_id().await;
        button.click().await.unwrap();
        self.wait_for_new_page(before).await;
    }

    /// A mark for the document shown now, changed by any navigation (even to the same address).
    pub async fn page_id(&self) -> String {
        let id = self
            .client
            .execute(
                "if (!window.__page) window.__page = String(Math.random()); return window.__page;",
                vec![],
            )
            .await
            .unwrap();
        id.as_str().unwrap().to_owned()
    }

    /// Waits (bounded by [`PATIENCE`]) until a document other than `before` has loaded.
    pub async fn wait_for_new_page(&self, before: String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // WebDriver answers a script only once a pending navigation has loaded.
            if self.page_id().await != before {
                return;
            }
            assert!(Instant::now() < deadline, "no new page within {PATIENCE:?}");
            tokio::task::yield_now().await;
        }
    }

    /// Waits (bounded by [`PATIENCE`]) until the browser shows `url`.
    pub async fn wait_for_url(&self, url: &str) {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_url(&url.parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("not at {url} within {PATIENCE:?}: {e}"));
    }

    /// Every cookie the browser holds for the current page's site, `HttpOnly` ones included.
    pub async fn cookies(&self) -> Vec<Cookie<'static>> {
        self.client.get_all_cookies().await.unwrap()
    }

    /// The browser's `sessioner` cookie for the current page, if it holds one.
    pub async fn session_cookie(&self) -> Option<Cookie<'static>> {
        self.cookies()
            .await
            .into_iter()
            .find(|c| c.name() == "sessioner")
    }

    /// What the page's own scripts read from `document.cookie`.
    pub async fn document_cookie(&self) -> String {
        let value = self
            .client
            .execute("return document.cookie;", vec![])
            .await
            .unwrap();
        value.as_str().unwrap().to_owned()
    }

    /// Saves what the browser shows as `target/browser-screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// `chromedriver` in a process group of its own, which holds the Chromium it starts too.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts `chromedriver` on a port it picks, and waits (bounded) until it listens. It and
    /// its Chromium keep their temporary files under `dir`, which a killed Chromium cannot
    /// clean.
    fn start(dir: &Path) -> Driver {
        let tmp = dir.join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let mut child = Command::new("chromedriver")
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .env("TMPDIR", &tmp)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver ({e}): `scripts/test` installs Debian's chromium-driver")
            });
        let (ports, port) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        // Reads the driver's stdout until it exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(p) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = ports.send(p);
                }
            }
        });
        // From here on, a panic kills the group through `Drop`.
        let mut driver = Driver { child, port: 0 };
        driver.port = match port.recv_timeout(PATIENCE) {
            Ok(port) => port,
            Err(RecvTimeoutError::Timeout) => panic!("chromedriver did not start within 30 s"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("chromedriver exited: {:?}", driver.child.wait())
            }
        };
        driver
    }
}

impl Drop for Driver {
    /// Kills `chromedriver` and its Chromium processes: the whole process group.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// A WebDriver session with a headless Chromium on `profile`, through the driver on `port`.
async fn connect(port: u16, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-features=Translate,OptimizationHints,MediaRouter,PasswordLeakDetection",
        "--password-store=basic",
        "--hide-scrollbars",
        &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        &format!("--user-data-dir={}", profile.display()),
    ];
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": args,
            "prefs": {
                "credentials_enable_service": false,
                "profile.password_manager_enabled": false,
                "profile.password_manager_leak_detection": false,
            },
        },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("no Chromium session: {e}"))
}
