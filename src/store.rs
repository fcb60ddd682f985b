//! [`Store`]: one visitor's session for one request, loaded lazily, saved as a change set.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::clock::duration_ms;
use crate::error::{Error, Result};
use crate::handler::Shared;
use crate::id::SessionId;
use crate::provider::Regenerated;
use crate::record::{ChangeSet, Record};

/// Keys starting with this are sessioner's own (the flash lives under one).
pub(crate) const RESERVED_PREFIX: &str = "__sessioner";
/// How often a colliding new id is replaced before giving up (128-bit ids never collide).
const ID_ATTEMPTS: usize = 3;

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
#[derive(Clone, Debug)]
pub struct Store {
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
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
    incoming: Option<SessionId>,
    phase: Phase,
    values: HashMap<String, String>,
    changes: ChangeSet,
    loaded_expires_at: u64,
    absolute_deadline: Option<u64>,
    /// The cookie must name the current id (created or regenerated).
    new_cookie: bool,
    /// The client's cookie must be cleared (destroyed).
    clear_cookie: bool,
    /// A load failed: the response becomes this error's status.
    failed: Option<salvo::http::StatusCode>,
}

/// What the middleware does with the cookie after a release.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CookieAction {
    /// The backend failed while loading: answer with this status and keep the cookie.
    LoadFailed(salvo::http::StatusCode),
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
        decode(&self.values, key)
    }

    /// The keys present.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with(RESERVED_PREFIX))
    }
}

fn decode<T: DeserializeOwned>(values: &HashMap<String, String>, key: &str) -> Result<Option<T>> {
    values
        .get(key)
        .map(|raw| {
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
    pub(crate) fn new(shared: Arc<Shared>, incoming: Option<SessionId>) -> Self {
        Store {
            shared,
            state: Arc::new(Mutex::new(State {
                incoming,
                phase: Phase::Unloaded,
                values: HashMap::new(),
                changes: ChangeSet::default(),
                loaded_expires_at: 0,
                absolute_deadline: None,
                new_cookie: false,
                clear_cookie: false,
                failed: None,
            })),
        }
    }

    /// The value stored under `key`, deserialized into `T`; `None` if absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        decode(&self.loaded().await?.values, key)
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
            state.phase = Phase::New(SessionId::generate(self.shared.config.id_length)?);
        }
        state.changes.deleted.retain(|k| k != key);
        state.changes.set.insert(key.to_owned(), raw.clone());
        state.values.insert(key.to_owned(), raw);
        Ok(())
    }

    pub(crate) async fn get_raw(&self, key: &str) -> Result<Option<String>> {
        Ok(self.loaded().await?.values.get(key).cloned())
    }

    /// Removes `key`. Deleting the last key is saved like any other change.
    pub async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.delete_raw(key).await
    }

    pub(crate) async fn delete_raw(&self, key: &str) -> Result<()> {
        let mut state = self.loaded().await?;
        if state.values.remove(key).is_some() {
            state.changes.set.remove(key);
            if matches!(state.phase, Phase::Stored(_)) {
                state.changes.deleted.push(key.to_owned());
            }
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
        let length = self.shared.config.id_length;
        let mut new = SessionId::generate(length)?;
        if let Phase::Stored(old) = &state.phase {
            let mut attempts = 0;
            loop {
                match self.shared.provider.regenerate(old, &new).await? {
                    Regenerated::Moved => {
                        state.phase = Phase::Stored(new.clone());
                        break;
                    }
                    Regenerated::Collision if attempts + 1 < ID_ATTEMPTS => {
                        attempts += 1;
                        new = SessionId::generate(length)?;
                    }
                    Regenerated::Collision => {
                        return Err(Error::backend("regenerate", "no free session id"));
                    }
                    Regenerated::Missing => {
                        // Destroyed meanwhile: start over with only this request's changes.
                        tracing::debug!("session vanished before regenerate; starting a new one");
                        state.values = state.changes.set.clone();
                        state.changes.flushed = false;
                        state.changes.deleted.clear();
                        state.phase = Phase::New(new.clone());
                        break;
                    }
                }
            }
        } else {
            state.phase = Phase::New(new.clone());
        }
        state.new_cookie = true;
        state.clear_cookie = false;
        Ok(new)
    }

    /// Deletes the session on the server and clears the cookie. A later `set` in the same
    /// request starts a new session under a new id.
    pub async fn destroy(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let target = match std::mem::replace(&mut state.phase, Phase::Anonymous) {
            Phase::Stored(id) => Some(id),
            Phase::Unloaded => state.incoming.clone(),
            _ => None,
        };
        if let Some(id) = &target {
            self.shared.provider.destroy(id).await?;
        }
        state.values.clear();
        state.changes = ChangeSet::default();
        state.absolute_deadline = None;
        state.new_cookie = false;
        state.clear_cookie = state.incoming.is_some();
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

    /// Locks the state, loading the session from the backend on first use.
    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let mut state = self.state.lock().await;
        if matches!(state.phase, Phase::Unloaded) {
            state.phase = Phase::Anonymous;
            if let Some(id) = state.incoming.clone() {
                match self.shared.provider.load(&id).await {
                    Ok(Some(record)) if !record.is_expired(self.shared.config.clock.now_ms()) => {
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
                        state.phase = Phase::Unloaded;
                        state.failed = Some(e.status_code());
                        return Err(e);
                    }
                }
            }
        }
        Ok(state)
    }

    /// True when nothing asked for the session in this request (so there is nothing to save).
    /// A store still in use elsewhere (a spawned task holding its lock) counts as touched.
    pub(crate) fn is_untouched(&self) -> bool {
        self.state
            .try_lock()
            .is_ok_and(|s| matches!(s.phase, Phase::Unloaded) && !s.clear_cookie)
    }

    /// Writes what this request changed (unless `save` is false); says what to do with the
    /// cookie. A failed load wins over everything: the response becomes its status.
    pub(crate) async fn release(&self, save: bool) -> Result<CookieAction> {
        let mut state = self.state.lock().await;
        if let Some(status) = state.failed {
            return Ok(CookieAction::LoadFailed(status));
        }
        if !save {
            return Ok(CookieAction::Keep);
        }
        let config = &self.shared.config;
        let now = config.clock.now_ms();
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
                if (!changes.is_touch_only() || stale)
                    && !self.shared.provider.save(&id, &changes).await?
                {
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
                if state.values.is_empty() && !state.new_cookie {
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
                    values: std::mem::take(&mut state.values),
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
                Err(Error::backend("create", "no free session id"))
            }
            Phase::Anonymous | Phase::Unloaded => Ok(if state.clear_cookie {
                CookieAction::Clear
            } else {
                CookieAction::Keep
            }),
        }
    }
}
