//! `sled`: sessions in an embedded [sled](https://docs.rs/sled/0.34) 0.34 database.
//!
//! Registered as `sled`, and as `ledis` for configurations carried over from macaron (whose
//! `ledis` provider was the embedded store of its time).
//!
//! ProviderConfig: the data directory (e.g. `data/sessions.sled`), or macaron's
//! `data_dir=data/sessions.sled` (a trailing `,db=N` is accepted and ignored: the directory
//! is the namespace; `,cache=N` bounds the cache described below, in sessions). The
//! directory is created with mode `0700` if missing. sled holds an exclusive lock on it, so
//! a directory another process (or another provider in this process) has open is refused
//! when the provider is built, with
//! [`Error::ProviderConfig`].
//!
//! Layout: one tree maps [`SessionId::storage_key`] (the SHA-256 of the id, never the id) to
//! the [`Record::encode`]d record; a second tree indexes the records by expiry, so
//! [`gc`](Provider::gc) finds expired records in key order, in bounded batches, without
//! reading live sessions far from expiry.
//!
//! Durability: `create`, `regenerate` and `destroy` return only after
//! [`flush_async`](::sled::Tree::flush_async) has written and `fsync`ed them, so a login or a
//! logout survives a crash. An ordinary `save` reaches sled at the writer's next pass, at
//! most 500 ms later (plus the time a pass takes), and the pass ends with a flush: a crash
//! can lose the value changes of the last half second or so, as before the cache, never a
//! session's existence or its death.
//!
//! Where the work runs: `load` and `save`, the calls of every request, run inline on the
//! async worker (and answer through [`Provider::load_now`] and [`Provider::save_now`]): a
//! cache hit is a mutex, a hash lookup and a record clone or merge. A miss reads sled
//! inline: no transaction ever runs in this process's sled, so its reads take no lock
//! shared with other requests or with the flusher (only an atomic counter, and epoch-based
//! reclamation), and the disk is waited for only when a page evicted from sled's cache
//! (1 GiB by default) is read back. An eviction may write one record inline (an append to
//! sled's in-memory log). Handing these microseconds to tokio's blocking pool cost more
//! than the work itself (about twice the CPU per request, measured with `scripts/bench`).
//! An inline call cannot be timed out; the equivalent bound is sled's own: a failed disk
//! write poisons the database, after which every write fails at once with
//! [`Error::Backend`] instead of waiting. `create`, `regenerate`, `destroy` (rare, and
//! followed by a flush), `count`, `gc` and [`SledProvider::persist`] run on tokio's
//! blocking pool, bounded by a timeout ([`Error::Unavailable`] when it expires; the blocked
//! thread itself finishes its call); their flush is bounded by the same timeout. They hold
//! a shard's lock only for one key's sled operations, never across a flush. Opening the
//! database happens when the provider is built (configuration time) and blocks the calling
//! thread while sled recovers its log. Note that sled's lock mode is process-wide: any
//! other code in the process that runs a sled transaction, `apply_batch` or `checksum`, on
//! any sled database, puts these calls back behind sled's global lock (still correct, only
//! slower).

use std::fmt;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use async_trait::async_trait;

use super::blocking;
use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

mod cache;
mod expiry;
mod records;

use cache::{SHARDS, Shard, write_behind};
use expiry::{BUCKETS_PER_LIFETIME, GC_BATCH};

const NAME: &str = "sled";
const RECORDS_TREE: &[u8] = b"sessioner/records";
const EXPIRY_TREE: &[u8] = b"sessioner/expiry";
/// The idle lifetime [`SledProvider::open`] assumes: `Options`' default `max_lifetime`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// How many decoded sessions the cache holds by default (see the module documentation).
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// The sled provider. Cheap to share; the database closes when the last handle drops.
pub struct SledProvider {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: ::sled::Db,
    records: ::sled::Tree,
    expiry: ::sled::Tree,
    clock: Clock,
    /// The width of one expiry index bucket, in milliseconds (at least 1).
    bucket_ms: u64,
    /// Decoded records, the authority for the keys they hold (see the module documentation).
    shards: Box<[Mutex<Shard>]>,
    /// The bound of one shard, in entries (at least 1).
    per_shard: usize,
    /// Dropped with the provider: tells the writer thread to stop.
    _stop: mpsc::Sender<()>,
}

impl fmt::Debug for SledProvider {
    // sled's own `Debug` prints the trees' contents; show only where the data lives.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledProvider")
            .field("dir", &self.inner.dir)
            .field("bucket_ms", &self.inner.bucket_ms)
            .field(
                "cache_capacity",
                &(self.inner.per_shard * self.inner.shards.len()),
            )
            .finish_non_exhaustive()
    }
}

