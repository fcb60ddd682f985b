//! A private `memcached` for one test: its own free port on 127.0.0.1 (never 11211), TCP
//! only (`-U 0`), killed when dropped. It can be stopped and started again on the same port,
//! or frozen (`SIGSTOP`) to test timeouts.
//!
//! A missing `memcached` binary fails the test (install it with `apt-get install
//! memcached`); it is never skipped silently.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const STARTUP: Duration = Duration::from_secs(10);

/// A running (or stopped) private memcached.
pub struct MemcachedServer {
    child: Option<Child>,
    port: u16,
}

impl MemcachedServer {
    /// Starts a server on a free loopback port and waits until it answers `version`.
    pub fn start() -> Self {
        for _ in 0..10 {
            let port = free_port();
            if let Some(child) = run(port) {
                return MemcachedServer {
                    child: Some(child),
                    port,
                };
            }
        }
        panic!("could not start memcached on a free port");
    }

    /// `127.0.0.1:<port>`, a provider config.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is lost).
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
            self.child = run(self.port);
            assert!(
                self.child.is_some() || Instant::now() < deadline,
                "memcached did not come back on port {}",
                self.port
            );
            if self.child.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Freezes (`true`) or thaws (`false`) the process: connections stay open, nothing answers.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("a running memcached").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.freeze(false);
        }
        self.stop();
    }
}

/// The address of one memcached shared by every test of this test binary that needs only a
/// memcached (each under its own [`unique_prefix`]); tests that stop or freeze their server
/// start their own. It runs under `sh`, which holds the read end of a pipe whose write end
/// only this process holds: when the process ends, however it ends, `sh` reads end-of-file
/// and kills the server.
pub fn shared_addr() -> String {
    static SHARED: OnceLock<(u16, Mutex<ChildStdin>)> = OnceLock::new();
    let (port, _) = SHARED.get_or_init(|| {
        require_binary();
        for _ in 0..10 {
            let port = free_port();
            let mut command = Command::new("sh");
            command
                .args(["-c", r#"memcached "$@" & read _; kill $!"#, "sh"])
                .args(server_args(port))
                .stdin(Stdio::piped());
            if let Some(mut child) = spawn(port, command) {
                let stdin = child.stdin.take().expect("the watchdog's pipe");
                return (port, Mutex::new(stdin));
            }
        }
        panic!("could not start the shared memcached on a free port");
    });
    format!("127.0.0.1:{port}")
}

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test:{name}:{}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free loopback port other than 11211.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        if port != 11211 {
            return port;
        }
    }
}

/// Sends `command` to the memcached at `addr` and returns its reply up to `end` (included).
pub fn admin(addr: &str, command: &str, end: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(command.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    while !reply.ends_with(end.as_bytes()) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed the connection");
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"version\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).is_ok() && &reply == b"VERSION "
}

/// The arguments of a private memcached on `port` (`-u root`: memcached refuses to run as
/// root without it, and ignores it otherwise).
fn server_args(port: u16) -> Vec<String> {
    assert_ne!(port, 11211, "never touch a shared memcached on 11211");
    ["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"]
        .into_iter()
        .chain(["-m", "64", "-t", "2", "-u", "root"])
        .map(String::from)
        .collect()
}

/// Fails the test, with the install command, when there is no `memcached` to run.
fn require_binary() {
    let found = Command::new("memcached")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = found
        && e.kind() == std::io::ErrorKind::NotFound
    {
        panic!(
            "`memcached` is not installed; the memcache tests need it: apt-get install memcached"
        );
    }
}

fn run(port: u16) -> Option<Child> {
    let mut command = Command::new("memcached");
    command.args(server_args(port)).stdin(Stdio::null());
    spawn(port, command)
}

/// Spawns `command` (a memcached on `port`) and waits until it answers; `None` if it exits
/// (most likely the port was taken meanwhile) or does not answer in time.
fn spawn(port: u16, mut command: Command) -> Option<Child> {
    require_binary();
    let spawned = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    let mut child = spawned.unwrap_or_else(|e| panic!("cannot run memcached: {e}"));
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            eprintln!("memcached on port {port} exited");
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

/// Every item the memcached at `addr` lists (`lru_crawler metadump all`, best effort: an
/// item moved while the crawler runs may be missed) and every key of `also`, each with its
/// value: (key, value) pairs, keys URL-decoded.
pub fn dump(addr: &str, also: &[String]) -> Vec<(String, Vec<u8>)> {
    let listing = admin(addr, "lru_crawler metadump all\r\n", "END\r\n");
    let mut keys: Vec<String> = listing
        .lines()
        .filter_map(|line| line.strip_prefix("key="))
        .map(|rest| url_decode(rest.split(' ').next().unwrap()))
        .chain(also.iter().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        stream
            .write_all(format!("get {key}\r\n").as_bytes())
            .unwrap();
        let header = read_line(&mut stream);
        if header == "END" {
            continue; // expired or deleted since the listing
        }
        let len: usize = header.rsplit(' ').next().unwrap().parse().unwrap();
        let mut value = vec![0; len + 2];
        stream.read_exact(&mut value).unwrap();
        value.truncate(len);
        assert_eq!(read_line(&mut stream), "END");
        out.push((key, value));
    }
    out
}

fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).unwrap()
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}
