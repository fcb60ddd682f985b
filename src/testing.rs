//! The provider contract as a test suite (feature `testing`): run it against your own
//! [`Provider`] to check it keeps every promise sessioner relies on. The built-in backends
//! pass it the same way.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use sessioner::provider::memory::MemoryProvider;
//! use sessioner::{Clock, Provider};
//!
//! // `mod my_memory { #[test] fn load_of_missing_is_none() .. }`, one test per clause:
//! // `cargo test my_memory` runs this backend's clauses only.
//! # #[cfg(feature = "memory")]
//! sessioner::testing::conformance!(my_memory, {
//!     // Any expression, `.await` allowed: (a provider over empty storage, a guard).
//!     let provider: Arc<dyn Provider> = Arc::new(MemoryProvider::new(1_000, Clock::system()));
//!     (provider, ())
//! });
//! # fn main() {}
//! ```
//!
//! How the suite works:
//! - [`conformance!`] expands to a module named after the backend holding one `#[test]` per
//!   clause, so one failing clause, or one failing backend, hides no other result.
//! - The factory expression runs once per clause, inside the clause's runtime. It returns the
//!   provider, on **empty storage of its own**, and a guard kept alive until the clause ends
//!   (a temporary directory, a server; `()` if none).
//! - Each test builds its own multi-thread tokio runtime ([`block_on`]): your crate needs no
//!   tokio macros.
//! - Deadlines are judged by the system clock, so build the provider with
//!   [`Clock::system`](crate::Clock::system). A backend that deletes expired records by
//!   itself (redis TTLs) declares it with `expiry = ByBackend` ([`Expiry`]); its `gc` is then
//!   expected to find nothing to remove. A backend that cannot enumerate its records
//!   (memcached) declares `count = Unsupported` ([`Count`]): its `count` must be an error.
//! - The clause functions are public: call them from your own tests, inside a multi-thread
//!   tokio runtime. They check every result they get and panic on a breach, as assertions do.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use sessioner::Provider;
//! # fn redis_provider() -> Arc<dyn Provider> { unimplemented!() }
//! // A backend whose records expire by themselves: `gc` must return 0.
//! sessioner::testing::conformance!(my_redis, { (redis_provider(), ()) }, expiry = ByBackend);
//! # fn main() {}
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::clock::Clock;
use crate::id::SessionId;
use crate::provider::{Provider, Regenerated};
use crate::record::{ChangeSet, Record};

/// How expired records leave a backend; decides what [`gc_removes_and_counts_expired_records`]
/// expects `gc` to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// `gc` deletes every expired record and counts it (memory, file, sled).
    ByGc,
    /// The backend deletes expired records by itself (redis TTLs): `gc` finds none and
    /// returns 0. Expired records still must read as absent.
    ByBackend,
}

/// Whether a backend can count its sessions; decides which `count` clause [`conformance!`]
/// runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// `count` returns the number of live records ([`count_sees_only_live_records`]).
    Live,
    /// The backend cannot enumerate its records (memcached): `count` is an error, never a
    /// number ([`count_is_unsupported`]); the `gc` clause then checks records one by one.
    Unsupported,
}

/// Runs `future` to completion on a fresh multi-thread tokio runtime (two workers, time and
/// I/O enabled), as each test of [`conformance!`] does.
///
/// # Panics
///
/// If the runtime cannot be built, and whenever `future` panics.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance suite")
        .block_on(future)
}

