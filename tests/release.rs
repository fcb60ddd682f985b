//! What the middleware does at the end of a request, whatever the handler did: failures
//! the handler swallowed still fail the response (R10), a store used after release says so
//! (R13), the depot entry cannot be taken away, and GC belongs to the middleware.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::Browser;
use salvo::http::StatusCode;
use salvo::prelude::*;
use sessioner::provider::memory::MemoryProvider;
use sessioner::provider::{Regenerated, register};
use sessioner::{
    ChangeSet, Error, FlashMessages, Options, Provider, Record, SessionDepotExt, SessionId, Store,
};
use tokio::sync::oneshot;

const C: &str = "sessioner";

/// A memory provider whose session calls fail while `down` is set (only regenerate and
/// destroy while `lifecycle_down` is), and which counts GC runs.
#[derive(Debug, Default)]
struct Switch {
    down: AtomicBool,
    lifecycle_down: AtomicBool,
    gcs: AtomicUsize,
    loads: AtomicUsize,
}

#[derive(Debug)]
struct Switched {
    switch: Arc<Switch>,
    inner: MemoryProvider,
}

impl Switched {
    fn check(&self) -> sessioner::Result<()> {
        if self.switch.down.load(Ordering::SeqCst) {
            return Err(Error::unavailable("switched", "connection refused"));
        }
        Ok(())
    }

    fn check_lifecycle(&self) -> sessioner::Result<()> {
        if self.switch.lifecycle_down.load(Ordering::SeqCst) {
            return Err(Error::unavailable("switched", "connection refused"));
        }
        self.check()
    }
}

#[async_trait]
impl Provider for Switched {
    async fn load(&self, id: &SessionId) -> sessioner::Result<Option<Record>> {
        self.switch.loads.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.load(id).await
    }
    async fn create(&self, id: &SessionId, record: &Record) -> sessioner::Result<bool> {
        self.check()?;
        self.inner.create(id, record).await
    }
    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> sessioner::Result<bool> {
        self.check()?;
        self.inner.save(id, changes).await
    }
    async fn destroy(&self, id: &SessionId) -> sessioner::Result<()> {
        self.check_lifecycle()?;
        self.inner.destroy(id).await
    }
    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> sessioner::Result<Regenerated> {
        self.check_lifecycle()?;
        self.inner.regenerate(old, new).await
    }
    async fn count(&self) -> sessioner::Result<usize> {
        self.inner.count().await
    }
    async fn gc(&self) -> sessioner::Result<usize> {
        self.switch.gcs.fetch_add(1, Ordering::SeqCst);
        self.inner.gc().await
    }
}

/// Registers a switched provider under `name` (one name per test: the registry is global).
fn switched(name: &str) -> Arc<Switch> {
    let switch = Arc::new(Switch::default());
    let shared = Arc::clone(&switch);
    register(name, move |ctx| {
        Ok(Arc::new(Switched {
            switch: Arc::clone(&shared),
            inner: MemoryProvider::new(1000, ctx.clock.clone()),
        }) as Arc<dyn Provider>)
    })
    .unwrap();
    switch
}

#[handler]
async fn login(depot: &mut Depot) -> Result<&'static str, Error> {
    let s = depot.session()?;
    s.regenerate_id().await?;
    s.set("user", "ann").await?;
    Ok("logged in")
}

/// Reads the user and ignores any error, as a careless handler would.
#[handler]
async fn careless_read(depot: &mut Depot) -> String {
    let user = match depot.session() {
        Ok(s) => s.get::<String>("user").await.unwrap_or_default(),
        Err(_) => None,
    };
    format!("hello {}", user.unwrap_or_else(|| "guest".into()))
}

/// Logs in, ignoring every error.
#[handler]
async fn careless_login(depot: &mut Depot) -> &'static str {
    if let Ok(s) = depot.session() {
        let _ = s.regenerate_id().await;
        let _ = s.set("user", "bob").await;
    }
    "welcome bob"
}

/// Logs out, ignoring the error.
#[handler]
async fn careless_logout(depot: &mut Depot) -> &'static str {
    if let Ok(s) = depot.session() {
        let _ = s.destroy().await;
    }
    "bye"
}

/// Sees the error and answers it with a page of its own.
#[handler]
async fn careful_read(depot: &mut Depot, res: &mut Response) {
    match depot.session().unwrap().get::<String>("user").await {
        Ok(_) => res.render("fine"),
        Err(_) => {
            res.status_code(StatusCode::SERVICE_UNAVAILABLE);
            res.render("our own maintenance page");
        }
    }
}

