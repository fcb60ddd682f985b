//! Test support: a small app over the session API and a browser-like client with a cookie jar.
#![allow(dead_code)]

use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use salvo::http::StatusCode;
use salvo::http::cookie::Cookie;
use salvo::prelude::*;
use salvo::test::{ResponseExt, TestClient};
use sessioner::{
    ChangeSet, Options, Provider, Record, Regenerated, SessionDepotExt, SessionId, Sessioner,
};
use tokio::sync::{Barrier, Notify};

fn q(req: &Request, name: &str) -> String {
    req.query::<String>(name).unwrap_or_default()
}

#[handler]
async fn get(req: &mut Request, depot: &mut Depot) -> Result<String, sessioner::Error> {
    let v = depot.session()?.get::<String>(&q(req, "key")).await?;
    Ok(v.unwrap_or_else(|| "none".into()))
}

/// `get`, after parsing the form body, as a handler reading a POSTed form does.
#[handler]
async fn form_get(req: &mut Request, depot: &mut Depot) -> Result<String, sessioner::Error> {
    let posted = req.form::<String>("sessioner").await;
    let v = depot.session()?.get::<String>(&q(req, "key")).await?;
    Ok(format!(
        "{} (form field: {})",
        v.unwrap_or_else(|| "none".into()),
        posted.map_or("absent", |_| "present")
    ))
}

/// `set`, after parsing the form body.
#[handler]
async fn form_set(req: &mut Request, depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
    let _ = req.form::<String>("sessioner").await;
    depot
        .session()?
        .set(&q(req, "key"), &q(req, "value"))
        .await?;
    Ok("ok")
}

#[handler]
async fn set(req: &mut Request, depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
    depot
        .session()?
        .set(&q(req, "key"), &q(req, "value"))
        .await?;
    Ok("ok")
}

#[handler]
async fn delete(req: &mut Request, depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
    depot.session()?.delete(&q(req, "key")).await?;
    Ok("ok")
}

#[handler]
async fn flush(depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
    depot.session()?.flush().await?;
    Ok("ok")
}

#[handler]
async fn show_id(depot: &mut Depot) -> Result<String, sessioner::Error> {
    Ok(depot
        .session()?
        .id()
        .await?
        .map_or("none".into(), |i| i.as_str().to_owned()))
}

/// Regenerates, then sets `key=value` when given (a login).
#[handler]
async fn regenerate(req: &mut Request, depot: &mut Depot) -> Result<String, sessioner::Error> {
    let s = depot.session()?;
    let id = s.regenerate_id().await?;
    if !q(req, "key").is_empty() {
        s.set(&q(req, "key"), &q(req, "value")).await?;
    }
    Ok(id.as_str().to_owned())
}

/// Sets `key=value` first, then regenerates (a session created in this same request).
#[handler]
async fn set_then_regenerate(
    req: &mut Request,
    depot: &mut Depot,
) -> Result<String, sessioner::Error> {
    let s = depot.session()?;
    s.set(&q(req, "key"), &q(req, "value")).await?;
    Ok(s.regenerate_id().await?.as_str().to_owned())
}

#[handler]
async fn destroy(depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
    depot.session()?.destroy().await?;
    Ok("ok")
}

#[handler]
async fn count(depot: &mut Depot) -> Result<String, sessioner::Error> {
    Ok(depot.session()?.count().await?.to_string())
}

#[handler]
async fn gc(depot: &mut Depot) -> Result<String, sessioner::Error> {
    Ok(depot.session()?.gc().await?.to_string())
}

#[handler]
async fn read(req: &mut Request, depot: &mut Depot) -> Result<String, sessioner::Error> {
    let data = depot.session()?.read(&q(req, "sid")).await?;
    Ok(match data {
        Some(d) => d
            .get::<String>(&q(req, "key"))?
            .unwrap_or_else(|| "none".into()),
        None => "absent".into(),
    })
}

#[handler]
async fn hello() -> &'static str {
    "hello"
}

