//! Flash messages through real HTTP requests, and the demo app end to end (SECURITY.md F1-F4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../examples/demo.rs"]
#[allow(dead_code, clippy::all)]
mod demo;

use std::sync::Arc;

use askama::Template;
use common::Browser;
use salvo::http::StatusCode;
use salvo::prelude::*;
use sessioner::{ChangeSet, Flash, Level, Options, Provider, SessionDepotExt, SessionId};

const C: &str = "sessioner";
/// Where the middleware keeps the outgoing flash in the session record.
const FLASH_KEY: &str = "__sessioner.flash";

// The flows every built-in backend must pass: `memory::<flow>`, `sled::<flow>`, ...
common::per_backend!(
    f4_a_flash_survives_one_redirect_and_is_shown_exactly_once,
    every_level_round_trips_with_macaron_names,
    one_message_per_level_the_last_wins_and_levels_accumulate,
    f4_now_messages_show_in_this_response_and_never_reach_storage,
    f2_templates_read_the_flash_and_escape_it,
    f1_a_flash_cannot_be_planted_by_the_client,
    f1_a_damaged_stored_flash_shows_nothing_and_is_cleared,
    f3_long_messages_never_make_a_cookie_over_4kb,
    demo_full_browser_flow,
);

#[handler]
async fn set_next(
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), sessioner::Error> {
    let msg = req.query::<String>("msg").unwrap_or_default();
    let f = depot.flash_mut()?;
    match req.query::<String>("level").as_deref() {
        Some("error") => f.error(msg),
        Some("info") => f.info(msg),
        Some("warning") => f.warning(msg),
        _ => f.success(msg),
    };
    res.render(Redirect::other("/show"));
    Ok(())
}

#[handler]
async fn set_now(req: &mut Request, depot: &mut Depot) -> Result<Json<Flash>, sessioner::Error> {
    let msg = req.query::<String>("msg").unwrap_or_default();
    let f = depot.flash_mut()?;
    f.info_now(msg);
    Ok(Json(f.current().await?))
}

#[handler]
async fn show(depot: &mut Depot) -> Result<Json<Flash>, sessioner::Error> {
    Ok(Json(depot.flash_mut()?.current().await?))
}

#[derive(Template)]
#[template(
    source = "<p class=ok>{{ flash.success_msg }}</p><p class=err>{{ flash.error_msg }}</p>",
    ext = "html"
)]
struct Page {
    flash: Flash,
}

#[handler]
async fn page(depot: &mut Depot) -> Result<Text<String>, sessioner::Error> {
    let flash = depot.flash_mut()?.current().await?;
    Ok(Text::Html(Page { flash }.render().unwrap()))
}

#[handler]
async fn plant(depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
    depot.session()?.set("__sessioner.flash", &"forged").await?;
    Ok("planted")
}

fn service(options: Options) -> Arc<Service> {
    app(options).0
}

/// The flash test app over `options`, and its provider.
fn app(options: Options) -> (Arc<Service>, Arc<dyn Provider>) {
    let handler = common::build(options);
    let provider = Arc::clone(handler.provider());
    let router = Router::new()
        .hoop(handler)
        .push(Router::with_path("set").get(set_next))
        .push(Router::with_path("now").get(set_now))
        .push(Router::with_path("show").get(show))
        .push(Router::with_path("page").get(page))
        .push(Router::with_path("plant").get(plant));
    (Arc::new(Service::new(router)), provider)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap()
}

async fn f4_a_flash_survives_one_redirect_and_is_shown_exactly_once(options: Options) {
    let mut b = Browser::new(service(options));
    let r = b.get("/set?msg=Saved").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers.get("location").unwrap(), "/show");
    assert_eq!(json(&b.get("/show").await.body)["SuccessMsg"], "Saved");
    assert_eq!(
        json(&b.get("/show").await.body)["SuccessMsg"],
        "",
        "second GET shows nothing"
    );
}

