//! [`Store`]: one visitor's session for one request, loaded lazily, saved as a change set.
//!
//! Invariants:
//! - the cookie's id reaches the provider only as a [`SessionId`] that parsed strictly;
//! - the provider is asked for the session at most once per request, on first use, and a
//!   request that never uses its session costs no allocation and no backend call;
//! - a backend failure for this session (load, regenerate, destroy) is remembered in the
//!   state, and [`Store::release`] turns it into the response's status whatever the
//!   handler did with the error;
//! - after release every operation on this session is [`Error::Released`];
//! - a new session exists only once a value was written: it is created at release, with a
//!   fresh id on collision.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use salvo::http::StatusCode;

use crate::clock::duration_ms;
use crate::error::{Error, Result};
use crate::id::{MAX_ID_LENGTH, SessionId};
use crate::options::Config;
use crate::provider::{Provider, Regenerated};
use crate::record::{ChangeSet, Record};

/// Keys starting with this are sessioner's own (the flash lives under one).
pub(crate) const RESERVED_PREFIX: &str = "__sessioner";
/// How often a colliding new id is replaced before giving up (128-bit ids never collide).
const ID_ATTEMPTS: usize = 3;

/// What every request's [`Store`] shares: the settings and the provider.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) provider: Arc<dyn Provider>,
}

/// The current visitor's session, as macaron's `session.Store`.
///
/// Reach it with [`depot.session()`](crate::SessionDepotExt::session). It is cheap to clone
/// (clones share state) and every method takes `&self`. Values are stored through serde as
/// JSON. Nothing touches the backend until a method needs it, and nothing is stored until a
/// value is written: a visitor who only reads gets no record and no cookie.
///
/// At the end of the request the middleware writes only what changed (per-key merge with
/// concurrent requests on the same session; the same key is last-writer-wins), before the
/// response is sent, so a failed save is a `500`, never a silent `200`.
///
/// Failures the handler cannot hide:
///
/// - When loading, regenerating or destroying this session fails, the response becomes that
///   error's status (`503` for an unreachable backend, else `500`) with an empty body, even
///   if the handler ignored the error and answered `200` (unless it already answered with a
///   `5xx` of its own).
/// - Once the middleware has released the session (the handler chain returned), every
///   method touching this session returns [`Error::Released`]: a clone moved into a task
///   that outlives the request cannot change it, and says so instead of writing nowhere.
///   Finish session work before the handler returns (await the task), or write through
///   [`Sessioner::provider`](crate::Sessioner::provider). [`read`](Store::read),
///   [`count`](Store::count) and [`gc`](Store::gc) keep working.
///
/// ```no_run
/// use salvo::prelude::*;
/// use sessioner::SessionDepotExt;
///
/// #[handler]
/// async fn counter(depot: &mut Depot) -> Result<String, sessioner::Error> {
///     let session = depot.session()?;
///     let n = session.get::<u64>("count").await?.unwrap_or(0) + 1;
///     session.set("count", &n).await?;
///     Ok(n.to_string())
/// }
/// ```
pub struct Store {
    shared: Arc<Shared>,
    /// The request's cookie value, kept inline until the session is first used.
    cookie: RawCookie,
    /// Built on first use: a request that never asks for its session allocates nothing here.
    state: OnceLock<Arc<Mutex<State>>>,
    /// Released before the state was built (the request never used its session).
    released: bool,
}

impl Clone for Store {
    /// Clones share one state, so the state is built first if nothing has used it yet.
    fn clone(&self) -> Self {
        Store {
            shared: Arc::clone(&self.shared),
            cookie: self.cookie,
            state: OnceLock::from(Arc::clone(self.state())),
            released: self.released,
        }
    }
}

impl fmt::Debug for Store {
    // Never the cookie or the values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("in_use", &self.state.get().is_some())
            .finish_non_exhaustive()
    }
}

/// A cookie value of the configured id length, copied without allocating; checked with
/// [`SessionId::parse`] when the session is first used.
#[derive(Clone, Copy)]
struct RawCookie {
    len: u8,
    bytes: [u8; MAX_ID_LENGTH],
}

