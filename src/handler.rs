//! The middleware: [`sessioner`], [`try_sessioner`] and the [`Sessioner`] handler.

use std::sync::{Arc, OnceLock, Weak};

use salvo::http::ResBody;
use salvo::http::cookie::{self, Cookie};
use salvo::http::header::{CACHE_CONTROL, HeaderValue, UPGRADE};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};

use crate::depot::Slot;
use crate::error::Result;
use crate::flash::{self, Flash, FlashMessages};
use crate::options::{Config, Options, SameSite};
use crate::provider::{self, Provider, ProviderContext};
use crate::store::{CookieAction, Shared, Store};

/// Builds the session middleware from `options`: `router.hoop(sessioner(options))`.
///
/// # Panics
///
/// On a bad configuration (unknown provider, invalid cookie name, id length out of range,
/// provider config its provider rejects). Use [`try_sessioner`] to get the error instead.
///
/// ```no_run
/// use salvo::prelude::*;
/// use sessioner::{Options, sessioner};
///
/// let router = Router::new().hoop(sessioner(Options {
///     provider: "file".into(),
///     provider_config: "data/sessions".into(),
///     ..Default::default()
/// }));
/// # let _ = router;
/// ```
#[allow(clippy::panic)]
pub fn sessioner(options: Options) -> Sessioner {
    match options.build() {
        Ok(handler) => handler,
        Err(e) => panic!("invalid sessioner options: {e}"),
    }
}

/// The fallible twin of [`sessioner`]: a bad configuration is an [`Error`](crate::Error).
pub fn try_sessioner(options: Options) -> Result<Sessioner> {
    options.build()
}

impl Options {
    /// Builds the middleware, or says exactly what is wrong with the options.
    ///
    /// The same as [`try_sessioner`].
    pub fn build(self) -> Result<Sessioner> {
        Sessioner::new(self.resolve()?)
    }
}

/// The session middleware. Cheap to clone; clones share one provider and one GC loop.
///
/// The background GC loop starts with the first request and stops when the last clone of
/// the middleware is dropped (a [`Store`] a task still holds does not keep it running).
#[derive(Clone, Debug)]
pub struct Sessioner {
    shared: Arc<Shared>,
    gc: Arc<OnceLock<GcTask>>,
}

/// The background GC loop; aborted when dropped, that is with the last handler clone.
#[derive(Debug)]
struct GcTask(Option<tokio::task::AbortHandle>);

impl Drop for GcTask {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

impl Sessioner {
    pub(crate) fn new(config: Config) -> Result<Self> {
        let ctx = ProviderContext::new(
            config.provider_config.clone(),
            config.clock.clone(),
            config.max_lifetime,
        );
        let provider = provider::build(&config.provider, &ctx)?;
        Ok(Sessioner {
            shared: Arc::new(Shared { config, provider }),
            gc: Arc::default(),
        })
    }

    /// The provider behind this middleware, for maintenance outside a request.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.shared.provider
    }

    /// Starts the GC loop on the first request, when a tokio runtime surely exists.
    fn start_gc(&self) {
        self.gc.get_or_init(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return GcTask(None);
            };
            let weak: Weak<dyn Provider> = Arc::downgrade(&self.shared.provider);
            let every = self.shared.config.gc_interval;
            let task = runtime.spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let Some(provider) = weak.upgrade() else {
                        break;
                    };
                    match provider.gc().await {
                        Ok(n) => tracing::debug!(removed = n, "session gc"),
                        Err(e) => tracing::warn!(error = %e, "session gc failed"),
                    }
                }
            });
            GcTask(Some(task.abort_handle()))
        });
    }

    fn cookie(&self, value: String) -> Cookie<'static> {
        let c = &self.shared.config;
        let mut cookie = Cookie::build((c.cookie_name.clone(), value))
            .path(c.cookie_path.clone())
            .http_only(true)
            .same_site(match c.same_site {
                SameSite::Strict => cookie::SameSite::Strict,
                SameSite::Lax => cookie::SameSite::Lax,
                SameSite::None => cookie::SameSite::None,
            });
        if c.secure {
            cookie = cookie.secure(true);
        }
        if let Some(domain) = &c.domain {
            cookie = cookie.domain(domain.clone());
        }
        if let Some(age) = c.cookie_lifetime {
            cookie = cookie.max_age(cookie::time::Duration::seconds(
                i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        cookie.build()
    }
}

/// Empties the response and sets `status`: session failures carry no detail to the client.
fn fail(res: &mut Response, status: salvo::http::StatusCode) {
    res.status_code(status);
    res.body(ResBody::None);
}

#[async_trait]
impl Handler for Sessioner {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        self.start_gc();
        let cookie = req
            .cookie(&self.shared.config.cookie_name)
            .map(|c| c.value());
        depot.insert_typed(Slot(FlashMessages::new(Store::new(
            Arc::clone(&self.shared),
            cookie,
        ))));

        ctrl.call_next(req, depot, res).await;

        let Ok(Slot(flash)) = depot.get_typed_mut::<Slot>() else {
            // Only code that reached past the depot's typed API can have removed it.
            tracing::error!("the session's depot entry vanished before release; nothing saved");
            fail(res, salvo::http::StatusCode::INTERNAL_SERVER_ERROR);
            return;
        };
        let next = flash.release();
        // Fast path: a request that never touched its session has nothing to write.
        if next.is_empty() && flash.store_mut().release_untouched() {
            return;
        }
        Box::pin(self.finish(flash.store(), next, req, res)).await;
    }
}

impl Sessioner {
    /// Stores the outgoing flash and the session's changes, then sets or clears the cookie.
    /// Kept out of `handle` so the common request's future stays small.
    async fn finish(&self, store: &Store, next: Flash, req: &Request, res: &mut Response) {
        // A failed session fails the response anyway: storing the flash would only retry the
        // backend that just failed.
        if !next.is_empty()
            && !store.has_failed()
            && let Err(e) = flash::store_next(store, next).await
        {
            tracing::error!(error = %e, "storing the flash failed");
            Self::failed(res, e.status_code());
            return;
        }
        let save = !(self.shared.config.ignore_release_for_websocket
            && req
                .headers()
                .get(UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")));
        let cookie = match store.release(save).await {
            Ok(CookieAction::Failed(status)) => {
                Self::failed(res, status);
                return;
            }
            Ok(CookieAction::Keep) => return,
            Ok(CookieAction::Set(id)) => self.cookie(id.as_str().to_owned()),
            Ok(CookieAction::Clear) => {
                let mut cookie = self.cookie(String::new());
                cookie.make_removal();
                cookie
            }
            Err(e) => {
                tracing::error!(error = %e, "saving the session failed");
                Self::failed(res, e.status_code());
                return;
            }
        };
        res.add_cookie(cookie);
        res.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }

    /// Answers a session failure with `status`, whatever the handler answered, unless it
    /// already answered with a server error of its own (it saw the error and handled it).
    fn failed(res: &mut Response, status: salvo::http::StatusCode) {
        if !res.status_code.is_some_and(|s| s.is_server_error()) {
            fail(res, status);
        }
    }
}
