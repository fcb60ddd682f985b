//! Redis through the middleware (a Salvo app, tests/common), against real `redis-server`s:
//! - R3: a corrupt or malformed session hash is logged, removed, and the visitor starts
//!   afresh; never a 500, never twice.
//! - R1, R2, R5: redis stopped during a request, stopped and restarted, paused.
//! - The README's redis promises: `unix://` and `network=unix`, `username`, `count` by `SCAN`
//!   only, and the round trips of a read, a write, a creation and a regenerate (observed with
//!   `MONITOR` on a server the test has alone).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis_server::{RedisServer, shared_url, unique_prefix};
use common::{Browser, Reply, Slow, router, service};
use salvo::http::StatusCode;
use salvo::prelude::*;
use sessioner::{Options, SessionId};
use tokio::sync::Notify;

const C: &str = "sessioner";
const EXPIRES_FIELD: &str = "__sessioner.redis.expires_at";

fn redis(config: String) -> Options {
    Options {
        provider: "redis".into(),
        provider_config: config,
        ..Default::default()
    }
}

/// The redis key of the session `cookie` names, under `prefix`.
fn key_of(prefix: &str, cookie: &str) -> String {
    format!(
        "{prefix}{}",
        SessionId::parse(cookie, 32).unwrap().storage_key()
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A `MakeWriter` that appends every log line to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// One way to damage a stored session: what it does to the hash at `key`.
type Damage = fn(&mut redis::Connection, &str);

fn hset(admin: &mut redis::Connection, key: &str, field: &[u8], value: &[u8]) {
    let () = redis::cmd("HSET")
        .arg(key)
        .arg(field)
        .arg(value)
        .query(admin)
        .unwrap();
}

const DAMAGES: &[(&str, Damage)] = &[
    ("deadline field missing", |a, key| {
        let () = redis::cmd("HDEL")
            .arg(key)
            .arg(EXPIRES_FIELD)
            .query(a)
            .unwrap();
    }),
    ("deadline not a number", |a, key| {
        hset(a, key, EXPIRES_FIELD.as_bytes(), b"tomorrow")
    }),
    ("deadline not UTF-8", |a, key| {
        hset(a, key, EXPIRES_FIELD.as_bytes(), b"\xff\xfe")
    }),
    ("a value not UTF-8", |a, key| {
        hset(a, key, b"user", b"\"\xff\xfe\"")
    }),
    ("a field name not UTF-8", |a, key| {
        hset(a, key, b"\xc3\x28", b"\"x\"")
    }),
    ("the key a string", |a, key| {
        let () = redis::cmd("SET").arg(key).arg("garbage").query(a).unwrap();
    }),
    ("the key a list", |a, key| {
        let () = redis::cmd("DEL").arg(key).query(a).unwrap();
        let () = redis::cmd("RPUSH").arg(key).arg("x").query(a).unwrap();
    }),
];

#[tokio::test]
async fn r3_corrupt_or_malformed_hashes_are_logged_removed_and_replaced_by_a_fresh_session() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let url = shared_url();
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();

    for (what, damage) in DAMAGES {
        let prefix = unique_prefix("r3");
        let svc = service(redis(format!("{url}?prefix={prefix}")));
        let mut b = Browser::new(svc.clone());
        assert_eq!(
            b.get("/set?key=user&value=ann").await.status,
            StatusCode::OK
        );
        let old = b.cookie(C).unwrap();
        let key = key_of(&prefix, &old);
        damage(&mut admin, &key);
        let logged_before = logs
            .text()
            .matches("corrupt session record removed")
            .count();

        let r = b.get("/get?key=user").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "none"),
            "{what}: a fresh, empty session"
        );
        let exists: bool = redis::cmd("EXISTS").arg(&key).query(&mut admin).unwrap();
        assert!(!exists, "{what}: the damaged hash is removed");
        assert_eq!(
            logs.text()
                .matches("corrupt session record removed")
                .count(),
            logged_before + 1,
            "{what}: logged once"
        );

        // The same cookie again: nothing left to fail on, never a repeated 500.
        let again = Browser::with_cookie(svc.clone(), C, &old)
            .get("/get?key=user")
            .await;
        assert_eq!(
            (again.status, again.body.as_str()),
            (StatusCode::OK, "none")
        );
        // Writing starts a new session under a new id, which works.
        let r = b.get("/set?key=user&value=bob").await;
        assert_eq!(r.status, StatusCode::OK, "{what}");
        let new = b.cookie(C).unwrap();
        assert_ne!(new, old, "{what}: the damaged id is not adopted");
        assert_eq!(b.get("/get?key=user").await.body, "bob", "{what}");
    }
}

