//! Unit tests of the file provider's internals.

use super::*;

#[test]
fn a_lifecycle_save_pads_a_shorter_record_in_place_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = FileProvider::with_sync(dir.path(), Clock::system(), SyncMode::Lifecycle).unwrap();
    let i = &p.inner;
    let key = "ab".repeat(32);
    let record = |value: &str| Record {
        values: [("k".to_owned(), value.to_owned())].into(),
        expires_at: u64::MAX / 2,
        absolute_deadline: None,
    };
    i.write(&key, &record(&"x".repeat(100)), false).unwrap();
    let len = fs::metadata(i.path(&key)).unwrap().len();
    let changes = ChangeSet {
        set: vec![("k".to_owned(), "y".to_owned())],
        expires_at: u64::MAX / 2,
        ..Default::default()
    };
    assert!(i.save(&key, &changes, &i.lock(i.stripe(&key))).unwrap());
    assert_eq!(fs::metadata(i.path(&key)).unwrap().len(), len);
    assert_eq!(
        i.load(&key, &i.lock(i.stripe(&key))).unwrap(),
        Some(record("y"))
    );
    let other = "cd".repeat(32);
    assert!(
        !i.save(&other, &changes, &i.lock(i.stripe(&other))).unwrap(),
        "a save created a record"
    );
}

#[test]
fn config_forms() {
    let parse = |c| parse_config(c).map_err(|e| e.to_string());
    assert_eq!(parse(""), Ok((DEFAULT_DIR, SyncMode::Always)));
    assert_eq!(parse(" data/s "), Ok(("data/s", SyncMode::Always)));
    assert_eq!(parse("data_dir=x"), Ok(("x", SyncMode::Always)));
    assert_eq!(
        parse("data/s, sync=lifecycle"),
        Ok(("data/s", SyncMode::Lifecycle))
    );
    assert_eq!(
        parse("data_dir=a,b,sync=always"),
        Ok(("a,b", SyncMode::Always))
    );
    assert_eq!(
        parse(",sync=lifecycle"),
        Ok((DEFAULT_DIR, SyncMode::Lifecycle))
    );
    assert!(
        parse("data/s,sync=sometimes")
            .unwrap_err()
            .contains("sometimes")
    );
}

#[tokio::test]
async fn gc_and_count_over_thousands_of_files_make_many_bounded_blocking_calls() {
    const HOUR: u64 = 3_600_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let p = FileProvider::open(dir.path(), clock.clone()).unwrap();
    let i = &p.inner;
    let (mut expired, mut live) = (Vec::new(), Vec::new());
    for n in 0..3000 {
        let key = SessionId::generate(32).unwrap().storage_key();
        let ttl = if n % 3 == 0 { 1_000 } else { HOUR };
        let record = Record {
            expires_at: clock.now_ms() + ttl,
            ..Default::default()
        };
        i.write(&key, &record, false).unwrap();
        if n % 3 == 0 { &mut expired } else { &mut live }.push(key);
    }
    clock.advance(std::time::Duration::from_secs(60));
    let batches = || std::mem::take(&mut *i.batches.lock().unwrap());
    let check = |sizes: Vec<usize>| {
        assert!(sizes.len() > 3000 / scan::BATCH, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= scan::BATCH), "{sizes:?}");
    };

    assert_eq!(p.count().await.unwrap(), live.len());
    check(batches());
    assert_eq!(p.gc().await.unwrap(), expired.len());
    check(batches());
    assert!(expired.iter().all(|key| !i.path(key).exists()));
    assert!(live.iter().all(|key| i.path(key).exists()));
    assert_eq!(p.count().await.unwrap(), live.len());
}

/// A load as the store makes it: at once if the provider can, else through `load`.
async fn load_as_store(p: &FileProvider, id: &SessionId) -> Result<Option<Record>> {
    match p.load_now(id) {
        Some(done) => done,
        None => p.load(id).await,
    }
}

/// A save as the store makes it.
async fn save_as_store(p: &FileProvider, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
    match p.save_now(id, changes) {
        Some(done) => done,
        None => p.save(id, changes).await,
    }
}

