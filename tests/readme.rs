//! README promises that no other suite checks: the type-mismatch error, a stored flash and a
//! `_now` flash in one response, the documented defaults (memory's 1,000,000 sessions,
//! sled's 100,000 cached sessions, redis's 3 s timeout) and sled's writer storing saves on
//! its own, without `persist`.
//!
//! - A default with no behaviour a test can afford to reach (a million sessions) is read from
//!   the provider the handler built, through its `Debug`: the value the code uses, not the
//!   constant restated.
//! - Waits are bounded polls with a generous deadline and its reason beside it; no test
//!   sleeps and hopes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{Browser, per_backend};
use salvo::http::StatusCode;
use salvo::prelude::*;
use sessioner::{Error, Options, SessionDepotExt, sessioner};

/// Reads `n` as a `u64`: the value's text, or the error `?` turns into a response.
#[handler]
async fn get_number(depot: &mut Depot) -> Result<String, Error> {
    Ok(format!("{:?}", depot.session()?.get::<u64>("n").await?))
}

/// Reads `n` as a `u64` and names the error variant it got.
#[handler]
async fn number_error(depot: &mut Depot) -> Result<String, Error> {
    Ok(match depot.session()?.get::<u64>("n").await {
        Err(Error::Deserialize { key, .. }) => format!("Deserialize {key}"),
        other => format!("{other:?}"),
    })
}

/// Leaves a success and a warning for the next request.
#[handler]
async fn flash_next(depot: &mut Depot) -> Result<&'static str, Error> {
    let flash = depot.flash_mut()?;
    flash.success("stored success");
    flash.warning("stored warning");
    Ok("ok")
}

/// Shows an info and a warning in this response only, then what this response shows.
#[handler]
async fn flash_now(depot: &mut Depot) -> Result<String, Error> {
    let flash = depot.flash_mut()?;
    flash.info_now("now info");
    flash.warning_now("now warning");
    let f = flash.current().await?;
    Ok(format!(
        "{}|{}|{}|{}",
        f.success_msg, f.error_msg, f.info_msg, f.warning_msg
    ))
}

/// The test app plus this file's routes. Options left unset are read from a section of
/// this file's own, so `SESSION_*` variables of the developer's shell do not reach them.
fn service(options: Options) -> Arc<Service> {
    let options = Options {
        section: "readme".into(),
        ..options
    };
    Arc::new(Service::new(
        common::router(options.build().unwrap())
            .push(Router::with_path("get_number").get(get_number))
            .push(Router::with_path("number_error").get(number_error))
            .push(Router::with_path("flash_next").get(flash_next))
            .push(Router::with_path("flash_now").get(flash_now)),
    ))
}

per_backend!(
    a_type_mismatch_is_a_deserialize_error_and_a_500,
    a_stored_flash_and_a_now_flash_show_together
);

/// README: "`get::<T>(key)` ... a type mismatch is `Error::Deserialize`", and `?` answers it
/// with a `500` that says nothing about the value.
async fn a_type_mismatch_is_a_deserialize_error_and_a_500(options: Options) {
    let mut b = Browser::new(service(options));
    assert_eq!(b.get("/set?key=n&value=secret-text").await.status, 200);
    assert_eq!(b.get("/number_error").await.body, "Deserialize n");
    let r = b.get("/get_number").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !r.body.contains("secret-text"),
        "the body leaks: {}",
        r.body
    );
    assert_eq!(
        b.get("/get?key=n").await.body,
        "secret-text",
        "the value is kept"
    );
}

/// README: `current()` returns "the messages the previous request left ..., overlaid by this
/// request's `_now` messages"; the `_now` ones are never stored.
async fn a_stored_flash_and_a_now_flash_show_together(options: Options) {
    let mut b = Browser::new(service(options));
    assert_eq!(b.get("/flash_next").await.status, 200);
    assert_eq!(
        b.get("/flash_now").await.body,
        "stored success||now info|now warning",
        "success left by the previous request, info and warning (overlaid) from now"
    );
    assert_eq!(
        b.get("/flash_now").await.body,
        "||now info|now warning",
        "the stored messages were shown once; the now ones were never stored"
    );
}