/// One `#[test]` per clause of the provider contract, in a module named after the backend.
///
/// `conformance!(name, factory)`, optionally followed by `expiry = ByBackend` ([`Expiry`])
/// and/or `count = Unsupported` ([`Count`]), in that order: `factory` is an expression (it
/// may `.await`) evaluated once per clause, returning `(Arc<dyn Provider>, guard)`; see the
/// [module documentation](self).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance {
    ($name:ident, $make:expr, expiry = $expiry:ident, count = $count:ident $(,)?) => {
        // Outside test builds (a doctest) the tests are plain functions, still type-checked.
        #[allow(dead_code)]
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::__conformance!(@clauses $make;
                load_of_missing_is_none, create_is_insert_if_absent,
                racing_creates_of_one_id_have_one_winner, save_merges_per_key,
                deleting_the_last_key_persists, save_refreshes_expiry, save_never_recreates,
                regenerate_moves_atomically, regenerate_never_overwrites,
                expired_records_read_as_absent,
                concurrent_saves_of_distinct_keys_all_persist, fast_paths_agree);
            $crate::__conformance!(@count $count; $make; $expiry);
        }
    };
    ($name:ident, $make:expr, expiry = $expiry:ident $(,)?) => {
        $crate::__conformance!($name, $make, expiry = $expiry, count = Live);
    };
    ($name:ident, $make:expr, count = $count:ident $(,)?) => {
        $crate::__conformance!($name, $make, expiry = ByGc, count = $count);
    };
    ($name:ident, $make:expr $(,)?) => {
        $crate::__conformance!($name, $make, expiry = ByGc, count = Live);
    };
    (@count Live; $make:expr; $expiry:ident) => {
        $crate::__conformance!(@clauses $make; count_sees_only_live_records);
        $crate::__conformance!(@gc $make; $expiry; gc_removes_and_counts_expired_records);
    };
    (@count Unsupported; $make:expr; $expiry:ident) => {
        $crate::__conformance!(@clauses $make; count_is_unsupported);
        $crate::__conformance!(@gc $make; $expiry; gc_removes_expired_records_uncounted);
    };
    (@gc $make:expr; $expiry:ident; $clause:ident) => {
        #[cfg_attr(test, test)]
        fn $clause() {
            $crate::testing::block_on(async {
                let (provider, _guard) = $make;
                $crate::testing::$clause(provider, $crate::testing::Expiry::$expiry).await;
            });
        }
    };
    (@clauses $make:expr; $($clause:ident),*) => {
        $(
            #[cfg_attr(test, test)]
            fn $clause() {
                $crate::testing::block_on(async {
                    let (provider, _guard) = $make;
                    $crate::testing::$clause(provider).await;
                });
            }
        )*
    };
}

#[doc(inline)]
pub use crate::__conformance as conformance;

/// `pairs` as owned values.
fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn now_ms() -> u64 {
    Clock::system().now_ms()
}

fn id() -> SessionId {
    SessionId::generate(crate::id::DEFAULT_ID_LENGTH).expect("the OS random source")
}

fn record(pairs: &[(&str, &str)], expires_at: u64) -> Record {
    Record {
        values: map(pairs),
        expires_at,
        absolute_deadline: None,
    }
}

/// A record alive for an hour.
fn live(pairs: &[(&str, &str)]) -> Record {
    record(pairs, now_ms() + 3_600_000)
}

/// A record expired a second ago.
fn expired(pairs: &[(&str, &str)]) -> Record {
    record(pairs, now_ms().saturating_sub(1_000))
}

/// A change set setting `pairs`, with an idle deadline an hour away.
fn set(pairs: &[(&str, &str)]) -> ChangeSet {
    ChangeSet {
        set: map(pairs).into_iter().collect(),
        expires_at: now_ms() + 3_600_000,
        ..Default::default()
    }
}

/// `create`, asserting it stored the record.
async fn create(p: &dyn Provider, id: &SessionId, r: &Record) {
    assert!(
        p.create(id, r).await.unwrap(),
        "create refused a free id (collision on a fresh random id)"
    );
}

/// The values stored under `id`, asserting it is live.
async fn load_values(p: &dyn Provider, id: &SessionId) -> HashMap<String, String> {
    p.load(id)
        .await
        .unwrap()
        .expect("a live record read as absent")
        .values
}

/// Asserts a save to `id` is refused (`false`) and writes nothing.
async fn assert_save_refused(p: &dyn Provider, id: &SessionId, what: &str) {
    assert!(
        !p.save(id, &set(&[("k", "2")])).await.unwrap(),
        "save reported success on {what}"
    );
    assert_absent(p, id, &format!("save revived {what}")).await;
}

/// Asserts nothing live is stored under `id`, through `load` and `exists`.
async fn assert_absent(p: &dyn Provider, id: &SessionId, why: &str) {
    assert_eq!(p.load(id).await.unwrap(), None, "load: {why}");
    assert!(!p.exists(id).await.unwrap(), "exists: {why}");
}

/// `load`: an id never stored reads as `None`, and `exists` says `false`.
pub async fn load_of_missing_is_none(p: Arc<dyn Provider>) {
    assert_absent(&*p, &id(), "a never-stored id reads as absent").await;
}