/// A request that loads the session, is held, then writes `key=value`; with
/// `then=regenerate` it regenerates the id first (a slow login).
pub enum Slow {
    /// Held by the test: signals `loaded`, then waits for `proceed`.
    Signal {
        loaded: Arc<Notify>,
        proceed: Arc<Notify>,
    },
    /// Held until every request sharing the barrier has loaded too (bounded: after 10 s it
    /// answers `barrier timed out` and writes nothing).
    Barrier(Arc<Barrier>),
}

#[async_trait]
impl Handler for Slow {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        _: &mut FlowCtrl,
    ) {
        let Ok(s) = depot.session() else { return };
        let _ = s.get::<String>("user").await;
        match self {
            Slow::Signal { loaded, proceed } => {
                loaded.notify_one();
                proceed.notified().await;
            }
            Slow::Barrier(barrier) => {
                let wait = tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await;
                if wait.is_err() {
                    return res.render("barrier timed out");
                }
            }
        }
        let regenerated = match q(req, "then").as_str() {
            "regenerate" => s.regenerate_id().await.map(drop),
            _ => Ok(()),
        };
        match regenerated.and(s.set(&q(req, "key"), &q(req, "value")).await) {
            Ok(()) => res.render("ok"),
            Err(e) => res.render(e.to_string()),
        }
    }
}

/// The test app: every session operation behind a route, under `handler`.
pub fn router(handler: Sessioner) -> Router {
    Router::new()
        .hoop(handler)
        .push(Router::with_path("get").get(get))
        .push(Router::with_path("form_get").post(form_get))
        .push(Router::with_path("form_set").post(form_set))
        .push(Router::with_path("set").get(set))
        .push(Router::with_path("delete").get(delete))
        .push(Router::with_path("flush").get(flush))
        .push(Router::with_path("id").get(show_id))
        .push(Router::with_path("regenerate").get(regenerate))
        .push(Router::with_path("set_then_regenerate").get(set_then_regenerate))
        .push(Router::with_path("destroy").get(destroy))
        .push(Router::with_path("count").get(count))
        .push(Router::with_path("gc").get(gc))
        .push(Router::with_path("read").get(read))
        .push(Router::with_path("hello").get(hello))
}

/// The config section the test services read unset options from: a name no shell sets, so
/// `SESSION_*` variables (or any other section's) in the developer's environment cannot
/// change a result. Options that name a section of their own keep it.
pub const SECTION: &str = "sessioner_test_suite_private";

/// `options` reading unset values from [`SECTION`] unless they name a section themselves.
pub fn isolated(options: Options) -> Options {
    if options.section.is_empty() {
        Options {
            section: SECTION.into(),
            ..options
        }
    } else {
        options
    }
}

/// The middleware for `options`, [`isolated`] from the environment.
pub fn build(options: Options) -> Sessioner {
    isolated(options).build().unwrap()
}

pub fn service(options: Options) -> Arc<Service> {
    Arc::new(Service::new(router(build(options))))
}

/// One HTTP exchange as a browser sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    /// Every `Set-Cookie`, parsed.
    pub set_cookies: Vec<Cookie<'static>>,
    pub headers: salvo::http::HeaderMap,
}

impl Reply {
    pub fn cookie(&self, name: &str) -> Option<&Cookie<'static>> {
        self.set_cookies.iter().find(|c| c.name() == name)
    }
}

/// A client with a cookie jar, like a browser.
pub struct Browser {
    pub service: Arc<Service>,
    pub jar: HashMap<String, String>,
}

impl Browser {
    pub fn new(service: Arc<Service>) -> Self {
        Browser {
            service,
            jar: HashMap::new(),
        }
    }

    pub fn with_cookie(service: Arc<Service>, name: &str, value: &str) -> Self {
        let mut b = Browser::new(service);
        b.jar.insert(name.into(), value.into());
        b
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(TestClient::get(format!("http://127.0.0.1:5800{path}")))
            .await
    }

