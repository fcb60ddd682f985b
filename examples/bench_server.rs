//! The server `scripts/bench` drives with `wrk`: the same two routes with and without sessioner.
//!
//! ```sh
//! PORT=5900 SESSIONER_PROVIDER=memory cargo run --release --example bench_server
//! PORT=5901 SESSIONER_PROVIDER=none   cargo run --release --example bench_server   # bare Salvo
//! ```
//!
//! - `GET /hello` answers `hello` and never touches the session.
//! - `GET /counter` reads the integer `count` from the session (0 if absent), increments it,
//!   stores it and answers the new number. With `SESSIONER_PROVIDER=none` there is no session
//!   middleware at all and `/counter` counts in one global atomic: the bare baseline.
//!   `SESSIONER_PROVIDER=none-hoop` is the same with an empty hoop in front of the routes: what
//!   any middleware costs in Salvo, the floor under sessioner's `/hello` overhead.
//!
//! The provider comes from `SESSIONER_PROVIDER` (default `memory`) and
//! `SESSIONER_PROVIDER_CONFIG`. Two maintenance routes, outside the session middleware, serve
//! the GC measurement: `GET /admin/fill?n=N` stores `N` already expired one-value sessions
//! straight through the provider, `GET /admin/gc` runs the provider's GC and answers
//! `removed=<n> ms=<elapsed>`. `bench_server --has-provider NAME` exits 0 when `NAME` is
//! registered in this build, 1 otherwise.
//!
//! The runtime is tokio's multi-thread one with one worker per CPU the process may run on, so
//! `taskset -c 0` gives it exactly one worker. SIGTERM and SIGINT stop it gracefully (see
//! `shutdown`), so a provider that writes behind (sled) keeps every save.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod shutdown;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use salvo::prelude::*;
use sessioner::{Options, Provider, Record, SessionDepotExt, SessionId, try_sessioner};

/// The bare baseline's counter.
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
async fn empty_hoop(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    ctrl.call_next(req, depot, res).await;
}

#[handler]
async fn bare_counter() -> String {
    (COUNT.fetch_add(1, Ordering::Relaxed) + 1).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `GET /admin/fill`, on the provider behind the middleware. The maintenance routes hold
/// the provider themselves (not a static), so it is dropped with the router.
struct Fill(Arc<dyn Provider>);

#[handler]
impl Fill {
    async fn handle(&self, req: &mut Request, res: &mut Response) {
        fill(&self.0, req, res).await;
    }
}

async fn fill(provider: &Arc<dyn Provider>, req: &mut Request, res: &mut Response) {
    let n = req.query::<usize>("n").unwrap_or(0);
    // One small value, already expired: GC removes every one of them.
    let record = Record {
        values: HashMap::from([("count".to_owned(), "1".to_owned())]),
        expires_at: now_ms().saturating_sub(1),
        absolute_deadline: None,
    };
    let started = Instant::now();
    let mut stored = 0usize;
    for _ in 0..n {
        let id = SessionId::generate(sessioner::DEFAULT_ID_LENGTH).unwrap();
        match provider.create(&id, &record).await {
            Ok(true) => stored += 1,
            Ok(false) => {}
            Err(e) => {
                res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
                res.render(format!("fill failed after {stored}: {e}"));
                return;
            }
        }
    }
    res.render(format!(
        "stored={stored} ms={}",
        started.elapsed().as_millis()
    ));
}

/// `GET /admin/gc`, on the provider behind the middleware.
struct Gc(Arc<dyn Provider>);

#[handler]
impl Gc {
    async fn handle(&self, res: &mut Response) {
        gc(&self.0, res).await;
    }
}

async fn gc(provider: &Arc<dyn Provider>, res: &mut Response) {
    let started = Instant::now();
    match provider.gc().await {
        Ok(removed) => res.render(format!(
            "removed={removed} ms={}",
            started.elapsed().as_millis()
        )),
        Err(e) => {
            res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
            res.render(format!("gc failed: {e}"));
        }
    }
}

fn router(provider: &str, config: String) -> Result<Router, sessioner::Error> {
    if provider == "none" || provider == "none-hoop" {
        let mut routes = Router::new();
        if provider == "none-hoop" {
            routes = routes.hoop(empty_hoop);
        }
        return Ok(Router::new().push(
            routes
                .push(Router::with_path("hello").get(hello))
                .push(Router::with_path("counter").get(bare_counter)),
        ));
    }
    let middleware = try_sessioner(Options {
        provider: provider.to_owned(),
        provider_config: config,
        ..Default::default()
    })?;
    let admin = Router::with_path("admin")
        .push(Router::with_path("fill").get(Fill(Arc::clone(middleware.provider()))))
        .push(Router::with_path("gc").get(Gc(Arc::clone(middleware.provider()))));
    Ok(Router::new().push(admin).push(
        Router::new()
            .hoop(middleware)
            .push(Router::with_path("hello").get(hello))
            .push(Router::with_path("counter").get(counter)),
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, name] = args.as_slice()
        && flag == "--has-provider"
    {
        return if sessioner::provider::is_registered(name) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    let provider = std::env::var("SESSIONER_PROVIDER").unwrap_or_else(|_| "memory".into());
    let config = std::env::var("SESSIONER_PROVIDER_CONFIG").unwrap_or_default();
    let port = match std::env::var("PORT").map(|p| p.parse::<u16>()) {
        Err(_) => 5800,
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            eprintln!("bench_server: PORT is not a port number: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        // Built inside the runtime: some providers start background work when built.
        let router = match router(&provider, config) {
            Ok(router) => router,
            Err(e) => {
                eprintln!("bench_server: cannot build provider `{provider}`: {e}");
                return ExitCode::from(2);
            }
        };
        let acceptor = match TcpListener::new(("127.0.0.1", port)).try_bind().await {
            Ok(acceptor) => acceptor,
            Err(e) => {
                eprintln!("bench_server: cannot listen on 127.0.0.1:{port}: {e}");
                return ExitCode::from(2);
            }
        };
        let server = Server::new(acceptor);
        if let Err(e) = shutdown::stop_on_signal(server.handle()) {
            eprintln!("bench_server: cannot listen for stop signals: {e}");
            return ExitCode::from(2);
        }
        println!("bench_server: provider {provider} on http://127.0.0.1:{port}");
        server.serve(router).await;
        ExitCode::SUCCESS
    });
    // Returns after a graceful stop. Dropping the runtime drops whatever task still holds the
    // router, with the session store in it, which flushes sled.
    drop(runtime);
    code
}
