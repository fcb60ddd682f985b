//! R8: no raw ids, values or flash texts in logs, from any thread, on every backend.
//!
//! - The parent test re-runs this binary as a child (`r8_child`, selected by
//!   [`LOG_FILE`] in its environment), which installs a process-wide `tracing` subscriber
//!   at TRACE level writing to a file: every thread's events are captured (the sled writer,
//!   the blocking pool, both runtime workers), which a per-thread default would miss.
//! - The child runs the full flows on every built-in backend at once, each as its own task
//!   on a two-worker runtime: login, set, a regenerate, flashes (stored and `now`), destroy,
//!   GC, and the failures (malformed and unknown cookies, a value that does not decode, a
//!   corrupt record, a backend that cannot store), then writes every issued cookie value,
//!   session value and flash text to [`SECRETS_FILE`].
//! - The parent checks that none of them is in the log, that the log has lines from more
//!   than one thread, and that the failures were logged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{Backend, Browser, Reply, backend, router};
use salvo::http::StatusCode;
use salvo::prelude::*;
use sessioner::{ChangeSet, Options, SessionDepotExt, SessionId};

const C: &str = "sessioner";
/// The child's log file; its presence selects the child mode.
const LOG_FILE: &str = "SESSIONER_TEST_R8_LOG";
/// Where the child writes the secrets the log must not hold, one a line.
const SECRETS_FILE: &str = "SESSIONER_TEST_R8_SECRETS";

#[test]
fn r8_logs_from_every_thread_on_every_backend_carry_no_ids_values_or_flash_texts() {
    let dir = tempfile::tempdir().unwrap();
    let (log, secrets) = (dir.path().join("log"), dir.path().join("secrets"));
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["r8_child", "--exact", "--ignored", "--nocapture"])
        .env(LOG_FILE, &log)
        .env(SECRETS_FILE, &secrets)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = std::fs::read_to_string(log).unwrap();
    let secrets = std::fs::read_to_string(secrets).unwrap();
    let secrets: Vec<&str> = secrets.lines().collect();

    assert!(
        log.lines().count() > 100,
        "a TRACE log of the flows:\n{log}"
    );
    for backend in BACKENDS {
        assert!(secrets.iter().any(|s| s.contains(backend)), "{backend} ran");
    }
    assert!(secrets.iter().filter(|s| s.len() == 32).count() >= 3 * BACKENDS.len());
    for secret in &secrets {
        assert!(!log.contains(secret), "the log leaks {secret}");
    }
    for event in [
        "malformed session cookie ignored",
        "session cookie names no live session",
        "corrupt session record removed",
        "session error answered with 500",
        "session error answered with 503",
        "saving the session failed",
    ] {
        assert!(log.contains(event), "not logged: {event}");
    }
    // Lines from sessioner itself, on more than one thread.
    let threads: HashSet<&str> = log
        .lines()
        .filter(|l| l.contains(" sessioner::"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("ThreadId(")))
        .collect();
    assert!(threads.len() > 1, "sessioner logged on {threads:?} only");
}

/// The backends of this build.
const BACKENDS: &[&str] = &[
    "memory",
    "file",
    #[cfg(feature = "sled")]
    "sled",
    #[cfg(feature = "redis")]
    "redis",
];

#[test]
#[ignore = "run by r8_logs_from_every_thread_on_every_backend_carry_no_ids_values_or_flash_texts"]
fn r8_child() {
    let (Ok(log), Ok(secrets_file)) = (std::env::var(LOG_FILE), std::env::var(SECRETS_FILE)) else {
        eprintln!("r8_child only works when run by its parent test");
        return;
    };
    let log = File::create(log).unwrap();
    tracing_subscriber::fmt()
        .with_writer(Mutex::new(log))
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_thread_ids(true)
        .with_thread_names(true)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Storage made here, outside the tasks: its guard need not be `Send`.
    let backends: Vec<Backend> = BACKENDS.iter().map(|name| backend(name)).collect();
    let secrets = runtime.block_on(async {
        let flows: Vec<_> = BACKENDS
            .iter()
            .zip(&backends)
            .map(|(name, b)| tokio::spawn(flows(name, b.options.clone())))
            .collect();
        let mut secrets = Vec::new();
        for flow in flows {
            secrets.extend(flow.await.unwrap());
        }
        secrets
    });
    std::fs::write(secrets_file, secrets.join("\n")).unwrap();
    drop(backends);
}

#[handler]
async fn flash(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let text = req.query::<String>("text").unwrap_or_default();
    let messages = depot.flash_mut().unwrap();
    messages.success(text.clone());
    messages.info_now(format!("{text}-now"));
    res.render(Redirect::other("/show"));
}

#[handler]
async fn show(depot: &mut Depot) -> Result<String, sessioner::Error> {
    let shown = depot.flash_mut()?.current().await?;
    Ok(format!("{}|{}", shown.success_msg, shown.info_msg))
}

#[handler]
async fn number(depot: &mut Depot) -> Result<String, sessioner::Error> {
    Ok(format!("{:?}", depot.session()?.get::<u64>("user").await?))
}

/// A browser that notes every cookie value it is given.
struct Visitor {
    browser: Browser,
    secrets: Vec<String>,
}