    pub async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.send(TestClient::post(format!("http://127.0.0.1:5800{path}")).form(&form))
            .await
    }

    pub async fn send(&mut self, mut req: salvo::test::RequestBuilder) -> Reply {
        if !self.jar.is_empty() {
            let header = self
                .jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.add_header("cookie", header, true);
        }
        let mut res = req.send(&*self.service).await;
        let set_cookies: Vec<Cookie<'static>> = res.cookies().delta().cloned().collect();
        for c in &set_cookies {
            let expired = c.max_age().is_some_and(|a| a.is_zero() || a.is_negative());
            if expired || c.value().is_empty() {
                self.jar.remove(c.name());
            } else {
                self.jar.insert(c.name().to_owned(), c.value().to_owned());
            }
        }
        let body = res.take_string().await.unwrap_or_default();
        Reply {
            status: res.status_code.unwrap_or(StatusCode::OK),
            body,
            set_cookies,
            headers: res.headers().clone(),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.get(name).cloned()
    }
}

/// The provider calls a [`Counting`] provider saw, by method name, in order.
#[derive(Debug, Default)]
pub struct Calls(Mutex<Vec<&'static str>>);

impl Calls {
    fn note(&self, method: &'static str) {
        self.0.lock().unwrap().push(method);
    }

    /// The calls seen since the last `take`.
    pub fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A backend's real provider behind a wrapper that notes every call in [`Calls`] and passes
/// it on unchanged (the fast paths included).
#[derive(Debug)]
pub struct Counting {
    calls: Arc<Calls>,
    inner: Arc<dyn Provider>,
}

#[async_trait]
impl Provider for Counting {
    async fn load(&self, id: &SessionId) -> sessioner::Result<Option<Record>> {
        self.calls.note("load");
        self.inner.load(id).await
    }
    fn load_now(&self, id: &SessionId) -> Option<sessioner::Result<Option<Record>>> {
        self.calls.note("load_now");
        self.inner.load_now(id)
    }
    async fn create(&self, id: &SessionId, record: &Record) -> sessioner::Result<bool> {
        self.calls.note("create");
        self.inner.create(id, record).await
    }
    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> sessioner::Result<bool> {
        self.calls.note("save");
        self.inner.save(id, changes).await
    }
    fn save_now(&self, id: &SessionId, changes: &ChangeSet) -> Option<sessioner::Result<bool>> {
        self.calls.note("save_now");
        self.inner.save_now(id, changes)
    }
    async fn destroy(&self, id: &SessionId) -> sessioner::Result<()> {
        self.calls.note("destroy");
        self.inner.destroy(id).await
    }
    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> sessioner::Result<Regenerated> {
        self.calls.note("regenerate");
        self.inner.regenerate(old, new).await
    }
    async fn exists(&self, id: &SessionId) -> sessioner::Result<bool> {
        self.calls.note("exists");
        self.inner.exists(id).await
    }
    async fn count(&self) -> sessioner::Result<usize> {
        self.calls.note("count");
        self.inner.count().await
    }
    async fn gc(&self) -> sessioner::Result<usize> {
        self.calls.note("gc");
        self.inner.gc().await
    }
}

/// `options` with its provider (built by name, as `sessioner(..)` would) behind a
/// [`Counting`] wrapper, registered under a name of its own; and the calls it sees.
pub fn counting(options: Options) -> (Options, Arc<Calls>) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let inner = options.provider.clone();
    let name = format!(
        "counting-{inner}-{}",
        NEXT.fetch_add(1, AtomicOrdering::Relaxed)
    );
    let calls = Arc::new(Calls::default());
    let seen = Arc::clone(&calls);
    sessioner::register(&name, move |ctx| {
        Ok(Arc::new(Counting {
            calls: Arc::clone(&seen),
            inner: sessioner::provider::build(&inner, ctx)?,
        }) as Arc<dyn Provider>)
    })
    .unwrap();
    let options = Options {
        provider: name,
        ..options
    };
    (options, calls)
}

#[cfg(feature = "redis")]
#[path = "../support/redis_server.rs"]
pub mod redis_server;

#[cfg(feature = "memcache")]
#[path = "../support/memcached_server.rs"]
pub mod memcached_server;

/// The ids each [`Tracked`] provider (by registered name) stored a session under.
#[cfg(feature = "memcache")]
type TrackedIds = Arc<Mutex<std::collections::HashSet<SessionId>>>;

#[cfg(feature = "memcache")]
static TRACKED: Mutex<Option<HashMap<String, TrackedIds>>> = Mutex::new(None);

/// The memcache backend of the per-backend flows: the real memcache provider behind a
/// wrapper that notes every id a session was stored under (`create`, `regenerate`) and
/// answers `count` by loading each through the real provider. memcached cannot list its
/// keys, so the provider's own `count` is an error (tests/memcache_provider.rs checks it);
/// the flows observe the live set through `/count`, and this count is that set as the
/// server holds it. Every other call passes through unchanged.
#[cfg(feature = "memcache")]
#[derive(Debug)]
pub struct Tracked {
    ids: TrackedIds,
    inner: Arc<dyn Provider>,
}

#[cfg(feature = "memcache")]
#[async_trait]
impl Provider for Tracked {
    async fn load(&self, id: &SessionId) -> sessioner::Result<Option<Record>> {
        self.inner.load(id).await
    }
    async fn create(&self, id: &SessionId, record: &Record) -> sessioner::Result<bool> {
        self.ids.lock().unwrap().insert(id.clone());
        self.inner.create(id, record).await
    }
    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> sessioner::Result<bool> {
        self.inner.save(id, changes).await
    }
    async fn destroy(&self, id: &SessionId) -> sessioner::Result<()> {
        self.inner.destroy(id).await
    }
    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> sessioner::Result<Regenerated> {
        self.ids.lock().unwrap().insert(new.clone());
        self.inner.regenerate(old, new).await
    }
    async fn count(&self) -> sessioner::Result<usize> {
        let ids: Vec<SessionId> = self.ids.lock().unwrap().iter().cloned().collect();
        let mut live = 0;
        for id in ids {
            live += usize::from(self.inner.load(&id).await?.is_some());
        }
        Ok(live)
    }
    async fn gc(&self) -> sessioner::Result<usize> {
        self.inner.gc().await
    }
}

/// Registers a [`Tracked`] memcache provider (built from the handler's context, as
/// `sessioner(..)` builds any) under a name of its own, and returns the name.
#[cfg(feature = "memcache")]
fn tracked_memcache() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "memcache-tracked-{}",
        NEXT.fetch_add(1, AtomicOrdering::Relaxed)
    );
    let ids = TrackedIds::default();
    TRACKED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(name.clone(), Arc::clone(&ids));
    sessioner::register(&name, move |ctx| {
        Ok(Arc::new(Tracked {
            ids: Arc::clone(&ids),
            inner: sessioner::provider::build("memcache", ctx)?,
        }) as Arc<dyn Provider>)
    })
    .unwrap();
    name
}

