//! The memcache provider against real, private `memcached` servers
//! (tests/support/memcached_server.rs): key layout (S5), expiry on the server, P4 races,
//! several servers, `count`, outages and recovery (R1, R5), the docs' config strings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/memcached_server.rs"]
mod memcached_server;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memcached_server::{MemcachedServer, admin, shared_addr, unique_prefix};
use sessioner::provider::memcache::MemcacheProvider;
use sessioner::{ChangeSet, Clock, Error, Options, Provider, Record, Regenerated, SessionId};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn record(pairs: &[(&str, &str)], lifetime: Duration) -> Record {
    Record {
        values: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expires_at: now_ms() + lifetime.as_millis() as u64,
        absolute_deadline: None,
    }
}

fn live(pairs: &[(&str, &str)]) -> Record {
    record(pairs, Duration::from_secs(3600))
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

fn provider(addrs: &str, prefix: &str, extra: &str) -> Arc<MemcacheProvider> {
    Arc::new(
        MemcacheProvider::new(&format!("{addrs};prefix={prefix}{extra}"), Clock::system()).unwrap(),
    )
}

/// The keys (URL-decoded) and `exp` (Unix seconds, -1 for never) the server at `addr` lists.
fn listed(addr: &str) -> Vec<(String, i64)> {
    admin(addr, "lru_crawler metadump all\r\n", "END\r\n")
        .lines()
        .filter_map(|line| line.strip_prefix("key="))
        .map(|rest| {
            let mut parts = rest.split(' ');
            let key = parts.next().unwrap().replace("%3A", ":");
            let exp = parts
                .find_map(|p| p.strip_prefix("exp="))
                .unwrap()
                .parse()
                .unwrap();
            (key, exp)
        })
        .collect()
}

fn unix_now() -> i64 {
    (now_ms() / 1000) as i64
}

#[tokio::test]
async fn s5_memcache_keys_are_prefixed_hashes_never_cookie_values() {
    let server = MemcachedServer::start();
    let prefix = unique_prefix("s5");
    let p = provider(&server.addr(), &prefix, "");
    let (a, b, c) = (id(), id(), id());
    assert!(p.create(&a, &live(&[("user", "\"ann\"")])).await.unwrap());
    assert!(p.create(&b, &live(&[])).await.unwrap());
    assert!(p.save(&b, &set("k", "1")).await.unwrap());
    assert_eq!(p.regenerate(&b, &c).await.unwrap(), Regenerated::Moved);
    p.destroy(&a).await.unwrap();

    let mut keys: Vec<String> = listed(&server.addr()).into_iter().map(|(k, _)| k).collect();
    keys.sort();
    // b's key holds the short-lived "moved" marker.
    let mut expected = vec![
        format!("{prefix}{}", b.storage_key()),
        format!("{prefix}{}", c.storage_key()),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    for sid in [&a, &b, &c] {
        assert!(keys.iter().all(|k| !k.contains(sid.as_str())));
    }
    assert_eq!(p.key(&c), format!("{prefix}{}", c.storage_key()));
}

/// The item's memcached expiry is the idle deadline (rounded up to a second), and a save
/// moves it; past 30 days it is sent as an absolute time (as a relative one memcached would
/// read it as a date in 1970 and drop the session at once).
#[tokio::test]
async fn expiry_is_the_servers_ttl_even_past_30_days() {
    let server = MemcachedServer::start();
    let p = provider(&server.addr(), &unique_prefix("ttl"), "");
    let exp_of = |sid: &SessionId| {
        let key = p.key(sid);
        listed(&server.addr())
            .into_iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1
    };
    let a = id();
    assert!(
        p.create(&a, &record(&[], Duration::from_secs(600)))
            .await
            .unwrap()
    );
    let exp = exp_of(&a);
    assert!((exp - unix_now() - 600).abs() <= 2, "exp {exp}");
    let mut touch = set("k", "1");
    touch.expires_at = now_ms() + 7_200_000;
    assert!(p.save(&a, &touch).await.unwrap());
    let exp = exp_of(&a);
    assert!((exp - unix_now() - 7_200).abs() <= 2, "exp {exp}");

    let forty_days = Duration::from_secs(40 * 24 * 3600);
    let b = id();
    assert!(
        p.create(&b, &record(&[("k", "1")], forty_days))
            .await
            .unwrap()
    );
    assert_eq!(p.load(&b).await.unwrap().unwrap().values["k"], "1");
    let exp = exp_of(&b);
    assert!(
        (exp - unix_now() - forty_days.as_secs() as i64).abs() <= 2,
        "exp {exp}"
    );
}

/// P4: a save racing a regenerate of its session is never lost. Whenever the save reports
/// success and the regenerate moved the session, the saved value is under the new id; the
/// old id is dead either way. (A regenerate that copies, then deletes the old key
/// unconditionally, loses the saves landing in between.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p4_a_save_racing_a_regenerate_is_never_lost() {
    let p = provider(&shared_addr(), &unique_prefix("p4"), "");
    let mut saved_and_moved = 0;
    for round in 0..300 {
        let (a, b) = (id(), id());
        assert!(p.create(&a, &live(&[("base", "0")])).await.unwrap());
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let saver = {
            let (p, a, barrier) = (Arc::clone(&p), a.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                p.save(&a, &set("k", "saved")).await.unwrap()
            })
        };
        let mover = {
            let (p, a, b, barrier) = (Arc::clone(&p), a.clone(), b.clone(), barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                p.regenerate(&a, &b).await.unwrap()
            })
        };
        let (saved, moved) = (saver.await.unwrap(), mover.await.unwrap());
        assert_eq!(moved, Regenerated::Moved, "round {round}");
        assert!(
            p.load(&a).await.unwrap().is_none(),
            "round {round}: old id alive"
        );
        let values = p.load(&b).await.unwrap().unwrap().values;
        if saved {
            saved_and_moved += 1;
            assert_eq!(
                values.get("k").map(String::as_str),
                Some("saved"),
                "round {round}: a save reported success and was lost"
            );
        }
        assert_eq!(values["base"], "0");
    }
    assert!(saved_and_moved > 0, "no save ever won");
}

