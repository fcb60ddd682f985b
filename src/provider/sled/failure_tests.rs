//! SECURITY.md R1, R2 and R5 for sled through the session middleware, with the crate-private
//! seams they need: a short timeout, and writes that fail as on a full or failing disk.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::SledProvider;
use crate::clock::Clock;
use crate::id::SessionId;
use crate::provider::blocking::test_app::{Held, Reply, get, service, unavailable_then_recovers};

/// Logs in a new visitor with `user=value`; the session cookie.
async fn login(svc: &salvo::Service, value: &str) -> String {
    let r: Reply = get(svc, &format!("/set?key=user&value={value}"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.session.unwrap()
}

fn key(cookie: &str) -> String {
    SessionId::parse(cookie, 32).unwrap().storage_key()
}

/// R1, R5: a call sent to the blocking pool that waits past its timeout (here on the
/// session's cache shard, held as a writer pass or a lifecycle call holds it across sled
/// I/O) is a 503 with the cookie kept; other sessions and routes are served; the session
/// answers again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_r1_sled_a_call_past_its_timeout_is_a_503_and_the_app_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let p = SledProvider::open(dir.path().join("db"), Clock::system())
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let inner = Arc::clone(&p.inner);
    let svc = service(Arc::new(p));
    let stuck = login(&svc, "ann").await;
    let shard = |cookie: &str| inner.shard_of(key(cookie).as_bytes());
    let mut other = login(&svc, "bob").await;
    while shard(&other) == shard(&stuck) {
        other = login(&svc, "bob").await;
    }
    let (held_inner, held_key) = (Arc::clone(&inner), key(&stuck));
    let held = Held::new(move |wait| {
        let _shard = held_inner.lock(held_key.as_bytes());
        wait();
    });
    unavailable_then_recovers(&svc, &stuck, &other, held).await;
}

/// R2: a write sled refuses (a full or failing disk) is a 500 before the body, never a
/// silent 200: a login that creates a session, and one that regenerates it. The failed
/// regenerate leaves the old session as it was. (An ordinary save is written behind: it
/// cannot fail the request; a failed pass keeps the changes cached and retries them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_sled_a_write_that_fails_is_a_500_before_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let p = SledProvider::open(dir.path().join("db"), Clock::system()).unwrap();
    let inner = Arc::clone(&p.inner);
    let svc = service(Arc::new(p));
    let failing = |on: bool| inner.fail_writes.store(on, Ordering::SeqCst);

    failing(true);
    let r = get(&svc, "/set?key=user&value=ann", None).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        r.session.is_none(),
        "a cookie for a session that was not stored"
    );
    assert!(
        !r.body.contains("ok") && !r.body.contains("injected"),
        "{r:?}"
    );

    failing(false);
    let cookie = login(&svc, "ann").await;
    failing(true);
    let r = get(&svc, "/regenerate?key=user&value=bob", Some(&cookie)).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert!(r.session.is_none(), "a new id that was not stored");
    assert!(
        !r.body.contains("ok") && !r.body.contains("injected"),
        "{r:?}"
    );

    failing(false);
    let r = get(&svc, "/get?key=user", Some(&cookie)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ann"));
    assert!(r.session.is_none());
}