/// `create`: inserts only if absent. A second `create` on a live id returns `false` and
/// leaves the first record as it was; `load` and `exists` see the stored record.
pub async fn create_is_insert_if_absent(p: Arc<dyn Provider>) {
    let a = id();
    create(&*p, &a, &live(&[("k", "1")])).await;
    assert!(
        !p.create(&a, &live(&[("k", "2")])).await.unwrap(),
        "create overwrote a live record"
    );
    assert_eq!(load_values(&*p, &a).await, map(&[("k", "1")]));
    assert!(p.exists(&a).await.unwrap(), "exists missed a live record");
}

/// `create`, racing: two tasks released together by a barrier create one id with different
/// records, 32 times over (a fresh id each round). Exactly one create returns `true`, and the
/// stored record is the winner's. Run it on a multi-thread runtime (as [`conformance!`]
/// does), so the two creates really overlap.
pub async fn racing_creates_of_one_id_have_one_winner(p: Arc<dyn Provider>) {
    for round in 0..32 {
        let a = id();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = ["first", "second"]
            .into_iter()
            .map(|who| {
                let (p, a, barrier) = (Arc::clone(&p), a.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    (who, p.create(&a, &live(&[("who", who)])).await.unwrap())
                })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            let (who, won) = racer.await.unwrap();
            if won {
                winners.push(who);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} of two racing creates of one id reported success",
            winners.len()
        );
        assert_eq!(
            load_values(&*p, &a).await,
            map(&[("who", winners[0])]),
            "round {round}: the stored record is not the winner's"
        );
    }
}

/// `save`: applies a change set per key (sets, deletes, flush) and returns `true` on a live
/// record; keys the change set does not name keep their values.
pub async fn save_merges_per_key(p: Arc<dyn Provider>) {
    let a = id();
    create(&*p, &a, &live(&[("base", "0")])).await;
    for change in [set(&[("x", "1")]), set(&[("y", "2")]), set(&[("x", "3")])] {
        assert!(
            p.save(&a, &change).await.unwrap(),
            "save missed a live record"
        );
    }
    let mut del = set(&[]);
    del.deleted.push("base".into());
    assert!(p.save(&a, &del).await.unwrap(), "save missed a live record");
    assert_eq!(load_values(&*p, &a).await, map(&[("x", "3"), ("y", "2")]));
    let mut flush = set(&[("z", "4")]);
    flush.flushed = true;
    assert!(
        p.save(&a, &flush).await.unwrap(),
        "save missed a live record"
    );
    assert_eq!(load_values(&*p, &a).await, map(&[("z", "4")]));
}

/// `save`: deleting the last key is saved; the emptied session stays a live session.
pub async fn deleting_the_last_key_persists(p: Arc<dyn Provider>) {
    let a = id();
    create(&*p, &a, &live(&[("only", "1")])).await;
    let mut del = set(&[]);
    del.deleted.push("only".into());
    assert!(p.save(&a, &del).await.unwrap(), "save missed a live record");
    assert_eq!(
        load_values(&*p, &a).await,
        HashMap::new(),
        "an emptied session is still a session, with no values"
    );
}

/// `save`: refreshes the idle deadline to the change set's `expires_at`.
pub async fn save_refreshes_expiry(p: Arc<dyn Provider>) {
    let a = id();
    create(&*p, &a, &record(&[("k", "1")], now_ms() + 60_000)).await;
    let mut touch = set(&[]);
    touch.expires_at = now_ms() + 7_200_000;
    assert!(
        p.save(&a, &touch).await.unwrap(),
        "save missed a live record"
    );
    let r = p.load(&a).await.unwrap().expect("a touched record is live");
    assert_eq!(
        r.expires_at, touch.expires_at,
        "save did not move the deadline"
    );
    assert_eq!(r.values, map(&[("k", "1")]));
}

/// `save` and `destroy`: a save never creates a record, nor revives a destroyed one (it
/// returns `false` and writes nothing); destroying a missing record is not an error.
pub async fn save_never_recreates(p: Arc<dyn Provider>) {
    let a = id();
    assert_save_refused(&*p, &a, "a missing record").await;
    create(&*p, &a, &live(&[("k", "1")])).await;
    p.destroy(&a).await.unwrap();
    assert_absent(&*p, &a, "destroy left the record").await;
    assert_save_refused(&*p, &a, "a destroyed record").await;
    p.destroy(&a).await.unwrap();
}