#[tokio::test]
async fn count_is_an_unsupported_error_and_gc_is_the_ttl() {
    let p = provider(&shared_addr(), &unique_prefix("count"), "");
    assert!(p.create(&id(), &live(&[])).await.unwrap());
    let err = p.count().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                provider: "memcache",
                operation: "count"
            }
        ),
        "{err:?}"
    );
    assert_eq!(p.gc().await.unwrap(), 0);
}

/// Several servers: each session lives on the one `server_of` names, and only there; both
/// get some; with one server down, the other's sessions keep working and the rest are 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_servers_split_sessions_by_key() {
    let (one, mut two) = (MemcachedServer::start(), MemcachedServer::start());
    let prefix = unique_prefix("multi");
    let addrs = format!("{};{}", one.addr(), two.addr());
    let p = provider(&addrs, &prefix, ";timeout_ms=1000");
    let ids: Vec<SessionId> = (0..40).map(|_| id()).collect();
    for (n, sid) in ids.iter().enumerate() {
        assert!(
            p.create(sid, &live(&[("n", &n.to_string())]))
                .await
                .unwrap()
        );
    }
    let on_one: Vec<String> = listed(&one.addr()).into_iter().map(|(k, _)| k).collect();
    let on_two: Vec<String> = listed(&two.addr()).into_iter().map(|(k, _)| k).collect();
    for sid in &ids {
        let key = p.key(sid);
        let home = p.server_of(sid);
        assert_eq!(on_one.contains(&key), home == one.addr(), "{key}");
        assert_eq!(on_two.contains(&key), home == two.addr(), "{key}");
    }
    assert!(!on_one.is_empty() && !on_two.is_empty());
    // The same servers listed the other way round find every session.
    let reversed = provider(&format!("{};{}", two.addr(), one.addr()), &prefix, "");
    for (n, sid) in ids.iter().enumerate() {
        assert_eq!(
            reversed.load(sid).await.unwrap().unwrap().values["n"],
            n.to_string()
        );
    }

    two.stop();
    for sid in &ids {
        let loaded = p.load(sid).await;
        if p.server_of(sid) == one.addr() {
            assert!(loaded.unwrap().is_some());
        } else {
            assert!(
                matches!(loaded, Err(Error::Unavailable { .. })),
                "{loaded:?}"
            );
        }
    }
}

