//! `memcache`: sessions in one or more memcached servers, through a small client of our
//! own over tokio TCP (memcached's text protocol, any memcached since 1.4).
//!
//! ProviderConfig, servers and settings separated by `;` (as macaron's and beego's
//! `127.0.0.1:9090` and `127.0.0.1:7080`; every part optional):
//!
//! ```text
//! 127.0.0.1:11211;10.0.0.2:11211;prefix=myapp:session:;timeout_ms=3000
//! ```
//!
//! The default server is `127.0.0.1:11211`, the default prefix `sessioner:`, the default
//! timeout 3 s. Give every application sharing a server its own prefix.
//!
//! Servers and connections:
//! - Each session lives on one server, chosen by rendezvous hashing of its key over the
//!   addresses as written: every application instance must list the same servers (in any
//!   order). Adding or removing a server moves only the sessions of that server (they are
//!   lost: memcached does not copy them). A server that is down makes its sessions
//!   [`Error::Unavailable`] (`503`) until it returns; they do not fail over.
//! - Connections are pooled per server, made on first use (not when the provider is built),
//!   and replaced after any failure; after a server restart the first request notices the
//!   stale pool and reconnects.
//! - Every operation, connecting included, is bounded by `timeout_ms`; over it, or with the
//!   server unreachable, it is [`Error::Unavailable`]. An error reply is [`Error::Backend`].
//!
//! Layout and operations:
//! - One item per session under `prefix` + [`SessionId::storage_key`] (the SHA-256 of the
//!   id), holding the whole record (deadlines and values); its memcached expiry is the idle
//!   deadline (rounded up to a second), so the server drops dead sessions by itself and
//!   [`gc`](Provider::gc) has nothing to do. `load` also checks the deadline against the
//!   provider's clock. Expiries beyond memcached's 30 days are sent as absolute Unix times,
//!   as memcached requires (none at all past 2038, the protocol's limit).
//! - `save` reads the item with `gets`, applies the change set and writes it back with
//!   `cas`; a lost race re-reads and re-applies (at most [`MAX_ATTEMPTS`] times, then
//!   `503`). So concurrent saves of different keys all persist, the same key is
//!   last-writer-wins, and a save finding no live item writes nothing: a destroyed or
//!   regenerated session is never brought back.
//! - `create` is `add`; a key held only by an expired, moved-away or damaged item is taken
//!   over with `cas`, so such an item never blocks its id and two creates never both win.
//! - `regenerate` copies the record to the new key (`add`: a taken key is a collision), then
//!   replaces the old item with a short-lived "moved" marker through `cas` on the token it
//!   read. If a save landed in between, the `cas` fails and the copy is redone, so nothing
//!   is lost; if the old session was destroyed meanwhile, the copy is deleted. The old id is
//!   dead before `regenerate` returns. A crash between the two steps leaves the old session
//!   intact (the caller never learnt the new id) and an orphan copy that expires unread.
//! - [`count`](Provider::count) is [`Error::Unsupported`]: memcached
//!   cannot list its keys, and a made-up number would mislead.
//!
//! Why our own client: the crates.io candidates compared (late 2026) were `memcache` 0.21
//! (blocking: `gets`/`cas`/`add` over the text or binary protocol, but every call would
//! need the blocking pool; its async API is experimental), `async-memcached` 0.9 (tokio,
//! text and meta protocol; one connection per client, no pool or several servers, and a
//! client whose call was cancelled by a timeout is closed for good) and `memcache-async`
//! 0.10 (one connection over any stream, `gets`/`cas`/`add`; no pool, reconnection or
//! several servers). Sessions need exactly five commands plus pooling, timeouts, recovery
//! and server choice, which `client.rs` does in a few hundred lines with no new dependency.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use self::client::{Answer, Failure, Servers, Store};
use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

mod client;
mod config;

pub use self::config::MAX_PREFIX;

const NAME: &str = "memcache";
/// The key prefix when the configuration names none.
pub const DEFAULT_PREFIX: &str = "sessioner:";
/// How long one operation may take (connecting included) when `timeout_ms` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a `save`, `create` or `regenerate` retries after losing a race on one session.
pub const MAX_ATTEMPTS: usize = 64;
/// What an old key holds for a while after `regenerate` moved its session away.
const MOVED: &[u8] = b"sessioner:moved";
/// How long (seconds) the "moved" marker stays.
const MOVED_TTL: i64 = 30;
/// memcached reads a larger expiry as an absolute Unix time.
const MAX_RELATIVE_EXPIRY: u64 = 60 * 60 * 24 * 30;