#[cfg(feature = "postgres")]
#[path = "../support/postgres_server.rs"]
pub mod postgres_server;

#[cfg(feature = "mysql")]
#[path = "../support/mysql_server.rs"]
pub mod mysql_server;

/// A backend for one test: its options, and whatever must live as long as it (a temporary
/// directory, nothing for redis: the binary shares one server).
pub struct Backend {
    pub options: Options,
    pub guard: Box<dyn Any>,
}

/// The built-in backend `name` on fresh storage: `memory`, `file`, `file_sync_lifecycle`
/// (the file provider with `sync=lifecycle`), `sled`, `redis` (the test binary's shared redis-server, a prefix of its own),
/// `memcache` (the test binary's shared memcached, a prefix of its own, [`Tracked`]).
pub fn backend(name: &str) -> Backend {
    let (provider, provider_config, guard): (&str, String, Box<dyn Any>) = match name {
        "memory" => ("memory", String::new(), Box::new(())),
        #[cfg(feature = "memcache")]
        "memcache" => {
            let config = format!(
                "{};prefix={}",
                memcached_server::shared_addr(),
                memcached_server::unique_prefix("http")
            );
            return Backend {
                options: Options {
                    provider: tracked_memcache(),
                    provider_config: config,
                    section: SECTION.into(),
                    ..Default::default()
                },
                guard: Box::new(()),
            };
        }
        "file" | "file_sync_lifecycle" => {
            let dir = tempfile::tempdir().unwrap();
            let sync = if name == "file" {
                ""
            } else {
                ",sync=lifecycle"
            };
            let config = format!("{}{sync}", dir.path().join("s").display());
            ("file", config, Box::new(dir))
        }
        #[cfg(feature = "sled")]
        "sled" => {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("db").to_string_lossy().into_owned();
            ("sled", config, Box::new(dir))
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let prefix = redis_server::unique_prefix("http");
            let config = format!("{}?prefix={prefix}", redis_server::shared_url());
            ("redis", config, Box::new(()))
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            let table = postgres_server::unique_table("http");
            let config = format!("{}?table={table}", postgres_server::shared().url());
            ("postgres", config, Box::new(()))
        }
        #[cfg(feature = "mysql")]
        "mysql" => {
            let table = mysql_server::unique_table("http");
            let config = format!("{}?table={table}", mysql_server::shared().url());
            ("mysql", config, Box::new(()))
        }
        other => panic!("no built-in backend {other:?} in this build"),
    };
    Backend {
        options: Options {
            provider: provider.into(),
            provider_config,
            section: SECTION.into(),
            ..Default::default()
        },
        guard,
    }
}