/// `r` is the failure `status`, without a cookie, and its body (Salvo's error page) carries
/// neither the handler's answer nor any backend detail.
fn is_opaque_failure(r: &Reply, status: StatusCode) -> bool {
    r.status == status
        && r.cookie(C).is_none()
        && ["ok", "ann", "redis", "127.0.0.1"]
            .iter()
            .all(|leak| !r.body.contains(leak))
}

/// GETs `path` every 50 ms until it answers 200, for at most 10 s.
async fn get_until_ok(b: &mut Browser, path: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = b.get(path).await;
        if r.status == StatusCode::OK || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn r2_r1_redis_stopped_during_a_request_fails_it_before_the_body_then_recovers() {
    // Every write reaches the disk before redis answers, so the session outlives a kill -9.
    let persistent: Vec<String> = ["--appendonly", "yes", "--appendfsync", "always"]
        .map(String::from)
        .into();
    let mut server = RedisServer::start_with(&persistent);
    let prefix = unique_prefix("r2");
    let (loaded, proceed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = Slow::Signal {
        loaded: loaded.clone(),
        proceed: proceed.clone(),
    };
    let handler = redis(format!("{}?prefix={prefix}&timeout_ms=500", server.url()))
        .build()
        .unwrap();
    let svc = Arc::new(Service::new(
        router(handler).push(Router::with_path("slow").get(slow)),
    ));
    let mut b = Browser::new(svc.clone());
    assert_eq!(
        b.get("/set?key=user&value=ann").await.status,
        StatusCode::OK
    );
    let cookie = b.cookie(C).unwrap();

    // R2: the request loaded its session, the handler answered "ok"; redis dies before the
    // save. The response is the failure, with no body and no cookie.
    let request = tokio::spawn({
        let mut b = Browser::with_cookie(svc.clone(), C, &cookie);
        async move { b.get("/slow?key=cart&value=1").await }
    });
    loaded.notified().await;
    server.stop();
    proceed.notify_one();
    let r = request.await.unwrap();
    assert!(
        is_opaque_failure(&r, StatusCode::SERVICE_UNAVAILABLE),
        "a save that cannot reach redis: {r:?}"
    );

    // R1: while redis is down, session requests are 503 with the cookie kept; others work.
    let r = b.get("/get?key=user").await;
    assert!(
        is_opaque_failure(&r, StatusCode::SERVICE_UNAVAILABLE),
        "{r:?}"
    );
    assert_eq!(b.get("/hello").await.body, "hello");

    // Back up: the same cookie finds the same session, and the failed write never landed.
    server.restart();
    let r = get_until_ok(&mut b, "/get?key=user").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ann"));
    assert!(r.cookie(C).is_none(), "the cookie is kept");
    assert_eq!(b.get("/get?key=cart").await.body, "none");
    assert_eq!(b.get("/set?key=cart&value=2").await.status, StatusCode::OK);
    assert_eq!(b.get("/get?key=cart").await.body, "2");
    assert_eq!(b.cookie(C).unwrap(), cookie);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_a_paused_redis_fails_session_requests_within_the_timeout_and_spares_other_routes() {
    let server = RedisServer::start();
    let prefix = unique_prefix("r5");
    let svc = service(redis(format!(
        "{}?prefix={prefix}&timeout_ms=300",
        server.url()
    )));
    let mut b = Browser::new(svc.clone());
    assert_eq!(
        b.get("/set?key=user&value=ann").await.status,
        StatusCode::OK
    );
    // Redis answers nobody for 2 s; the provider gives each call 0.3 s.
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2_000)
        .arg("ALL")
        .query(&mut server.admin())
        .unwrap();
    let paused = Instant::now();
    for path in ["/get?key=user", "/set?key=user&value=bob"] {
        let started = Instant::now();
        let r = b.get(path).await;
        assert!(
            is_opaque_failure(&r, StatusCode::SERVICE_UNAVAILABLE),
            "{path}: {r:?}"
        );
        // 0.3 s, plus the one reconnect the provider allows: well under the 2 s pause.
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{path} took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert_eq!(b.get("/hello").await.body, "hello");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "a route without sessions waited"
        );
    }
    assert!(
        paused.elapsed() < Duration::from_secs(2),
        "the pause outlived the checks"
    );

    let r = get_until_ok(&mut b, "/get?key=user").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ann"));
}

/// The session app over `config`: write, read back, count.
async fn round_trip(config: String) -> String {
    let svc = service(redis(config));
    let mut b = Browser::new(svc);
    assert_eq!(
        b.get("/set?key=user&value=ann").await.status,
        StatusCode::OK
    );
    assert_eq!(b.get("/get?key=user").await.body, "ann");
    assert_eq!(b.get("/count").await.body, "1");
    b.cookie(C).unwrap()
}

fn exists_in_db(server: &RedisServer, db: i64, key: &str) -> bool {
    let mut admin = server.admin();
    let () = redis::cmd("SELECT").arg(db).query(&mut admin).unwrap();
    redis::cmd("EXISTS").arg(key).query(&mut admin).unwrap()
}

#[tokio::test]
async fn readme_unix_socket_urls_and_network_unix() {
    let server = RedisServer::start_unix(&[]);
    let socket = server.socket().unwrap().display().to_string();
    for (db, config) in [
        (0, format!("unix://{socket}?prefix=P")),
        (1, format!("redis+unix://{socket}?db=1&prefix=P")),
        (2, format!("network=unix,addr={socket},db=2,prefix=P")),
    ] {
        let prefix = unique_prefix("unix");
        let cookie = round_trip(config.replace("prefix=P", &format!("prefix={prefix}"))).await;
        assert!(
            exists_in_db(&server, db, &key_of(&prefix, &cookie)),
            "{config}: the session is in db {db} of the socket's server"
        );
    }
}

#[tokio::test]
async fn readme_username_logs_in_as_an_acl_user() {
    let server = RedisServer::start();
    let mut admin = server.admin();
    let base = unique_prefix("acl");
    // A user allowed only its own prefix; the default user gets a password the app lacks.
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(">app-pw")
        .arg(format!("~{base}*"))
        .arg("+@all")
        .query(&mut admin)
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("admin-pw")
        .query(&mut admin)
        .unwrap();
    let addr = format!("127.0.0.1:{}", server.port());
    for config in [
        format!("addr={addr},username=app,password=app-pw,prefix={base}settings:"),
        format!("redis://app:app-pw@{addr}/0?prefix={base}url:"),
    ] {
        round_trip(config).await;
    }
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    assert!(
        clients.contains("user=app "),
        "no client logged in as app:\n{clients}"
    );
    // Without the username, the password is tried for the default user: refused.
    let svc = service(redis(format!("addr={addr},password=app-pw,prefix={base}")));
    let r = Browser::new(svc).get("/set?key=user&value=ann").await;
    assert!(r.status.is_server_error(), "{r:?}");
}

/// The commands clients other than `admin` sent to `server` while `during` ran, in order
/// (commands run by scripts excluded: they are no round trips), and those the scripts ran.
/// Seen through `MONITOR`; the end is marked by an `ECHO` from `admin`.
async fn monitored<F: Future<Output = ()>>(
    server: &RedisServer,
    during: F,
) -> (Vec<String>, Vec<String>) {
    let mut monitor = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    monitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    let mut lines = BufReader::new(monitor);
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "+OK\r\n");
    during.await;
    let marker = format!("end-of-monitoring-{}", now_ms());
    let _: String = redis::cmd("ECHO")
        .arg(&marker)
        .query(&mut server.admin())
        .unwrap();
    let (mut sent, mut scripted) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        lines.read_line(&mut line).unwrap();
        if line.contains(&marker) {
            return (sent, scripted);
        }
        // +1700000000.000000 [0 127.0.0.1:40000] "HGETALL" "key"   ([0 lua] for scripts)
        let (source, command) = line.split_once("] \"").expect(&line);
        let command = command.split('"').next().unwrap().to_uppercase();
        if source.ends_with(" lua") {
            scripted.push(command);
        } else {
            sent.push(command);
        }
    }
}

