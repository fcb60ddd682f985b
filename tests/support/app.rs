//! An example app (built next to the test binary by `cargo build --all-features --examples`,
//! as `scripts/test` does) run as a child process, and plain HTTP/1.1 to it.
//!
//! - A child learns its port from `PORT` and counts as up once it prints its address, which
//!   the examples do only after binding: the server a test talks to is surely its own. If
//!   another process took the port meanwhile, the child fails to bind and exits, and the
//!   test starts it again on another port.
//! - The developer's `SESSION_*` and `SESSIONER_*` variables never reach the child: only the
//!   test's own settings do.
//! - Every wait is bounded by [`PATIENCE`]: a debug build starting on a loaded 2-core machine
//!   takes well under a second, so only a hung child reaches it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a child may take to start, answer or stop (see the module documentation).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The example `name` next to this test binary.
pub fn example_binary(name: &str) -> PathBuf {
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
pub struct App {
    child: Child,
    pub port: u16,
    /// The child's stdout, line by line; disconnected once the child has exited.
    stdout: Receiver<String>,
}

impl App {
    /// The demo app with `env`, in the test's working directory.
    pub fn demo(env: &[(&str, String)]) -> App {
        App::start("demo", None, env)
    }

    /// Starts the example `name` (in `dir` if given) with `env`, and waits until it listens.
    pub fn start(name: &str, dir: Option<&Path>, env: &[(&str, String)]) -> App {
        for _ in 0..5 {
            if let Some(app) = App::try_start(name, dir, env) {
                return app;
            }
        }
        panic!("{name} could not bind a free port in 5 attempts");
    }

    /// One attempt: `None` if the child exited before it listened (its port was taken).
    fn try_start(name: &str, dir: Option<&Path>, env: &[(&str, String)]) -> Option<App> {
        let port = free_port();
        let mut command = Command::new(example_binary(name));
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("SESSION_") || k.starts_with("SESSIONER_") {
                command.env_remove(key);
            }
        }
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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

    pub fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        request(self.port, "GET", path, cookie, "").unwrap()
    }

    pub fn post_form(&self, path: &str, cookie: Option<&str>, form: &str) -> Reply {
        request(self.port, "POST", path, cookie, form).unwrap()
    }

    /// GETs `path` every 100 ms until it answers 200, for at most [`PATIENCE`]; the last reply.
    pub fn get_until_ok(&self, path: &str, cookie: &str) -> Reply {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = self.get(path, Some(cookie));
            if r.status == 200 || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits, at most [`PATIENCE`], for the process to exit; its exit status.
    #[cfg(unix)]
    pub fn terminate(&mut self) -> std::process::ExitStatus {
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
        self.kill();
    }
}

/// One HTTP exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The value of a `Set-Cookie: sessioner=...`, if one came.
    pub session: Option<String>,
    pub body: String,
}

/// One request over a fresh connection; `form` (urlencoded) is the body of a `POST`. An error
/// if the server cannot be reached or dies under the request.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: &str,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(PATIENCE))?;
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
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
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
    Ok(Reply {
        status,
        session,
        body: body.to_owned(),
    })
}