#[test]
fn r12_file_load_now_and_save_now_never_wait_for_a_held_stripe_lock() {
    use std::sync::mpsc;
    use std::time::Duration;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::system();
        let p = Arc::new(
            FileProvider::with_sync(dir.path(), clock.clone(), SyncMode::Lifecycle).unwrap(),
        );
        let id = SessionId::generate(32).unwrap();
        let expires_at = clock.now_ms() + 3_600_000;
        let record = Record {
            expires_at,
            ..Default::default()
        };
        assert!(p.create(&id, &record).await.unwrap());
        let changes = ChangeSet {
            set: vec![("k".to_owned(), "1".to_owned())],
            expires_at,
            ..Default::default()
        };

        // Another thread holds the session's stripe lock, as create does across two fsyncs.
        let (held, is_held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let (inner, key) = (Arc::clone(&p.inner), id.storage_key());
        let holder = std::thread::spawn(move || {
            let _guard = inner.lock(inner.stripe(&key));
            held.send(()).unwrap();
            // The test releases it; the timeout only ends a test that already failed.
            let _ = released.recv_timeout(Duration::from_secs(10));
        });
        is_held.recv().unwrap();

        assert!(p.load_now(&id).is_none(), "load_now waited for the lock");
        assert!(p.save_now(&id, &changes).is_none(), "save_now waited");

        // The store's fallback waits on the blocking pool; this runtime's only thread is free.
        let (p1, id1) = (Arc::clone(&p), id.clone());
        let load = tokio::spawn(async move { load_as_store(&p1, &id1).await });
        let (p2, id2, changes2) = (Arc::clone(&p), id.clone(), changes.clone());
        let save = tokio::spawn(async move { save_as_store(&p2, &id2, &changes2).await });
        assert_eq!(tokio::spawn(async { 42 }).await.unwrap(), 42);
        assert!(!load.is_finished() && !save.is_finished());

        release.send(()).unwrap();
        assert!(load.await.unwrap().unwrap().is_some());
        assert!(save.await.unwrap().unwrap());
        holder.join().unwrap();
        let saved = load_as_store(&p, &id).await.unwrap().unwrap();
        assert_eq!(saved.values["k"], "1");
    });
}

/// R1, R5: a blocking file call that waits past its timeout (here on the session's stripe
/// lock, held as a create holds it across its `fsync`s, or as a hung disk would hold the
/// call) is a 503 with the cookie kept, other sessions and routes are served, and the
/// session answers again afterwards; in both sync modes.
#[tokio::test]
async fn r5_r1_file_a_call_past_its_timeout_is_a_503_and_the_app_recovers() {
    use crate::provider::blocking::test_app::Reply;
    use crate::provider::blocking::test_app::{Held, get, service, unavailable_then_recovers};

    for sync in [SyncMode::Always, SyncMode::Lifecycle] {
        let dir = tempfile::tempdir().unwrap();
        let p = FileProvider::with_sync(dir.path(), Clock::system(), sync)
            .unwrap()
            .with_timeout(std::time::Duration::from_millis(200));
        let inner = Arc::clone(&p.inner);
        let svc = service(Arc::new(p));
        let login = |value: &'static str| {
            let svc = &svc;
            async move {
                let r: Reply = get(svc, &format!("/set?key=user&value={value}"), None).await;
                assert_eq!(r.status, 200, "{sync:?}");
                r.session.unwrap()
            }
        };
        let stuck = login("ann").await;
        let stripe =
            |cookie: &str| inner.stripe(&SessionId::parse(cookie, 32).unwrap().storage_key());
        let mut other = login("bob").await;
        while stripe(&other) == stripe(&stuck) {
            other = login("bob").await;
        }
        let (held_inner, held_stripe) = (Arc::clone(&inner), stripe(&stuck));
        let held = Held::new(move |wait| {
            let _guard = held_inner.lock(held_stripe);
            wait();
        });
        unavailable_then_recovers(&svc, &stuck, &other, held).await;
    }
}