/// The memcache provider.
pub struct MemcacheProvider {
    servers: Servers,
    prefix: String,
    timeout: Duration,
    clock: Clock,
}

impl fmt::Debug for MemcacheProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcacheProvider")
            .field("servers", &self.servers)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a session's key holds.
enum Item {
    Absent,
    /// A live record and its CAS token.
    Live(Record, u64),
    /// An expired record, a "moved" marker or a damaged item, and its CAS token: no
    /// session, but something a `cas` must replace.
    Dead(u64),
}

impl MemcacheProvider {
    /// A provider for `config` (see the [module docs](self) for the format). Does not
    /// connect: connections are made on first use.
    pub fn new(config: &str, clock: Clock) -> Result<Self> {
        let config = config::Config::parse(config)?;
        Ok(MemcacheProvider {
            servers: Servers::new(config.servers),
            prefix: config.prefix,
            timeout: config.timeout,
            clock,
        })
    }

    /// The registry factory.
    pub fn factory(ctx: &ProviderContext) -> Result<Arc<dyn Provider>> {
        Ok(Arc::new(MemcacheProvider::new(
            &ctx.config,
            ctx.clock.clone(),
        )?))
    }

    /// The prefix every key of this provider starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The memcached key of session `id`: the prefix, then [`SessionId::storage_key`].
    pub fn key(&self, id: &SessionId) -> String {
        format!("{}{}", self.prefix, id.storage_key())
    }

    /// The address (as configured) of the server that holds `id`.
    pub fn server_of(&self, id: &SessionId) -> &str {
        self.servers.addr_of(&self.key(id))
    }

    /// Runs `operation` within the timeout.
    async fn bounded<T>(&self, operation: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, operation)
            .await
            .unwrap_or_else(|_| Err(Error::unavailable(NAME, "memcached did not answer in time")))
    }

    /// memcached's expiry for a record idle-expiring at `expires_at`: seconds from now
    /// (rounded up), an absolute Unix time past 30 days, 0 (never) past the protocol's
    /// limit, -1 (at once) for a deadline already gone.
    fn exptime(&self, expires_at: u64) -> i64 {
        let now = self.clock.now_ms();
        if expires_at <= now {
            return -1;
        }
        let secs = (expires_at - now).div_ceil(1000);
        if secs <= MAX_RELATIVE_EXPIRY {
            return secs as i64;
        }
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        i64::try_from(unix_now.saturating_add(secs))
            .ok()
            .filter(|t| *t <= i64::from(i32::MAX))
            .unwrap_or(0)
    }

    async fn fetch(&self, key: &str) -> Result<Item> {
        let Some(item) = self.servers.gets(key).await.map_err(failure)? else {
            return Ok(Item::Absent);
        };
        if item.value == MOVED {
            return Ok(Item::Dead(item.cas));
        }
        let record = Record::decode(&item.value)?;
        Ok(if record.is_expired(self.clock.now_ms()) {
            Item::Dead(item.cas)
        } else {
            Item::Live(record, item.cas)
        })
    }

    /// As [`fetch`](Self::fetch), but a damaged item is `Dead` rather than an error.
    async fn fetch_lenient(&self, key: &str) -> Result<Item> {
        match self.fetch(key).await {
            Err(Error::Corrupt(_)) => match self.servers.gets(key).await.map_err(failure)? {
                Some(item) => Ok(Item::Dead(item.cas)),
                None => Ok(Item::Absent),
            },
            other => other,
        }
    }

    async fn store(&self, how: Store, key: &str, record: &Record) -> Result<Answer> {
        let exptime = self.exptime(record.expires_at);
        self.servers
            .store(how, key, exptime, &record.encode())
            .await
            .map_err(failure)
    }

    /// Stores `record` under `key` unless a live session holds it.
    async fn insert(&self, key: &str, record: &Record) -> Result<bool> {
        for _ in 0..MAX_ATTEMPTS {
            if self.store(Store::Add, key, record).await? == Answer::Stored {
                return Ok(true);
            }
            match self.fetch_lenient(key).await? {
                Item::Live(..) => return Ok(false),
                Item::Absent => {}
                Item::Dead(cas) => {
                    if self.store(Store::Cas(cas), key, record).await? == Answer::Stored {
                        return Ok(true);
                    }
                }
            }
        }
        Err(contention())
    }

    async fn save_unbounded(&self, key: &str, changes: &ChangeSet) -> Result<bool> {
        for _ in 0..MAX_ATTEMPTS {
            let Item::Live(mut record, cas) = self.fetch(key).await? else {
                return Ok(false);
            };
            record.apply(changes);
            match self.store(Store::Cas(cas), key, &record).await? {
                Answer::Stored => return Ok(true),
                Answer::NotFound => return Ok(false),
                Answer::Exists | Answer::NotStored => {}
            }
        }
        Err(contention())
    }

    async fn regenerate_unbounded(&self, old: &str, new: &str) -> Result<Regenerated> {
        let mut copied = false;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > MAX_ATTEMPTS {
                return Err(contention());
            }
            let (record, cas) = match self.fetch_lenient(old).await? {
                Item::Live(record, cas) => (record, cas),
                Item::Absent | Item::Dead(_) => break,
            };
            if copied {
                self.store(Store::Set, new, &record).await?;
            } else if self.insert(new, &record).await? {
                copied = true;
            } else {
                return Ok(Regenerated::Collision);
            }
            let moved = self
                .servers
                .store(Store::Cas(cas), old, MOVED_TTL, MOVED)
                .await
                .map_err(failure)?;
            match moved {
                Answer::Stored => return Ok(Regenerated::Moved),
                Answer::NotFound => break,
                // A save landed since the read: copy again.
                Answer::Exists | Answer::NotStored => {}
            }
        }
        if copied {
            self.servers.delete(new).await.map_err(failure)?;
        }
        Ok(Regenerated::Missing)
    }
}