impl SledProvider {
    /// Opens (or creates) the database in `dir`, for sessions of the default idle lifetime
    /// (one hour); see [`open_with_lifetime`](SledProvider::open_with_lifetime).
    ///
    /// Blocks while sled opens and recovers its log. A directory held by another process or
    /// provider is [`Error::ProviderConfig`].
    pub fn open(dir: impl Into<PathBuf>, clock: Clock) -> Result<Self> {
        SledProvider::open_with_lifetime(dir, clock, DEFAULT_LIFETIME)
    }

    /// Opens (or creates) the database in `dir` for sessions whose idle lifetime is
    /// `max_lifetime`: the expiry index groups deadlines in buckets of a tenth of it.
    ///
    /// Blocks while sled opens and recovers its log. A directory held by another process or
    /// provider is [`Error::ProviderConfig`].
    pub fn open_with_lifetime(
        dir: impl Into<PathBuf>,
        clock: Clock,
        max_lifetime: Duration,
    ) -> Result<Self> {
        SledProvider::open_with_cache(dir, clock, max_lifetime, DEFAULT_CACHE_CAPACITY)
    }

    /// [`open_with_lifetime`](SledProvider::open_with_lifetime) with a cache of about
    /// `cache_capacity` sessions (at least one) instead of [`DEFAULT_CACHE_CAPACITY`].
    ///
    /// Starts the write-behind thread (a plain thread: no tokio runtime is needed here); it
    /// stops when the provider is dropped.
    pub fn open_with_cache(
        dir: impl Into<PathBuf>,
        clock: Clock,
        max_lifetime: Duration,
        cache_capacity: usize,
    ) -> Result<Self> {
        let dir = dir.into();
        if dir.as_os_str().is_empty() {
            return Err(ProviderContext::error(
                NAME,
                "the data directory must not be empty",
            ));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                ProviderContext::error(NAME, format!("cannot create {}: {e}", dir.display()))
            })?;
        let db = ::sled::Config::new()
            .path(&dir)
            .open()
            .map_err(|e| open_error(&dir, e))?;
        let records = db
            .open_tree(RECORDS_TREE)
            .map_err(|e| open_error(&dir, e))?;
        let expiry = db.open_tree(EXPIRY_TREE).map_err(|e| open_error(&dir, e))?;
        let lifetime_ms = u64::try_from(max_lifetime.as_millis()).unwrap_or(u64::MAX);
        let capacity = cache_capacity.max(1);
        let shards = SHARDS.min(capacity);
        let (stop, stopped) = mpsc::channel();
        let inner = Arc::new(Inner {
            dir,
            db,
            records,
            expiry,
            clock,
            bucket_ms: (lifetime_ms / BUCKETS_PER_LIFETIME).max(1),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(shards),
            _stop: stop,
        });
        let weak = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("sessioner-sled-writer".into())
            .spawn(move || write_behind(&weak, &stopped))
            .map_err(|e| {
                ProviderContext::error(NAME, format!("cannot start the writer thread: {e}"))
            })?;
        Ok(SledProvider { inner })
    }

    /// The registry factory (`sled` and `ledis`): the config is the data directory, or
    /// `data_dir=<dir>[,db=N][,cache=N]` (`cache`: the cache bound, in sessions).
    pub fn factory(ctx: &ProviderContext) -> Result<Arc<dyn Provider>> {
        let (dir, capacity) = parse_config(&ctx.config)?;
        Ok(Arc::new(SledProvider::open_with_cache(
            dir,
            ctx.clock.clone(),
            ctx.max_lifetime,
            capacity,
        )?))
    }

    /// Writes every session changed since the writer's last pass to sled now, and waits until
    /// it is on disk; returns how many records it wrote. The writer thread does this by
    /// itself every 500 ms, and dropping the provider does it once more: call this only
    /// where a save must be durable at once (before a planned shutdown that may not drop the
    /// provider, or in tests). Runs on tokio's blocking pool, bounded by the same timeout as
    /// `create`.
    pub async fn persist(&self) -> Result<usize> {
        self.run(|i| {
            let written = i.write_dirty()?;
            i.db.flush().map_err(storage)?;
            Ok(written)
        })
        .await
    }

    /// Runs `work` on tokio's blocking pool, bounded by [`blocking::TIMEOUT`].
    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking::run(NAME, move || work(&inner)).await
    }

    /// Waits until everything written so far is on disk.
    async fn flush(&self) -> Result<()> {
        match tokio::time::timeout(blocking::TIMEOUT, self.inner.db.flush_async()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(storage(e)),
            Err(_) => Err(Error::unavailable(NAME, "flush timed out")),
        }
    }
}