/// `regenerate`: moves the record to the new id (`Moved`); the old id is dead at once, a
/// save cannot revive it, and regenerating it again is `Missing` and creates nothing.
pub async fn regenerate_moves_atomically(p: Arc<dyn Provider>) {
    let (a, b) = (id(), id());
    create(&*p, &a, &live(&[("user", "\"ann\"")])).await;
    assert_eq!(p.regenerate(&a, &b).await.unwrap(), Regenerated::Moved);
    assert_absent(&*p, &a, "the old id is alive after regenerate").await;
    assert_eq!(load_values(&*p, &b).await, map(&[("user", "\"ann\"")]));
    assert_save_refused(&*p, &a, "a regenerated-away id").await;
    let c = id();
    assert_eq!(p.regenerate(&a, &c).await.unwrap(), Regenerated::Missing);
    assert_absent(&*p, &c, "regenerating a dead id created the new one").await;
    assert_eq!(load_values(&*p, &b).await, map(&[("user", "\"ann\"")]));
}

/// `regenerate`: a taken new id is `Collision`, and neither record changes.
pub async fn regenerate_never_overwrites(p: Arc<dyn Provider>) {
    let (a, b) = (id(), id());
    create(&*p, &a, &live(&[("who", "a")])).await;
    create(&*p, &b, &live(&[("who", "b")])).await;
    assert_eq!(p.regenerate(&a, &b).await.unwrap(), Regenerated::Collision);
    assert_eq!(load_values(&*p, &a).await, map(&[("who", "a")]));
    assert_eq!(load_values(&*p, &b).await, map(&[("who", "b")]));
}

/// Expiry is checked on every operation, not only by `gc`: an expired record reads as
/// absent, a save cannot revive it, regenerating it is `Missing`, and it does not hold its
/// id against a new `create`.
pub async fn expired_records_read_as_absent(p: Arc<dyn Provider>) {
    let a = id();
    create(&*p, &a, &expired(&[("k", "1")])).await;
    assert_absent(&*p, &a, "an expired record was readable").await;
    assert_save_refused(&*p, &a, "an expired record").await;
    let b = id();
    assert_eq!(p.regenerate(&a, &b).await.unwrap(), Regenerated::Missing);
    assert_absent(&*p, &b, "regenerate moved an expired record").await;
    assert!(
        p.create(&a, &live(&[("k", "3")])).await.unwrap(),
        "an expired record blocks its id"
    );
    assert_eq!(load_values(&*p, &a).await, map(&[("k", "3")]));
}

/// `count`: live records only, before and after destroys; expired ones never count. The
/// provider must start empty.
pub async fn count_sees_only_live_records(p: Arc<dyn Provider>) {
    assert_eq!(
        p.count().await.unwrap(),
        0,
        "the factory must build a provider over empty storage"
    );
    let ids: Vec<_> = (0..5).map(|_| id()).collect();
    for a in &ids {
        create(&*p, a, &live(&[("k", "1")])).await;
    }
    for _ in 0..20 {
        create(&*p, &id(), &expired(&[("k", "1")])).await;
    }
    assert_eq!(p.count().await.unwrap(), 5, "count saw expired records");
    for (n, a) in ids.iter().enumerate() {
        p.destroy(a).await.unwrap();
        assert_eq!(
            p.count().await.unwrap(),
            4 - n,
            "count saw a destroyed record"
        );
    }
}

/// `gc`: deletes every expired record and returns how many ([`Expiry::ByGc`]; 0 for
/// [`Expiry::ByBackend`]), in one call even past a batch; keeps every live record with its
/// values; a second `gc` finds nothing. The provider must start empty.
pub async fn gc_removes_and_counts_expired_records(p: Arc<dyn Provider>, expiry: Expiry) {
    gc_clause(p, expiry, Count::Live).await;
}

/// [`gc_removes_and_counts_expired_records`] for a backend with [`Count::Unsupported`]: the
/// same checks, except that the live records are checked one by one rather than counted.
pub async fn gc_removes_expired_records_uncounted(p: Arc<dyn Provider>, expiry: Expiry) {
    gc_clause(p, expiry, Count::Unsupported).await;
}

