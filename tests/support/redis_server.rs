//! A private `redis-server` for one test: its own free port on 127.0.0.1 (never 6379), no
//! persistence, a temporary directory, killed when dropped. It can be stopped and started
//! again on the same port to test outages.
//!
//! A missing `redis-server` binary fails the test (install it with
//! `apt-get install redis-server`); it is never skipped silently.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const STARTUP: Duration = Duration::from_secs(10);

/// A running (or stopped) private redis-server.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with extra `redis-server` arguments (e.g. TLS settings).
    pub fn start_with(extra: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        for _ in 0..10 {
            let port = free_port();
            if let Some(child) = run(port, dir.path(), extra) {
                return RedisServer {
                    child: Some(child),
                    port,
                    dir,
                    extra: extra.to_vec(),
                };
            }
        }
        panic!("could not start redis-server on a free port (see its log above)");
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (all data is lost: there is no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + STARTUP;
        while self.child.is_none() {
            self.child = run(self.port, self.dir.path(), &self.extra);
            if self.child.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not come back on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The URL of one server shared by every test of this test binary that needs only a redis
/// (each under its own [`unique_prefix`]); tests that stop or pause their server start their
/// own. The server is started under `sh`, which holds the read end of a pipe whose write end
/// only this process holds: when the process ends, however it ends, `sh` reads end-of-file
/// and kills the server.
pub fn shared_url() -> String {
    static SHARED: OnceLock<(u16, Mutex<ChildStdin>, TempDir)> = OnceLock::new();
    let (port, _, _) = SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        for _ in 0..10 {
            let port = free_port();
            let mut command = Command::new("sh");
            command
                .args(["-c", r#"redis-server "$@" & read _; kill $!"#, "sh"])
                .args(server_args(port, dir.path(), &[]))
                .stdin(Stdio::piped());
            if let Some(mut child) = spawn(port, dir.path(), command) {
                let stdin = child.stdin.take().expect("the watchdog's pipe");
                return (port, Mutex::new(stdin), dir);
            }
        }
        panic!("could not start the shared redis-server on a free port");
    });
    format!("redis://127.0.0.1:{port}/0")
}

/// A prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test:{name}:{}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free loopback port other than 6379.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        if port != 6379 {
            return port;
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// The arguments of a private redis-server on `port`, logging into `dir`.
fn server_args(port: u16, dir: &Path, extra: &[String]) -> Vec<String> {
    assert_ne!(port, 6379, "never touch the shared redis on 6379");
    let mut args: Vec<String> = ["--bind", "127.0.0.1", "--port", &port.to_string()]
        .into_iter()
        .chain(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .map(String::from)
        .collect();
    args.extend(["--dir".into(), dir.display().to_string()]);
    args.extend([
        "--logfile".into(),
        dir.join("redis.log").display().to_string(),
    ]);
    args.extend(extra.iter().cloned());
    args
}

/// Runs redis-server on `port`; `None` if it exits or does not answer in time.
fn run(port: u16, dir: &Path, extra: &[String]) -> Option<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(server_args(port, dir, extra))
        .stdin(Stdio::null());
    spawn(port, dir, command)
}

/// Spawns `command` (a redis-server on `port`, logging into `dir`) and waits until it answers
/// `PING`; `None` if it exits or does not answer in time.
fn spawn(port: u16, dir: &Path, mut command: Command) -> Option<Child> {
    let log = dir.join("redis.log");
    let spawned = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`redis-server` is not installed; the redis tests need it: \
             apt-get install redis-server"
        ),
        Err(e) => panic!("cannot run redis-server: {e}"),
    };
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            // Exited: most likely the port was taken meanwhile.
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("redis-server on port {port} exited:\n{log}");
            return None;
        }
        if ping(port) {
            return Some(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
