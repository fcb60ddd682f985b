//! The sled provider beyond the conformance suite: durability across reopening, the
//! directory lock, hashed keys (S5), GC through the coarse expiry index, stale index
//! entries, concurrent writers, and the modes of sled's files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
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
    let p = reopen_provider(&path, &clock);
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
    #[cfg(unix)]
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o700
    );
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
    // sled releases the lock from a background thread just after the last handle drops.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let p = std::iter::repeat_with(std::time::Instant::now)
        .take_while(|now| *now < deadline)
        .find_map(|_| match build("ledis", &ctx) {
            Err(Error::ProviderConfig { reason, .. }) if reason.contains("in use") => {
                std::thread::yield_now();
                None
            }
            other => Some(other),
        })
        .expect("the directory stayed locked")
        .unwrap();
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
    let db = reopen(&path);
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

const RECORDS: &str = "sessioner/records";
const EXPIRY: &str = "sessioner/expiry";

/// An expiry index key as the provider writes it: the bucket, big-endian, then the storage key.
fn entry(bucket: u64, sid: &SessionId) -> Vec<u8> {
    let mut key = bucket.to_be_bytes().to_vec();
    key.extend_from_slice(sid.storage_key().as_bytes());
    key
}

/// Opens the database directly once the provider has closed it. sled releases its directory
/// lock from a background thread just after the last handle drops, so a refusal is retried
/// for a moment (polling, not sleeping).
fn reopen(path: &Path) -> sled::Db {
    // Bounded by time, not tries: a loaded machine yields slowly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match sled::open(path) {
            Ok(db) => return db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                std::thread::yield_now();
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
    panic!("{} stayed locked after the provider closed", path.display());
}