impl RawCookie {
    const NONE: RawCookie = RawCookie {
        len: 0,
        bytes: [0; MAX_ID_LENGTH],
    };

    fn new(value: Option<&str>, id_length: usize) -> Self {
        let Some(value) = value else {
            return Self::NONE;
        };
        match u8::try_from(value.len()) {
            Ok(len) if value.len() == id_length && value.len() <= MAX_ID_LENGTH => {
                let mut bytes = [0; MAX_ID_LENGTH];
                bytes[..value.len()].copy_from_slice(value.as_bytes());
                RawCookie { len, bytes }
            }
            _ => {
                tracing::debug!("malformed session cookie ignored");
                Self::NONE
            }
        }
    }

    fn id(&self, id_length: usize) -> Option<SessionId> {
        if self.len == 0 {
            return None;
        }
        let value = std::str::from_utf8(&self.bytes[..usize::from(self.len)]).ok();
        let id = value.and_then(|v| SessionId::parse(v, id_length).ok());
        if id.is_none() {
            tracing::debug!("malformed session cookie ignored");
        }
        id
    }
}

/// Where this request's session stands.
#[derive(Debug)]
enum Phase {
    /// The backend has not been asked yet; `incoming` may hold the cookie's id.
    Unloaded,
    /// No session: no cookie, an unknown or expired id, or destroyed in this request.
    Anonymous,
    /// A stored session.
    Stored(SessionId),
    /// A session minted in this request, created at release.
    New(SessionId),
}

#[derive(Debug)]
struct State {
    /// The cookie's id until the load takes it.
    incoming: Option<SessionId>,
    /// The request came with a well-formed session cookie.
    had_cookie: bool,
    phase: Phase,
    /// The values as loaded, minus deletions; `changes.set` overlays them.
    values: HashMap<String, String>,
    changes: ChangeSet,
    /// When the load happened (ms since the epoch); release reuses it as "now".
    loaded_at: Option<u64>,
    loaded_expires_at: u64,
    absolute_deadline: Option<u64>,
    /// The cookie must name the current id (created or regenerated).
    new_cookie: bool,
    /// The client's cookie must be cleared (destroyed).
    clear_cookie: bool,
    /// A backend call for this session failed: the response becomes this error's status.
    failed: Option<StatusCode>,
    /// The middleware released the session: nothing can reach the backend or the cookie now.
    released: bool,
}

impl State {
    /// Remembers that this request's session failed, so the response cannot hide it.
    fn fail(&mut self, e: Error) -> Error {
        self.failed.get_or_insert(e.status_code());
        e
    }

    /// The current text of `key`: this request's change, else the loaded value.
    fn value(&self, key: &str) -> Option<&String> {
        match self.changes.set.iter().find(|(k, _)| k == key) {
            Some((_, v)) => Some(v),
            None => self.values.get(key),
        }
    }
}

/// What the middleware does with the cookie after a release.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CookieAction {
    /// A backend call for this session failed: answer with this status and keep the cookie.
    Failed(StatusCode),
    Keep,
    Set(SessionId),
    Clear,
}

/// A read-only copy of some session's values, from [`Store::read`].
#[derive(Clone, Debug, Default)]
pub struct SessionData {
    values: HashMap<String, String>,
}

impl SessionData {
    /// The value under `key`, deserialized.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        decode(self.values.get(key), key)
    }

    /// The keys present.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with(RESERVED_PREFIX))
    }
}

fn decode<T: DeserializeOwned>(raw: Option<&String>, key: &str) -> Result<Option<T>> {
    raw.map(|raw| {
        serde_json::from_str(raw).map_err(|source| Error::Deserialize {
            key: key.to_owned(),
            source,
        })
    })
    .transpose()
}

fn check_key(key: &str) -> Result<()> {
    if key.starts_with(RESERVED_PREFIX) {
        Err(Error::ReservedKey(key.to_owned()))
    } else {
        Ok(())
    }
}

impl Store {
    /// A store for a request whose session cookie (if any) is `cookie`. Cheap: nothing is
    /// parsed or allocated until a method needs the session.
    pub(crate) fn new(shared: Arc<Shared>, cookie: Option<&str>) -> Self {
        let cookie = RawCookie::new(cookie, shared.config.id_length);
        Store {
            shared,
            cookie,
            state: OnceLock::new(),
            released: false,
        }
    }

