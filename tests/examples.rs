//! The README's example apps as a visitor uses them: the demo keeps a login across a restart,
//! and the counter serves. Each runs as a child process (the binaries `cargo test` and
//! `scripts/test` build next to this test) in a temporary working directory, so the
//! relative data directory it uses is the test's own.
//!
//! - A child learns its port from `PORT` and counts as up once it prints its address, which
//!   the examples do only after binding: the server a test talks to is surely its own. If
//!   another process took the port meanwhile, the child fails to bind and exits, and the test
//!   starts it again on another port.
//! - `SESSION_*` variables of the developer's shell are removed from the child's environment.
//! - Every wait is bounded by 30 s: a debug build starting on a loaded 2-core machine takes
//!   well under a second, so only a hung child reaches it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a child may take to start, answer or stop (see the module documentation).
const PATIENCE: Duration = Duration::from_secs(30);

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

/// A port nobody listens on at this instant (the child may still lose it: see [`App::start`]).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An example app running as a child process; killed (SIGKILL) when dropped.
struct App {
    child: Child,
    port: u16,
    /// The child's stdout, line by line; disconnected once the child has exited.
    stdout: Receiver<String>,
}

impl App {
    /// Starts the example `name` in `dir` and waits until it listens.
    fn start(name: &str, dir: &Path) -> App {
        for _ in 0..5 {
            if let Some(app) = App::try_start(name, dir) {
                return app;
            }
        }
        panic!("{name} could not bind a free port in 5 attempts");
    }

    /// One attempt: `None` if the child exited before it listened (its port was taken).
    fn try_start(name: &str, dir: &Path) -> Option<App> {
        let port = free_port();
        let mut command = Command::new(example_binary(name));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SESSION_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (lines, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = App {
            child,
            port,
            stdout,
        };
        let address = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match app
                .stdout
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(&address) => return Some(app),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = app.child.wait().unwrap();
                    eprintln!("{name} exited at startup ({status}); trying another port");
                    return None;
                }
                Err(RecvTimeoutError::Timeout) => panic!("{name} did not listen within 30 s"),
            }
        }
    }

    fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        request(self.port, "GET", path, cookie, "")
    }

    fn post_form(&self, path: &str, cookie: Option<&str>, form: &str) -> Reply {
        request(self.port, "POST", path, cookie, form)
    }

    /// Sends SIGTERM and waits for the process to exit; its exit status.
    #[cfg(unix)]
    fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        // Its stdout closes when it exits.
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .stdout
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => return self.child.wait().unwrap(),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the app did not exit within 30 s of SIGTERM")
                }
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP exchange.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// The value of a `Set-Cookie: sessioner=...`, if one came.
    session: Option<String>,
    body: String,
}

/// One request over a fresh connection; `form` (urlencoded) is the body of a `POST`.
fn request(port: u16, method: &str, path: &str, cookie: Option<&str>, form: &str) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: sessioner={c}\r\n"))
        .unwrap_or_default();
    let body = if method == "POST" {
        format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        )
    } else {
        String::new()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}{body}Connection: close\r\n\r\n{form}"
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
        .find(|v| !v.is_empty());
    Reply {
        status,
        session,
        body: body.to_owned(),
    }
}

/// README: the demo "keeps its sessions in an embedded store under `data/demo-sessions`, so
/// a restart keeps you logged in" (a graceful stop, SIGTERM, as a service manager sends).
#[cfg(unix)]
#[test]
fn the_demo_keeps_a_login_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = App::start("demo", dir.path());
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

    let demo = App::start("demo", dir.path());
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
    let counter = App::start("counter", dir.path());
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