fn service(provider: &str, extra: Router) -> Arc<Service> {
    let handler = sessioner::sessioner(common::isolated(Options {
        provider: provider.into(),
        ..Default::default()
    }));
    Arc::new(Service::new(
        Router::new()
            .hoop(handler)
            .push(Router::with_path("login").get(login))
            .push(Router::with_path("careless_read").get(careless_read))
            .push(Router::with_path("careless_login").get(careless_login))
            .push(Router::with_path("careless_logout").get(careless_logout))
            .push(Router::with_path("careful_read").get(careful_read))
            .push(extra),
    ))
}

#[tokio::test]
async fn r10_a_load_failure_is_a_503_even_when_the_handler_ignores_the_error() {
    let switch = switched("r10-load");
    let mut b = Browser::new(service("r10-load", Router::new()));
    b.get("/login").await;
    let sid = b.cookie(C).unwrap();
    assert_eq!(b.get("/careless_read").await.body, "hello ann");

    switch.down.store(true, Ordering::SeqCst);
    let r = b.get("/careless_read").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!r.body.contains("hello"), "the handler's body is not sent");
    assert!(r.set_cookies.is_empty(), "the cookie is kept");

    let r = b.get("/careful_read").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body, "our own maintenance page",
        "a handler that answered the failure with a 5xx keeps its page"
    );

    switch.down.store(false, Ordering::SeqCst);
    assert_eq!(b.get("/careless_read").await.body, "hello ann");
    assert_eq!(b.cookie(C).unwrap(), sid);
}

#[tokio::test]
async fn r10_a_regenerate_or_destroy_the_handler_ignores_is_never_a_200() {
    let switch = switched("r10-lifecycle");
    let mut b = Browser::new(service("r10-lifecycle", Router::new()));
    b.get("/login").await;
    let sid = b.cookie(C).unwrap();
    // The load works; only the regenerate (or the destroy) fails.
    switch.lifecycle_down.store(true, Ordering::SeqCst);

    let r = b.get("/careless_login").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "login failed");
    assert!(!r.body.contains("welcome"));
    assert!(r.set_cookies.is_empty());

    let r = b.get("/careless_logout").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "logout failed");
    assert!(!r.body.contains("bye"));
    assert!(
        r.set_cookies.is_empty(),
        "the cookie is not cleared while the session lives"
    );

    switch.lifecycle_down.store(false, Ordering::SeqCst);
    assert_eq!(b.cookie(C).unwrap(), sid);
    assert_eq!(b.get("/careless_read").await.body, "hello ann", "unchanged");
}

/// A handler that hands a clone of the store to a task which writes after the response.
#[handler]
async fn spawn_late_write(depot: &mut Depot) -> Result<&'static str, Error> {
    let store: Store = depot.session()?.clone();
    store.set("early", "yes").await?;
    let (go, wait) = oneshot::channel::<oneshot::Sender<sessioner::Result<()>>>();
    tokio::spawn(async move {
        if let Ok(reply) = wait.await {
            let _ = reply.send(store.set("late", "yes").await);
        }
    });
    LATE.lock().unwrap().replace(go);
    Ok("spawned")
}

static LATE: Mutex<Option<oneshot::Sender<oneshot::Sender<sessioner::Result<()>>>>> =
    Mutex::new(None);

#[tokio::test]
async fn r13_a_write_from_a_task_that_outlives_the_request_is_an_error() {
    switched("r13-task");
    let svc = service("r13-task", Router::with_path("spawn").get(spawn_late_write));
    let mut b = Browser::new(Arc::clone(&svc));
    assert_eq!(b.get("/spawn").await.body, "spawned");
    assert!(b.cookie(C).is_some());

    let go = LATE.lock().unwrap().take().unwrap();
    let (reply, result) = oneshot::channel();
    go.send(reply).unwrap();
    assert!(matches!(result.await.unwrap(), Err(Error::Released)));
}

/// An outer hoop that uses the session after the middleware released it.
#[handler]
async fn late_outer(depot: &mut Depot, req: &mut Request, res: &mut Response, ctrl: &mut FlowCtrl) {
    ctrl.call_next(req, depot, res).await;
    let outcome = match depot.session() {
        Ok(s) => match s.set("late", "yes").await {
            Err(Error::Released) => "released",
            Err(_) => "other error",
            Ok(()) => "written",
        },
        Err(_) => "missing",
    };
    res.headers_mut().insert("x-late", outcome.parse().unwrap());
}

