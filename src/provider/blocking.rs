//! Running blocking backend work on tokio's blocking pool, bounded by a timeout.
//!
//! - A timeout is [`Error::Unavailable`]; the work cannot be stopped from outside, so work
//!   that loops takes a [`Cancel`] and returns once its caller has stopped waiting.
//! - The caller stops waiting when the timeout fires or its future is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// How long one blocking backend call may take before it counts as unavailable.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Tells blocking work that nobody waits for its result any more.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Whether the caller has stopped waiting (timed out, or dropped its future).
    #[cfg_attr(not(feature = "file"), allow(dead_code))]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cancels the work when the caller's future ends, however it ends.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `work` on the blocking pool; a `timeout` ([`TIMEOUT`] outside tests) is
/// [`Error::Unavailable`].
pub(crate) async fn run<T, F>(provider: &'static str, timeout: Duration, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    run_cancellable(provider, timeout, move |_| work()).await
}

/// As [`run`], with a given timeout, handing `work` a [`Cancel`] that is set once the
/// caller stops waiting.
pub(crate) async fn run_cancellable<T, F>(
    provider: &'static str,
    timeout: Duration,
    work: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Cancel) -> Result<T> + Send + 'static,
{
    let guard = CancelOnDrop(Cancel::default());
    let cancel = guard.0.clone();
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || work(&cancel))).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Error::backend(provider, join)),
        Err(_) => Err(Error::unavailable(provider, "blocking call timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Work that runs until cancelled, then reports it.
    fn until_cancelled(done: mpsc::Sender<()>) -> impl FnOnce(&Cancel) -> Result<()> {
        move |cancel| {
            while !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = done.send(());
            Ok(())
        }
    }

    #[tokio::test]
    async fn work_is_cancelled_when_its_caller_times_out_or_gives_up() {
        let (done, stopped) = mpsc::channel();
        let short = Duration::from_millis(20);
        let result = run_cancellable("test", short, until_cancelled(done.clone())).await;
        assert!(
            matches!(result, Err(Error::Unavailable { .. })),
            "{result:?}"
        );
        stopped.recv_timeout(Duration::from_secs(30)).unwrap();

        // The caller's own deadline, shorter than the call's: the dropped future cancels.
        let call = run_cancellable("test", Duration::from_secs(3600), until_cancelled(done));
        assert!(tokio::time::timeout(short, call).await.is_err());
        stopped.recv_timeout(Duration::from_secs(30)).unwrap();
    }
}

/// The session middleware over one provider instance, for the blocking providers' unit tests
/// of SECURITY.md rows that need a crate-private seam (a short timeout, an injected failure):
/// `/get?key=`, `/set?key=&value=`, `/regenerate` (then sets `key=value`), `/hello` (never
/// touches the session), all behind the middleware.
#[cfg(test)]
pub(crate) mod test_app {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant};

    use salvo::prelude::*;
    use salvo::test::{ResponseExt, TestClient};

    use crate::provider::{Provider, register};
    use crate::{Error, Options, SessionDepotExt};

    fn q(req: &Request, name: &str) -> String {
        req.query::<String>(name).unwrap_or_default()
    }

    #[handler]
    async fn load(req: &mut Request, depot: &mut Depot) -> Result<String, Error> {
        let v = depot.session()?.get::<String>(&q(req, "key")).await?;
        Ok(v.unwrap_or_else(|| "none".into()))
    }

    #[handler]
    async fn set(req: &mut Request, depot: &mut Depot) -> Result<&'static str, Error> {
        let (key, value) = (q(req, "key"), q(req, "value"));
        depot.session()?.set(&key, &value).await?;
        Ok("ok")
    }

    #[handler]
    async fn regenerate(req: &mut Request, depot: &mut Depot) -> Result<&'static str, Error> {
        let s = depot.session()?;
        s.regenerate_id().await?;
        s.set(&q(req, "key"), &q(req, "value")).await?;
        Ok("ok")
    }

    #[handler]
    async fn hello() -> &'static str {
        "hello"
    }

    /// The app, with `provider` registered under a name of its own.
    pub(crate) fn service(provider: Arc<dyn Provider>) -> Service {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("unit-test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        register(&name, move |_| Ok(Arc::clone(&provider))).unwrap();
        let options = Options {
            provider: name,
            ..Default::default()
        };
        Service::new(
            Router::new()
                .hoop(options.build().unwrap())
                .push(Router::with_path("get").get(load))
                .push(Router::with_path("set").get(set))
                .push(Router::with_path("regenerate").get(regenerate))
                .push(Router::with_path("hello").get(hello)),
        )
    }

    /// One exchange: the status, the body, and the session cookie set, if any.
    #[derive(Debug)]
    pub(crate) struct Reply {
        pub(crate) status: u16,
        pub(crate) body: String,
        pub(crate) session: Option<String>,
    }

    /// `GET path`, sending the session cookie `cookie` if given.
    pub(crate) async fn get(service: &Service, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = TestClient::get(format!("http://127.0.0.1:5800{path}"));
        if let Some(cookie) = cookie {
            req = req.add_header("cookie", format!("sessioner={cookie}"), true);
        }
        let mut res = req.send(service).await;
        let session = res
            .cookies()
            .delta()
            .find(|c| c.name() == "sessioner")
            .map(|c| c.value().to_owned());
        Reply {
            status: res.status_code.map_or(200, |s| s.as_u16()),
            body: res.take_string().await.unwrap_or_default(),
            session,
        }
    }

    /// Something held on a thread of its own (a stripe or shard lock) until released.
    pub(crate) struct Held {
        release: mpsc::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Held {
        /// Runs `hold` on a new thread; `hold` takes what it holds, then calls the `wait` it
        /// is given, which returns on [`release`](Held::release). Returns once it holds.
        pub(crate) fn new(hold: impl FnOnce(&dyn Fn()) + Send + 'static) -> Held {
            let (holding, held) = mpsc::channel();
            let (release, released) = mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                hold(&|| {
                    holding.send(()).unwrap();
                    // The test releases it; the bound only ends a test that already failed.
                    let _ = released.recv_timeout(Duration::from_secs(60));
                })
            });
            held.recv().unwrap();
            Held { release, thread }
        }

        pub(crate) fn release(self) {
            self.release.send(()).unwrap();
            self.thread.join().unwrap();
        }
    }

    /// SECURITY.md R1 and R5 through the middleware, on a provider whose blocking calls time
    /// out after a fraction of a second: while `held` keeps the blocking call for the session
    /// `stuck` (`user=ann`) waiting, a request on it is a 503 well within the 5 s default,
    /// with the cookie kept; `/hello` and the session `other` (`user=bob`) are served; once
    /// released, `stuck` answers again.
    pub(crate) async fn unavailable_then_recovers(
        service: &Service,
        stuck: &str,
        other: &str,
        held: Held,
    ) {
        let started = Instant::now();
        let r = get(service, "/get?key=user", Some(stuck)).await;
        let took = started.elapsed();
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.session.is_none(), "the cookie is kept: no new id");
        assert!(
            !r.body.contains("ann") && !r.body.contains("timed out"),
            "opaque, and not the handler's body: {r:?}"
        );
        // The configured timeout is a fraction of a second; the margin absorbs a slow machine.
        assert!(took < Duration::from_secs(3), "held for {took:?}");

        assert_eq!(get(service, "/hello", Some(stuck)).await.body, "hello");
        let r = get(service, "/get?key=user", Some(other)).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "bob"),
            "another session waited"
        );

        held.release();
        let r = get(service, "/get?key=user", Some(stuck)).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ann"), "no recovery");
        assert!(r.session.is_none());
    }
}