    fn state(&self) -> &Arc<Mutex<State>> {
        self.state.get_or_init(|| {
            let incoming = self.cookie.id(self.shared.config.id_length);
            Arc::new(Mutex::new(State {
                had_cookie: incoming.is_some(),
                incoming,
                phase: Phase::Unloaded,
                values: HashMap::new(),
                changes: ChangeSet::default(),
                loaded_at: None,
                loaded_expires_at: 0,
                absolute_deadline: None,
                new_cookie: false,
                clear_cookie: false,
                failed: None,
                released: self.released,
            }))
        })
    }

    /// The value stored under `key`, deserialized into `T`; `None` if absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        decode(self.loaded().await?.value(key), key)
    }

    /// Stores `value` under `key`, creating the session if there is none.
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        check_key(key)?;
        let raw = serde_json::to_string(value).map_err(|source| Error::Serialize {
            key: key.to_owned(),
            source,
        })?;
        self.set_raw(key, raw).await
    }

    pub(crate) async fn set_raw(&self, key: &str, raw: String) -> Result<()> {
        let mut state = self.loaded().await?;
        if matches!(state.phase, Phase::Anonymous) {
            let id =
                SessionId::generate(self.shared.config.id_length).map_err(|e| state.fail(e))?;
            state.phase = Phase::New(id);
        }
        state.changes.deleted.retain(|k| k != key);
        // One copy of the value: the change set overlays the loaded values.
        match state.changes.set.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = raw,
            None => state.changes.set.push((key.to_owned(), raw)),
        }
        Ok(())
    }

    pub(crate) async fn get_raw(&self, key: &str) -> Result<Option<String>> {
        Ok(self.loaded().await?.value(key).cloned())
    }

    /// Removes `key`. Deleting the last key is saved like any other change.
    pub async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.delete_raw(key).await
    }

    pub(crate) async fn delete_raw(&self, key: &str) -> Result<()> {
        let mut state = self.loaded().await?;
        let was_set = match state.changes.set.iter().position(|(k, _)| k == key) {
            Some(i) => {
                state.changes.set.swap_remove(i);
                true
            }
            None => false,
        };
        let was_stored = state.values.remove(key).is_some();
        if (was_stored || was_set) && matches!(state.phase, Phase::Stored(_)) {
            state.changes.deleted.push(key.to_owned());
        }
        Ok(())
    }

    /// Removes every value; the session itself (and its id) stays.
    pub async fn flush(&self) -> Result<()> {
        let mut state = self.loaded().await?;
        state.values.clear();
        state.changes.set.clear();
        state.changes.deleted.clear();
        state.changes.flushed = matches!(state.phase, Phase::Stored(_));
        Ok(())
    }

    /// The session's id, or `None` for a visitor without a session.
    pub async fn id(&self) -> Result<Option<SessionId>> {
        Ok(match &self.loaded().await?.phase {
            Phase::Stored(id) | Phase::New(id) => Some(id.clone()),
            _ => None,
        })
    }

    /// Moves the session to a fresh id, keeping its data; the old id is dead at once.
    ///
    /// Call it on every privilege change (login), against session fixation. A visitor without
    /// a session gets a new, empty one.
    pub async fn regenerate_id(&self) -> Result<SessionId> {
        let mut state = self.loaded().await?;
        let moved = self.move_to_new_id(&mut state).await;
        let new = moved.map_err(|e| state.fail(e))?;
        state.new_cookie = true;
        state.clear_cookie = false;
        Ok(new)
    }

    /// Moves a stored session to a fresh id (retrying collisions), or gives an unstored one a
    /// fresh id; returns the id.
    async fn move_to_new_id(&self, state: &mut State) -> Result<SessionId> {
        let length = self.shared.config.id_length;
        let Phase::Stored(old) = &state.phase else {
            let new = SessionId::generate(length)?;
            state.phase = Phase::New(new.clone());
            return Ok(new);
        };
        let old = old.clone();
        for _ in 0..ID_ATTEMPTS {
            let new = SessionId::generate(length)?;
            match self.shared.provider.regenerate(&old, &new).await? {
                Regenerated::Moved => {
                    state.phase = Phase::Stored(new.clone());
                    return Ok(new);
                }
                Regenerated::Collision => continue,
                Regenerated::Missing => {
                    // Destroyed meanwhile: start over with only this request's changes.
                    tracing::debug!("session vanished before regenerate; starting a new one");
                    state.values.clear();
                    state.changes.flushed = false;
                    state.changes.deleted.clear();
                    state.phase = Phase::New(new.clone());
                    return Ok(new);
                }
            }
        }
        Err(Error::IdCollision {
            attempts: ID_ATTEMPTS,
        })
    }

    /// Deletes the session on the server and clears the cookie. A later `set` in the same
    /// request starts a new session under a new id.
    pub async fn destroy(&self) -> Result<()> {
        let mut state = self.usable().await?;
        let target = match &state.phase {
            Phase::Stored(id) => Some(id),
            Phase::Unloaded => state.incoming.as_ref(),
            _ => None,
        };
        if let Some(id) = target
            && let Err(e) = self.shared.provider.destroy(id).await
        {
            // Nothing changed: the session (and the visitor's cookie) stay as they were.
            return Err(state.fail(e));
        }
        state.phase = Phase::Anonymous;
        state.incoming = None;
        state.values.clear();
        state.changes = ChangeSet::default();
        state.absolute_deadline = None;
        state.new_cookie = false;
        state.clear_cookie = state.had_cookie;
        Ok(())
    }

    /// A copy of the session stored under `sid` (any visitor's), as macaron's `Read(sid)`.
    ///
    /// `sid` is parsed strictly first: `read("../x")` is [`Error::InvalidSessionId`].
    pub async fn read(&self, sid: &str) -> Result<Option<SessionData>> {
        let id = SessionId::parse(sid, self.shared.config.id_length)?;
        Ok(self
            .shared
            .provider
            .load(&id)
            .await?
            .map(|r| SessionData { values: r.values }))
    }

    /// How many live sessions the provider holds.
    pub async fn count(&self) -> Result<usize> {
        self.shared.provider.count().await
    }

    /// Removes expired sessions now; returns how many. The middleware also does this every
    /// `gc_interval` in the background.
    pub async fn gc(&self) -> Result<usize> {
        self.shared.provider.gc().await
    }

    /// The provider's `load`, answered at once where the provider can ([`Provider::load_now`]).
    ///
    /// [`Provider::load_now`]: crate::Provider::load_now
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let provider = &self.shared.provider;
        match provider.load_now(id) {
            Some(done) => done,
            None => provider.load(id).await,
        }
    }

    /// The provider's `save`, answered at once where the provider can.
    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        let provider = &self.shared.provider;
        match provider.save_now(id, changes) {
            Some(done) => done,
            None => provider.save(id, changes).await,
        }
    }

    /// Locks the state, unless the middleware has released it.
    async fn usable(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        if self.released {
            return Err(Error::Released);
        }
        let state = self.state().lock().await;
        if state.released {
            return Err(Error::Released);
        }
        Ok(state)
    }

    /// Locks the state, loading the session from the backend on first use.
    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let mut state = self.usable().await?;
        if matches!(state.phase, Phase::Unloaded) {
            state.phase = Phase::Anonymous;
            if let Some(id) = state.incoming.take() {
                let loaded = self.load(&id).await;
                let now = self.shared.config.clock.now_ms();
                state.loaded_at = Some(now);
                match loaded {
                    // The expiry is checked again: a custom provider may break the contract.
                    Ok(Some(record)) if !record.is_expired(now) => {
                        state.values = record.values;
                        state.loaded_expires_at = record.expires_at;
                        state.absolute_deadline = record.absolute_deadline;
                        state.phase = Phase::Stored(id);
                    }
                    Ok(_) => {
                        tracing::debug!("session cookie names no live session; treated as none")
                    }
                    Err(Error::Corrupt(e)) => {
                        tracing::warn!(error = %e, "corrupt session record removed; visitor starts afresh");
                        if let Err(e) = self.shared.provider.destroy(&id).await {
                            tracing::warn!(error = %e, "could not remove a corrupt session record");
                        }
                    }
                    Err(e) => {
                        // Asked again, the store tries again; the response fails either way.
                        state.incoming = Some(id);
                        state.phase = Phase::Unloaded;
                        return Err(state.fail(e));
                    }
                }
            }
        }
        Ok(state)
    }

    /// Whether a backend call for this session already failed in this request (then the
    /// response fails whatever comes next, and nothing more need reach the backend). `false`
    /// while a spawned task holds the state: [`release`](Store::release) still sees it.
    pub(crate) fn has_failed(&self) -> bool {
        self.state
            .get()
            .and_then(|state| state.try_lock().ok().map(|s| s.failed.is_some()))
            .unwrap_or(false)
    }

    /// Releases a session nothing asked for in this request, and says so; `false` (nothing
    /// released) when it was used, failed, or is in use elsewhere (a spawned task holding its
    /// lock): then [`release`](Store::release) is due.
    pub(crate) fn release_untouched(&mut self) -> bool {
        let Some(state) = self.state.get() else {
            self.released = true;
            return true;
        };
        let Ok(mut state) = state.try_lock() else {
            return false;
        };
        let untouched =
            matches!(state.phase, Phase::Unloaded) && !state.clear_cookie && state.failed.is_none();
        state.released |= untouched;
        untouched
    }

    /// Writes what this request changed (unless `save` is false); says what to do with the
    /// cookie. A failed backend call wins over everything: the response becomes its status.
    /// Afterwards the store refuses further use ([`Error::Released`]).
    pub(crate) async fn release(&self, save: bool) -> Result<CookieAction> {
        let mut state = self.state().lock().await;
        state.released = true;
        if let Some(status) = state.failed {
            return Ok(CookieAction::Failed(status));
        }
        if !save {
            return Ok(CookieAction::Keep);
        }
        let config = &self.shared.config;
        let now = state.loaded_at.unwrap_or_else(|| config.clock.now_ms());
        let idle = now.saturating_add(duration_ms(config.max_lifetime));
        match std::mem::replace(&mut state.phase, Phase::Anonymous) {
            Phase::Stored(id) => {
                let expires_at = state.absolute_deadline.map_or(idle, |a| idle.min(a));
                let mut changes = std::mem::take(&mut state.changes);
                changes.expires_at = expires_at;
                // A read-only request refreshes the expiry only when that gains over a tenth of
                // the lifetime: at most one write per session per tenth of `max_lifetime`.
                let stale = expires_at.saturating_sub(state.loaded_expires_at)
                    > duration_ms(config.max_lifetime) / 10;
                if (!changes.is_touch_only() || stale) && !self.save(&id, &changes).await? {
                    tracing::info!(
                        "session destroyed or regenerated by a concurrent request; this request's changes were dropped"
                    );
                    return Ok(CookieAction::Keep);
                }
                Ok(if state.new_cookie {
                    CookieAction::Set(id)
                } else {
                    CookieAction::Keep
                })
            }
            Phase::New(mut id) => {
                let mut values = std::mem::take(&mut state.values);
                values.extend(std::mem::take(&mut state.changes.set));
                if values.is_empty() && !state.new_cookie {
                    return Ok(if state.clear_cookie {
                        CookieAction::Clear
                    } else {
                        CookieAction::Keep
                    });
                }
                let absolute = config
                    .absolute_lifetime
                    .map(|d| now.saturating_add(duration_ms(d)));
                let record = Record {
                    values,
                    expires_at: absolute.map_or(idle, |a| idle.min(a)),
                    absolute_deadline: absolute,
                };
                for attempt in 1..=ID_ATTEMPTS {
                    if self.shared.provider.create(&id, &record).await? {
                        return Ok(CookieAction::Set(id));
                    }
                    if attempt < ID_ATTEMPTS {
                        id = SessionId::generate(config.id_length)?;
                    }
                }
                Err(Error::IdCollision {
                    attempts: ID_ATTEMPTS,
                })
            }
            Phase::Anonymous | Phase::Unloaded => Ok(if state.clear_cookie {
                CookieAction::Clear
            } else {
                CookieAction::Keep
            }),
        }
    }
}