/// Everything a backend configured by `options` holds on storage, as (where, bytes) pairs a
/// test can search: `None` for `memory` (nothing outside the process).
/// - file: each file's path (relative to the root) and, separately, its contents;
/// - sled: each tree's keys and values read through sled, then every file of the
///   directory raw; the provider must be closed (its handler dropped) first;
/// - redis: every key of the database (not only the prefix), and every member, field and
///   value of it, whatever its type;
/// - memcache ([`Tracked`]): every item the server lists, and every tracked session's item,
///   each key and value.
pub fn dump(options: &Options) -> Option<Vec<(String, Vec<u8>)>> {
    let config = options.provider_config.as_str();
    match options.provider.as_str() {
        "memory" => None,
        "file" => Some(dump_files(Path::new(config.split(',').next().unwrap()))),
        #[cfg(feature = "sled")]
        "sled" => Some(dump_sled(Path::new(config))),
        #[cfg(feature = "redis")]
        "redis" => Some(dump_redis(config.split('?').next().unwrap())),
        #[cfg(feature = "memcache")]
        tracked if tracked.starts_with("memcache-tracked-") => Some(dump_memcache(tracked, config)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Some(dump_postgres(config)),
        #[cfg(feature = "mysql")]
        "mysql" => Some(dump_mysql(config)),
        other => panic!("no dump for provider {other:?}"),
    }
}

/// Every row of the provider's table (in the test binary's database): each key and each
/// record's bytes.
#[cfg(feature = "postgres")]
fn dump_postgres(config: &str) -> Vec<(String, Vec<u8>)> {
    let table = config
        .split("table=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let rows = postgres_server::shared().psql(&format!(
        "SELECT session_key || '|' || encode(session_data, 'hex') FROM \"{table}\""
    ));
    hex_rows(table, &rows)
}

/// As [`dump_postgres`], for the mysql provider.
#[cfg(feature = "mysql")]
fn dump_mysql(config: &str) -> Vec<(String, Vec<u8>)> {
    let table = config
        .split("table=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let rows = mysql_server::shared().sql(&format!(
        "SELECT CONCAT(session_key, '|', LOWER(HEX(session_data))) FROM `{table}`"
    ));
    hex_rows(table, &rows)
}

/// `key|hex` lines as (where, bytes) pairs.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn hex_rows(table: &str, rows: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for row in rows.lines() {
        let (key, hex) = row.split_once('|').unwrap();
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        out.push((format!("table {table} key"), key.as_bytes().to_vec()));
        out.push((format!("table {table} data of {key}"), bytes));
    }
    out
}

