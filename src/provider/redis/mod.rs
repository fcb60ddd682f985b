//! `redis`: sessions in a Redis (or Valkey) server, through the [`redis`](https://docs.rs/redis/1)
//! crate's auto-reconnecting [`ConnectionManager`].
//!
//! ProviderConfig, either macaron's comma-separated settings (every one optional):
//!
//! ```text
//! addr=127.0.0.1:6379,password=secret,db=0,prefix=myapp:session:,timeout_ms=3000
//! ```
//!
//! (`network=unix` with `addr=/run/redis.sock` for a socket; `username` for an ACL user;
//! macaron's `pool_size` and `idle_timeout` are accepted and ignored), or the positional form
//! macaron's and beego's docs print, `127.0.0.1:6379,100,macaron` (address, pool size
//! (ignored), password, then beego's db and idle timeout (ignored)), optionally followed by
//! settings, or a bare `127.0.0.1:6379`, or a URL (use it for passwords that contain a comma):
//!
//! ```text
//! redis://:secret@127.0.0.1:6379/0?prefix=myapp:session:&timeout_ms=3000
//! rediss://user:secret@redis.example.com:6380/0
//! redis+unix:///run/redis.sock?db=0&pass=secret
//! ```
//!
//! The default prefix is `sessioner:`; give every application sharing a database its own.
//!
//! Connection:
//! - One multiplexed connection serves every request; it is made on first use, not when the
//!   provider is built, and remade by itself after a failure.
//! - Redis down (at startup or later), a failed TLS handshake (an untrusted certificate) or
//!   a call over `timeout_ms` (default 3 s, also the connect and response timeout) is
//!   [`Error::Unavailable`] (`503`).
//! - `rediss://` is TLS through rustls with the system's root certificates (`SSL_CERT_FILE`
//!   / `SSL_CERT_DIR` add others); the certificate and name are always verified (the
//!   `#insecure` fragment is refused). Without a rustls crypto provider installed by the
//!   application, the first TLS connection installs `ring` as the process default.
//!
//! Layout:
//! - One HASH per session under `prefix` + [`SessionId::storage_key`] (the SHA-256 of the id:
//!   a key listing yields no usable cookie).
//! - Each session value is a field holding its JSON text; two reserved fields hold the idle
//!   and the absolute deadline (ms since the epoch).
//! - The key expires at the idle deadline (`PEXPIREAT`), so Redis removes dead sessions by
//!   itself and [`gc`](Provider::gc) has nothing to do; `load` also checks the deadline
//!   against the provider's clock.
//!
//! Operations (each atomic on the server):
//! - `load` is one `HGETALL`; `destroy` one `DEL`.
//! - `save`, `create` and `regenerate` are one Lua script each, run by hash (`EVALSHA`; the
//!   first call after Redis starts also loads it).
//! - `save` writes only the changed fields, and nothing if the session is gone: a destroyed
//!   or regenerated session is never brought back; concurrent saves of different keys all
//!   persist, the same key is last-writer-wins.
//! - `create` writes only if no live session holds the key; `regenerate` checks both keys
//!   and `RENAME`s.
//! - `count` walks the prefix with `SCAN` (never `KEYS`) plus one script per batch: for
//!   monitoring, not for every request.
//!
//! Needs Redis 2.6 or later (Lua scripting), or Valkey. Redis Cluster is not supported
//! (`regenerate` touches two keys that may live in different slots).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ConnectionAddr, RedisError, Script, ServerErrorKind};
use async_trait::async_trait;
use once_cell::sync::{Lazy, OnceCell};

use self::config::Config;
use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

mod config;

const NAME: &str = "redis";
/// The key prefix when the configuration names none.
pub const DEFAULT_PREFIX: &str = "sessioner:";
/// How long one call may take (connecting included) when `timeout_ms` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// The reserved field holding the idle deadline (ms since the epoch).
const EXPIRES_FIELD: &str = "__sessioner.redis.expires_at";
/// The reserved field holding the absolute deadline, when there is one.
const ABSOLUTE_FIELD: &str = "__sessioner.redis.absolute_deadline";
/// Deadlines are capped here: exact in Lua's doubles, and valid for `PEXPIREAT`.
const MAX_DEADLINE: u64 = 1 << 53;
/// Keys asked of each `SCAN` step.
const SCAN_COUNT: usize = 1_000;

fn script(source: &str) -> Script {
    Script::new(
        &source
            .replace("EXPIRES_FIELD", &format!("'{EXPIRES_FIELD}'"))
            .replace("ABSOLUTE_FIELD", &format!("'{ABSOLUTE_FIELD}'")),
    )
}