#[tokio::test]
async fn readme_round_trips_read_one_hgetall_write_one_script_more_regenerate_one_script() {
    let server = RedisServer::start();
    let svc = service(redis(format!(
        "{}?prefix={}",
        server.url(),
        unique_prefix("trips")
    )));
    let mut b = Browser::new(svc.clone());
    // Warm up: the connection is made and each script loaded once (the first EVALSHA after
    // a start finds no script and loads it).
    for path in [
        "/set?key=user&value=ann",
        "/set?key=user&value=ann",
        "/regenerate",
    ] {
        assert_eq!(b.get(path).await.status, StatusCode::OK);
    }

    let cases: [(&str, &[&str]); 5] = [
        ("/get?key=user", &["HGETALL"]),
        ("/set?key=user&value=bob", &["HGETALL", "EVALSHA"]),
        ("/regenerate", &["HGETALL", "EVALSHA"]),
        ("/hello", &[]),
        ("/destroy", &["DEL"]),
    ];
    for (path, expected) in cases {
        let (sent, scripted) = monitored(&server, async {
            assert_eq!(b.get(path).await.status, StatusCode::OK, "{path}");
        })
        .await;
        assert_eq!(sent, expected, "{path}");
        if path == "/regenerate" {
            assert!(scripted.contains(&"RENAME".to_owned()), "{scripted:?}");
        }
    }
    // A new visitor's first write: one script, no read (there was no cookie to read).
    let (sent, _) = monitored(&server, async {
        let r = Browser::new(svc.clone())
            .get("/set?key=user&value=cy")
            .await;
        assert!(r.cookie(C).is_some());
    })
    .await;
    assert_eq!(sent, ["EVALSHA"]);
}

