//! The file provider beyond the conformance suite: what GC and writes do with a record file
//! that cannot be read (R11), and writes that fail under the middleware (R2).
//!
//! A real transient read error: on Linux, reading `/proc/self/mem` at offset 0 fails with
//! `EIO` (address 0 is never mapped), so a record path replaced by a symlink to it opens
//! fine and then fails to read, as a record on a failing disk does. Hence Linux only.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Browser, Slow, router};
use salvo::prelude::{Router, Service};
use sessioner::provider::file::{FileProvider, SyncMode};
use sessioner::{Clock, Options, Provider, Record, SessionId};
use tokio::sync::Notify;

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

/// The test app on a file store at `root`, plus `/slow` ([`Slow`]: loads, waits, then sets).
fn app(root: &Path, sync: &str, slow: Slow) -> Arc<Service> {
    let options = Options {
        provider: "file".into(),
        provider_config: format!("{},sync={sync}", root.display()),
        ..Default::default()
    };
    let handler = options.build().unwrap();
    Arc::new(Service::new(
        router(handler).push(Router::with_path("slow").get(slow)),
    ))
}

/// Puts a file where the directory `dir` must be (moving the directory aside if it exists),
/// so nothing can be created or written under it, as root too (a mode would not stop root);
/// returns the function that undoes it.
fn block(dir: PathBuf) -> impl FnOnce() {
    let aside = dir.with_extension("aside");
    let existed = dir.exists();
    if existed {
        std::fs::rename(&dir, &aside).unwrap();
    }
    std::fs::write(&dir, b"not a directory").unwrap();
    move || {
        std::fs::remove_file(&dir).unwrap();
        if existed {
            std::fs::rename(&aside, &dir).unwrap();
        }
    }
}

/// SECURITY.md R2: a write the store cannot make is a 500 before the body, never a silent
/// 200, in both sync modes: a login (create) while no record directory can be made, and a
/// save (loaded fine, then its directory became unusable). Nothing half-written is left.
#[tokio::test]
async fn r2_file_a_write_that_fails_is_a_500_before_the_body() {
    for sync in ["always", "lifecycle"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let (loaded, proceed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let slow = Slow::Signal {
            loaded: loaded.clone(),
            proceed: proceed.clone(),
        };
        let svc = app(&root, sync, slow);

        // Every record directory a new session could need is blocked.
        let unblock: Vec<_> = (0..=255u8)
            .map(|n| block(root.join(format!("{n:02x}"))))
            .collect();
        let mut b = Browser::new(svc.clone());
        let r = b.get("/set?key=user&value=ann").await;
        assert_eq!(r.status.as_u16(), 500, "{sync}: {r:?}");
        assert!(
            r.cookie("sessioner").is_none(),
            "{sync}: a cookie for nothing"
        );
        assert!(
            !r.body.contains("ok"),
            "{sync}: the handler's body was sent"
        );
        unblock.into_iter().for_each(|undo| undo());

        let r = b.get("/set?key=user&value=ann").await;
        assert_eq!(r.status.as_u16(), 200, "{sync}");
        let cookie = b.cookie("sessioner").unwrap();
        let key = SessionId::parse(&cookie, 32).unwrap().storage_key();

        // A save whose record directory becomes unusable between its load and its write.
        let mut slow = Browser::with_cookie(svc.clone(), "sessioner", &cookie);
        let request = tokio::spawn(async move { slow.get("/slow?key=user&value=bob").await });
        loaded.notified().await;
        let unblock = block(root.join(&key[..2]));
        proceed.notify_one();
        let r = request.await.unwrap();
        assert_eq!(r.status.as_u16(), 500, "{sync}: {r:?}");
        assert!(
            !r.body.contains("ok"),
            "{sync}: the handler's body was sent"
        );
        unblock();

        let r = b.get("/get?key=user").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ann"), "{sync}");
        assert!(
            r.cookie("sessioner").is_none(),
            "{sync}: the session was replaced"
        );
    }
}