fn parse_config(config: &str) -> Result<(PathBuf, usize)> {
    let config = config.trim();
    let Some(rest) = config.strip_prefix("data_dir=") else {
        return Ok((PathBuf::from(config), DEFAULT_CACHE_CAPACITY));
    };
    let mut parts = rest.split(',');
    let dir = parts.next().unwrap_or_default().trim();
    let mut capacity = DEFAULT_CACHE_CAPACITY;
    for part in parts.map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("db", n)) if n.parse::<u32>().is_ok() => {}
            Some(("cache", n)) if n.parse::<usize>().is_ok_and(|n| n > 0) => {
                capacity = n.parse().unwrap_or(DEFAULT_CACHE_CAPACITY);
            }
            _ => {
                return Err(ProviderContext::error(
                    NAME,
                    format!(
                        "unknown setting `{part}` (expected `data_dir=<dir>[,db=N][,cache=N]`)"
                    ),
                ));
            }
        }
    }
    Ok((PathBuf::from(dir), capacity))
}

fn open_error(dir: &Path, e: ::sled::Error) -> Error {
    let reason = match &e {
        ::sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => format!(
            "{} is in use by another process or provider (sled locks its directory): {io}",
            dir.display()
        ),
        other => format!("cannot open sled database at {}: {other}", dir.display()),
    };
    ProviderContext::error(NAME, reason)
}

/// A sled failure at run time: an I/O error or damage in sled's own files.
fn storage(e: ::sled::Error) -> Error {
    Error::backend(NAME, e)
}

impl Drop for Inner {
    // The last handle is gone (the writer thread holds none between passes): store what
    // only the cache holds, and wait for the disk. Errors are logged; nothing panics.
    fn drop(&mut self) {
        if let Err(e) = self.write_dirty() {
            tracing::warn!(error = %e, "sled provider closed with unwritten session changes");
        }
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "sled provider could not flush on close");
        }
    }
}

#[async_trait]
impl Provider for SledProvider {
    // `load` and `save` run inline: see the module documentation.
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        self.inner.load(&id.storage_key())
    }

    fn load_now(&self, id: &SessionId) -> Option<Result<Option<Record>>> {
        Some(self.inner.load(&id.storage_key()))
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let (key, record) = (id.storage_key(), record.clone());
        let created = self.run(move |i| i.create(&key, &record)).await?;
        if created {
            self.flush().await?;
        }
        Ok(created)
    }

    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        self.inner.save(&id.storage_key(), changes)
    }

    fn save_now(&self, id: &SessionId, changes: &ChangeSet) -> Option<Result<bool>> {
        Some(self.inner.save(&id.storage_key(), changes))
    }

    async fn destroy(&self, id: &SessionId) -> Result<()> {
        let key = id.storage_key();
        if self.run(move |i| i.destroy(&key)).await? {
            self.flush().await?;
        }
        Ok(())
    }

    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
        let (old, new) = (old.storage_key(), new.storage_key());
        let outcome = self.run(move |i| i.regenerate(&old, &new)).await?;
        if outcome != Regenerated::Collision {
            self.flush().await?;
        }
        Ok(outcome)
    }

    async fn count(&self) -> Result<usize> {
        self.run(Inner::count).await
    }

    async fn gc(&self) -> Result<usize> {
        let mut total = 0;
        let mut after = None;
        loop {
            let (seen, removed, last) = self.run(move |i| i.gc_batch(after)).await?;
            total += removed;
            if seen < GC_BATCH {
                return Ok(total);
            }
            after = last;
            // Let requests run between batches.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_forms() {
        assert_eq!(
            parse_config(" data/s ").unwrap(),
            (PathBuf::from("data/s"), DEFAULT_CACHE_CAPACITY)
        );
        assert_eq!(
            parse_config("data_dir=./app.db,db=0").unwrap(),
            (PathBuf::from("./app.db"), DEFAULT_CACHE_CAPACITY)
        );
        assert_eq!(
            parse_config("data_dir=./app.db, cache = 10").unwrap(),
            (PathBuf::from("./app.db"), 10)
        );
        assert!(parse_config("data_dir=x,bogus=1").is_err());
        assert!(parse_config("data_dir=x,cache=0").is_err());
    }
}
