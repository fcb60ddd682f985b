//! What needs a process boundary (SECURITY.md rows, a graceful stop): an example app runs as
//! a child process (built by `cargo build --all-features --examples`, as `scripts/test` does)
//! on a free loopback port, and the test talks plain HTTP/1.1 to it, kills it, stops it with
//! SIGTERM, or stops its redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sessioner::Record;

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

/// The example `name` next to this test binary.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --all-features --examples` (scripts/test does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An example app as a child process, killed (SIGKILL) when dropped.
struct App {
    child: Child,
    port: u16,
}

impl App {
    /// The demo app.
    fn demo(env: &[(&str, String)]) -> App {
        App::start("demo", env)
    }

    /// The example `name`, once it listens.
    fn start(name: &str, env: &[(&str, String)]) -> App {
        let port = free_port();
        let child = Command::new(example_binary(name))
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut app = App { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                app.child.try_wait().unwrap().is_none(),
                "{name} exited at startup"
            );
            assert!(
                Instant::now() < deadline,
                "{name} did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        app
    }

    /// GETs `path` every 100 ms until it answers 200, for at most 30 s; the last reply.
    fn get_until_ok(&self, path: &str, cookie: &str) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get(path, Some(cookie));
            if r.status == 200 || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        get(self.port, path, cookie)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits, at most 30 s, for the process to exit; its exit status.
    #[cfg(unix)]
    fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the app did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    session: Option<String>,
    body: String,
}

/// One `GET` over a fresh connection.
fn get(port: u16, path: &str, cookie: Option<&str>) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: sessioner={c}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let session = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.trim().strip_prefix("sessioner="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .next();
    Reply {
        status,
        session,
        body: body.to_owned(),
    }
}

fn visits(body: &str) -> u64 {
    let marker = r#"<strong id="visits">"#;
    let start = body.find(marker).expect("a home page") + marker.len();
    body[start..].split('<').next().unwrap().parse().unwrap()
}

fn records(root: &Path) -> Vec<PathBuf> {
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

#[test]
fn r4_kill_9_during_a_write_loop_leaves_every_record_decodable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let env = [
        ("SESSION_PROVIDER", "file".to_owned()),
        (
            "SESSION_PROVIDER_CONFIG",
            root.to_string_lossy().into_owned(),
        ),
    ];
    let mut demo = App::demo(&env);
    let cookies: Vec<String> = (0..20)
        .map(|_| demo.get("/", None).session.expect("a session"))
        .collect();

    // Four writers rewrite those records as fast as they can until the server dies under them.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, writes, cookies, port) =
                (stop.clone(), writes.clone(), cookies.clone(), demo.port);
            std::thread::spawn(move || {
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    let ok = std::panic::catch_unwind(|| {
                        get(port, "/", Some(&cookies[i % cookies.len()])).status == 200
                    });
                    if ok.unwrap_or(false) {
                        writes.fetch_add(1, Ordering::SeqCst);
                    }
                    i += 4;
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writes.load(Ordering::SeqCst) < 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    demo.kill(); // SIGKILL, mid-write
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    assert!(
        writes.load(Ordering::SeqCst) >= 400,
        "the write loop never got going"
    );

    let files = records(&root);
    assert_eq!(files.len(), cookies.len());
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        Record::decode(&bytes).unwrap_or_else(|e| panic!("{} is torn: {e}", file.display()));
    }
    // And the sessions live on after a restart.
    let demo = App::demo(&env);
    for cookie in &cookies {
        let r = demo.get("/", Some(cookie));
        assert_eq!(r.status, 200);
        assert!(r.session.is_none(), "the session was kept, not replaced");
        assert!(visits(&r.body) >= 2);
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
    let mut app = App::start("bench_server", &env);
    let first = app.get("/counter", None);
    assert_eq!(first.body, "1");
    let cookie = first.session.expect("a session");
    for n in 2..=20 {
        assert_eq!(app.get("/counter", Some(&cookie)).body, n.to_string());
    }
    let status = app.terminate();

    let app = App::start("bench_server", &env);
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
    let paused = Instant::now();

    let r = demo.get("/", Some(&cookie));
    let took = paused.elapsed();
    assert_eq!(r.status, 503);
    assert!(
        took < Duration::from_secs(4),
        "a paused redis held the request for {took:?}: the timeout did not bound it"
    );
    let started = Instant::now();
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