/// KEYS[1]; ARGV: now, expires_at, absolute deadline or '', then field/value pairs.
/// 1 if written (even when already expired: Redis drops it at once), 0 if a live session
/// holds the key.
static CREATE: Lazy<Script> = Lazy::new(|| {
    script(
        r"
local now = tonumber(ARGV[1])
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local exp = tonumber(redis.call('HGET', KEYS[1], EXPIRES_FIELD))
  if exp and exp > now then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], EXPIRES_FIELD, ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], ABSOLUTE_FIELD, ARGV[3]) end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
",
    )
});

/// KEYS[1]; ARGV: now, expires_at, flushed ('1' or '0'), number of deleted fields, the
/// deleted fields, then field/value pairs to set. 1 if applied, 0 if the session is gone.
static SAVE: Lazy<Script> = Lazy::new(|| {
    script(
        r"
local exp = redis.call('HGET', KEYS[1], EXPIRES_FIELD)
if not exp then return 0 end
exp = tonumber(exp)
if not exp then return redis.error_reply('CORRUPT session deadline is not a number') end
if exp <= tonumber(ARGV[1]) then return 0 end
if ARGV[3] == '1' then
  local abs = redis.call('HGET', KEYS[1], ABSOLUTE_FIELD)
  redis.call('DEL', KEYS[1])
  if abs then redis.call('HSET', KEYS[1], ABSOLUTE_FIELD, abs) end
end
local deleted = tonumber(ARGV[4])
for i = 5, 4 + deleted do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 5 + deleted, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], EXPIRES_FIELD, ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
",
    )
});

/// KEYS: old, new; ARGV: now. 1 moved, 0 missing (old key dropped), 2 collision.
static REGENERATE: Lazy<Script> = Lazy::new(|| {
    script(
        r"
local now = tonumber(ARGV[1])
local function live(key)
  if redis.call('TYPE', key).ok ~= 'hash' then return false end
  local exp = tonumber(redis.call('HGET', key, EXPIRES_FIELD))
  return exp ~= nil and exp > now
end
if live(KEYS[2]) then return 2 end
if not live(KEYS[1]) then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
",
    )
});

/// KEYS: candidate session keys; ARGV: now. How many are live sessions.
static COUNT_LIVE: Lazy<Script> = Lazy::new(|| {
    script(
        r"
local now = tonumber(ARGV[1])
local n = 0
for i = 1, #KEYS do
  local exp = redis.pcall('HGET', KEYS[i], EXPIRES_FIELD)
  if type(exp) == 'string' then
    exp = tonumber(exp)
    if exp and exp > now then n = n + 1 end
  end
end
return n
",
    )
});

/// The redis provider.
pub struct RedisProvider {
    client: Client,
    manager: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    clock: Clock,
}

impl fmt::Debug for RedisProvider {
    // The password stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.client.get_connection_info();
        f.debug_struct("RedisProvider")
            .field("addr", &info.addr().to_string())
            .field("db", &info.redis_settings().db())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisProvider {
    /// A provider for `config` (see the [module docs](self) for the formats). Does not
    /// connect: the connection is made on first use.
    pub fn new(config: &str, clock: Clock) -> Result<Self> {
        let config = Config::parse(config)?;
        let client = Client::open(config.info)
            .map_err(|e| ProviderContext::error(NAME, format!("invalid address: {e}")))?;
        Ok(RedisProvider {
            client,
            manager: OnceCell::new(),
            prefix: config.prefix,
            timeout: config.timeout,
            clock,
        })
    }

    /// The registry factory.
    pub fn factory(ctx: &ProviderContext) -> Result<Arc<dyn Provider>> {
        Ok(Arc::new(RedisProvider::new(
            &ctx.config,
            ctx.clock.clone(),
        )?))
    }

    /// The prefix every key of this provider starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, id: &SessionId) -> String {
        format!("{}{}", self.prefix, id.storage_key())
    }

