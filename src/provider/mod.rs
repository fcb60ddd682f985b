//! The storage seam: the [`Provider`] trait, the by-name registry and the built-in backends.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use once_cell::sync::Lazy;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

#[cfg(any(feature = "file", feature = "sled"))]
mod blocking;
#[cfg(feature = "file")]
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub mod file;
#[cfg(feature = "memcache")]
#[cfg_attr(docsrs, doc(cfg(feature = "memcache")))]
pub mod memcache;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "sled")]
#[cfg_attr(docsrs, doc(cfg(feature = "sled")))]
pub mod sled;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod sql;

/// What [`Provider::regenerate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regenerated {
    /// The record now lives under the new id; the old id is dead.
    Moved,
    /// There was no live record under the old id (destroyed, regenerated or expired meanwhile).
    Missing,
    /// The new id is taken; nothing changed. The caller retries with another id.
    Collision,
}

/// A session storage backend.
///
/// Every method takes a validated [`SessionId`]; persistent backends store records under
/// [`SessionId::storage_key`]. The contract, which the conformance suite (`sessioner::testing`,
/// feature `testing`) checks for every built-in backend and yours can run too:
///
/// | method | contract |
/// |---|---|
/// | `load` | the record, or `None` if absent **or expired** |
/// | `load_now`, `save_now` | optional: `None`, or at once exactly what `load` / `save` would do |
/// | `create` | insert only if absent; `false` on collision |
/// | `save` | apply a change set to a live record (per-key merge); `false`, and no write, if the record is gone: a save never re-creates a destroyed or regenerated session |
/// | `destroy` | delete; a missing record is not an error |
/// | `regenerate` | move old to new atomically; the old id is dead afterwards |
/// | `count` | live records of this provider only |
/// | `gc` | delete every expired record, in bounded batches |
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug + 'static {
    /// The live record stored under `id`, if any. Expired records read as `None`.
    async fn load(&self, id: &SessionId) -> Result<Option<Record>>;

    /// [`load`](Provider::load) without waiting, for backends that can answer at once (the
    /// memory provider): `Some` holds exactly what `load` would return, `None` means "call
    /// `load`". The middleware tries this first, so an in-process backend costs no boxed
    /// future per request. The default is `None`.
    fn load_now(&self, id: &SessionId) -> Option<Result<Option<Record>>> {
        let _ = id;
        None
    }

    /// Stores `record` under `id` unless a live record is there; returns whether it did.
    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool>;

    /// Applies `changes` to the live record under `id`; returns `false` if there is none.
    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool>;

    /// [`save`](Provider::save) without waiting, as [`load_now`](Provider::load_now): `Some`
    /// means the save is done (with `save`'s result), `None` means "call `save`". The default
    /// is `None`.
    fn save_now(&self, id: &SessionId, changes: &ChangeSet) -> Option<Result<bool>> {
        let _ = (id, changes);
        None
    }

    /// Deletes the record under `id`, if any.
    async fn destroy(&self, id: &SessionId) -> Result<()>;

    /// Moves the live record from `old` to `new` in one step.
    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated>;

    /// Whether a live record is stored under `id`.
    async fn exists(&self, id: &SessionId) -> Result<bool> {
        Ok(self.load(id).await?.is_some())
    }

    /// How many live sessions this provider holds.
    async fn count(&self) -> Result<usize>;

    /// Deletes expired records; returns how many. The default does nothing, for backends
    /// that expire records by themselves.
    async fn gc(&self) -> Result<usize> {
        Ok(0)
    }
}

/// What a provider factory is given: the `provider_config` string and the handler's settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProviderContext {
    /// `Options.provider_config`, in the provider's own format.
    pub config: String,
    /// The clock expiry is judged by.
    pub clock: Clock,
    /// The idle lifetime of a session (`Options.max_lifetime`).
    pub max_lifetime: Duration,
}

impl ProviderContext {
    /// A context for building a provider directly, outside `sessioner(..)`.
    pub fn new(config: impl Into<String>, clock: Clock, max_lifetime: Duration) -> Self {
        ProviderContext {
            config: config.into(),
            clock,
            max_lifetime,
        }
    }

    /// A [`Error::ProviderConfig`] for provider `name`.
    pub fn error(name: &str, reason: impl fmt::Display) -> Error {
        Error::provider_config(name, reason)
    }
}

/// Builds a provider from its context; registered under a name with [`register`].
pub type Factory = Arc<dyn Fn(&ProviderContext) -> Result<Arc<dyn Provider>> + Send + Sync>;

static REGISTRY: Lazy<RwLock<HashMap<String, Factory>>> = Lazy::new(|| {
    #[allow(unused_mut)]
    let mut map: HashMap<String, Factory> = HashMap::new();
    #[cfg(feature = "memory")]
    map.insert("memory".into(), Arc::new(memory::MemoryProvider::factory));
    #[cfg(feature = "file")]
    map.insert("file".into(), Arc::new(file::FileProvider::factory));
    #[cfg(feature = "sled")]
    map.insert("sled".into(), Arc::new(sled::SledProvider::factory));
    #[cfg(feature = "sled")]
    map.insert("ledis".into(), Arc::new(sled::SledProvider::factory));
    #[cfg(feature = "redis")]
    map.insert("redis".into(), Arc::new(redis::RedisProvider::factory));
    #[cfg(feature = "memcache")]
    map.insert(
        "memcache".into(),
        Arc::new(memcache::MemcacheProvider::factory),
    );
    #[cfg(feature = "postgres")]
    map.insert(
        "postgres".into(),
        Arc::new(postgres::PostgresProvider::factory),
    );
    #[cfg(feature = "postgres")]
    map.insert(
        "postgresql".into(),
        Arc::new(postgres::PostgresProvider::factory),
    );
    #[cfg(feature = "mysql")]
    map.insert("mysql".into(), Arc::new(mysql::MysqlProvider::factory));
    RwLock::new(map)
});

/// Registers a provider factory under `name`, as macaron's `session.Register`.
///
/// A name already taken (including the built-ins) is [`Error::DuplicateProvider`].
///
/// ```
/// use std::sync::Arc;
/// use sessioner::provider::{register, memory::MemoryProvider};
///
/// register("my-memory", |ctx| MemoryProvider::factory(ctx)).unwrap();
/// assert!(register("my-memory", |ctx| MemoryProvider::factory(ctx)).is_err());
/// ```
pub fn register<F>(name: &str, factory: F) -> Result<()>
where
    F: Fn(&ProviderContext) -> Result<Arc<dyn Provider>> + Send + Sync + 'static,
{
    let mut map = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if map.contains_key(name) {
        return Err(Error::DuplicateProvider(name.to_owned()));
    }
    map.insert(name.to_owned(), Arc::new(factory));
    Ok(())
}

/// Builds a fresh provider by registered name.
pub fn build(name: &str, ctx: &ProviderContext) -> Result<Arc<dyn Provider>> {
    let factory = REGISTRY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned()
        .ok_or_else(|| Error::UnknownProvider(name.to_owned()))?;
    factory(ctx)
}

/// Whether `name` is registered.
pub fn is_registered(name: &str) -> bool {
    REGISTRY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(name)
}
