//! A private `redis-server` for one test: its own free port on 127.0.0.1 (never 6379) or a
//! unix socket, no persistence, a temporary directory, killed when dropped. It can be
//! stopped and started again on the same address to test outages.
//!
//! - A server counts as started only once it answers `CONFIG GET dir` with its own temporary
//!   directory: a port taken meanwhile by another process (another test's redis included)
//!   is never mistaken for ours; the start is retried on a new port.
//! - A missing `redis-server` binary fails the test (install it with
//!   `apt-get install redis-server`); it is never skipped silently.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const STARTUP: Duration = Duration::from_secs(10);
/// How many ports a start tries before giving up.
const ATTEMPTS: usize = 10;

/// Where a server listens.
#[derive(Clone, Debug, PartialEq)]
enum Listen {
    Port(u16),
    Socket(PathBuf),
}

/// A running (or stopped) private redis-server.
pub struct RedisServer {
    child: Option<Child>,
    listen: Listen,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers as itself.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with extra `redis-server` arguments (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[String]) -> Self {
        Self::try_start_with(extra)
            .expect("could not start redis-server on a free port (see its log above)")
    }

    /// [`start_with`](Self::start_with), or `None` after [`ATTEMPTS`] ports failed (e.g.
    /// an extra port given in `extra` is taken: the caller picks another and retries).
    pub fn try_start_with(extra: &[String]) -> Option<Self> {
        (0..ATTEMPTS).find_map(|_| Self::try_start_on(free_port(), extra))
    }

    /// One attempt on `port`: `None` if the server exits (the port is taken) or another
    /// server answers there.
    pub fn try_start_on(port: u16, extra: &[String]) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let listen = Listen::Port(port);
        let child = run(&listen, dir.path(), extra)?;
        Some(RedisServer {
            child: Some(child),
            listen,
            dir,
            extra: extra.to_vec(),
        })
    }

    /// A server listening only on a unix socket in its temporary directory (no TCP port).
    pub fn start_unix(extra: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let listen = Listen::Socket(dir.path().join("redis.sock"));
        let child = run(&listen, dir.path(), extra).expect("redis-server on a unix socket");
        RedisServer {
            child: Some(child),
            listen,
            dir,
            extra: extra.to_vec(),
        }
    }

    /// The loopback port it listens on.
    ///
    /// # Panics
    /// For a server on a unix socket.
    pub fn port(&self) -> u16 {
        match &self.listen {
            Listen::Port(port) => *port,
            Listen::Socket(path) => panic!("the server listens on {}", path.display()),
        }
    }

    /// The unix socket it listens on, if it does.
    pub fn socket(&self) -> Option<&Path> {
        match &self.listen {
            Listen::Socket(path) => Some(path),
            Listen::Port(_) => None,
        }
    }

    /// `redis://127.0.0.1:<port>/0`, or `unix://<socket>` for a server on a socket.
    pub fn url(&self) -> String {
        url(&self.listen)
    }

    /// A plain synchronous connection, for looking at (and planting) keys behind a provider.
    pub fn admin(&self) -> redis::Connection {
        connect(&self.listen).expect("a connection to the test's redis-server")
    }

    /// Kills the server (all data is lost unless `extra` turned persistence on).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same address (and with the same directory). Panics if
    /// the address stays taken, by another process or by a server that is not this one.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + STARTUP;
        while self.child.is_none() {
            self.child = run(&self.listen, self.dir.path(), &self.extra);
            assert!(
                self.child.is_some() || Instant::now() < deadline,
                "redis-server did not come back on {:?}",
                self.listen
            );
            if self.child.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
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
/// and kills the server; when the server exits by itself (a taken port), so does `sh`.
pub fn shared_url() -> String {
    static SHARED: OnceLock<(Listen, Mutex<ChildStdin>, TempDir)> = OnceLock::new();
    let (listen, _, _) = SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        for _ in 0..ATTEMPTS {
            let listen = Listen::Port(free_port());
            let mut command = Command::new("sh");
            command
                .args(["-c", WATCHDOG, "sh"])
                .args(server_args(&listen, dir.path(), &[]))
                .stdin(Stdio::piped());
            if let Some(mut child) = spawn(&listen, dir.path(), command) {
                let stdin = child.stdin.take().expect("the watchdog's pipe");
                return (listen, Mutex::new(stdin), dir);
            }
        }
        panic!("could not start the shared redis-server on a free port");
    });
    url(listen)
}

/// Runs `redis-server "$@"` until stdin reaches end-of-file (then kills it) or it exits.
/// (An asynchronous list reads /dev/null unless redirected, hence fd 3.)
const WATCHDOG: &str = r#"exec 3<&0
redis-server "$@" </dev/null & server=$!
{ read _ <&3; kill $server; } & reader=$!
wait $server
kill $reader 2>/dev/null"#;

/// A prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test:{name}:{}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port other than 6379 that was free a moment ago. Another process may take it
/// before redis binds it: starts retry, and check whom they reach (see the module docs).
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

fn url(listen: &Listen) -> String {
    match listen {
        Listen::Port(port) => format!("redis://127.0.0.1:{port}/0"),
        Listen::Socket(path) => format!("unix://{}", path.display()),
    }
}

fn connect(listen: &Listen) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url(listen))?;
    let connection = client.get_connection_with_timeout(Duration::from_millis(500))?;
    connection.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(connection)
}

/// Whether the server at `listen` is the one whose directory is `dir`: a fresh server of ours
/// answers `CONFIG GET dir` with it; anything else (nothing listening, another test's server,
/// a server asking for a password, not redis at all) is not ours.
fn is_ours(listen: &Listen, dir: &Path) -> bool {
    let Ok(mut connection) = connect(listen) else {
        return false;
    };
    let Ok((_, reported)) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query::<(String, String)>(&mut connection)
    else {
        return false;
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    canonical(Path::new(&reported)) == canonical(dir)
}

/// The arguments of a private redis-server on `listen`, in and logging into `dir`.
fn server_args(listen: &Listen, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = match listen {
        Listen::Port(port) => {
            assert_ne!(*port, 6379, "never touch the shared redis on 6379");
            vec![
                "--bind".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
            ]
        }
        Listen::Socket(path) => vec![
            "--port".into(),
            "0".into(),
            "--unixsocket".into(),
            path.display().to_string(),
            "--unixsocketperm".into(),
            "700".into(),
        ],
    };
    args.extend(
        ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            .into_iter()
            .map(String::from),
    );
    args.extend(["--dir".into(), dir.display().to_string()]);
    args.extend([
        "--logfile".into(),
        dir.join("redis.log").display().to_string(),
    ]);
    args.extend(extra.iter().cloned());
    args
}

/// Runs redis-server on `listen`; `None` if it exits or does not answer in time.
fn run(listen: &Listen, dir: &Path, extra: &[String]) -> Option<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(server_args(listen, dir, extra))
        .stdin(Stdio::null());
    spawn(listen, dir, command)
}

/// Spawns `command` (a redis-server on `listen`, in `dir`) and waits until it answers as
/// itself; `None` if it exits or does not answer in time.
fn spawn(listen: &Listen, dir: &Path, mut command: Command) -> Option<Child> {
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
            eprintln!("redis-server on {listen:?} exited:\n{log}");
            return None;
        }
        if is_ours(listen, dir) {
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
