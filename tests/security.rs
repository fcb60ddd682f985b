//! SECURITY.md rows that need floods or a broken disk, through real HTTP requests.
//! (The other rows live in http.rs, flash.rs, hostile.rs, logs.rs (R8), redis_http.rs and
//! the conformance suite.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Browser, backend, router, service};
use salvo::http::StatusCode;
use salvo::prelude::*;
use sessioner::provider::file::FileProvider;
use sessioner::{ChangeSet, Clock, Options, Provider, Record, SessionDepotExt, SessionId};

const C: &str = "sessioner";

fn memory() -> Options {
    Options {
        provider: "memory".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn s1_issued_ids_are_unique_fixed_length_lowercase_hex() {
    let svc = service(memory());
    let mut seen = HashSet::new();
    for _ in 0..2_000 {
        let r = Browser::new(svc.clone()).get("/set?key=k&value=v").await;
        let id = r.cookie(C).unwrap().value().to_owned();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert!(seen.insert(id), "an id was issued twice");
    }
}

#[tokio::test]
async fn l6_a_flood_of_cookieless_requests_creates_nothing() {
    let svc = service(memory());
    for i in 0..10_000 {
        let r = Browser::new(svc.clone())
            .get(if i % 2 == 0 { "/get?key=k" } else { "/id" })
            .await;
        assert!(r.set_cookies.is_empty());
    }
    assert_eq!(Browser::new(svc).get("/count").await.body, "0");
}

#[tokio::test]
async fn r6_a_flood_of_writing_visitors_stays_within_the_bound_and_spares_older_sessions() {
    let svc = service(Options {
        provider_config: "max_sessions=500".into(),
        ..memory()
    });
    let mut user = Browser::new(svc.clone());
    user.get("/set?key=user&value=ann").await;
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..3_000 {
        match Browser::new(svc.clone())
            .get("/set?key=k&value=v")
            .await
            .status
        {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, refused), (499, 2_501));
    assert_eq!(user.get("/count").await.body, "500");
    assert_eq!(user.get("/get?key=user").await.body, "ann");
    assert_eq!(
        user.get("/set?key=cart&value=1").await.status,
        StatusCode::OK
    );
    assert_eq!(user.get("/get?key=cart").await.body, "1");
}

/// The record files under a file provider's `root`.
fn record_files(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .filter_map(|dir| std::fs::read_dir(dir.unwrap().path()).ok())
        .map(|files| files.count())
        .sum()
}

/// R7 on backend `name`: `expired` sessions (expired by a manual clock) and ten live
/// visitors; `gc()` runs as a task on this single-threaded runtime while the visitors keep
/// reading. Requests complete while GC is in progress (on memory each round needs GC to
/// yield: it works in batches, not in one sweep; on file the record files are seen
/// part-way gone), and the count ends at the live set.
async fn r7_gc_in_batches_while_requests_are_served(name: &str, expired: usize) {
    let clock = Clock::manual();
    static T0: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    let _ = *T0;
    let Backend { options, guard } = backend(name);
    let root = name
        .starts_with("file")
        .then(|| PathBuf::from(options.provider_config.split(',').next().unwrap()));
    let handler = Options {
        clock: clock.clone(),
        max_lifetime: Some(Duration::from_secs(60)),
        gc_interval: Some(Duration::from_secs(3_600)),
        ..options
    }
    .build()
    .unwrap();
    let provider = Arc::clone(handler.provider());
    let svc = Arc::new(Service::new(router(handler)));
    let seeded = Record {
        expires_at: clock.now_ms() + 60_000,
        ..Default::default()
    };
    let first = SessionId::generate(32).unwrap();
    assert!(provider.create(&first, &seeded).await.unwrap());
    // The others: copies of the first record file (a create waits for a fsync), or created.
    for _ in 1..expired {
        let id = SessionId::generate(32).unwrap();
        if let Some(root) = &root {
            let path = |id: &SessionId| {
                let key = id.storage_key();
                root.join(&key[..2]).join(key)
            };
            std::fs::create_dir_all(path(&id).parent().unwrap()).unwrap();
            std::fs::copy(path(&first), path(&id)).unwrap();
            continue;
        }
        assert!(provider.create(&id, &seeded).await.unwrap());
    }
    assert_eq!(provider.count().await.unwrap(), expired, "{name}: seeded");
    clock.advance(Duration::from_secs(120));
    let mut live = Vec::new();
    for i in 0..10 {
        let mut b = Browser::new(svc.clone());
        assert_eq!(
            b.get(&format!("/set?key=k&value={i}")).await.status,
            StatusCode::OK
        );
        live.push(b);
    }

    let gc = tokio::spawn({
        let provider = Arc::clone(&provider);
        async move { provider.gc().await.unwrap() }
    });
    let (mut rounds, mut part_way) = (0, false);
    while !gc.is_finished() {
        // A running server yields at its sockets; these in-process requests may not.
        tokio::task::yield_now().await;
        for (i, b) in live.iter_mut().enumerate() {
            assert_eq!(b.get("/get?key=k").await.body, i.to_string(), "{name}");
        }
        rounds += 1;
        if let Some(root) = &root {
            let files = record_files(root);
            part_way |= files > live.len() && files < expired + live.len();
        }
    }
    eprintln!("gc done {:?} rounds {rounds}", T0.elapsed());
    assert_eq!(
        gc.await.unwrap(),
        expired,
        "{name}: every expired session removed"
    );
    assert_eq!(provider.count().await.unwrap(), live.len(), "{name}");
    assert!(rounds >= 3, "{name}: {rounds} rounds of requests during GC");
    assert!(
        root.is_none() || part_way,
        "{name}: GC was never seen part-way"
    );
    for (i, b) in live.iter_mut().enumerate() {
        assert_eq!(b.get("/get?key=k").await.body, i.to_string(), "{name}");
    }
    drop(guard);
}

#[tokio::test]
async fn r7_memory_gc_in_batches_while_requests_are_served() {
    r7_gc_in_batches_while_requests_are_served("memory", 100_000).await;
}

#[tokio::test]
async fn r7_file_gc_in_batches_while_requests_are_served() {
    r7_gc_in_batches_while_requests_are_served("file", 5_000).await;
}

#[cfg(feature = "sled")]
#[tokio::test]
async fn r7_sled_gc_in_batches_while_requests_are_served() {
    r7_gc_in_batches_while_requests_are_served("sled", 5_000).await;
}

#[tokio::test]
async fn r2_a_session_that_cannot_be_written_is_a_500_never_a_silent_200() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let svc = service(Options {
        provider: "file".into(),
        provider_config: root.to_string_lossy().into(),
        ..Default::default()
    });
    // Every record directory is taken by a plain file: no record can be written (this works
    // as root too, unlike a read-only mode).
    for i in 0..=255u8 {
        std::fs::write(root.join(format!("{i:02x}")), b"").unwrap();
    }
    let r = Browser::new(svc.clone()).get("/set?key=k&value=v").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.set_cookies.is_empty(),
        "no cookie for a session that was not stored"
    );
    assert!(!r.body.contains("ok"), "the handler's body is not sent");
    assert_eq!(Browser::new(svc).get("/hello").await.body, "hello");
}

