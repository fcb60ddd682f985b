//! What needs a process boundary (SECURITY.md rows, a graceful stop): an example app runs as
//! a child process (`tests/support/app.rs`), and the test talks plain HTTP/1.1 to it, kills
//! it, stops it with SIGTERM, or stops its redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use sessioner::{Record, SessionId};

#[path = "support/app.rs"]
mod app;
#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

use app::App;

fn visits(body: &str) -> u64 {
    let marker = r#"<strong id="visits">"#;
    let start = body.find(marker).expect("a home page") + marker.len();
    body[start..].split('<').next().unwrap().parse().unwrap()
}

/// The session files under a file store's `root` (temporaries left by the kill skipped).
fn record_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.len() == 64 && !name.starts_with('.') {
                out.push(path);
            }
        }
    }
    out
}

/// The storage key of a session cookie, as every provider names its record.
fn storage_key(cookie: &str) -> String {
    SessionId::parse(cookie, 32).unwrap().storage_key()
}

/// The decoded record of `cookie` in a file store rooted at `root`.
fn file_record(root: &Path, cookie: &str) -> Record {
    let key = storage_key(cookie);
    let path = root.join(&key[..2]).join(&key);
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("an answered session is missing ({e})"));
    Record::decode(&bytes).unwrap_or_else(|e| panic!("{} is torn: {e}", path.display()))
}

/// The stored visit count of a record.
fn stored_visits(record: &Record) -> u64 {
    record.values["visits"].parse().unwrap()
}

/// Every session a write loop got answered: its cookie and the highest visit count answered.
type Answered = HashMap<String, u64>;

/// Answered writes after which the server is killed.
const WRITES_BEFORE_KILL: usize = 400;

/// Runs the demo with `env`, then four writers against it, each with sessions of its own:
/// mostly visits (a save), every eighth a new visitor (a create). Right after the
/// [`WRITES_BEFORE_KILL`]th answered write, with the writers still sending, the server gets
/// SIGKILL. Returns what was answered before.
fn write_until_killed(env: &[(&str, String)]) -> Answered {
    let mut demo = App::demo(env);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let (reached, kill_now) = mpsc::channel();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, writes, reached, port) =
                (stop.clone(), writes.clone(), reached.clone(), demo.port);
            std::thread::spawn(move || {
                let mut answered = Answered::new();
                let mut mine: Vec<String> = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let cookie =
                        (n % 8 != 0 && !mine.is_empty()).then(|| mine[n % mine.len()].clone());
                    let Ok(r) = app::request(port, "GET", "/", cookie.as_deref(), "") else {
                        continue; // the server died under this request
                    };
                    if r.status != 200 {
                        continue;
                    }
                    let visits = visits(&r.body);
                    let cookie = match (cookie, r.session) {
                        (Some(cookie), None) => cookie,
                        (None, Some(new)) => {
                            mine.push(new.clone());
                            new
                        }
                        other => panic!("unexpected cookies: {other:?}"),
                    };
                    answered.insert(cookie, visits);
                    if writes.fetch_add(1, Ordering::SeqCst) + 1 == WRITES_BEFORE_KILL {
                        let _ = reached.send(());
                    }
                }
                answered
            })
        })
        .collect();
    // The bound only ends a test that already failed.
    let got_going = kill_now.recv_timeout(Duration::from_secs(120)).is_ok();
    demo.kill(); // SIGKILL, mid-write
    stop.store(true, Ordering::SeqCst);
    let answered: Answered = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(got_going, "the write loop never got going");
    assert!(
        answered.len() > 20,
        "few sessions created: {}",
        answered.len()
    );
    answered
}

/// After the kill: each answered session is served again on a restart with at least the
/// stored visits, `at_least` (what a crash cannot have lost) plus this visit.
fn restart_keeps(env: &[(&str, String)], answered: &Answered, at_least: impl Fn(u64) -> u64) {
    let demo = App::demo(env);
    for (cookie, &visits) in answered {
        let r = demo.get("/", Some(cookie));
        assert_eq!(r.status, 200);
        assert!(r.session.is_none(), "the session was kept, not replaced");
        assert!(self::visits(&r.body) > at_least(visits));
    }
}

/// SECURITY.md R4: the demo is killed (SIGKILL) while writers rewrite and create sessions;
/// every record left behind decodes, and what was answered before the kill is stored.
mod r4_kill_9_during_a_write_loop_leaves_every_record_decodable {
    use super::*;

    /// Both modes of the file provider: a process crash loses nothing that was answered
    /// (`always` flushed it; `lifecycle` left it in the page cache, which survives).
    fn file(sync: &str) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let env = [
            ("SESSION_PROVIDER", "file".to_owned()),
            (
                "SESSION_PROVIDER_CONFIG",
                format!("{},sync={sync}", root.display()),
            ),
        ];
        let answered = write_until_killed(&env);

