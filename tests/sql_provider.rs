//! The SQL providers against real servers (tests/support/postgres_server.rs): every config
//! form reaching the server, P1 (bound parameters, validated table names), restart
//! durability, `create_table=false` with the documented DDL, outages and recovery (R1) and a
//! stalled server (R5), through a TCP proxy the test stops and starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports)
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sessioner::{ChangeSet, Clock, Error, Provider, Record, SessionId};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn live(pairs: &[(&str, &str)]) -> Record {
    Record {
        values: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expires_at: now_ms() + 3_600_000,
        absolute_deadline: None,
    }
}

fn set(key: &str, value: &str) -> ChangeSet {
    ChangeSet {
        set: vec![(key.to_owned(), value.to_owned())],
        expires_at: now_ms() + 3_600_000,
        ..Default::default()
    }
}

fn id() -> SessionId {
    SessionId::generate(32).unwrap()
}

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Unavailable { .. }))
}

/// Retries `op` until it succeeds (a pooled connection the outage broke fails once).
async fn eventually<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(e, Error::Unavailable { .. }), "{what}: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what} did not recover: {e:?}"),
        }
    }
}

/// Strings SQL text would choke on, as session keys and values.
const HOSTILE: [&str; 6] = [
    "'; DROP TABLE session; --",
    "\\'\\\\",
    "\"quoted\" `back` $1 ? :name",
    "%s %d {} \0 nul",
    "Robert'); DELETE FROM session WHERE ('1'='1",
    "üñí — \u{1F600}",
];

/// What `provider` must do with the hostile strings: store and return them unchanged.
async fn hostile_round_trip(p: &dyn Provider) {
    let a = id();
    let record = live(&HOSTILE.map(|h| (h, h)));
    assert!(p.create(&a, &record).await.unwrap());
    for h in HOSTILE {
        assert!(p.save(&a, &set(&format!("{h}!"), h)).await.unwrap());
    }
    let values = p.load(&a).await.unwrap().unwrap().values;
    assert_eq!(values.len(), HOSTILE.len() * 2);
    for h in HOSTILE {
        assert_eq!(values[h], h);
        assert_eq!(values[&format!("{h}!")], h);
    }
    assert_eq!(p.count().await.unwrap(), 1, "the table lost rows");
}

/// A TCP proxy in front of a database server, which the test can stop (refusing new
/// connections and cutting open ones), stall (accepting, forwarding nothing) and start again
/// on the same port.
struct Proxy {
    port: u16,
    target: String,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Proxy {
            port,
            target,
            task: None,
        };
        proxy.serve(listener, false);
        proxy
    }

    fn serve(&mut self, listener: TcpListener, stall: bool) {
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task: every connection is cut when the proxy stops.
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if stall {
                        return std::future::pending::<()>().await;
                    }
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port: forwarding, or (`stall`) accepting and never answering.
    async fn resume(&mut self, stall: bool) {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on port {} again: {e}", self.port),
            }
        };
        self.serve(listener, stall);
    }
}

