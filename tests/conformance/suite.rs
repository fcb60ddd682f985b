//! The provider contract (DESIGN.md §4), one function per clause, run against every backend
//! through the `conformance!` macro. Timestamps are relative to the real clock so that backends
//! which expire records themselves (redis TTLs) are judged by the same rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sessioner::provider::Regenerated;
use sessioner::{ChangeSet, Provider, Record, SessionId};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn id() -> SessionId {
    SessionId::generate(32).unwrap()
}

pub fn record(pairs: &[(&str, &str)], expires_at: u64) -> Record {
    Record {
        values: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expires_at,
        absolute_deadline: None,
    }
}

pub fn live(pairs: &[(&str, &str)]) -> Record {
    record(pairs, now_ms() + 3_600_000)
}

pub fn set(pairs: &[(&str, &str)]) -> ChangeSet {
    ChangeSet {
        set: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expires_at: now_ms() + 3_600_000,
        ..Default::default()
    }
}

fn values(r: &Record) -> HashMap<&str, &str> {
    r.values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

pub async fn load_of_missing_is_none(p: Arc<dyn Provider>) {
    assert!(p.load(&id()).await.unwrap().is_none());
    assert!(!p.exists(&id()).await.unwrap());
}

pub async fn create_is_insert_if_absent(p: Arc<dyn Provider>) {
    let a = id();
    assert!(p.create(&a, &live(&[("k", "1")])).await.unwrap());
    assert!(
        !p.create(&a, &live(&[("k", "2")])).await.unwrap(),
        "create overwrote a live record"
    );
    let r = p.load(&a).await.unwrap().unwrap();
    assert_eq!(values(&r), HashMap::from([("k", "1")]));
    assert!(p.exists(&a).await.unwrap());
}

pub async fn save_merges_per_key(p: Arc<dyn Provider>) {
    let a = id();
    p.create(&a, &live(&[("base", "0")])).await.unwrap();
    assert!(p.save(&a, &set(&[("x", "1")])).await.unwrap());
    assert!(p.save(&a, &set(&[("y", "2")])).await.unwrap());
    assert!(p.save(&a, &set(&[("x", "3")])).await.unwrap());
    let mut del = set(&[]);
    del.deleted.push("base".into());
    assert!(p.save(&a, &del).await.unwrap());
    let r = p.load(&a).await.unwrap().unwrap();
    assert_eq!(values(&r), HashMap::from([("x", "3"), ("y", "2")]));
    let mut flush = set(&[("z", "4")]);
    flush.flushed = true;
    assert!(p.save(&a, &flush).await.unwrap());
    assert_eq!(
        values(&p.load(&a).await.unwrap().unwrap()),
        HashMap::from([("z", "4")])
    );
}

pub async fn deleting_the_last_key_persists(p: Arc<dyn Provider>) {
    let a = id();
    p.create(&a, &live(&[("only", "1")])).await.unwrap();
    let mut del = set(&[]);
    del.deleted.push("only".into());
    assert!(p.save(&a, &del).await.unwrap());
    let r = p
        .load(&a)
        .await
        .unwrap()
        .expect("an emptied session is still a session");
    assert!(r.values.is_empty());
}

pub async fn save_refreshes_expiry(p: Arc<dyn Provider>) {
    let a = id();
    p.create(&a, &record(&[("k", "1")], now_ms() + 60_000))
        .await
        .unwrap();
    let mut touch = set(&[]);
    touch.expires_at = now_ms() + 7_200_000;
    assert!(p.save(&a, &touch).await.unwrap());
    let r = p.load(&a).await.unwrap().unwrap();
    assert_eq!(r.expires_at, touch.expires_at);
}

pub async fn save_never_recreates(p: Arc<dyn Provider>) {
    let a = id();
    assert!(
        !p.save(&a, &set(&[("k", "1")])).await.unwrap(),
        "save created a record"
    );
    assert!(p.load(&a).await.unwrap().is_none());
    p.create(&a, &live(&[("k", "1")])).await.unwrap();
    p.destroy(&a).await.unwrap();
    assert!(
        !p.save(&a, &set(&[("k", "2")])).await.unwrap(),
        "save revived a destroyed record"
    );
    assert!(p.load(&a).await.unwrap().is_none());
    p.destroy(&a).await.unwrap(); // destroying a missing record is fine
}

pub async fn regenerate_moves_atomically(p: Arc<dyn Provider>) {
    let (a, b) = (id(), id());
    p.create(&a, &live(&[("user", "\"ann\"")])).await.unwrap();
    assert_eq!(p.regenerate(&a, &b).await.unwrap(), Regenerated::Moved);
    assert!(p.load(&a).await.unwrap().is_none(), "old id still alive");
    assert_eq!(
        values(&p.load(&b).await.unwrap().unwrap()),
        HashMap::from([("user", "\"ann\"")])
    );
    assert!(
        !p.save(&a, &set(&[("k", "1")])).await.unwrap(),
        "save revived the old id"
    );
    assert!(p.load(&a).await.unwrap().is_none());
    assert_eq!(p.regenerate(&a, &id()).await.unwrap(), Regenerated::Missing);
}

pub async fn regenerate_never_overwrites(p: Arc<dyn Provider>) {
    let (a, b) = (id(), id());
    p.create(&a, &live(&[("who", "a")])).await.unwrap();
    p.create(&b, &live(&[("who", "b")])).await.unwrap();
    assert_eq!(p.regenerate(&a, &b).await.unwrap(), Regenerated::Collision);
    assert_eq!(
        values(&p.load(&a).await.unwrap().unwrap()),
        HashMap::from([("who", "a")])
    );
    assert_eq!(
        values(&p.load(&b).await.unwrap().unwrap()),
        HashMap::from([("who", "b")])
    );
}

pub async fn expired_records_read_as_absent(p: Arc<dyn Provider>) {
    let a = id();
    assert!(
        p.create(&a, &record(&[("k", "1")], now_ms() - 1_000))
            .await
            .unwrap()
    );
    assert!(
        p.load(&a).await.unwrap().is_none(),
        "expired record was readable"
    );
    assert!(
        !p.save(&a, &set(&[("k", "2")])).await.unwrap(),
        "save revived an expired record"
    );
    assert!(
        p.create(&a, &live(&[("k", "3")])).await.unwrap(),
        "an expired record blocks its id"
    );
    assert_eq!(
        values(&p.load(&a).await.unwrap().unwrap()),
        HashMap::from([("k", "3")])
    );
}

pub async fn count_and_gc_see_only_live_records(p: Arc<dyn Provider>) {
    let before = p.count().await.unwrap();
    let live_ids: Vec<_> = (0..5).map(|_| id()).collect();
    for a in &live_ids {
        p.create(a, &live(&[("k", "1")])).await.unwrap();
    }
    for _ in 0..200 {
        p.create(&id(), &record(&[("k", "1")], now_ms() - 1_000))
            .await
            .unwrap();
    }
    assert_eq!(p.count().await.unwrap(), before + 5);
    p.gc().await.unwrap();
    assert_eq!(p.count().await.unwrap(), before + 5);
    for a in &live_ids {
        assert!(
            p.load(a).await.unwrap().is_some(),
            "gc removed a live record"
        );
        p.destroy(a).await.unwrap();
    }
    assert_eq!(p.count().await.unwrap(), before);
}

pub async fn concurrent_saves_of_distinct_keys_all_persist(p: Arc<dyn Provider>) {
    let a = id();
    p.create(&a, &live(&[])).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (p, a) = (Arc::clone(&p), a.clone());
            tokio::spawn(async move { p.save(&a, &set(&[(&format!("k{i}"), "1")])).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(p.load(&a).await.unwrap().unwrap().values.len(), 20);
}

/// `load_now` / `save_now` are optional; where a backend answers, it answers as `load` / `save`.
/// Returns whether the backend answered at once.
pub async fn answers_at_once_agree(p: Arc<dyn Provider>) -> bool {
    let a = id();
    p.create(&a, &live(&[("k", "1")])).await.unwrap();
    let Some(now) = p.load_now(&a) else {
        assert!(p.save_now(&a, &set(&[("k", "2")])).is_none());
        return false;
    };
    assert_eq!(now.unwrap(), p.load(&a).await.unwrap());
    assert!(p.load_now(&id()).unwrap().unwrap().is_none());
    assert!(p.save_now(&a, &set(&[("k", "2")])).unwrap().unwrap());
    assert_eq!(
        values(&p.load(&a).await.unwrap().unwrap()),
        HashMap::from([("k", "2")])
    );
    assert!(
        !p.save_now(&id(), &set(&[("k", "3")])).unwrap().unwrap(),
        "save_now created a session"
    );
    p.destroy(&a).await.unwrap();
    assert!(p.load_now(&a).unwrap().unwrap().is_none());
    true
}

/// Runs every clause against a backend: `conformance!(name, async-block-returning (provider, guard))`.
#[macro_export]
macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            conformance!(@tests $make;
                load_of_missing_is_none, create_is_insert_if_absent, save_merges_per_key,
                deleting_the_last_key_persists, save_refreshes_expiry, save_never_recreates,
                regenerate_moves_atomically, regenerate_never_overwrites,
                expired_records_read_as_absent, count_and_gc_see_only_live_records,
                concurrent_saves_of_distinct_keys_all_persist, answers_at_once_agree);
        }
    };
    (@tests $make:expr; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let (provider, _guard) = $make;
                $crate::suite::$test(provider).await;
            }
        )*
    };
}
