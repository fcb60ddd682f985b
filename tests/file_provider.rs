//! The file provider beyond the conformance suite: what GC and writes do with a record file
//! that cannot be read (R11).
//!
//! A real transient read error: on Linux, reading `/proc/self/mem` at offset 0 fails with
//! `EIO` (address 0 is never mapped), so a record path replaced by a symlink to it opens
//! fine and then fails to read, as a record on a failing disk does. Hence Linux only.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sessioner::provider::file::{FileProvider, SyncMode};
use sessioner::{Clock, Provider, Record, SessionId};

const HOUR: u64 = 3_600_000;

fn id() -> SessionId {
    SessionId::generate(32).unwrap()
}

fn record(clock: &Clock, value: &str, ttl_ms: u64) -> Record {
    Record {
        values: [("k".to_owned(), value.to_owned())].into(),
        expires_at: clock.now_ms() + ttl_ms,
        absolute_deadline: None,
    }
}

/// Where the provider rooted at `root` keeps the record of `id`.
fn record_path(root: &Path, id: &SessionId) -> PathBuf {
    let key = id.storage_key();
    root.join(&key[..2]).join(&key)
}

/// Replaces the file at `path` (if any) with a symlink whose reads fail with `EIO`.
fn make_unreadable(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink("/proc/self/mem", path).unwrap();
    let err = std::fs::read(path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "expected EIO, got {err}");
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[tokio::test]
async fn r11_file_gc_keeps_a_record_it_cannot_read_and_removes_expired_and_undecodable_ones() {
    for sync in [SyncMode::Always, SyncMode::Lifecycle] {
        let dir = tempfile::tempdir().unwrap();
        let (root, aside) = (dir.path().join("s"), dir.path().join("aside"));
        let clock = Clock::manual();
        let p = FileProvider::with_sync(&root, clock.clone(), sync).unwrap();
        let (live, expired, damaged) = (id(), id(), id());
        assert!(p.create(&live, &record(&clock, "1", HOUR)).await.unwrap());
        assert!(
            p.create(&expired, &record(&clock, "2", 1_000))
                .await
                .unwrap()
        );
        assert!(
            p.create(&damaged, &record(&clock, "3", HOUR))
                .await
                .unwrap()
        );
        std::fs::write(record_path(&root, &damaged), b"not a record").unwrap();
        clock.advance(Duration::from_secs(60));

        // The live record becomes unreadable for the duration of the collection.
        let path = record_path(&root, &live);
        std::fs::rename(&path, &aside).unwrap();
        make_unreadable(&path);
        assert_eq!(p.gc().await.unwrap(), 2, "{sync:?}");
        assert!(
            is_symlink(&path),
            "{sync:?}: GC deleted an unreadable record"
        );
        assert!(!record_path(&root, &expired).exists(), "{sync:?}");
        assert!(!record_path(&root, &damaged).exists(), "{sync:?}");
        assert_eq!(p.count().await.unwrap(), 0, "{sync:?}");

        // Readable again: the session is intact.
        std::fs::rename(&aside, &path).unwrap();
        assert_eq!(p.count().await.unwrap(), 1, "{sync:?}");
        let loaded = p.load(&live).await.unwrap().unwrap();
        assert_eq!(loaded.values["k"], "1", "{sync:?}");
    }
}

#[tokio::test]
async fn r11_file_create_and_regenerate_never_overwrite_a_record_they_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let clock = Clock::manual();
    let p = FileProvider::open(&root, clock.clone()).unwrap();
    let (taken, old) = (id(), id());
    make_unreadable(&record_path(&root, &taken));

    assert!(
        p.create(&taken, &record(&clock, "new", HOUR))
            .await
            .is_err()
    );
    assert!(
        is_symlink(&record_path(&root, &taken)),
        "create overwrote it"
    );

    assert!(p.create(&old, &record(&clock, "old", HOUR)).await.unwrap());
    assert!(p.regenerate(&old, &taken).await.is_err());
    assert!(
        is_symlink(&record_path(&root, &taken)),
        "regenerate overwrote it"
    );
    let kept = p.load(&old).await.unwrap().unwrap();
    assert_eq!(kept.values["k"], "old", "the old id died");
}