#[cfg(feature = "postgres")]
#[path = "support/postgres_server.rs"]
mod postgres_server;

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::postgres_server::{shared, unique_table};
    use sessioner::provider::ProviderContext;
    use sessioner::provider::postgres::PostgresProvider;

    fn provider(config: &str) -> PostgresProvider {
        PostgresProvider::new(config, Clock::system()).unwrap()
    }

    fn url_with(table: &str, extra: &str) -> String {
        format!("{}?table={table}{extra}", shared().url())
    }

    #[tokio::test]
    async fn macaron_keywords_beego_urls_and_the_registry_names_reach_the_server() {
        let target = shared();
        let table = unique_table("forms");
        let keywords = format!("{} table={table}", target.keywords());
        let url = url_with(&table, "");
        let postgresql = url.replacen("postgres://", "postgresql://", 1);
        let a = id();
        assert!(
            provider(&keywords)
                .create(&a, &live(&[("k", "1")]))
                .await
                .unwrap()
        );
        for config in [&keywords, &url, &postgresql] {
            for name in ["postgres", "postgresql"] {
                let ctx =
                    ProviderContext::new(config.clone(), Clock::system(), Duration::from_secs(60));
                let p = sessioner::provider::build(name, &ctx).unwrap();
                let record = p.load(&a).await.unwrap();
                assert_eq!(record.unwrap().values["k"], "1", "{name}: {config}");
            }
        }
    }

    #[tokio::test]
    async fn p1_postgres_values_and_keys_full_of_quotes_round_trip() {
        let table = unique_table("p1");
        let p = provider(&url_with(&table, ""));
        hostile_round_trip(&p).await;
        for bad in ["s;DROP TABLE session", "s\"", "a.b.c", "1s", "s--", "s%20x"] {
            let err = PostgresProvider::new(&url_with(bad, ""), Clock::system()).unwrap_err();
            assert!(matches!(err, Error::ProviderConfig { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("table"), "{err}");
        }
        let tables = shared().psql(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{table}'"
        ));
        assert_eq!(tables, "1");
    }

    #[tokio::test]
    async fn a_new_provider_on_the_same_database_sees_the_sessions() {
        let config = url_with(&unique_table("restart"), "");
        let a = id();
        {
            let first = provider(&config);
            assert!(first.create(&a, &live(&[("user", "ann")])).await.unwrap());
            assert!(first.save(&a, &set("role", "admin")).await.unwrap());
        }
        let second = provider(&config);
        let values = second.load(&a).await.unwrap().unwrap().values;
        assert_eq!(values["user"], "ann");
        assert_eq!(values["role"], "admin");
        assert_eq!(second.count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn create_table_false_uses_a_table_made_from_the_documented_ddl() {
        let table = unique_table("ddl");
        let p = provider(&url_with(&table, "&create_table=false"));
        let missing = p.load(&id()).await.unwrap_err();
        assert!(matches!(missing, Error::Backend { .. }), "{missing:?}");
        for statement in p.ddl() {
            shared().psql(&statement);
        }
        let a = id();
        assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());
        assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "1");
        let index = shared().psql(&format!(
            "SELECT indexdef FROM pg_indexes WHERE tablename = '{table}' AND indexdef LIKE '%session_expiry%'"
        ));
        assert!(index.contains(&format!("{table}_expiry_idx")), "{index}");
    }

    /// A table whose columns do not match (an existing table of another shape) is a backend
    /// error on load, never "corrupt": the middleware deletes a corrupt record, so a schema
    /// mismatch would delete every session it touched.
    #[tokio::test]
    async fn a_table_of_another_shape_is_a_backend_error_not_corrupt_records() {
        let table = unique_table("shape");
        let a = id();
        let key = a.storage_key();
        shared().psql(&format!(
            "CREATE TABLE \"{table}\" (session_key CHAR(64) PRIMARY KEY, session_data TEXT NOT NULL, session_expiry BIGINT NOT NULL); \
             INSERT INTO \"{table}\" VALUES ('{key}', 'x', '99999999999999')"
        ));
        let p = provider(&url_with(&table, "&create_table=false"));
        let err = p.load(&a).await.unwrap_err();
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
        let rows = shared().psql(&format!("SELECT count(*) FROM \"{table}\""));
        assert_eq!(rows.trim(), "1");
    }

    fn through(proxy: &Proxy, table: &str, timeout_ms: u64) -> PostgresProvider {
        let mut target = shared().clone();
        target.host = "127.0.0.1".into();
        target.port = proxy.port;
        provider(&format!(
            "{} table={table} timeout_ms={timeout_ms}",
            target.keywords()
        ))
    }

    fn server_address() -> String {
        let target = shared();
        format!("{}:{}", target.host, target.port)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r1_postgres_down_is_unavailable_then_recovers() {
        let mut proxy = Proxy::start(server_address()).await;
        let p = through(&proxy, &unique_table("outage"), 1_000);
        let a = id();
        assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());

        proxy.stop().await;
        let started = Instant::now();
        assert!(is_unavailable(&p.load(&a).await));
        assert!(is_unavailable(&p.save(&a, &set("k", "2")).await));
        assert!(is_unavailable(&p.create(&id(), &live(&[])).await));
        assert!(is_unavailable(&p.regenerate(&a, &id()).await));
        assert!(is_unavailable(&p.count().await));
        assert!(is_unavailable(&p.destroy(&a).await));
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "six calls took {:?}",
            started.elapsed()
        );

        proxy.resume(false).await;
        let record = eventually("load", || p.load(&a)).await.unwrap();
        assert_eq!(record.values["k"], "1", "the data survived the outage");
        assert!(p.save(&a, &set("k", "2")).await.unwrap());
        assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r1_postgres_down_at_startup_then_up() {
        let mut proxy = Proxy::start(server_address()).await;
        proxy.stop().await;
        // Building the provider does not connect; the table is made once the server answers.
        let p = through(&proxy, &unique_table("startup"), 1_000);
        let a = id();
        assert!(is_unavailable(&p.load(&a).await));
        proxy.resume(false).await;
        let (pr, ar) = (&p, &a);
        let created = eventually("create", || {
            let record = live(&[("k", "1")]);
            async move { pr.create(ar, &record).await }
        })
        .await;
        assert!(created);
        assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r5_a_stalled_postgres_times_out() {
        let mut proxy = Proxy::start(server_address()).await;
        let p = through(&proxy, &unique_table("stall"), 500);
        let a = id();
        assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());
        proxy.resume(true).await;
        let started = Instant::now();
        assert!(is_unavailable(&p.load(&a).await));
        assert!(is_unavailable(&p.save(&a, &set("k", "2")).await));
        assert!(
            started.elapsed() < Duration::from_millis(2_500),
            "two calls took {:?}",
            started.elapsed()
        );
        proxy.resume(false).await;
        let record = eventually("load", || p.load(&a)).await.unwrap();
        assert_eq!(record.values["k"], "1");
    }
}