    /// The shared connection, created (not yet connected) on first use, inside the runtime.
    fn connection(&self) -> Result<ConnectionManager> {
        self.manager
            .get_or_try_init(|| {
                if matches!(
                    self.client.get_connection_info().addr(),
                    ConnectionAddr::TcpTls { .. }
                ) {
                    // rustls needs a process-wide crypto provider; install ring unless the
                    // application installed one already.
                    let _ = rustls::crypto::ring::default_provider().install_default();
                }
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .cloned()
            .map_err(redis_error)
    }

    /// Runs one request against Redis, bounded by the timeout.
    async fn call<T, F, Fut>(&self, request: F) -> Result<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        let connection = self.connection()?;
        match tokio::time::timeout(self.timeout, request(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(redis_error(e)),
            Err(_) => Err(Error::unavailable(NAME, "redis did not answer in time")),
        }
    }
}

/// Maps a client error: connection trouble and a server that cannot serve yet are
/// `Unavailable` (503); a session key of the wrong type is `Corrupt`; the rest is `Backend`.
fn redis_error(e: RedisError) -> Error {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ::redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
        )
        || e.code() == Some("BUSY");
    if transient {
        Error::unavailable(NAME, e)
    } else if matches!(e.code(), Some("WRONGTYPE" | "CORRUPT")) {
        Error::Corrupt(Box::new(e))
    } else {
        Error::backend(NAME, e)
    }
}

fn corrupt(reason: &'static str) -> Error {
    Error::Corrupt(reason.into())
}

fn deadline(ms: u64) -> u64 {
    ms.min(MAX_DEADLINE)
}

fn is_reserved(field: &str) -> bool {
    field == EXPIRES_FIELD || field == ABSOLUTE_FIELD
}

/// Builds a record from `HGETALL`; `None` if there is no key or it has expired.
fn decode(fields: HashMap<Vec<u8>, Vec<u8>>, now: u64) -> Result<Option<Record>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let number = |field: &str| -> Result<Option<u64>> {
        fields
            .get(field.as_bytes())
            .map(|v| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| corrupt("session deadline is not a number"))
            })
            .transpose()
    };
    let expires_at = number(EXPIRES_FIELD)?.ok_or_else(|| corrupt("session has no deadline"))?;
    if expires_at <= now {
        return Ok(None);
    }
    let absolute_deadline = number(ABSOLUTE_FIELD)?;
    let mut values = HashMap::with_capacity(fields.len());
    for (field, value) in fields {
        let (Ok(field), Ok(value)) = (String::from_utf8(field), String::from_utf8(value)) else {
            return Err(corrupt("session field is not UTF-8"));
        };
        if !is_reserved(&field) {
            values.insert(field, value);
        }
    }
    Ok(Some(Record {
        values,
        expires_at,
        absolute_deadline,
    }))
}

/// `*`, `?`, `[`, `]` and `\` in a prefix match literally in `SCAN MATCH`.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

#[async_trait]
impl Provider for RedisProvider {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let key = self.key(id);
        let fields: HashMap<Vec<u8>, Vec<u8>> = self
            .call(
                |mut c| async move { ::redis::cmd("HGETALL").arg(&key).query_async(&mut c).await },
            )
            .await?;
        decode(fields, self.clock.now_ms())
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let mut invocation = CREATE.key(self.key(id));
        invocation
            .arg(self.clock.now_ms())
            .arg(deadline(record.expires_at));
        match record.absolute_deadline {
            Some(abs) => invocation.arg(deadline(abs)),
            None => invocation.arg(""),
        };
        for (field, value) in record.values.iter().filter(|(f, _)| !is_reserved(f)) {
            invocation.arg(field).arg(value);
        }
        let created: i64 = self
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(created == 1)
    }

    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        let deleted: Vec<&String> = changes.deleted.iter().filter(|f| !is_reserved(f)).collect();
        let mut invocation = SAVE.key(self.key(id));
        invocation
            .arg(self.clock.now_ms())
            .arg(deadline(changes.expires_at))
            .arg(if changes.flushed { "1" } else { "0" })
            .arg(deleted.len())
            .arg(deleted);
        for (field, value) in changes.set.iter().filter(|(f, _)| !is_reserved(f)) {
            invocation.arg(field).arg(value);
        }
        let saved: i64 = self
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(saved == 1)
    }

    async fn destroy(&self, id: &SessionId) -> Result<()> {
        let key = self.key(id);
        self.call(|mut c| async move {
            ::redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
        let mut invocation = REGENERATE.key(self.key(old));
        invocation.key(self.key(new)).arg(self.clock.now_ms());
        let outcome: i64 = self
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(match outcome {
            1 => Regenerated::Moved,
            2 => Regenerated::Collision,
            _ => Regenerated::Missing,
        })
    }

    async fn count(&self) -> Result<usize> {
        let pattern = glob_escape(&self.prefix);
        let key_len = self.prefix.len() + 64;
        let mut cursor: u64 = 0;
        let mut total = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .call(|mut c| {
                    let mut scan = ::redis::cmd("SCAN");
                    scan.arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT);
                    async move { scan.query_async(&mut c).await }
                })
                .await?;
            // Only keys shaped like ours: the prefix, then a SHA-256 in hex.
            let ours: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| {
                    k.len() == key_len
                        && k[self.prefix.len()..]
                            .iter()
                            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                })
                .collect();
            if !ours.is_empty() {
                let mut invocation = COUNT_LIVE.key(ours);
                invocation.arg(self.clock.now_ms());
                let live: usize = self
                    .call(|mut c| async move { invocation.invoke_async(&mut c).await })
                    .await?;
                total += live;
            }
            if next == 0 {
                return Ok(total);
            }
            cursor = next;
        }
    }

    /// Redis expires sessions by itself (`PEXPIREAT`): nothing to do.
    async fn gc(&self) -> Result<usize> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let p = RedisProvider::new("addr=127.0.0.1:1,password=hunter2", Clock::system()).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn scan_patterns_are_literal() {
        assert_eq!(glob_escape("a*b?[c]\\:"), "a\\*b\\?\\[c\\]\\\\:*");
    }
}