/// The provider a handler built from `provider` and `provider_config`, in its `Debug` form.
fn provider_debug(provider: &str, provider_config: String) -> String {
    let handler = sessioner(Options {
        provider: provider.into(),
        provider_config,
        section: "readme_defaults".into(),
        ..Default::default()
    });
    format!("{:?}", handler.provider())
}

/// README: memory's `max_sessions` "default 1,000,000".
#[test]
fn memory_holds_a_million_sessions_by_default() {
    assert!(provider_debug("memory", String::new()).contains("max_sessions: 1000000,"));
    assert!(provider_debug("memory", "max_sessions=7".into()).contains("max_sessions: 7,"));
}

/// README: sled's `cache=N` "default 100,000 sessions" (rounded up to whole shards).
#[cfg(feature = "sled")]
#[test]
fn sled_caches_100_000_sessions_by_default() {
    fn capacity(debug: &str) -> usize {
        let rest = &debug[debug.find("cache_capacity: ").expect(debug) + 16..];
        rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()]
            .parse()
            .unwrap()
    }
    assert_eq!(sessioner::provider::sled::DEFAULT_CACHE_CAPACITY, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let default = capacity(&provider_debug(
        "sled",
        dir.path().join("a").display().to_string(),
    ));
    assert!(
        (100_000..100_064).contains(&default),
        "cache of {default} sessions"
    );
    let configured = format!("data_dir={},cache=10", dir.path().join("b").display());
    assert_eq!(capacity(&provider_debug("sled", configured)), 10);
}

/// README: sled's "writer thread stores changed sessions every 500 ms ... and flushes": a
/// save that only the cache holds reaches sled's files with no `persist` and no close.
#[cfg(feature = "sled")]
#[tokio::test]
async fn sled_stores_a_save_on_its_own() {
    use std::time::{Duration, Instant};

    /// Whether any file below `dir` holds `needle`.
    fn on_disk(dir: &std::path::Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                on_disk(&path, needle)
            } else {
                std::fs::read(&path)
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            }
        })
    }

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let options = Options {
        provider: "sled".into(),
        provider_config: db.display().to_string(),
        section: "readme_sled_writer".into(),
        ..Default::default()
    };
    let mut b = Browser::new(service(options));
    // The create is flushed before the response; the save after it lives in the cache.
    assert_eq!(b.get("/set?key=k&value=first").await.status, 200);
    let marker = format!("saved-{}", std::process::id());
    let r = b.get(&format!("/set?key=k&value={marker}")).await;
    assert_eq!(r.status, 200);

    // The README says every 500 ms; 10 s leaves a loaded 2-core machine twenty passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !on_disk(&db, marker.as_bytes()) {
        assert!(
            Instant::now() < deadline,
            "the save did not reach sled's files within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(b); // the handler (and the provider) lived until the save was found
}

/// README: redis: "Every call is bounded by a timeout (3 s)": a server that accepts the
/// connection and never answers makes a session request a `503` after 3 s (tokio's clock is
/// paused and moves only when every task waits, so the test takes no real 3 s).
#[cfg(feature = "redis")]
#[tokio::test(start_paused = true)]
async fn redis_calls_time_out_after_3_s_by_default() {
    use std::time::Duration;

    // Never accepts: the kernel completes the connection, nobody reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = Options {
        provider: "redis".into(),
        provider_config: format!("addr={}", silent.local_addr().unwrap()),
        section: "readme_redis_timeout".into(),
        ..Default::default()
    };
    let cookie = "0123456789abcdef0123456789abcdef";
    let mut b = Browser::with_cookie(service(options), "sessioner", cookie);
    let started = tokio::time::Instant::now();
    let r = b.get("/get?key=k").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_millis(3_500),
        "the call gave up after {took:?}"
    );
    drop(silent);
}