/// A transport failure is `Unavailable` (503); a protocol or error reply is `Backend`.
fn failure(f: Failure) -> Error {
    match f {
        Failure::Io(_) => Error::unavailable(NAME, f),
        Failure::Protocol(_) => Error::backend(NAME, f),
    }
}

fn contention() -> Error {
    Error::unavailable(
        NAME,
        format!("a session changed {MAX_ATTEMPTS} times while one write tried to apply"),
    )
}

#[async_trait]
impl Provider for MemcacheProvider {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let key = self.key(id);
        match self.bounded(self.fetch(&key)).await? {
            Item::Live(record, _) => Ok(Some(record)),
            Item::Absent | Item::Dead(_) => Ok(None),
        }
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let key = self.key(id);
        self.bounded(self.insert(&key, record)).await
    }

    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        let key = self.key(id);
        self.bounded(self.save_unbounded(&key, changes)).await
    }

    async fn destroy(&self, id: &SessionId) -> Result<()> {
        let key = self.key(id);
        self.bounded(async { self.servers.delete(&key).await.map(drop).map_err(failure) })
            .await
    }

    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
        let (old, new) = (self.key(old), self.key(new));
        self.bounded(self.regenerate_unbounded(&old, &new)).await
    }

    async fn exists(&self, id: &SessionId) -> Result<bool> {
        let key = self.key(id);
        Ok(matches!(
            self.bounded(self.fetch(&key)).await?,
            Item::Live(..)
        ))
    }

    /// Unsupported: memcached cannot list its keys. Always [`Error::Unsupported`].
    async fn count(&self) -> Result<usize> {
        Err(Error::unsupported(NAME, "count"))
    }

    /// memcached expires sessions by itself: nothing to do.
    async fn gc(&self) -> Result<usize> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_times_follow_memcached_rules() {
        let clock = Clock::manual();
        let p = MemcacheProvider::new("", clock.clone()).unwrap();
        let now = clock.now_ms();
        assert_eq!(p.exptime(now), -1);
        assert_eq!(p.exptime(now - 5), -1);
        assert_eq!(p.exptime(now + 1), 1);
        assert_eq!(p.exptime(now + 1_500), 2);
        let thirty_days = MAX_RELATIVE_EXPIRY * 1000;
        assert_eq!(p.exptime(now + thirty_days), MAX_RELATIVE_EXPIRY as i64);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let absolute = p.exptime(now + thirty_days + 1_000);
        assert!(
            (absolute - unix - MAX_RELATIVE_EXPIRY as i64 - 1).abs() <= 2,
            "{absolute} is not an absolute time 30 days and a second ahead"
        );
        assert_eq!(p.exptime(u64::MAX), 0, "past 2038: no expiry at all");
    }

    #[test]
    fn debug_names_servers_and_prefix() {
        let p = MemcacheProvider::new("127.0.0.1:9090;prefix=app:", Clock::system()).unwrap();
        let shown = format!("{p:?}");
        assert!(
            shown.contains("127.0.0.1:9090") && shown.contains("app:"),
            "{shown}"
        );
    }
}