/// [`reopen`] for the provider itself.
fn reopen_provider(path: &Path, clock: &Clock) -> SledProvider {
    // Bounded by time, not tries: a loaded machine yields slowly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match SledProvider::open(path, clock.clone()) {
            Ok(p) => return p,
            Err(Error::ProviderConfig { reason, .. }) if reason.contains("in use") => {
                std::thread::yield_now();
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
    panic!("{} stayed locked after the provider closed", path.display());
}

/// The index entries of a closed database, as (bucket, storage key).
fn index_of(path: &Path) -> Vec<(u64, String)> {
    let db = reopen(path);
    db.open_tree(EXPIRY)
        .unwrap()
        .iter()
        .keys()
        .map(|k| {
            let k = k.unwrap();
            let (bucket, key) = k.split_at(8);
            (
                u64::from_be_bytes(bucket.try_into().unwrap()),
                String::from_utf8(key.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn records_of(path: &Path) -> usize {
    reopen(path).open_tree(RECORDS).unwrap().len()
}

fn round_up(deadline: u64, bucket: u64) -> u64 {
    deadline.div_ceil(bucket) * bucket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_holds_coarse_buckets_and_moves_only_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::manual();
    // A lifetime of 10 s: buckets of 1 s.
    let lifetime = Duration::from_secs(10);
    let (same, moved) = (id(), id());
    let base = round_up(clock.now_ms(), 1_000) + 10_000;
    let (same_deadline, moved_deadline) = {
        let p = SledProvider::open_with_lifetime(&path, clock.clone(), lifetime).unwrap();
        for sid in [&same, &moved] {
            let mut r = record(&clock, &[("k", "1")], 0);
            r.expires_at = base + 100;
            assert!(p.create(sid, &r).await.unwrap());
        }
        // Within the bucket, then into the next one.
        let mut within = set(&clock, "k", "2");
        within.expires_at = base + 900;
        assert!(p.save(&same, &within).await.unwrap());
        let mut across = set(&clock, "k", "3");
        across.expires_at = base + 1_500;
        assert!(p.save(&moved, &across).await.unwrap());
        (within.expires_at, across.expires_at)
    };
    let mut index = index_of(&path);
    index.sort();
    let mut expected = vec![
        (round_up(same_deadline, 1_000), same.storage_key()),
        (round_up(moved_deadline, 1_000), moved.storage_key()),
    ];
    expected.sort();
    assert_eq!(
        index, expected,
        "one entry per record, in its deadline's bucket"
    );
    assert_eq!(expected[0].0, base + 1_000);
    assert_eq!(expected[1].0, base + 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_and_count_treat_index_entries_as_hints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::manual();
    let lifetime = Duration::from_secs(10);
    let (a, b, ghost) = (id(), id(), id());
    {
        let p = SledProvider::open_with_lifetime(&path, clock.clone(), lifetime).unwrap();
        for sid in [&a, &b] {
            assert!(
                p.create(sid, &record(&clock, &[("k", "1")], 5_000))
                    .await
                    .unwrap()
            );
        }
    }
    // What a crash between the steps of a write leaves behind: a stale entry of `a` (an
    // earlier deadline), a later duplicate of `b`, and entries of a record that never landed.
    let now = clock.now_ms();
    {
        let db = reopen(&path);
        let expiry = db.open_tree(EXPIRY).unwrap();
        for key in [
            entry(now - 60_000, &a),
            entry(now + 60_000, &b),
            entry(now - 60_000, &ghost),
            entry(now + 120_000, &ghost),
        ] {
            expiry.insert(key, &[][..]).unwrap();
        }
        db.flush().unwrap();
    }
    assert_eq!(index_of(&path).len(), 6);
    {
        let p = SledProvider::open_with_lifetime(&path, clock.clone(), lifetime).unwrap();
        assert_eq!(p.count().await.unwrap(), 2, "count trusted the index");
        assert_eq!(p.gc().await.unwrap(), 0, "gc removed a live record");
        assert_eq!(p.count().await.unwrap(), 2);
        for sid in [&a, &b] {
            assert!(p.load(sid).await.unwrap().is_some());
        }
    }
    // The past entries without a record behind them are gone; the rest stays.
    let mut left: Vec<_> = index_of(&path).into_iter().map(|(_, k)| k).collect();
    left.sort();
    let mut expected = vec![
        a.storage_key(),
        b.storage_key(),
        b.storage_key(),
        ghost.storage_key(),
    ];
    expected.sort();
    assert_eq!(left, expected);
    {
        let p = SledProvider::open_with_lifetime(&path, clock.clone(), lifetime).unwrap();
        // Both expire; each is collected through an entry of its own.
        clock.advance(Duration::from_secs(6));
        assert_eq!(p.count().await.unwrap(), 0);
        assert_eq!(p.gc().await.unwrap(), 2);
        assert_eq!(p.gc().await.unwrap(), 0);
        // Once their buckets are due, the left-over entries are dropped too.
        clock.advance(Duration::from_secs(180));
        assert_eq!(p.gc().await.unwrap(), 0);
    }
    assert_eq!(records_of(&path), 0);
    assert_eq!(index_of(&path), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_from_many_tasks_all_land_and_stay_collectable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    // Buckets of 100 ms: the saves below move the deadlines back and forth across several.
    let lifetime = Duration::from_secs(1);
    let p = Arc::new(
        SledProvider::open_with_lifetime(dir.path().join("db"), clock.clone(), lifetime).unwrap(),
    );
    const SESSIONS: usize = 4;
    const TASKS: usize = 16;
    const SAVES: usize = 25;
    let sids: Vec<SessionId> = (0..SESSIONS).map(|_| id()).collect();
    for sid in &sids {
        assert!(p.create(sid, &record(&clock, &[], 1_000)).await.unwrap());
    }
    let now = clock.now_ms();
    let tasks: Vec<_> = (0..SESSIONS * TASKS)
        .map(|i| {
            let (p, sid, t) = (Arc::clone(&p), sids[i % SESSIONS].clone(), i / SESSIONS);
            tokio::spawn(async move {
                for n in 0..SAVES {
                    let mut changes = ChangeSet::default();
                    changes.set.push((format!("t{t}"), n.to_string()));
                    changes.expires_at = now + 1_000 + ((t * 7 + n * 13) % 50) as u64 * 10;
                    assert!(p.save(&sid, &changes).await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for sid in &sids {
        let r = p.load(sid).await.unwrap().unwrap();
        assert_eq!(r.values.len(), TASKS);
        for t in 0..TASKS {
            assert_eq!(
                r.values[&format!("t{t}")],
                (SAVES - 1).to_string(),
                "task {t}"
            );
        }
    }
    assert_eq!(p.count().await.unwrap(), SESSIONS);
    // Whatever the interleaving, every record kept an index entry that gc finds.
    clock.advance(Duration::from_secs(2));
    assert_eq!(p.count().await.unwrap(), 0);
    assert_eq!(
        p.gc().await.unwrap(),
        SESSIONS,
        "a record lost its index entry"
    );
    assert_eq!(p.gc().await.unwrap(), 0);
}

/// Creates a session, then races `tasks` tasks (each saving its own key until a save is
/// refused) against a regenerate to a new id and, with `persist`, against the write-behind
/// writer. Asserts the old id is dead and that exactly the accepted saves moved along;
/// returns the ids and the moved record.
async fn race_saves_with_a_regenerate(
    p: &Arc<SledProvider>,
    clock: &Clock,
    tasks: usize,
    persist: bool,
) -> (SessionId, SessionId, Record) {
    let (old, new) = (id(), id());
    assert!(p.create(&old, &record(clock, &[], HOUR)).await.unwrap());
    let savers: Vec<_> = (0..tasks)
        .map(|t| {
            let (p, old, clock) = (Arc::clone(p), old.clone(), clock.clone());
            tokio::spawn(async move {
                let mut last = None;
                for n in 0..200 {
                    let changes = set(&clock, &format!("t{t}"), &n.to_string());
                    if !p.save(&old, &changes).await.unwrap() {
                        break;
                    }
                    last = Some(n);
                    tokio::task::yield_now().await;
                }
                last
            })
        })
        .collect();
    let writer = persist.then(|| {
        let p = Arc::clone(p);
        tokio::spawn(async move {
            for _ in 0..10 {
                p.persist().await.unwrap();
            }
        })
    });
    let regen = {
        let (p, old, new) = (Arc::clone(p), old.clone(), new.clone());
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            p.regenerate(&old, &new).await.unwrap()
        })
    };
    let mut accepted = Vec::new();
    for s in savers {
        accepted.push(s.await.unwrap());
    }
    if let Some(writer) = writer {
        writer.await.unwrap();
    }
    assert_eq!(regen.await.unwrap(), Regenerated::Moved);
    assert!(p.load(&old).await.unwrap().is_none(), "the old id survived");
    let moved = p.load(&new).await.unwrap().expect("the session was lost");
    for (t, last) in accepted.iter().enumerate() {
        assert_eq!(
            moved.values.get(&format!("t{t}")),
            last.map(|n| n.to_string()).as_ref(),
            "task {t}: an accepted save was lost, or a refused one landed"
        );
    }
    (old, new, moved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_racing_a_regenerate_are_carried_over_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let p = Arc::new(SledProvider::open(dir.path().join("db"), clock.clone()).unwrap());
    for _ in 0..20 {
        let (_, new, _) = race_saves_with_a_regenerate(&p, &clock, 8, false).await;
        p.destroy(&new).await.unwrap();
    }
    assert_eq!(p.count().await.unwrap(), 0);
}

// --- The write-behind cache -------------------------------------------------------------

/// The record a closed database holds for `sid`, decoded.
fn stored(db: &sled::Db, sid: &SessionId) -> Option<Record> {
    db.open_tree(RECORDS)
        .unwrap()
        .get(sid.storage_key())
        .unwrap()
        .map(|bytes| Record::decode(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_are_coalesced_and_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::system();
    let (sid, other) = (id(), id());
    {
        let p = SledProvider::open(&path, clock.clone()).unwrap();
        assert!(p.create(&sid, &record(&clock, &[], HOUR)).await.unwrap());
        assert!(p.create(&other, &record(&clock, &[], HOUR)).await.unwrap());
        for n in 0..100 {
            assert!(
                p.save(&sid, &set(&clock, "n", &n.to_string()))
                    .await
                    .unwrap()
            );
        }
        assert_eq!(p.persist().await.unwrap(), 1, "100 saves, one write");
        assert_eq!(p.persist().await.unwrap(), 0, "nothing left to write");
        // Saves the writer has not stored yet: dropping the provider writes them.
        assert!(p.save(&sid, &set(&clock, "last", "1")).await.unwrap());
        assert!(
            p.save_now(&other, &set(&clock, "fast", "1"))
                .unwrap()
                .unwrap()
        );
    }
    let db = reopen(&path);
    let r = stored(&db, &sid).expect("the session reached the disk");
    assert_eq!(r.values["n"], "99");
    assert_eq!(r.values["last"], "1");
    assert_eq!(stored(&db, &other).unwrap().values["fast"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_racing_the_writer_never_resurrects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::system();
    const SESSIONS: usize = 16;
    let mut all = Vec::new();
    {
        let p = Arc::new(SledProvider::open(&path, clock.clone()).unwrap());
        for _ in 0..10 {
            let sids: Vec<SessionId> = (0..SESSIONS).map(|_| id()).collect();
            for sid in &sids {
                assert!(p.create(sid, &record(&clock, &[], HOUR)).await.unwrap());
            }
            let mut tasks = Vec::new();
            for sid in &sids {
                let (p, sid, clock) = (Arc::clone(&p), sid.clone(), clock.clone());
                tasks.push(tokio::spawn(async move {
                    for n in 0..50 {
                        // Accepted until the destroy, refused afterwards.
                        let _ = p
                            .save(&sid, &set(&clock, "n", &n.to_string()))
                            .await
                            .unwrap();
                        tokio::task::yield_now().await;
                    }
                }));
            }
            {
                let (p, sids) = (Arc::clone(&p), sids.clone());
                tasks.push(tokio::spawn(async move {
                    for sid in &sids {
                        tokio::task::yield_now().await;
                        p.destroy(sid).await.unwrap();
                    }
                }));
            }
            {
                let p = Arc::clone(&p);
                tasks.push(tokio::spawn(async move {
                    for _ in 0..20 {
                        p.persist().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            for sid in &sids {
                assert!(
                    p.load(sid).await.unwrap().is_none(),
                    "a destroyed session came back"
                );
                assert!(!p.save(sid, &set(&clock, "late", "1")).await.unwrap());
            }
            all.extend(sids);
        }
        p.persist().await.unwrap();
        assert_eq!(p.count().await.unwrap(), 0);
    }
    let db = reopen(&path);
    for sid in &all {
        assert!(
            stored(&db, sid).is_none(),
            "a destroyed session reached the disk"
        );
    }
    assert_eq!(db.open_tree(RECORDS).unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regenerate_racing_saves_and_the_writer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::system();
    let mut moved = Vec::new();
    {
        let p = Arc::new(SledProvider::open(&path, clock.clone()).unwrap());
        for _ in 0..10 {
            moved.push(race_saves_with_a_regenerate(&p, &clock, 6, true).await);
        }
    }
    let db = reopen(&path);
    for (old, new, r) in &moved {
        assert!(stored(&db, old).is_none(), "the old id reached the disk");
        assert_eq!(stored(&db, new).as_ref(), Some(r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_and_count_judge_deadlines_only_the_cache_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::manual();
    let lifetime = Duration::from_secs(10);
    let (extended, shortened, untouched) = (id(), id(), id());
    {
        let p = SledProvider::open_with_lifetime(&path, clock.clone(), lifetime).unwrap();
        assert!(
            p.create(&extended, &record(&clock, &[], 1_000))
                .await
                .unwrap()
        );
        assert!(
            p.create(&shortened, &record(&clock, &[], 60_000))
                .await
                .unwrap()
        );
        assert!(
            p.create(&untouched, &record(&clock, &[], 1_000))
                .await
                .unwrap()
        );
        // Dirty, never persisted: sled still holds the old deadlines.
        let mut longer = set(&clock, "k", "1");
        longer.expires_at = clock.now_ms() + 60_000;
        assert!(p.save(&extended, &longer).await.unwrap());
        let mut shorter = set(&clock, "k", "2");
        shorter.expires_at = clock.now_ms() + 1_000;
        assert!(p.save(&shortened, &shorter).await.unwrap());

        clock.advance(Duration::from_secs(2));
        assert_eq!(
            p.count().await.unwrap(),
            1,
            "count missed the cache's deadlines"
        );
        assert!(p.save(&extended, &longer).await.unwrap());
        assert_eq!(p.gc().await.unwrap(), 2, "gc missed or removed a session");
        assert_eq!(p.gc().await.unwrap(), 0);
        assert_eq!(p.load(&extended).await.unwrap().unwrap().values["k"], "1");
        assert!(p.load(&shortened).await.unwrap().is_none());
        assert!(p.load(&untouched).await.unwrap().is_none());
        assert_eq!(p.count().await.unwrap(), 1);
    }
    let db = reopen(&path);
    assert_eq!(db.open_tree(RECORDS).unwrap().len(), 1);
    assert_eq!(
        stored(&db, &extended).unwrap().expires_at,
        clock.now_ms() + 58_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cache_evicts_without_losing_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::system();
    let sids: Vec<SessionId> = (0..50).map(|_| id()).collect();
    {
        // Through the registry's config form: a bound of 4 sessions.
        let ctx = ProviderContext::new(
            format!("data_dir={},cache=4", path.display()),
            clock.clone(),
            Duration::from_secs(3600),
        );
        let p = build("sled", &ctx).unwrap();
        assert!(format!("{p:?}").contains("cache_capacity: 4"));
        for sid in &sids {
            assert!(
                p.create(sid, &record(&clock, &[("k", "0")], HOUR))
                    .await
                    .unwrap()
            );
        }
        for round in 1..=3 {
            for (i, sid) in sids.iter().enumerate() {
                let changes = set(&clock, &format!("r{round}"), &i.to_string());
                assert!(p.save(sid, &changes).await.unwrap());
            }
        }
        for (i, sid) in sids.iter().enumerate() {
            let r = p.load(sid).await.unwrap().unwrap();
            assert_eq!(r.values.len(), 4);
            assert_eq!(r.values["r3"], i.to_string());
        }
        assert_eq!(p.count().await.unwrap(), sids.len());
    }
    let p = reopen_provider(&path, &clock);
    for (i, sid) in sids.iter().enumerate() {
        let r = p.load(sid).await.unwrap().unwrap();
        for round in 1..=3 {
            assert_eq!(r.values[&format!("r{round}")], i.to_string());
        }
    }
}

/// Every file and folder under `path` (recursively): its path, whether it is a folder, its mode.
#[cfg(unix)]
fn modes_under(path: &Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    let mut found = Vec::new();
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            // sled removes old snapshots and blobs as it goes.
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                folders.push(entry.path());
            }
            found.push((
                entry.path(),
                meta.is_dir(),
                meta.permissions().mode() & 0o7777,
            ));
        }
    }
    found
}

/// Asserts every file sled made under `path` is `0600` and every folder `0700`, leaving the
/// one file of someone else's (`notes.txt`, `0644`) alone; returns the names found.
#[cfg(unix)]
fn assert_private(path: &Path, when: &str) -> Vec<String> {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{when}: the directory itself");
    let mut names = Vec::new();
    for (entry, is_dir, mode) in modes_under(path) {
        let name = entry.strip_prefix(path).unwrap().display().to_string();
        let expected = match (name.as_str(), is_dir) {
            ("notes.txt", _) => 0o644,
            (_, true) => 0o700,
            (_, false) => 0o600,
        };
        assert_eq!(mode, expected, "{when}: {name} has mode {mode:o}");
        names.push(name);
    }
    names
}

/// sled creates its files with the process umask; the provider makes them private when it
/// opens, after a write pass (`persist`) and when it closes, including the blobs sled writes
/// for large records and the snapshot it writes when it reopens.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_files_are_private_after_open_persist_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Clock::system();
    // Large enough for sled to store it as a blob of its own (over a quarter of a segment).
    let large = format!("\"{}\"", "x".repeat(200_000));
    let (small, big, grown) = (id(), id(), id());
    {
        let p = SledProvider::open(&path, clock.clone()).unwrap();
        assert_private(&path, "after open");
        assert!(
            p.create(&small, &record(&clock, &[("k", "1")], HOUR))
                .await
                .unwrap()
        );
        assert!(
            p.create(&big, &record(&clock, &[("v", &large)], HOUR))
                .await
                .unwrap()
        );
        assert!(p.create(&grown, &record(&clock, &[], HOUR)).await.unwrap());
        assert!(p.save(&grown, &set(&clock, "v", &large)).await.unwrap());
        p.persist().await.unwrap();
        let names = assert_private(&path, "after persist");
        assert!(
            names.iter().any(|n| n.starts_with("blobs/")),
            "no blob was written: {names:?}"
        );
    }
    assert_private(&path, "after close");

    // Files left with a umask's modes (another process's umask, a restore from a backup),
    // and a file that is not sled's.
    for (entry, is_dir, _) in modes_under(&path) {
        let loose = if is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(loose)).unwrap();
    }
    std::fs::write(path.join("notes.txt"), "not sled's").unwrap();
    std::fs::set_permissions(
        path.join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let p = reopen_provider(&path, &clock);
    let names = assert_private(&path, "after reopening");
    assert!(names.iter().any(|n| n.starts_with("snap.")), "{names:?}");
    assert_eq!(p.load(&big).await.unwrap().unwrap().values["v"], large);
    assert_eq!(p.load(&grown).await.unwrap().unwrap().values["v"], large);
    assert_eq!(p.load(&small).await.unwrap().unwrap().values["k"], "1");
}
