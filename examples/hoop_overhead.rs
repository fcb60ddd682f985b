//! Where `/hello`'s overhead comes from: the same request through a bare router, a router
//! with an empty hoop, and one with sessioner (valid cookie, session never touched).
//!
//! ```sh
//! cargo run --release --example hoop_overhead
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use salvo::prelude::*;
use salvo::test::TestClient;
use sessioner::{Options, SessionDepotExt, sessioner};

#[handler]
async fn hello() -> &'static str {
    "hello"
}

#[handler]
async fn empty_hoop(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    ctrl.call_next(req, depot, res).await;
}

static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[handler]
async fn bare_counter() -> String {
    (COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1).to_string()
}

#[handler]
async fn counter(depot: &mut Depot) -> Result<String, sessioner::Error> {
    let session = depot.session()?;
    let n = session.get::<u64>("count").await?.unwrap_or(0) + 1;
    session.set("count", &n).await?;
    Ok(n.to_string())
}

#[handler]
async fn set(depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
    depot.session()?.set("k", &1).await?;
    Ok("ok")
}

async fn run(name: &str, path: &str, service: &Service, cookie: &str, n: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let res = TestClient::get(format!("http://127.0.0.1:5800/{path}"))
            .add_header("cookie", cookie, true)
            .send(service)
            .await;
        assert!(res.status_code.is_none_or(|s| s.is_success()));
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{name:<24} {ns:>8.0} ns/request");
    ns
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let bare = Service::new(
        Router::new()
            .push(Router::with_path("hello").get(hello))
            .push(Router::with_path("counter").get(bare_counter)),
    );
    let hooped = Service::new(
        Router::new()
            .hoop(empty_hoop)
            .push(Router::with_path("hello").get(hello)),
    );
    let sessions = Service::new(
        Router::new()
            .hoop(sessioner(Options {
                provider: "memory".into(),
                ..Default::default()
            }))
            .push(Router::with_path("hello").get(hello))
            .push(Router::with_path("set").get(set))
            .push(Router::with_path("counter").get(counter)),
    );
    let res = TestClient::get("http://127.0.0.1:5800/set")
        .send(&sessions)
        .await;
    let cookie = res
        .cookies()
        .get("sessioner")
        .map(|c| format!("sessioner={}", c.value()))
        .unwrap();
    for round in 1..=3 {
        println!("round {round}");
        let b = run("bare /hello", "hello", &bare, &cookie, n).await;
        let h = run("empty hoop /hello", "hello", &hooped, &cookie, n).await;
        let s = run("sessioner /hello", "hello", &sessions, &cookie, n).await;
        println!(
            "  empty hoop / bare = {:.3}, sessioner / bare = {:.3}, sessioner - empty hoop = {:.0} ns",
            b / h,
            b / s,
            s - h
        );
        let bc = run("bare /counter", "counter", &bare, &cookie, n).await;
        let sc = run("sessioner /counter", "counter", &sessions, &cookie, n).await;
        println!(
            "  sessioner /counter / bare = {:.3}, difference = {:.0} ns",
            bc / sc,
            sc - bc
        );
    }
}