#[cfg(feature = "mysql")]
#[path = "support/mysql_server.rs"]
mod mysql_server;

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use crate::mysql_server::{shared, unique_table};
    use sessioner::provider::ProviderContext;
    use sessioner::provider::mysql::MysqlProvider;

    fn provider(config: &str) -> MysqlProvider {
        MysqlProvider::new(config, Clock::system()).unwrap()
    }

    #[tokio::test]
    async fn go_dsns_urls_and_the_registry_name_reach_the_server() {
        let target = shared();
        let table = unique_table("forms");
        let dsn = format!(
            "{}?charset=utf8&parseTime=true&loc=Local&table={table}",
            target.dsn()
        );
        let url = format!("{}?table={table}", target.url());
        let a = id();
        assert!(
            provider(&dsn)
                .create(&a, &live(&[("k", "1")]))
                .await
                .unwrap()
        );
        for config in [&dsn, &url] {
            let ctx =
                ProviderContext::new(config.clone(), Clock::system(), Duration::from_secs(60));
            let p = sessioner::provider::build("mysql", &ctx).unwrap();
            assert_eq!(
                p.load(&a).await.unwrap().unwrap().values["k"],
                "1",
                "{config}"
            );
        }
    }

    /// The docs' `user:pw@unix(/run/mysqld/mysqld.sock)/db` form, on the socket of the very
    /// server the tests use (asked for with `SELECT @@socket`).
    #[tokio::test]
    async fn a_go_dsn_over_the_unix_socket_reaches_the_server() {
        let target = shared();
        let socket = target.sql("SELECT @@socket");
        assert!(socket.starts_with('/'), "the server's socket: {socket:?}");
        let table = unique_table("socket");
        let dsn = format!(
            "{}:{}@unix({socket})/{}?table={table}",
            target.user, target.password, target.dbname
        );
        let over_socket = provider(&dsn);
        let over_tcp = provider(&format!("{}?table={table}", target.dsn()));
        let a = id();
        assert!(over_socket.create(&a, &live(&[("k", "1")])).await.unwrap());
        assert_eq!(over_tcp.load(&a).await.unwrap().unwrap().values["k"], "1");
    }

    #[tokio::test]
    async fn p1_mysql_values_and_keys_full_of_quotes_round_trip() {
        let table = unique_table("p1");
        let p = provider(&format!("{}?table={table}", shared().url()));
        hostile_round_trip(&p).await;
        for bad in ["s;DROP TABLE session", "s`", "a.b.c", "1s", "s--"] {
            let config = format!("{}?table={}", shared().dsn(), bad.replace(';', "%3B"));
            let err = MysqlProvider::new(&config, Clock::system()).unwrap_err();
            assert!(matches!(err, Error::ProviderConfig { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("table"), "{err}");
        }
        let tables = shared().sql(&format!("SHOW TABLES LIKE '{table}'"));
        assert_eq!(tables, table);
    }

    #[tokio::test]
    async fn a_new_provider_on_the_same_database_sees_the_sessions() {
        let config = format!("{}?table={}", shared().url(), unique_table("restart"));
        let a = id();
        {
            let first = provider(&config);
            assert!(first.create(&a, &live(&[("user", "ann")])).await.unwrap());
            assert!(first.save(&a, &set("role", "admin")).await.unwrap());
        }
        let second = provider(&config);
        let values = second.load(&a).await.unwrap().unwrap().values;
        assert_eq!(
            (values["user"].as_str(), values["role"].as_str()),
            ("ann", "admin")
        );
        assert_eq!(second.count().await.unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r1_mysql_down_is_unavailable_then_recovers() {
        let target = shared();
        let mut proxy = Proxy::start(format!("{}:{}", target.host, target.port)).await;
        let p = provider(&format!(
            "{}:{}@tcp(127.0.0.1:{})/{}?table={}&timeout_ms=1000",
            target.user,
            target.password,
            proxy.port,
            target.dbname,
            unique_table("outage")
        ));
        let a = id();
        assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());
        proxy.stop().await;
        let started = Instant::now();
        assert!(is_unavailable(&p.load(&a).await));
        assert!(is_unavailable(&p.save(&a, &set("k", "2")).await));
        assert!(is_unavailable(&p.create(&id(), &live(&[])).await));
        assert!(is_unavailable(&p.count().await));
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        proxy.resume(false).await;
        let record = eventually("load", || p.load(&a)).await.unwrap();
        assert_eq!(record.values["k"], "1");
        assert!(p.save(&a, &set("k", "2")).await.unwrap());
        assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "2");
    }
}
