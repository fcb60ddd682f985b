//! The redis provider against a real, private `redis-server` (tests/support/redis_server.rs):
//! key layout (S5), counting within the prefix, outages and recovery (R1, R5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_server::{RedisServer, unique_prefix};
use sessioner::provider::redis::RedisProvider;
use sessioner::{ChangeSet, Clock, Error, Provider, Record, Regenerated, SessionId};

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

fn provider(server: &RedisServer, prefix: &str, extra: &str) -> RedisProvider {
    RedisProvider::new(
        &format!("{}?prefix={prefix}{extra}", server.url()),
        Clock::system(),
    )
    .unwrap()
}

/// A plain synchronous connection for looking at (and planting) keys behind the provider.
fn admin(server: &RedisServer) -> redis::Connection {
    server.admin()
}

fn all_keys(server: &RedisServer) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("*")
        .query(&mut admin(server))
        .unwrap()
}

#[tokio::test]
async fn s5_redis_keys_are_prefixed_hashes_never_cookie_values() {
    let server = RedisServer::start();
    let prefix = unique_prefix("s5");
    let p = provider(&server, &prefix, "");
    let (a, b, c) = (id(), id(), id());
    assert!(p.create(&a, &live(&[("user", "\"ann\"")])).await.unwrap());
    assert!(p.create(&b, &live(&[])).await.unwrap());
    assert!(p.save(&b, &set("k", "1")).await.unwrap());
    assert_eq!(p.regenerate(&b, &c).await.unwrap(), Regenerated::Moved);

    let keys = all_keys(&server);
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        assert!(key.starts_with(&prefix), "{key} lacks the prefix");
        for sid in [&a, &b, &c] {
            assert!(!key.contains(sid.as_str()), "a key holds a cookie value");
        }
    }
    let mut expected = vec![
        format!("{prefix}{}", a.storage_key()),
        format!("{prefix}{}", c.storage_key()),
    ];
    expected.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, expected);
    // And values are fields of a hash with the deadline, expiring in redis too.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&expected[0])
        .query(&mut admin(&server))
        .unwrap();
    assert!(ttl > 3_000_000, "no TTL on the session key: {ttl}");
}

#[tokio::test]
async fn bug11_redis_count_sees_only_this_prefix() {
    let server = RedisServer::start();
    let prefix = unique_prefix("count");
    let p = provider(&server, &prefix, "");
    let neighbour = provider(&server, &format!("{prefix}x"), "");
    for _ in 0..3 {
        assert!(p.create(&id(), &live(&[("k", "1")])).await.unwrap());
    }
    for _ in 0..4 {
        assert!(neighbour.create(&id(), &live(&[])).await.unwrap());
    }
    let mut admin = admin(&server);
    // Strangers: another prefix, our prefix with a foreign suffix, a wrong-typed key shaped
    // like ours.
    let strangers = [
        "cache:1".to_owned(),
        format!("{prefix}not-a-session"),
        format!("{prefix}{}", "a".repeat(64)),
    ];
    for key in strangers {
        let () = redis::cmd("SET")
            .arg(key)
            .arg("x")
            .query(&mut admin)
            .unwrap();
    }
    assert_eq!(p.count().await.unwrap(), 3);
    assert_eq!(neighbour.count().await.unwrap(), 4);
    assert_eq!(p.gc().await.unwrap(), 0);

    // Glob characters in a prefix match literally: a live-looking session under `g_:` is
    // not counted by the provider whose prefix is `g?:`.
    let glob = provider(&server, &format!("{prefix}g?:"), "");
    assert!(glob.create(&id(), &live(&[])).await.unwrap());
    let () = redis::cmd("HSET")
        .arg(format!("{prefix}gX:{}", "c".repeat(64)))
        .arg("__sessioner.redis.expires_at")
        .arg(now_ms() + 3_600_000)
        .query(&mut admin)
        .unwrap();
    assert_eq!(glob.count().await.unwrap(), 1);
}

#[tokio::test]
async fn r3_a_wrong_typed_redis_key_is_corrupt_not_a_crash() {
    let server = RedisServer::start();
    let prefix = unique_prefix("corrupt");
    let p = provider(&server, &prefix, "");
    let a = id();
    let () = redis::cmd("SET")
        .arg(format!("{prefix}{}", a.storage_key()))
        .arg("garbage")
        .query(&mut admin(&server))
        .unwrap();
    assert!(matches!(p.load(&a).await, Err(Error::Corrupt(_))));
    assert!(matches!(
        p.save(&a, &set("k", "1")).await,
        Err(Error::Corrupt(_))
    ));
    p.destroy(&a).await.unwrap();
    assert!(p.load(&a).await.unwrap().is_none());
    // A damaged record does not hold its id.
    let () = redis::cmd("SET")
        .arg(format!("{prefix}{}", a.storage_key()))
        .arg("garbage")
        .query(&mut admin(&server))
        .unwrap();
    assert!(p.create(&a, &live(&[("k", "2")])).await.unwrap());
    assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "2");
}

/// The harness never takes another server for the one it started: a start on a port where
/// a redis already answers fails (the new server cannot bind), rather than handing the test
/// the other server.
#[test]
fn a_port_taken_by_another_redis_is_never_mistaken_for_ours() {
    let other = RedisServer::start();
    assert!(RedisServer::try_start_on(other.port(), &[]).is_none());
    // The other server is untouched and still answers.
    let () = redis::cmd("PING").query(&mut admin(&other)).unwrap();
}

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Unavailable { .. }))
}

