//! The sled provider beyond the conformance suite: durability across reopening, the
//! directory lock, hashed keys (S5), and GC through the expiry index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sessioner::provider::sled::SledProvider;
use sessioner::provider::{ProviderContext, build};
use sessioner::{ChangeSet, Clock, Error, Provider, Record, Regenerated, SessionId};

const HOUR: u64 = 3_600_000;

fn id() -> SessionId {
    SessionId::generate(32).unwrap()
}

fn record(clock: &Clock, pairs: &[(&str, &str)], ttl_ms: u64) -> Record {
    Record {
        values: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expires_at: clock.now_ms() + ttl_ms,
        absolute_deadline: Some(clock.now_ms() + 2 * HOUR),
    }
}

fn set(clock: &Clock, key: &str, value: &str) -> ChangeSet {
    ChangeSet {
        set: vec![(key.to_owned(), value.to_owned())],
        expires_at: clock.now_ms() + HOUR,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::system();
    let (kept, saved, destroyed, old, moved) = (id(), id(), id(), id(), id());
    {
        let p = SledProvider::open(&path, clock.clone()).unwrap();
        assert!(
            p.create(&kept, &record(&clock, &[("user", "\"ann\"")], HOUR))
                .await
                .unwrap()
        );
        assert!(p.create(&saved, &record(&clock, &[], HOUR)).await.unwrap());
        // An ordinary save is not flushed by itself; closing the database flushes it.
        assert!(p.save(&saved, &set(&clock, "n", "1")).await.unwrap());
        assert!(
            p.create(&destroyed, &record(&clock, &[], HOUR))
                .await
                .unwrap()
        );
        p.destroy(&destroyed).await.unwrap();
        assert!(
            p.create(&old, &record(&clock, &[("k", "v")], HOUR))
                .await
                .unwrap()
        );
        assert_eq!(
            p.regenerate(&old, &moved).await.unwrap(),
            Regenerated::Moved
        );
    }
    let p = SledProvider::open(&path, clock.clone()).unwrap();
    let r = p
        .load(&kept)
        .await
        .unwrap()
        .expect("created record survives");
    assert_eq!(r.values["user"], "\"ann\"");
    assert!(r.absolute_deadline.is_some());
    assert_eq!(p.load(&saved).await.unwrap().unwrap().values["n"], "1");
    assert!(p.load(&destroyed).await.unwrap().is_none());
    assert!(p.load(&old).await.unwrap().is_none());
    assert_eq!(p.load(&moved).await.unwrap().unwrap().values["k"], "v");
    assert_eq!(p.count().await.unwrap(), 3);
    // The directory is private.
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn a_held_directory_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = SledProvider::open(&path, Clock::system()).unwrap();
    match SledProvider::open(&path, Clock::system()) {
        Err(Error::ProviderConfig { provider, reason }) => {
            assert_eq!(provider, "sled");
            assert!(reason.contains("in use"), "{reason}");
        }
        other => panic!("second open: {other:?}"),
    }
    // Through the registry, under both names and both config forms.
    for (name, config) in [
        ("sled", path.display().to_string()),
        ("ledis", format!("data_dir={},db=0", path.display())),
    ] {
        let ctx = ProviderContext::new(config, Clock::system(), Duration::from_secs(60));
        assert!(matches!(
            build(name, &ctx),
            Err(Error::ProviderConfig { .. })
        ));
    }
    drop(first);
    let ctx = ProviderContext::new(
        format!("data_dir={}", path.display()),
        Clock::system(),
        Duration::from_secs(60),
    );
    let p = build("ledis", &ctx).unwrap();
    assert_eq!(p.count().await.unwrap(), 0);
    assert!(!format!("{p:?}").contains("contents"));
}

#[tokio::test]
async fn s5_sled_keys_never_equal_cookie_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::system();
    let ids: Vec<SessionId> = (0..20).map(|_| id()).collect();
    {
        let p = SledProvider::open(&path, clock.clone()).unwrap();
        for sid in &ids {
            assert!(
                p.create(sid, &record(&clock, &[("k", "1")], HOUR))
                    .await
                    .unwrap()
            );
            assert!(p.save(sid, &set(&clock, "j", "2")).await.unwrap());
        }
    }
    let db = sled::open(&path).unwrap();
    let mut seen = 0;
    for name in db.tree_names() {
        for entry in db.open_tree(&name).unwrap().iter() {
            let (key, _) = entry.unwrap();
            seen += 1;
            for sid in &ids {
                let cookie = sid.as_str().as_bytes();
                assert!(
                    !key.windows(cookie.len()).any(|w| w == cookie),
                    "a sled key holds a cookie value"
                );
            }
        }
    }
    // One record and one expiry index entry per session.
    assert_eq!(seen, 2 * ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_sled_gc_walks_the_expiry_index_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let p = SledProvider::open(dir.path().join("db"), clock.clone()).unwrap();
    // More than one GC batch of short-lived sessions, a few long-lived ones, and one
    // short-lived session whose save pushed its deadline out (its index entry must move).
    for _ in 0..700 {
        assert!(p.create(&id(), &record(&clock, &[], 1_000)).await.unwrap());
    }
    let long: Vec<SessionId> = (0..5).map(|_| id()).collect();
    for sid in &long {
        assert!(
            p.create(sid, &record(&clock, &[("k", "1")], HOUR))
                .await
                .unwrap()
        );
    }
    let touched = id();
    assert!(
        p.create(&touched, &record(&clock, &[], 1_000))
            .await
            .unwrap()
    );
    assert!(
        p.save(&touched, &set(&clock, "still", "here"))
            .await
            .unwrap()
    );
    assert_eq!(p.count().await.unwrap(), 706);

    clock.advance(Duration::from_secs(2));
    assert_eq!(
        p.count().await.unwrap(),
        6,
        "expired sessions still counted"
    );
    assert_eq!(p.gc().await.unwrap(), 700);
    assert_eq!(p.gc().await.unwrap(), 0);
    assert_eq!(p.count().await.unwrap(), 6);
    for sid in long.iter().chain([&touched]) {
        assert!(
            p.load(sid).await.unwrap().is_some(),
            "gc removed a live session"
        );
    }
    // An expired session is never revived by a late save.
    clock.advance(Duration::from_secs(2 * 3600));
    assert!(!p.save(&touched, &set(&clock, "k", "v")).await.unwrap());
    assert_eq!(p.gc().await.unwrap(), 6);
    assert_eq!(p.count().await.unwrap(), 0);
}