async fn every_level_round_trips_with_macaron_names(options: Options) {
    let mut b = Browser::new(service(options));
    for (level, name) in [
        ("success", "SuccessMsg"),
        ("error", "ErrorMsg"),
        ("info", "InfoMsg"),
        ("warning", "WarningMsg"),
    ] {
        b.get(&format!("/set?level={level}&msg=m-{level}")).await;
        let shown = json(&b.get("/show").await.body);
        assert_eq!(shown[name], format!("m-{level}"), "{level}");
        for other in ["SuccessMsg", "ErrorMsg", "InfoMsg", "WarningMsg"] {
            if other != name {
                assert_eq!(shown[other], "", "{level} leaked into {other}");
            }
        }
    }
}

async fn one_message_per_level_the_last_wins_and_levels_accumulate(options: Options) {
    let mut b = Browser::new(service(options));
    b.get("/set?msg=first").await;
    b.get("/set?msg=second").await;
    b.get("/set?level=error&msg=oops").await;
    let shown = json(&b.get("/show").await.body);
    assert_eq!(
        (shown["SuccessMsg"].as_str(), shown["ErrorMsg"].as_str()),
        (Some("second"), Some("oops"))
    );
}

async fn f4_now_messages_show_in_this_response_and_never_reach_storage(options: Options) {
    let mut b = Browser::new(service(options));
    let r = b.get("/now?msg=right+now").await;
    assert_eq!(json(&r.body)["InfoMsg"], "right now");
    assert!(
        r.set_cookies.is_empty(),
        "a now-only flash stores nothing, so no session is made"
    );
    assert_eq!(json(&b.get("/show").await.body)["InfoMsg"], "");
}