#[tokio::test]
async fn readme_count_walks_the_prefix_with_scan_never_keys_or_dbsize() {
    let server = RedisServer::start();
    let prefix = unique_prefix("scan");
    let svc = service(redis(format!("{}?prefix={prefix}", server.url())));
    let mut b = Browser::new(svc.clone());
    assert_eq!(
        b.get("/set?key=user&value=ann").await.status,
        StatusCode::OK
    );
    // 2,500 more live sessions, planted directly: more than one SCAN step's worth.
    let mut admin = server.admin();
    let mut plant = redis::pipe();
    for i in 0..2_500u32 {
        plant
            .cmd("HSET")
            .arg(format!("{prefix}{:064x}", i))
            .arg(EXPIRES_FIELD)
            .arg(now_ms() + 3_600_000)
            .ignore();
    }
    let () = plant.query(&mut admin).unwrap();
    // Warm up: the counting script is loaded on its first use.
    assert_eq!(b.get("/count").await.body, "2501");
    let (sent, _) = monitored(&server, async {
        assert_eq!(b.get("/count").await.body, "2501");
    })
    .await;
    let scans = sent.iter().filter(|c| *c == "SCAN").count();
    assert!(scans >= 2, "one SCAN per step: {sent:?}");
    assert!(
        sent.iter().all(|c| c == "SCAN" || c == "EVALSHA"),
        "only SCAN and the counting script: {sent:?}"
    );
}
