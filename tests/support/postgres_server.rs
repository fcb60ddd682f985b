//! The PostgreSQL server and database one test binary uses.
//!
//! - The server: `SESSIONER_TEST_POSTGRES_URL` if set; else the standard local one
//!   (127.0.0.1:5432, user `postgres`, no password) if it answers; else a private server from
//!   Debian's packages (`initdb` + `pg_ctl`, as the `postgres` user when run as root) on a free
//!   port in a temporary directory, stopped when the test process ends.
//!   `SESSIONER_TEST_POSTGRES_PRIVATE=1` skips the local one, to exercise the private path.
//! - The database: one per test binary, `sessioner_test_<unix time>_<pid>_<random>`, dropped
//!   when the process ends (a `sh` watchdog reads a pipe only this process holds); databases
//!   of this shape older than a day (left by a killed run) are dropped at start.
//! - Tests share it, each with tables of its own ([`unique_table`]).
//! - Admin work goes through `psql`. A server that cannot be found or started fails the
//!   test with the fix in its message; it is never skipped.

// The watchdogs are never waited for: they outlive every test, by design.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::zombie_processes
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FIX: &str = "the postgres tests need a PostgreSQL server: set SESSIONER_TEST_POSTGRES_URL, \
                   run one on 127.0.0.1:5432 (user postgres, trust auth), or install Debian's \
                   `postgresql` package (scripts/test does) so the tests can start a private one";

/// Where the test database lives.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl Target {
    /// `postgres://user:password@host:port/dbname`.
    pub fn url(&self) -> String {
        let enc = |s: &str| {
            url::form_urlencoded::byte_serialize(s.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        };
        format!(
            "postgres://{}:{}@{}:{}/{}",
            enc(&self.user),
            enc(&self.password),
            self.host,
            self.port,
            self.dbname
        )
    }

    /// lib/pq's form: `user=.. password='..' dbname=.. sslmode=disable host=.. port=..`.
    pub fn keywords(&self) -> String {
        let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "user={} password={} dbname={} sslmode=disable host={} port={}",
            quote(&self.user),
            quote(&self.password),
            self.dbname,
            self.host,
            self.port
        )
    }

    /// Runs `sql` with `psql` on this database; its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.url(), sql).unwrap_or_else(|e| panic!("psql failed: {e}\n{sql}"))
    }
}

/// A table name no other test uses.
pub fn unique_table(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("t_{name}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The test binary's own database on the server chosen as the module docs say.
pub fn shared() -> &'static Target {
    static SHARED: OnceLock<(Target, Mutex<ChildStdin>)> = OnceLock::new();
    let (target, _) = SHARED.get_or_init(|| {
        let server = server();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        drop_stale(&server, now);
        let dbname = format!(
            "sessioner_test_{now}_{}_{}",
            std::process::id(),
            random()
        );
        server.psql(&format!("CREATE DATABASE {dbname}"));
        let mut watchdog = Command::new("sh")
            .args([
                "-c",
                r#"read _; psql -X -q -d "$1" -c "DROP DATABASE IF EXISTS $2 WITH (FORCE)" >/dev/null 2>&1"#,
                "sh",
                &server.url(),
                &dbname,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh for the database watchdog");
        let stdin = watchdog.stdin.take().unwrap();
        (Target { dbname, ..server }, Mutex::new(stdin))
    });
    target
}

fn drop_stale(server: &Target, now: u64) {
    let names =
        server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'sessioner\\_test\\_%'");
    for name in names.lines() {
        let stamp = name.split('_').nth(2).and_then(|s| s.parse::<u64>().ok());
        if stamp.is_some_and(|t| t + 86_400 < now) {
            let _ = psql(
                &server.url(),
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| format!("cannot run psql ({e}); {FIX}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The server, with its admin database in `dbname`.
fn server() -> Target {
    if let Ok(url) = std::env::var("SESSIONER_TEST_POSTGRES_URL") {
        let u = url::Url::parse(&url).expect("SESSIONER_TEST_POSTGRES_URL is not a URL");
        let target = Target {
            host: u.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: u.port().unwrap_or(5432),
            user: u.username().to_owned(),
            password: u.password().unwrap_or_default().to_owned(),
            dbname: u.path().trim_start_matches('/').to_owned(),
        };
        if let Err(e) = psql(&target.url(), "SELECT 1") {
            panic!("SESSIONER_TEST_POSTGRES_URL does not answer: {e}");
        }
        return target;
    }
    let local = Target {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: String::new(),
        dbname: "postgres".into(),
    };
    if std::env::var_os("SESSIONER_TEST_POSTGRES_PRIVATE").is_none()
        && psql(&local.url(), "SELECT 1").is_ok()
    {
        return local;
    }
    private()
}

/// A PostgreSQL binary from Debian's packages (`/usr/lib/postgresql/<version>/bin`) or PATH.
fn binary(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// Starts a private server under a watchdog that stops it when this process ends.
fn private() -> Target {
    static WATCHDOG: OnceLock<Mutex<ChildStdin>> = OnceLock::new();
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("sessioner-pg-")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    let data = dir.join("data");
    let as_postgres = |program: PathBuf| {
        let mut c = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        c.stdin(Stdio::null());
        c
    };
    if root {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot hand {} to the postgres user; {FIX}",
            dir.display()
        );
    }
    let init = as_postgres(binary("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .output();
    match init {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "initdb failed: {}; {FIX}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run initdb ({e}); {FIX}"),
    }
    let port = free_port();
    let pg_ctl = binary("pg_ctl");
    let prefix = if root { "runuser -u postgres -- " } else { "" };
    let script = format!(
        r#"{prefix}"$1" -D "$2" -l "$2/log" -w -o "-p $3 -k $2 -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null 2>&1 || exit 1
read _; {prefix}"$1" -D "$2" stop -m immediate >/dev/null 2>&1; rm -rf "$4""#
    );
    let mut child = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(&pg_ctl)
        .arg(&data)
        .arg(port.to_string())
        .arg(&dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh for the postgres watchdog");
    let stdin = child.stdin.take().unwrap();
    let _ = WATCHDOG.set(Mutex::new(stdin));
    let target = Target {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: String::new(),
        dbname: "postgres".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if psql(&target.url(), "SELECT 1").is_ok() {
            return target;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(data.join("log")).unwrap_or_default();
            panic!("the private PostgreSQL did not start ({status}):\n{log}\n{FIX}");
        }
        assert!(
            Instant::now() < deadline,
            "the private PostgreSQL did not answer in 60 s; {FIX}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether this process runs as root (PostgreSQL refuses to): `id -u` says.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A random number (std's per-process hash keys).
fn random() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
