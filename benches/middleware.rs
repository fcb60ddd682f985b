//! Whole requests through salvo's `TestClient` (no sockets): `/hello` and `/counter` on a bare
//! router and behind sessioner, per provider, so the middleware's cost shows as a ratio.
//!
//! ```sh
//! cargo bench --bench middleware
//! cargo bench --bench middleware -- counter     # only the /counter benchmarks
//! ```
//!
//! `/hello` never touches the session (the middleware only parses the cookie); `/counter`
//! loads the session, reads `count`, stores `count + 1` and saves the change.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use salvo::http::header::{COOKIE, SET_COOKIE};
use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use sessioner::{Options, SessionDepotExt, sessioner};
use tokio::runtime::Runtime;

static COUNT: AtomicU64 = AtomicU64::new(0);

#[handler]
async fn hello() -> &'static str {
    "hello"
}

#[handler]
async fn counter(depot: &mut Depot) -> Result<String, sessioner::Error> {
    let session = depot.session()?;
    let n = session.get::<u64>("count").await?.unwrap_or(0) + 1;
    session.set("count", &n).await?;
    Ok(n.to_string())
}

#[handler]
async fn bare_counter() -> String {
    (COUNT.fetch_add(1, Ordering::Relaxed) + 1).to_string()
}

fn bare() -> Service {
    Service::new(
        Router::new()
            .push(Router::with_path("hello").get(hello))
            .push(Router::with_path("counter").get(bare_counter)),
    )
}

fn with_sessions(provider: &str, config: &str) -> Service {
    Service::new(
        Router::new()
            .hoop(sessioner(Options {
                provider: provider.into(),
                provider_config: config.into(),
                ..Default::default()
            }))
            .push(Router::with_path("hello").get(hello))
            .push(Router::with_path("counter").get(counter)),
    )
}

async fn get(service: &Service, path: &str, cookie: &str) -> salvo::Response {
    let mut req = TestClient::get(format!("http://127.0.0.1:5800/{path}"));
    if !cookie.is_empty() {
        req = req.add_header(COOKIE, cookie, true);
    }
    req.send(service).await
}

/// Creates a session with a first `/counter` and returns its `Cookie` header value.
async fn session_cookie(service: &Service) -> String {
    let res = get(service, "counter", "").await;
    let set = res
        .headers()
        .get(SET_COOKIE)
        .expect("a new session sets a cookie");
    let set = set.to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

fn bench_service(c: &mut Criterion, rt: &Runtime, name: &str, service: &Service) {
    let cookie = if name == "bare" {
        // Same request bytes as with sessions: a cookie of the right shape, ignored.
        format!("sessioner={}", "0".repeat(sessioner::DEFAULT_ID_LENGTH))
    } else {
        rt.block_on(session_cookie(service))
    };
    let mut g = c.benchmark_group(format!("request/{name}"));
    for path in ["hello", "counter"] {
        g.bench_function(path, |b| {
            b.to_async(rt).iter(|| async {
                let res = get(service, path, &cookie).await;
                debug_assert_eq!(res.status_code, Some(StatusCode::OK));
                res
            })
        });
    }
    g.finish();
    if name != "bare" {
        // The counter really counted: one request here, at least one above.
        let mut res = rt.block_on(get(service, "counter", &cookie));
        let n: u64 = rt.block_on(res.take_string()).unwrap().parse().unwrap();
        assert!(n > 2, "{name}: the session counter did not grow ({n})");
    }
}

fn requests(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    bench_service(c, &rt, "bare", &bare());
    // Built inside the runtime, as a server would.
    let memory = rt.block_on(async { with_sessions("memory", "") });
    bench_service(c, &rt, "memory", &memory);
    #[cfg(feature = "file")]
    {
        let dir = tempfile::tempdir().unwrap();
        let file = rt.block_on(async { with_sessions("file", dir.path().to_str().unwrap()) });
        bench_service(c, &rt, "file", &file);
    }
    #[cfg(feature = "sled")]
    {
        let dir = tempfile::tempdir().unwrap();
        let sled = rt.block_on(async { with_sessions("sled", dir.path().to_str().unwrap()) });
        bench_service(c, &rt, "sled", &sled);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = requests
}
criterion_main!(benches);