#[handler]
async fn flash_then_home(depot: &mut Depot, res: &mut Response) -> Result<(), sessioner::Error> {
    depot.flash_mut()?.success("flash-text-7f3a");
    res.render(Redirect::other("/"));
    Ok(())
}

#[handler]
async fn show_flash(depot: &mut Depot) -> Result<String, sessioner::Error> {
    Ok(depot.flash_mut()?.current().await?.success_msg)
}

/// The test app plus `/flash` (sets a flash, redirects) and `/show`, over files in `root`.
fn flash_app(root: &std::path::Path) -> Arc<Service> {
    let options = Options {
        provider: "file".into(),
        provider_config: root.to_string_lossy().into(),
        ..Default::default()
    };
    Arc::new(Service::new(
        router(options.build().unwrap())
            .push(Router::with_path("flash").get(flash_then_home))
            .push(Router::with_path("show").get(show_flash)),
    ))
}

#[tokio::test]
async fn f1_a_damaged_stored_flash_shows_nothing_and_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let svc = flash_app(&root);
    let mut b = Browser::new(svc);
    b.get("/flash").await;
    let id = SessionId::parse(&b.cookie(C).unwrap(), 32).unwrap();
    // Flip the stored flash behind the middleware's back.
    let store = FileProvider::open(&root, Clock::system()).unwrap();
    let mut damage = ChangeSet {
        expires_at: u64::MAX / 2,
        ..Default::default()
    };
    damage.set.push((
        "__sessioner.flash".into(),
        r#"{"SuccessMsg":"forged""#.into(),
    ));
    assert!(store.save(&id, &damage).await.unwrap());
    assert_eq!(
        b.get("/show").await.body,
        "",
        "a damaged flash shows nothing"
    );
    let record = store.load(&id).await.unwrap().unwrap();
    assert!(
        !record.values.contains_key("__sessioner.flash"),
        "and is cleared"
    );
}