#[handler]
async fn untouched() -> &'static str {
    "untouched"
}

#[tokio::test]
async fn r13_a_write_after_release_from_an_outer_hoop_is_an_error() {
    switched("r13-outer");
    let handler = sessioner::sessioner(common::isolated(Options {
        provider: "r13-outer".into(),
        ..Default::default()
    }));
    let svc = Arc::new(Service::new(
        Router::new()
            .hoop(late_outer)
            .hoop(handler)
            .push(Router::with_path("login").get(login))
            .push(Router::with_path("careless_read").get(careless_read))
            .push(Router::with_path("untouched").get(untouched)),
    ));
    let mut b = Browser::new(svc);
    // A request that never used its session (the fast path) ...
    let r = b.get("/untouched").await;
    assert_eq!(r.headers.get("x-late").unwrap(), "released");
    assert!(r.set_cookies.is_empty(), "and nothing was minted for it");
    // ... and one that did.
    let r = b.get("/login").await;
    assert_eq!(r.headers.get("x-late").unwrap(), "released");
    let r = b.get("/careless_read").await;
    assert_eq!(r.body, "hello ann");
    assert_eq!(r.headers.get("x-late").unwrap(), "released");
}

/// Sets a value, then tries to take the middleware's entry out of the depot.
#[handler]
async fn scrape(depot: &mut Depot) -> Result<String, Error> {
    depot.session()?.set("user", "cat").await?;
    let took = depot.remove_typed::<FlashMessages>().is_ok();
    Ok(format!("took entry: {took}"))
}

#[tokio::test]
async fn the_depot_entry_cannot_be_scraped_so_the_save_always_runs() {
    switched("depot-scrape");
    let mut b = Browser::new(service(
        "depot-scrape",
        Router::with_path("scrape").get(scrape),
    ));
    assert_eq!(b.get("/scrape").await.body, "took entry: false");
    assert_eq!(b.get("/careless_read").await.body, "hello cat");
}

/// Keeps a clone of the request's store beyond the request.
struct Keep(Arc<Mutex<Option<Store>>>);

#[async_trait]
impl Handler for Keep {
    async fn handle(
        &self,
        _: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        _: &mut FlowCtrl,
    ) {
        *self.0.lock().unwrap() = depot.session().ok().cloned();
        res.render("kept");
    }
}

#[tokio::test(start_paused = true)]
async fn gc_stops_with_the_last_handler_clone_not_the_last_store() {
    let switch = switched("gc-owner");
    let every = Duration::from_secs(60);
    let handler = sessioner::sessioner(common::isolated(Options {
        provider: "gc-owner".into(),
        gc_interval: Some(every),
        ..Default::default()
    }));
    let kept: Arc<Mutex<Option<Store>>> = Arc::default();
    let svc = Service::new(
        Router::new()
            .hoop(handler)
            .push(Router::with_path("keep").get(Keep(Arc::clone(&kept)))),
    );
    let mut b = Browser::new(Arc::new(svc));
    assert_eq!(b.get("/keep").await.body, "kept");
    tokio::time::sleep(every * 3 + every / 2).await;
    assert_eq!(
        switch.gcs.load(Ordering::SeqCst),
        3,
        "GC runs every interval"
    );

    drop(b); // the last handle on the service, and so on the middleware
    assert!(kept.lock().unwrap().is_some(), "a store still lives");
    tokio::time::sleep(every * 5).await;
    assert_eq!(
        switch.gcs.load(Ordering::SeqCst),
        3,
        "GC stopped with the middleware"
    );
}

/// Ignores a failed read, then sets a flash for the next request.
#[handler]
async fn careless_flash(depot: &mut Depot) -> &'static str {
    if let Ok(s) = depot.session() {
        let _ = s.get::<String>("user").await;
    }
    if let Ok(flash) = depot.flash_mut() {
        flash.success("Saved.");
    }
    "saved"
}

#[tokio::test]
async fn r10_a_failed_session_is_not_asked_again_to_store_the_flash() {
    let switch = switched("r10-flash");
    let mut b = Browser::new(service(
        "r10-flash",
        Router::with_path("careless_flash").get(careless_flash),
    ));
    b.get("/login").await;
    switch.down.store(true, Ordering::SeqCst);
    let before = switch.loads.load(Ordering::SeqCst);
    let r = b.get("/careless_flash").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        switch.loads.load(Ordering::SeqCst) - before,
        1,
        "the failed backend was asked again to store the flash"
    );
}