async fn gc_clause(p: Arc<dyn Provider>, expiry: Expiry, count: Count) {
    const EXPIRED: usize = 300;
    if count == Count::Live {
        assert_eq!(
            p.count().await.unwrap(),
            0,
            "the factory must build a provider over empty storage"
        );
    }
    let ids: Vec<_> = (0..5).map(|_| id()).collect();
    for (n, a) in ids.iter().enumerate() {
        create(&*p, a, &live(&[("n", &n.to_string())])).await;
    }
    let dead: Vec<_> = (0..EXPIRED).map(|_| id()).collect();
    for a in &dead {
        create(&*p, a, &expired(&[("k", "1")])).await;
    }
    let removed = p.gc().await.unwrap();
    let expected = match expiry {
        Expiry::ByGc => EXPIRED,
        Expiry::ByBackend => 0,
    };
    assert_eq!(
        removed, expected,
        "gc removed {removed} of {EXPIRED} expired records ({expiry:?})"
    );
    assert_eq!(
        p.gc().await.unwrap(),
        0,
        "a second gc found expired records left"
    );
    if count == Count::Live {
        assert_eq!(p.count().await.unwrap(), 5, "gc removed a live record");
    }
    for (n, a) in ids.iter().enumerate() {
        assert_eq!(load_values(&*p, a).await, map(&[("n", &n.to_string())]));
    }
    for a in dead.iter().step_by(10) {
        assert_absent(&*p, a, "an expired record is readable after gc").await;
    }
}

/// `count` on a backend that cannot enumerate its records: [`Error::Unsupported`](crate::Error::Unsupported),
/// before and after records are stored, never a number.
pub async fn count_is_unsupported(p: Arc<dyn Provider>) {
    let before = p.count().await;
    assert!(
        matches!(before, Err(crate::Error::Unsupported { .. })),
        "count answered {before:?} on empty storage"
    );
    create(&*p, &id(), &live(&[("k", "1")])).await;
    let after = p.count().await;
    assert!(
        matches!(after, Err(crate::Error::Unsupported { .. })),
        "count answered {after:?}"
    );
}

/// Concurrency: saves of different keys to one session, all at once, all persist (per-key
/// merge) and each returns `true`.
pub async fn concurrent_saves_of_distinct_keys_all_persist(p: Arc<dyn Provider>) {
    let a = id();
    create(&*p, &a, &live(&[])).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (p, a) = (Arc::clone(&p), a.clone());
            tokio::spawn(async move { p.save(&a, &set(&[(&format!("k{i}"), "1")])).await })
        })
        .collect();
    for t in tasks {
        assert!(
            t.await.unwrap().unwrap(),
            "a concurrent save missed a live record"
        );
    }
    let stored = load_values(&*p, &a).await;
    let expected: HashMap<String, String> =
        (0..20).map(|i| (format!("k{i}"), "1".into())).collect();
    assert_eq!(stored, expected, "a concurrent save was lost");
}

/// `load_now` / `save_now`: optional, but where they answer (`Some`) they answer exactly as
/// `load` / `save` would, for live, missing, destroyed and expired records; where they do
/// not (`None`) they changed nothing. Returns whether the backend answered the first
/// `load_now` of a live record.
pub async fn fast_paths_agree(p: Arc<dyn Provider>) -> bool {
    let (a, gone, old) = (id(), id(), id());
    create(&*p, &a, &live(&[("k", "1")])).await;
    create(&*p, &gone, &live(&[("k", "1")])).await;
    p.destroy(&gone).await.unwrap();
    create(&*p, &old, &expired(&[("k", "1")])).await;
    let answered = p.load_now(&a).is_some();
    for (who, sid) in [
        ("live", &a),
        ("missing", &id()),
        ("destroyed", &gone),
        ("expired", &old),
    ] {
        if let Some(now) = p.load_now(sid) {
            assert_eq!(
                now.unwrap(),
                p.load(sid).await.unwrap(),
                "load_now disagrees with load on a {who} record"
            );
        }
    }
    let change = set(&[("k", "2")]);
    match p.save_now(&a, &change) {
        Some(saved) => {
            assert!(saved.unwrap(), "save_now missed a live record");
            assert_eq!(
                load_values(&*p, &a).await,
                map(&[("k", "2")]),
                "save_now lost its change"
            );
        }
        None => assert_eq!(
            load_values(&*p, &a).await,
            map(&[("k", "1")]),
            "save_now wrote but answered None"
        ),
    }
    for (who, sid) in [("missing", id()), ("destroyed", gone), ("expired", old)] {
        if let Some(saved) = p.save_now(&sid, &set(&[("k", "3")])) {
            assert!(
                !saved.unwrap(),
                "save_now reported success on a {who} record"
            );
        }
        assert_absent(&*p, &sid, &format!("save_now revived a {who} record")).await;
    }
    answered
}
