//! SECURITY.md rows that need floods or a broken disk, through real HTTP requests.
//! (The other rows live in http.rs, flash.rs, hostile.rs, logs.rs (R8), redis_http.rs and
//! the conformance suite.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Browser, router, service};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_gc_removes_100k_expired_sessions_while_requests_keep_working() {
    let handler = memory().build().unwrap();
    let provider = Arc::clone(handler.provider());
    let svc = Arc::new(Service::new(router(handler)));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for _ in 0..100_000 {
        let expired = Record {
            expires_at: now - 1_000,
            ..Default::default()
        };
        assert!(
            provider
                .create(&SessionId::generate(32).unwrap(), &expired)
                .await
                .unwrap()
        );
    }
    let mut live = Vec::new();
    for i in 0..10 {
        let mut b = Browser::new(svc.clone());
        b.get(&format!("/set?key=k&value={i}")).await;
        live.push(b);
    }
    let gc = tokio::spawn({
        let provider = Arc::clone(&provider);
        async move { provider.gc().await.unwrap() }
    });
    for round in 0..20 {
        for (i, b) in live.iter_mut().enumerate() {
            assert_eq!(
                b.get("/get?key=k").await.body,
                i.to_string(),
                "round {round}"
            );
        }
    }
    assert_eq!(gc.await.unwrap(), 100_000);
    assert_eq!(provider.count().await.unwrap(), 10);
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