impl Visitor {
    async fn get(&mut self, path: &str) -> Reply {
        let reply = self.browser.get(path).await;
        self.secrets.extend(
            reply
                .set_cookies
                .iter()
                .map(|c| c.value().to_owned())
                .filter(|v| !v.is_empty()),
        );
        reply
    }

    fn id(&self) -> SessionId {
        SessionId::parse(&self.browser.cookie(C).unwrap(), 32).unwrap()
    }
}

/// The flows on backend `name`; the secrets they handled.
async fn flows(name: &'static str, options: Options) -> Vec<String> {
    let handler = options.clone().build().unwrap();
    let provider = Arc::clone(handler.provider());
    let svc = Arc::new(Service::new(
        router(handler)
            .push(Router::with_path("flash").get(flash))
            .push(Router::with_path("show").get(show))
            .push(Router::with_path("number").get(number)),
    ));
    let secret = |what: &str| format!("s3cr3t-{name}-{what}");
    let mut secrets: Vec<String> = ["user", "role", "cart", "flash", "flash-now", "broken"]
        .iter()
        .map(|w| secret(w))
        .collect();
    let mut v = Visitor {
        browser: Browser::new(svc.clone()),
        secrets: Vec::new(),
    };
    let ok = |r: Reply| assert_eq!(r.status, StatusCode::OK, "{name}: {r:?}");

    // Login, set, regenerate, flash.
    ok(v.get(&format!("/set?key=user&value={}", secret("user")))
        .await);
    ok(
        v.get(&format!("/regenerate?key=role&value={}", secret("role")))
            .await,
    );
    ok(v.get(&format!("/set?key=cart&value={}", secret("cart")))
        .await);
    assert_eq!(v.get("/get?key=cart").await.body, secret("cart"));
    assert_eq!(
        v.get(&format!("/flash?text={}", secret("flash")))
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        v.get("/show").await.body,
        format!("{}|", secret("flash")),
        "{name}: the stored flash"
    );
    ok(v.get("/set_then_regenerate?key=k&value=v").await);
    ok(v.get("/count").await);
    ok(v.get("/gc").await);

    // Failures: hostile and unknown cookies, a value that does not decode.
    let planted = SessionId::generate(32).unwrap().as_str().to_owned();
    for cookie in ["../../etc/passwd", &"f".repeat(31), planted.as_str()] {
        ok(Browser::with_cookie(svc.clone(), C, cookie)
            .get("/get?key=user")
            .await);
    }
    secrets.push(planted);
    let broken = ChangeSet {
        set: vec![("user".into(), format!("{{\"{}", secret("broken")))],
        expires_at: u64::MAX / 4,
        ..Default::default()
    };
    assert!(provider.save(&v.id(), &broken).await.unwrap());
    let r = v.get("/number").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{name}");
    ok(v.get("/destroy").await);

    backend_failures(name, &options, &mut v).await;
    secrets.extend(v.secrets);
    secrets
}

/// What only some backends can show: a corrupt record (file, redis) and a backend that
/// cannot store a session (memory full, file directories taken, redis stopped).
async fn backend_failures(name: &str, options: &Options, v: &mut Visitor) {
    let value = format!("s3cr3t-{name}-failing");
    v.secrets.push(value.clone());
    let set = format!("/set?key=user&value={value}");
    match name {
        "memory" => {
            let full = Options {
                provider_config: "max_sessions=1".into(),
                ..options.clone()
            };
            let svc = Arc::new(Service::new(router(full.build().unwrap())));
            let mut first = Visitor {
                browser: Browser::new(svc.clone()),
                secrets: Vec::new(),
            };
            assert_eq!(first.get(&set).await.status, StatusCode::OK);
            v.secrets.extend(first.secrets);
            let r = Browser::new(svc).get(&set).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        }
        "file" => {
            let root = Path::new(&options.provider_config);
            assert_eq!(v.get(&set).await.status, StatusCode::OK);
            let key = v.id().storage_key();
            std::fs::write(root.join(&key[..2]).join(&key), b"garbage").unwrap();
            assert_eq!(v.get("/get?key=user").await.body, "none");
            for i in 0..=255u8 {
                let dir = root.join(format!("{i:02x}"));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::write(dir, b"").unwrap();
            }
            let r = Browser::new(v.browser.service.clone()).get(&set).await;
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        }
        #[cfg(feature = "redis")]
        "redis" => {
            use common::redis_server::{RedisServer, unique_prefix};
            let mut server = RedisServer::start();
            let prefix = unique_prefix("r8");
            let redis = Options {
                provider_config: format!("{}?prefix={prefix}&timeout_ms=500", server.url()),
                ..options.clone()
            };
            let outer = v;
            let mut v = Visitor {
                browser: Browser::new(Arc::new(Service::new(router(redis.build().unwrap())))),
                secrets: Vec::new(),
            };
            assert_eq!(v.get(&set).await.status, StatusCode::OK);
            let key = format!("{prefix}{}", v.id().storage_key());
            let () = redis::cmd("SET")
                .arg(key)
                .arg("garbage")
                .query(&mut server.admin())
                .unwrap();
            assert_eq!(v.get("/get?key=user").await.body, "none");
            assert_eq!(v.get(&set).await.status, StatusCode::OK);
            server.stop();
            let r = v.get(&set).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
            outer.secrets.extend(v.secrets);
        }
        _ => {}
    }
}