async fn f2_templates_read_the_flash_and_escape_it(options: Options) {
    let mut b = Browser::new(service(options));
    b.get("/set?msg=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    let body = b.get("/page").await.body;
    assert!(
        body.contains("&#60;script&#62;") || body.contains("&lt;script&gt;"),
        "{body}"
    );
    assert!(
        !body.contains("<script>"),
        "F2: the message must be escaped"
    );
}

#[test]
fn f2_flash_serialises_with_macaron_names() {
    let serialized = serde_json::to_value(Flash {
        success_msg: "ok".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        serialized["SuccessMsg"], "ok",
        "serde-driven engines read Flash.SuccessMsg"
    );
    let mut f = Flash::default();
    *f.slot(Level::Warning) = "w".into();
    assert_eq!(f.warning_msg, "w");
}

async fn f1_a_flash_cannot_be_planted_by_the_client(options: Options) {
    let svc = service(options);
    // macaron's unsigned flash cookie is not read at all.
    let mut b = Browser::with_cookie(svc.clone(), "macaron_flash", "success%3Dpwned");
    assert_eq!(json(&b.get("/show").await.body)["SuccessMsg"], "");
    // The reserved session key cannot be written through the Store API either.
    let r = b.get("/plant").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json(&b.get("/show").await.body)["SuccessMsg"], "");
}

/// F3: no cookie ever carries a message, in any encoding: every `Set-Cookie` is the session
/// cookie with a bare id, none holds the text, and none grows past 4 KB.
async fn f3_long_messages_never_make_a_cookie_over_4kb(options: Options) {
    let mut b = Browser::new(service(options));
    let long = format!("F3-marker-{}", "x".repeat(3_000));
    let mut cookies = Vec::new();
    for i in 0..50 {
        let r = b.get(&format!("/set?msg={long}{i}")).await;
        cookies.extend(r.set_cookies);
    }
    let r = b.get("/show").await;
    assert_eq!(json(&r.body)["SuccessMsg"], format!("{long}49"));
    cookies.extend(r.set_cookies);
    let r = b.get("/now?msg=F3-now-marker").await;
    cookies.extend(r.set_cookies);
    assert!(!cookies.is_empty(), "the first flash starts a session");
    for c in &cookies {
        let full = c.to_string();
        let text = &full[..full.len().min(80)];
        assert!(full.len() < 4096, "oversize Set-Cookie: {text}");
        assert!(!full.contains("marker") && !full.contains("xxxx"), "{text}");
        assert_eq!(c.name(), C, "a cookie other than the session's: {text}");
        assert!(
            c.value().len() == 32 && c.value().bytes().all(|b| b.is_ascii_hexdigit()),
            "the session cookie carries more than an id: {text}"
        );
    }
}

/// F1: a stored flash that is damaged (truncated, garbage, the wrong shape) shows nothing,
/// is cleared, and the session goes on: no error, no repeated failure.
async fn f1_a_damaged_stored_flash_shows_nothing_and_is_cleared(options: Options) {
    let (svc, provider) = app(options);
    let damages: [fn(&str) -> String; 4] = [
        |raw| raw[..raw.len() / 2].to_owned(),
        |_| "garbage".into(),
        |_| r#"{"SuccessMsg":1}"#.into(),
        |_| "[]".into(),
    ];
    for (n, damage) in damages.into_iter().enumerate() {
        let mut b = Browser::new(svc.clone());
        b.get("/set?msg=Saved").await;
        let sid = SessionId::parse(&b.cookie(C).unwrap(), 32).unwrap();
        let record = provider.load(&sid).await.unwrap().unwrap();
        let raw = record.values.get(FLASH_KEY).expect("the flash is stored");
        let changes = ChangeSet {
            set: vec![(FLASH_KEY.into(), damage(raw))],
            expires_at: record.expires_at,
            ..Default::default()
        };
        assert!(provider.save(&sid, &changes).await.unwrap());
        for _ in 0..2 {
            let r = b.get("/show").await;
            assert_eq!(r.status, StatusCode::OK, "damage {n}");
            let shown = json(&r.body);
            for level in ["SuccessMsg", "ErrorMsg", "InfoMsg", "WarningMsg"] {
                assert_eq!(shown[level], "", "damage {n} showed in {level}");
            }
        }
        let record = provider
            .load(&sid)
            .await
            .unwrap()
            .expect("the session lives on");
        assert!(
            !record.values.contains_key(FLASH_KEY),
            "damage {n} was kept"
        );
    }
}

fn demo_service(options: Options) -> Arc<Service> {
    Arc::new(Service::new(demo::app(options).unwrap()))
}

async fn demo_full_browser_flow(options: Options) {
    let svc = demo_service(options);
    let mut b = Browser::new(svc.clone());
    let home = b.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains("Welcome, visitor"));
    assert!(home.body.contains(r#"<strong id="visits">1</strong>"#));
    assert!(
        b.get("/static/style.css")
            .await
            .body
            .contains(".flash.success")
    );

    // A wrong password: an error flash, shown once, after a redirect back.
    let r = b
        .post_form("/login", &[("username", "demo"), ("password", "nope")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers.get("location").unwrap(), "/login");
    assert!(
        b.get("/login")
            .await
            .body
            .contains("Wrong user name or password.")
    );
    assert!(
        !b.get("/login")
            .await
            .body
            .contains("Wrong user name or password.")
    );

    // The right password: a new id, the user stored, a success flash shown once.
    let anonymous = b.cookie(C).unwrap();
    let r = b
        .post_form("/login", &[("username", "demo"), ("password", "demo")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let logged_in = b.cookie(C).unwrap();
    assert_ne!(logged_in, anonymous, "login regenerates the session id");
    let home = b.get("/").await;
    assert!(home.body.contains("Welcome back, demo!"));
    assert!(home.body.contains("Hello, demo"));
    assert!(
        home.body.contains(r#"<strong id="visits">2</strong>"#),
        "the counter carried over the login"
    );
    let home = b.get("/").await;
    assert!(!home.body.contains("Welcome back"));
    assert!(home.body.contains(r#"<strong id="visits">3</strong>"#));

    // A now flash shows in its own response only.
    assert!(
        b.get("/now")
            .await
            .body
            .contains("shows in this response only")
    );
    assert!(
        !b.get("/")
            .await
            .body
            .contains("shows in this response only")
    );

    // Logout: destroyed, an info flash, and the old cookie is anonymous.
    let r = b.post_form("/logout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let home = b.get("/").await;
    assert!(home.body.contains("You have been logged out."));
    assert!(home.body.contains("Welcome, visitor"));
    let mut replay = Browser::with_cookie(svc, C, &logged_in);
    let home = replay.get("/").await;
    assert!(
        home.body.contains("Welcome, visitor"),
        "the old cookie is anonymous"
    );
    assert!(home.body.contains(r#"<strong id="visits">1</strong>"#));
}