#[tokio::test]
async fn r3_a_damaged_item_is_corrupt_and_does_not_hold_its_id() {
    let p = provider(&shared_addr(), &unique_prefix("corrupt"), "");
    let a = id();
    let plant = || {
        let reply = admin(
            &shared_addr(),
            &format!("set {} 0 0 7\r\ngarbage\r\n", p.key(&a)),
            "\r\n",
        );
        assert_eq!(reply, "STORED\r\n");
    };
    plant();
    assert!(matches!(p.load(&a).await, Err(Error::Corrupt(_))));
    assert!(matches!(
        p.save(&a, &set("k", "1")).await,
        Err(Error::Corrupt(_))
    ));
    assert_eq!(p.regenerate(&a, &id()).await.unwrap(), Regenerated::Missing);
    plant();
    assert!(p.create(&a, &live(&[("k", "2")])).await.unwrap());
    assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "2");
}

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Unavailable { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_memcached_outage_is_unavailable_then_recovers() {
    let mut server = MemcachedServer::start();
    let p = provider(&server.addr(), &unique_prefix("outage"), ";timeout_ms=1000");
    let a = id();
    assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());
    assert!(p.save(&a, &set("k", "2")).await.unwrap());

    server.stop();
    let started = Instant::now();
    assert!(is_unavailable(&p.load(&a).await));
    assert!(is_unavailable(&p.save(&a, &set("k", "3")).await));
    assert!(is_unavailable(&p.create(&id(), &live(&[])).await));
    assert!(is_unavailable(&p.destroy(&a).await));
    assert!(is_unavailable(&p.regenerate(&a, &id()).await));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    server.restart();
    // The data died with the server; the very first call works again (stale pooled
    // connections are replaced, not reported).
    assert_eq!(p.load(&a).await.unwrap(), None);
    let b = id();
    assert!(p.create(&b, &live(&[("k", "1")])).await.unwrap());
    assert!(p.save(&b, &set("k", "2")).await.unwrap());
    assert_eq!(p.load(&b).await.unwrap().unwrap().values["k"], "2");

    // A restart with pooled connections open: the next call still succeeds.
    server.restart();
    assert_eq!(p.load(&b).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_a_frozen_memcached_times_out() {
    let server = MemcachedServer::start();
    let p = provider(&server.addr(), &unique_prefix("frozen"), ";timeout_ms=300");
    let a = id();
    assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());
    server.freeze(true);
    let started = Instant::now();
    assert!(is_unavailable(&p.load(&a).await));
    assert!(is_unavailable(&p.save(&a, &set("k", "2")).await));
    assert!(is_unavailable(&p.create(&id(), &live(&[])).await));
    let took = started.elapsed();
    server.freeze(false);
    assert!(
        took < Duration::from_millis(1_500),
        "three calls took {took:?}"
    );
    // The timed-out connections were dropped: later replies are never misread.
    assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "1");
    assert!(p.save(&a, &set("k", "3")).await.unwrap());
    assert_eq!(p.load(&a).await.unwrap().unwrap().values["k"], "3");
}

/// macaron's and beego's printed configs, and the multi-server form, build a handler (the
/// provider connects on first use); nonsense is a configuration error naming the part.
#[test]
fn the_docs_config_strings_build() {
    for config in [
        "127.0.0.1:9090",
        "127.0.0.1:7080",
        "127.0.0.1:11211;127.0.0.1:11212",
        "127.0.0.1:11211;prefix=app:;timeout_ms=500",
    ] {
        let options = Options {
            provider: "memcache".into(),
            provider_config: config.into(),
            section: "sessioner_test_suite_private".into(),
            ..Default::default()
        };
        assert!(options.build().is_ok(), "{config}");
    }
    let options = Options {
        provider: "memcache".into(),
        provider_config: "127.0.0.1:11211;colour=red".into(),
        section: "sessioner_test_suite_private".into(),
        ..Default::default()
    };
    let err = options.build().unwrap_err();
    assert!(matches!(err, Error::ProviderConfig { .. }) && err.to_string().contains("colour"));
}

/// A TCP proxy in front of memcached that, when armed, lets the next command through and then
/// closes the client's connection instead of relaying the reply: a reply lost after the
/// server ran the command.
struct LossyProxy {
    addr: String,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl LossyProxy {
    async fn start(upstream: String) -> LossyProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if flag.swap(false, Ordering::SeqCst) {
                            break; // the reply is lost: the client's connection closes
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        LossyProxy { addr, armed }
    }

    fn lose_next_reply(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A create whose `add` ran on the server but whose reply was lost is never reported as a
/// collision (a repeated `add` would answer `NOT_STORED` for the write that happened): it
/// fails, and the session it wrote is there.
#[tokio::test]
async fn a_lost_reply_to_a_storage_command_is_an_error_never_a_false_collision() {
    let proxy = LossyProxy::start(shared_addr()).await;
    let p = provider(&proxy.addr, &unique_prefix("lossy"), "");
    // A pooled connection exists.
    assert!(p.create(&id(), &live(&[("k", "1")])).await.unwrap());
    let b = id();
    proxy.lose_next_reply();
    let created = p.create(&b, &live(&[("k", "2")])).await;
    assert!(
        !matches!(created, Ok(false)),
        "a write that happened was reported as a collision"
    );
    assert_eq!(p.load(&b).await.unwrap().unwrap().values["k"], "2");
}