/// Every file below `root`: its relative path, and its contents.
fn dump_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.strip_prefix(root).unwrap().display().to_string();
            out.push((format!("file name {name}"), name.clone().into_bytes()));
            out.push((format!("file {name}"), std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[cfg(feature = "sled")]
fn dump_sled(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    {
        let db = sled::open(dir).expect("the sled directory, closed by its provider");
        for name in db.tree_names() {
            let tree = db.open_tree(&name).unwrap();
            let tree_name = String::from_utf8_lossy(&name).into_owned();
            for pair in tree.iter() {
                let (k, v) = pair.unwrap();
                out.push((format!("sled {tree_name} key"), k.to_vec()));
                out.push((format!("sled {tree_name} value"), v.to_vec()));
            }
        }
    }
    out.extend(dump_files(dir));
    out
}

#[cfg(feature = "memcache")]
fn dump_memcache(name: &str, config: &str) -> Vec<(String, Vec<u8>)> {
    let addr = config.split(';').next().unwrap();
    let prefix = config.split_once(";prefix=").unwrap().1;
    let ids = TRACKED.lock().unwrap().as_ref().unwrap()[name].clone();
    let keys: Vec<String> = ids
        .lock()
        .unwrap()
        .iter()
        .map(|id| format!("{prefix}{}", id.storage_key()))
        .collect();
    let mut out = Vec::new();
    for (key, value) in memcached_server::dump(addr, &keys) {
        out.push((format!("memcache value {key}"), value));
        out.push((format!("memcache key {key}"), key.into_bytes()));
    }
    out
}

#[cfg(feature = "redis")]
fn dump_redis(url: &str) -> Vec<(String, Vec<u8>)> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        let fetch = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .clone(),
            "none" => continue, // deleted since the scan
            other => panic!("a redis key of type {other} cannot be searched yet"),
        };
        let parts: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![fetch.query(&mut conn).unwrap()],
            _ => fetch.query(&mut conn).unwrap(),
        };
        let name = String::from_utf8_lossy(&key).into_owned();
        for part in parts {
            out.push((format!("redis {kind} {name}"), part));
        }
        out.push((format!("redis key {name}"), key));
    }
    out
}

/// `per_backend!(flow, ..)`: for every built-in backend the enabled features offer, a module
/// named after it (see [`backend`]) with one `#[tokio::test]` per flow, which runs
/// `flow(options)` (an `async fn` of the invoking file) on fresh storage of that backend, on a
/// multi-thread runtime (two workers, so concurrent requests really overlap). So
/// a failure names its backend, one failing backend hides no other, and
/// `cargo test --test http sled` runs the sled flows only.
#[allow(unused_macros)]
macro_rules! per_backend {
    ($($flow:ident),* $(,)?) => {
        $crate::common::per_backend!(@module memory; $($flow),*);
        $crate::common::per_backend!(@module file; $($flow),*);
        $crate::common::per_backend!(@module file_sync_lifecycle; $($flow),*);
        #[cfg(feature = "sled")]
        $crate::common::per_backend!(@module sled; $($flow),*);
        #[cfg(feature = "redis")]
        $crate::common::per_backend!(@module redis; $($flow),*);
        #[cfg(feature = "memcache")]
        $crate::common::per_backend!(@module memcache; $($flow),*);
        #[cfg(feature = "postgres")]
        $crate::common::per_backend!(@module postgres; $($flow),*);
        #[cfg(feature = "mysql")]
        $crate::common::per_backend!(@module mysql; $($flow),*);
    };
    (@module $backend:ident; $($flow:ident),*) => {
        mod $backend {
            $( $crate::common::per_backend!(@test $backend $flow); )*
        }
    };
    (@test $backend:ident $flow:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $flow() {
            let $crate::common::Backend { options, guard } =
                $crate::common::backend(stringify!($backend));
            super::$flow(options).await;
            drop(guard);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use per_backend;
