//! The MySQL / MariaDB server and database one test binary uses.
//!
//! - The server: `SESSIONER_TEST_MYSQL_URL` (`mysql://user:password@host:port/db`) if set;
//!   else the standard local one (127.0.0.1:3306, user `root`, no password) if it answers;
//!   else a private MariaDB from Debian's packages (`mariadb-install-db` + `mariadbd`) on a
//!   free port in a temporary directory, killed when the test process ends.
//!   `SESSIONER_TEST_MYSQL_PRIVATE=1` skips the local one, to exercise the private path.
//! - The database: one per test binary, `sessioner_test_<unix time>_<pid>_<random>`, dropped
//!   when the process ends (a `sh` watchdog reads a pipe only this process holds); databases
//!   of this shape older than a day (left by a killed run) are dropped at start.
//! - Tests share it, each with tables of its own ([`unique_table`]).
//! - Admin work goes through the `mariadb` client. A server that cannot be found or started fails the
//!   test with the fix in its message; it is never skipped.

// The watchdogs are never waited for: they outlive every test, by design.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::zombie_processes
)]

use std::net::TcpListener;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FIX: &str = "the mysql tests need a MySQL or MariaDB server: set SESSIONER_TEST_MYSQL_URL, \
                   run one on 127.0.0.1:3306 (user root, no password), or install Debian's \
                   `mariadb-server` package (scripts/test does) so the tests can start a private one";

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
    /// `mysql://user:password@host:port/dbname`.
    pub fn url(&self) -> String {
        let enc = |s: &str| {
            url::form_urlencoded::byte_serialize(s.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        };
        format!(
            "mysql://{}:{}@{}:{}/{}",
            enc(&self.user),
            enc(&self.password),
            self.host,
            self.port,
            self.dbname
        )
    }

    /// The Go driver's DSN: `user:password@tcp(host:port)/dbname`.
    pub fn dsn(&self) -> String {
        format!(
            "{}:{}@tcp({}:{})/{}",
            self.user, self.password, self.host, self.port, self.dbname
        )
    }

    /// Runs `sql` with the `mariadb` client on this database; its output (tab-separated, no
    /// column names).
    pub fn sql(&self, sql: &str) -> String {
        client(self, &self.dbname, sql).unwrap_or_else(|e| panic!("mariadb failed: {e}\n{sql}"))
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
        let dbname = format!("sessioner_test_{now}_{}_{}", std::process::id(), random());
        server.sql(&format!("CREATE DATABASE {dbname}"));
        let mut watchdog = Command::new("sh")
            .args([
                "-c",
                r#"read _; MYSQL_PWD="$4" mariadb -h "$1" -P "$2" -u "$3" -e "DROP DATABASE IF EXISTS $5" >/dev/null 2>&1"#,
                "sh",
                &server.host,
                &server.port.to_string(),
                &server.user,
                &server.password,
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
    let names = server.sql("SHOW DATABASES LIKE 'sessioner\\_test\\_%'");
    for name in names.lines() {
        let stamp = name.split('_').nth(2).and_then(|s| s.parse::<u64>().ok());
        if stamp.is_some_and(|t| t + 86_400 < now) {
            let _ = client(server, "", &format!("DROP DATABASE IF EXISTS {name}"));
        }
    }
}

fn client(target: &Target, dbname: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args(["-h", &target.host, "-P", &target.port.to_string()])
        .args(["-u", &target.user, "--connect-timeout=5", "-N", "-B"])
        .args(if dbname.is_empty() {
            vec![]
        } else {
            vec![dbname]
        })
        .args(["-e", sql])
        .env("MYSQL_PWD", &target.password)
        .output()
        .map_err(|e| format!("cannot run the mariadb client ({e}); {FIX}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The server, with an existing database (or none) in `dbname`.
fn server() -> Target {
    if let Ok(url) = std::env::var("SESSIONER_TEST_MYSQL_URL") {
        let u = url::Url::parse(&url).expect("SESSIONER_TEST_MYSQL_URL is not a URL");
        let target = Target {
            host: u.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: u.port().unwrap_or(3306),
            user: u.username().to_owned(),
            password: u.password().unwrap_or_default().to_owned(),
            dbname: u.path().trim_start_matches('/').to_owned(),
        };
        if let Err(e) = client(&target, "", "SELECT 1") {
            panic!("SESSIONER_TEST_MYSQL_URL does not answer: {e}");
        }
        return target;
    }
    let local = Target {
        host: "127.0.0.1".into(),
        port: 3306,
        user: "root".into(),
        password: String::new(),
        dbname: String::new(),
    };
    if std::env::var_os("SESSIONER_TEST_MYSQL_PRIVATE").is_none()
        && client(&local, "", "SELECT 1").is_ok()
    {
        return local;
    }
    private()
}

/// Starts a private MariaDB under a watchdog that kills it when this process ends.
fn private() -> Target {
    static WATCHDOG: OnceLock<Mutex<ChildStdin>> = OnceLock::new();
    let dir = tempfile::Builder::new()
        .prefix("sessioner-mysql-")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    let data = dir.join("data");
    let install = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            "--user=root",
            "--auth-root-authentication-method=normal",
        ])
        .arg(format!("--datadir={}", data.display()))
        .args(["--skip-test-db", "--skip-name-resolve"])
        .stdin(Stdio::null())
        .output();
    match install {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "mariadb-install-db failed: {}; {FIX}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run mariadb-install-db ({e}); {FIX}"),
    }
    let port = free_port();
    let script = r#"mariadbd --no-defaults --user=root --datadir="$1" --port="$2" --socket="$3/sock" \
  --bind-address=127.0.0.1 --skip-name-resolve --innodb-flush-log-at-trx-commit=0 \
  --log-error="$3/log" & pid=$!; read _; kill -9 $pid; rm -rf "$3""#;
    let mut child = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&data)
        .arg(port.to_string())
        .arg(&dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh for the mariadb watchdog");
    let stdin = child.stdin.take().unwrap();
    let _ = WATCHDOG.set(Mutex::new(stdin));
    let target = Target {
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        password: String::new(),
        dbname: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client(&target, "", "SELECT 1").is_ok() {
            return target;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            panic!("the private MariaDB did not start ({status}):\n{log}\n{FIX}");
        }
        assert!(
            Instant::now() < deadline,
            "the private MariaDB did not answer in 60 s; {FIX}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
