//! The README's example apps as a visitor uses them: the demo keeps a login across a restart,
//! and the counter serves. Each runs as a child process (the binaries `cargo test` and
//! `scripts/test` build next to this test) in a temporary working directory, so the
//! relative data directory it uses is the test's own.
//!
//! How a child is started, and why the server it talks to is surely its own:
//! `tests/support/app.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/app.rs"]
mod app;

use app::App;

/// README: the demo "keeps its sessions in an embedded store under `data/demo-sessions`, so
/// a restart keeps you logged in" (a graceful stop, SIGTERM, as a service manager sends).
#[cfg(unix)]
#[test]
fn the_demo_keeps_a_login_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = App::start("demo", Some(dir.path()), &[]);
    let login = demo.post_form("/login", None, "username=demo&password=demo");
    assert_eq!(login.status, 303, "{login:?}");
    let cookie = login.session.expect("a session cookie at login");
    let home = demo.get("/", Some(&cookie));
    assert!(home.body.contains("Hello, demo"), "{}", home.body);
    assert!(home.body.contains("Welcome back, demo!"), "{}", home.body);
    let status = demo.terminate();
    assert!(status.success(), "SIGTERM is a graceful stop: {status}");
    assert!(
        dir.path().join("data/demo-sessions").is_dir(),
        "the sessions live under data/demo-sessions"
    );

    let demo = App::start("demo", Some(dir.path()), &[]);
    let home = demo.get("/", Some(&cookie));
    assert_eq!(home.status, 200);
    assert!(
        home.body.contains("Hello, demo"),
        "logged out by the restart: {}",
        home.body
    );
    assert!(home.session.is_none(), "the session was kept, not replaced");
}

/// README: "`cargo run --example counter` is the smallest app (a per-visitor counter on
/// `/counter`)".
#[test]
fn the_counter_counts_each_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let counter = App::start("counter", Some(dir.path()), &[]);
    let first = counter.get("/counter", None);
    assert_eq!((first.status, first.body.as_str()), (200, "visits: 1\n"));
    let cookie = first.session.expect("a session cookie");
    assert_eq!(counter.get("/counter", Some(&cookie)).body, "visits: 2\n");
    assert_eq!(
        counter.get("/counter", None).body,
        "visits: 1\n",
        "another visitor counts from 1"
    );
}