/// Retries `op` until it succeeds; the first call after an outage may still see the old
/// connection fail while the manager reconnects.
async fn eventually<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_redis_outage_is_unavailable_then_recovers() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("outage");
    let p = provider(&server, &prefix, "&timeout_ms=1000");
    let a = id();
    assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());

    server.stop();
    let started = Instant::now();
    assert!(is_unavailable(&p.load(&a).await));
    assert!(is_unavailable(&p.save(&a, &set("k", "2")).await));
    assert!(is_unavailable(&p.create(&id(), &live(&[])).await));
    assert!(is_unavailable(&p.destroy(&a).await));
    assert!(is_unavailable(&p.regenerate(&a, &id()).await));
    assert!(is_unavailable(&p.count().await));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "six calls took {:?}",
        started.elapsed()
    );

    server.restart();
    // The data died with the server (no persistence); the provider works again.
    eventually("load", || p.load(&a)).await;
    let b = id();
    assert!(p.create(&b, &live(&[("k", "1")])).await.unwrap());
    assert!(p.save(&b, &set("k", "2")).await.unwrap());
    assert_eq!(p.load(&b).await.unwrap().unwrap().values["k"], "2");
    assert_eq!(p.count().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_redis_down_at_startup_then_up() {
    let mut server = RedisServer::start();
    server.stop();
    let prefix = unique_prefix("startup");
    // Building the provider does not connect.
    let p = provider(&server, &prefix, "&timeout_ms=1000");
    let a = id();
    assert!(is_unavailable(&p.load(&a).await));
    assert!(is_unavailable(&p.create(&a, &live(&[])).await));
    server.restart();
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
async fn r5_a_paused_redis_times_out() {
    let server = RedisServer::start();
    let prefix = unique_prefix("pause");
    let p = provider(&server, &prefix, "&timeout_ms=500");
    let a = id();
    assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2_000)
        .arg("ALL")
        .query(&mut admin(&server))
        .unwrap();
    let started = Instant::now();
    assert!(is_unavailable(&p.load(&a).await));
    assert!(is_unavailable(&p.save(&a, &set("k", "2")).await));
    assert!(
        started.elapsed() < Duration::from_millis(1_800),
        "two calls took {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let record = eventually("load", || p.load(&a)).await.unwrap();
    // The timed-out save may or may not have run once the pause ended; both values are fine.
    assert!(["1", "2"].contains(&record.values["k"].as_str()));
}

/// A redis-server that also listens with TLS, using the test certificate in
/// tests/support/tls (a P-256 CA and a `localhost` server certificate signed by it, valid
/// until 2126; made with `openssl req -x509` and `openssl x509 -req`, CA key discarded).
/// A TLS port taken meanwhile makes the start fail: it is retried with another.
fn tls_server() -> (RedisServer, u16) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls");
    let file = |name: &str| dir.join(name).display().to_string();
    for _ in 0..5 {
        let tls_port = redis_server::free_port();
        let server = RedisServer::try_start_with(&[
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]);
        if let Some(server) = server {
            return (server, tls_port);
        }
    }
    panic!("could not start a TLS redis-server on free ports");
}

fn tls_url(port: u16) -> String {
    format!(
        "rediss://localhost:{port}/0?prefix={}&timeout_ms=2000",
        unique_prefix("tls")
    )
}

fn error_chain(err: &Error) -> String {
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        text.push_str(&format!("{e} | "));
        source = e.source();
    }
    text
}

/// `rediss://` checks the server's certificate against the system's roots: the test CA is
/// not among them, so the server is refused, never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_an_untrusted_certificate() {
    let (_server, tls_port) = tls_server();
    let p = RedisProvider::new(&tls_url(tls_port), Clock::system()).unwrap();
    let err = p.load(&id()).await.unwrap_err();
    let chain = error_chain(&err);
    assert!(
        chain.to_lowercase().contains("certificate") || chain.contains("UnknownIssuer"),
        "not refused for its certificate: {chain}"
    );
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

const TLS_HELPER_URL: &str = "SESSIONER_TEST_TLS_URL";

/// With the test CA trusted (`SSL_CERT_FILE`, read by rustls-native-certs) the same server
/// works. The environment is process-wide, so the client runs in a child process: this test
/// binary again, running only `tls_client_helper`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_works_when_the_certificate_is_trusted() {
    let (_server, tls_port) = tls_server();
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls/ca.pem");
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["tls_client_helper", "--exact", "--ignored", "--nocapture"])
        .env("SSL_CERT_FILE", ca)
        .env(TLS_HELPER_URL, tls_url(tls_port))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "TLS client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
#[ignore = "run by rediss_works_when_the_certificate_is_trusted, in a child process"]
async fn tls_client_helper() {
    let Ok(url) = std::env::var(TLS_HELPER_URL) else {
        eprintln!("tls_client_helper only works when run by its parent test");
        return;
    };
    let p = RedisProvider::new(&url, Clock::system()).unwrap();
    let a = id();
    assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());
    assert!(p.save(&a, &set("k", "2")).await.unwrap());
    assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "2");
}