        let files = record_files(&root);
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            Record::decode(&bytes).unwrap_or_else(|e| panic!("{} is torn: {e}", file.display()));
        }
        // Creates still in flight at the kill may have landed too.
        assert!(files.len() >= answered.len());
        for (cookie, &visits) in &answered {
            assert!(stored_visits(&file_record(&root, cookie)) >= visits);
        }
        restart_keeps(&env, &answered, |visits| visits);
    }

    #[test]
    fn file_sync_always() {
        file("always");
    }

    #[test]
    fn file_sync_lifecycle() {
        file("lifecycle");
    }

    /// sled, killed rather than closed: every create was flushed before it was answered; a
    /// visit may be lost (saves are written behind, every 500 ms), never a session.
    #[cfg(feature = "sled")]
    #[test]
    fn sled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let env = [
            ("SESSION_PROVIDER", "sled".to_owned()),
            (
                "SESSION_PROVIDER_CONFIG",
                path.to_string_lossy().into_owned(),
            ),
        ];
        let answered = write_until_killed(&env);

        {
            // The killed process's lock on the directory died with it.
            let db = ::sled::open(&path).unwrap();
            let records = db.open_tree("sessioner/records").unwrap();
            let mut stored = 0;
            for entry in records.iter() {
                let (_, bytes) = entry.unwrap();
                Record::decode(&bytes).unwrap_or_else(|e| panic!("a sled record is torn: {e}"));
                stored += 1;
            }
            assert!(stored >= answered.len());
            for cookie in answered.keys() {
                let bytes = records
                    .get(storage_key(cookie))
                    .unwrap()
                    .expect("an answered create is stored");
                assert!(stored_visits(&Record::decode(&bytes).unwrap()) >= 1);
            }
        }
        restart_keeps(&env, &answered, |_| 1);
    }
}

/// `bench_server` on sled (write-behind: saves reach the disk up to 500 ms later): SIGTERM
/// right after the last write stops it gracefully, and a restart on the same directory has
/// every write.
#[cfg(all(unix, feature = "sled"))]
#[test]
fn sigterm_stops_gracefully_and_sled_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SESSIONER_PROVIDER", "sled".to_owned()),
        (
            "SESSIONER_PROVIDER_CONFIG",
            dir.path().join("db").to_string_lossy().into_owned(),
        ),
    ];
    let mut app = App::start("bench_server", None, &env);
    let first = app.get("/counter", None);
    assert_eq!(first.body, "1");
    let cookie = first.session.expect("a session");
    for n in 2..=20 {
        assert_eq!(app.get("/counter", Some(&cookie)).body, n.to_string());
    }
    let status = app.terminate();

    let app = App::start("bench_server", None, &env);
    assert_eq!(
        app.get("/counter", Some(&cookie)).body,
        "21",
        "every write before SIGTERM survives the restart"
    );
    assert!(status.success(), "SIGTERM is a graceful stop: {status}");
}

#[cfg(feature = "redis")]
fn redis_demo(server: &redis_server::RedisServer, timeout_ms: u64) -> App {
    let config = format!(
        "{}?prefix={}&timeout_ms={timeout_ms}",
        server.url(),
        redis_server::unique_prefix("process")
    );
    App::demo(&[
        ("SESSION_PROVIDER", "redis".to_owned()),
        ("SESSION_PROVIDER_CONFIG", config),
    ])
}

#[cfg(feature = "redis")]
#[test]
fn r1_redis_stopped_mid_run_is_a_503_with_the_cookie_kept_then_recovers() {
    let mut server = redis_server::RedisServer::start();
    let demo = redis_demo(&server, 500);
    let first = demo.get("/", None);
    assert_eq!(first.status, 200);
    let cookie = first.session.expect("a session");
    assert_eq!(visits(&demo.get("/", Some(&cookie)).body), 2);

    server.stop();
    let down = demo.get("/", Some(&cookie));
    assert_eq!(down.status, 503, "backend unreachable on load");
    assert!(
        down.session.is_none(),
        "the cookie is kept: no new id while redis is down"
    );
    assert!(
        !down.body.contains("redis") && !down.body.contains("127.0.0.1"),
        "opaque: {}",
        down.body
    );
    assert_eq!(
        demo.get("/static/style.css", Some(&cookie)).status,
        200,
        "routes without sessions still work"
    );

    server.restart(); // an empty redis (no persistence): the app recovers with a fresh session
    let back = demo.get_until_ok("/", &cookie);
    assert_eq!(back.status, 200, "the app recovers when redis returns");
    let fresh = back
        .session
        .expect("the lost session is replaced by a new id");
    assert_eq!(visits(&demo.get("/", Some(&fresh)).body), 2);
}

#[cfg(feature = "redis")]
#[test]
fn r5_client_pause_makes_session_requests_fail_within_the_timeout() {
    let server = redis_server::RedisServer::start();
    let demo = redis_demo(&server, 300);
    let cookie = demo.get("/", None).session.expect("a session");
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // Redis answers nobody for 6 s; the provider's timeout is 0.3 s.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(6_000)
        .arg("ALL")
        .query(&mut admin)
        .unwrap();
    let paused = std::time::Instant::now();

    let r = demo.get("/", Some(&cookie));
    let took = paused.elapsed();
    assert_eq!(r.status, 503);
    assert!(
        took < Duration::from_secs(4),
        "a paused redis held the request for {took:?}: the timeout did not bound it"
    );
    let started = std::time::Instant::now();
    assert_eq!(demo.get("/static/style.css", Some(&cookie)).status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a route without sessions waited on redis"
    );

    // Once the pause ends, the same session answers again.
    let back = demo.get_until_ok("/", &cookie);
    assert_eq!(
        visits(&back.body),
        2,
        "the session is intact after the pause"
    );
}
