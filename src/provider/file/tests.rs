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
    assert!(i.save(&key, &changes).unwrap());
    assert_eq!(fs::metadata(i.path(&key)).unwrap().len(), len);
    assert_eq!(i.load(&key).unwrap(), Some(record("y")));
    assert!(
        !i.save(&"cd".repeat(32), &changes).unwrap(),
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
