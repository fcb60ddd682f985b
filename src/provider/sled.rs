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
//! No transactions: every write is a single-key
//! [`compare_and_swap`](::sled::Tree::compare_and_swap) on the records tree. sled 0.34
//! switches the whole process into a mode where every operation takes one global `RwLock` as
//! soon as any transaction (or `apply_batch`, or `checksum`) has run; transactions take it
//! exclusively and sled's flusher holds it shared while it writes, so with transactions the
//! sessions of all requests queue behind each other and behind the disk. This provider
//! never uses them. (Saves normally go to the cache described below, whose writer stores a
//! whole record over the one sled holds; what follows is what a save written through to
//! sled does when its record cannot be cached.) A save reads the record, checks that it is live, merges the change set
//! (per key), and swaps the new bytes in only if the record is still the one it read,
//! retrying on a conflict, so concurrent requests changing different keys of one session
//! all survive, and a save never re-creates a destroyed, expired or regenerated session. A
//! damaged record makes the save fail with [`Error::Corrupt`]. `create` swaps from absent
//! (or from an expired or damaged record, which does not hold its id); `regenerate` copies
//! the record under the new id (only if nothing live is there), then deletes the old id only
//! if it is unchanged: a save that landed on the old id meanwhile is carried over and the
//! deletion retried, and if the old id was destroyed meanwhile the copy is taken back, so
//! the old id is dead when it returns and a session is never live under both ids past the
//! call; `gc` deletes a record only if it is still the expired one it read.
//!
//! The expiry index is therefore a hint that cannot change atomically with the record.
//! Its key is a coarse deadline followed by the storage key: the record's idle deadline
//! rounded up to a bucket of a tenth of `max_lifetime` (big-endian milliseconds, so keys
//! sort by time), so an ordinary save, which pushes the deadline forward, writes the index
//! only when the deadline crosses into another bucket: once every tenth of a lifetime per
//! session, not on every request. A writer adds the new entry before it swaps the record
//! (so an interruption between the two leaves at worst a stale entry, never an unindexed
//! record), makes sure it is still there after the swap, and removes the old entry
//! afterwards; whoever removes an entry reads the record again and puts the entry back if a
//! concurrent writer just moved the record into that bucket. Entries may thus be stale,
//! orphaned or duplicated: `gc` judges each one against the record's own deadline, keeping
//! an entry only while its record is live and the entry is not before its deadline. A
//! bucket is never before the deadline it stands for, so every record expired by now has an
//! entry at or before the current bucket: `gc` walks exactly those entries, deletes the
//! expired (or damaged) records, keeps the entries of the live records of the current
//! bucket (typically a tenth of the live sessions, whose headers it reads), and drops the
//! others. So `gc` still deletes every record expired when it runs, with no lag. (Entries
//! written with a wider bucket, under a larger `max_lifetime` before a restart, stay valid
//! and may be collected up to one of those buckets late; entries of older versions, which
//! held the exact deadline, are buckets of their own.) [`count`](Provider::count) does not
//! trust the index: it walks the records and reads each one's deadline from its header,
//! without decoding the values.
//!
//! The write-behind cache: sled locks its directory, so this provider is the only writer of
//! its trees, and an in-process cache of decoded records is coherent. The cache is split in
//! 64 shards, each behind a mutex that is also the lock of every key in it: every read into
//! the cache, every write of one of its keys to sled and every change of its entries
//! happens under that lock, so for a cached key the cache is the truth and sled holds the
//! same record or an older version of it. `load` answers from the cache (an expired entry
//! reads as `None`); on a miss it reads and decodes the record and caches it. `save` applies
//! the change set to the cached record (loading it first on a miss) and marks it dirty; a
//! missing or expired record is `false` and nothing is written, so a save never re-creates a
//! destroyed, expired or regenerated session. A writer thread stores the dirty records
//! every 500 ms, each under its key's lock and only over a record sled still holds, with
//! the index rules above, then flushes: the saves of one session between two passes become
//! one write. `create`, `destroy` and `regenerate` take the key's lock (both keys', in
//! shard order, for `regenerate`), first write that key's dirty record, then act on sled as
//! described above and update the cache, so the writer can never store a stale copy of a
//! session they removed. `count` and `gc` write the dirty records first; `gc` also judges
//! each expired candidate under its key's lock after writing a newer cached version, so a
//! deadline that a save extended after that pass is not lost, and drops the cache entries of
//! the records it deletes. The cache holds at most about [`DEFAULT_CACHE_CAPACITY`] sessions
//! (100,000; [`SledProvider::open_with_cache`], or `cache=N` in the configuration), bounded
//! per shard: a full shard evicts a clean entry, or writes a dirty one to sled first (if
//! that write fails the new record is simply not cached, and a save writes through).
//! [`SledProvider::persist`] runs a pass on demand. Dropping the provider (its last handle)
//! writes the dirty records and flushes, logging a failure; the writer thread holds the
//! provider only weakly, and stops when it is dropped. It is a plain thread, so building
//! the provider needs no tokio runtime.
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

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::ops::Bound;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::Duration;

use ::sled::IVec;
use async_trait::async_trait;

use super::blocking;
use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record, peek_expiry};

const NAME: &str = "sled";
const RECORDS_TREE: &[u8] = b"sessioner/records";
const EXPIRY_TREE: &[u8] = b"sessioner/expiry";
/// How many index entries one GC step examines (one blocking call).
const GC_BATCH: usize = 256;
/// The idle lifetime [`SledProvider::open`] assumes: `Options`' default `max_lifetime`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The expiry index rounds deadlines up to buckets of this fraction of the idle lifetime.
const BUCKETS_PER_LIFETIME: u64 = 10;
/// How many decoded sessions the cache holds by default (see the module documentation).
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;
/// The cache is split into this many independently locked shards (fewer for a tiny bound).
const SHARDS: usize = 64;
/// How long a saved change may wait in the cache before the writer stores it in sled.
const WRITE_BEHIND: Duration = Duration::from_millis(500);
/// How many entries an eviction looks at for a clean one before writing a dirty one out.
const EVICTION_SCAN: usize = 16;

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

/// One cached session.
struct Entry {
    record: Record,
    /// Changed by saves since it was last stored in sled.
    dirty: bool,
}

/// One lock's share of the cache. Its mutex is also the per-key lock of every key in it:
/// every read into the cache and every write to sled of one of its keys happens under it.
#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    /// Keys that became dirty since the writer last took the list (possibly stale: a key
    /// destroyed meanwhile is skipped).
    dirty: Vec<String>,
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

/// The writer thread: every [`WRITE_BEHIND`], stores the dirty records in sled and flushes
/// them; stops as soon as the provider is gone (its sender dropped, or nothing to upgrade).
fn write_behind(inner: &Weak<Inner>, stop: &mpsc::Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(WRITE_BEHIND) {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let written = inner.write_dirty().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "sled write-behind failed; the changes stay cached and are retried");
            0
        });
        if written > 0
            && let Err(e) = inner.db.flush()
        {
            tracing::warn!(error = %e, "sled write-behind flush failed");
        }
    }
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

/// The expiry index key: the bucket, big-endian so keys sort by time, then the storage key.
fn index_key(bucket: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&bucket.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// What a storage key holds.
enum Slot {
    Missing,
    Live(IVec, Record),
    /// Expired, or undecodable (a damaged record does not hold its id): the bytes, and the
    /// deadline if at least the header could be read.
    Dead(IVec, Option<u64>),
}

impl Slot {
    fn judge(current: Option<IVec>, now: u64) -> Slot {
        let Some(bytes) = current else {
            return Slot::Missing;
        };
        match Record::decode(&bytes) {
            Ok(r) if !r.is_expired(now) => Slot::Live(bytes, r),
            Ok(r) => Slot::Dead(bytes, Some(r.expires_at)),
            Err(_) => {
                let deadline = peek_expiry(&bytes).ok();
                Slot::Dead(bytes, deadline)
            }
        }
    }

    /// The stored bytes, what a compare-and-swap from this slot expects.
    fn bytes(&self) -> Option<&IVec> {
        match self {
            Slot::Missing => None,
            Slot::Live(bytes, _) | Slot::Dead(bytes, _) => Some(bytes),
        }
    }
}

/// The outcome of one compare-and-swap: done, or the value found instead.
type Swap = std::result::Result<(), Option<IVec>>;

impl Inner {
    /// The index bucket of `deadline`: rounded up to a multiple of the bucket width, so a
    /// bucket is never before the deadline it stands for.
    fn bucket(&self, deadline: u64) -> u64 {
        deadline
            .div_ceil(self.bucket_ms)
            .saturating_mul(self.bucket_ms)
    }

    fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        self.records.get(key).map_err(storage)
    }

    /// Replaces `old` (`None`: absent) by `new` (`None`: delete) under `key`, if `old` is
    /// still what is stored.
    fn swap(&self, key: &[u8], old: Option<&IVec>, new: Option<IVec>) -> Result<Swap> {
        Ok(self
            .records
            .compare_and_swap(key, old, new)
            .map_err(storage)?
            .map_err(|e| e.current))
    }

    /// Adds the index entry for a record under `key` in `bucket` (a no-op if it is there).
    fn index(&self, bucket: u64, key: &[u8]) -> Result<()> {
        self.expiry
            .insert(index_key(bucket, key), &[][..])
            .map_err(storage)?;
        Ok(())
    }

    /// Removes the index entry `bucket` of `key`, then puts it back if the record under
    /// `key` belongs to that bucket after all: a writer that moved it there concurrently
    /// added the entry before our removal.
    fn unindex(&self, bucket: u64, key: &[u8]) -> Result<()> {
        self.expiry
            .remove(index_key(bucket, key))
            .map_err(storage)?;
        if let Some(bytes) = self.get(key)?
            && peek_expiry(&bytes).is_ok_and(|d| self.bucket(d) == bucket)
        {
            self.index(bucket, key)?;
        }
        Ok(())
    }

    /// After a successful swap put a record of bucket `to` under `key` (replacing one of
    /// bucket `from`, if any): makes sure its entry exists (a concurrent [`unindex`] may
    /// have taken the one added before the swap) and drops the previous one.
    fn reindex(&self, key: &[u8], from: Option<u64>, to: u64) -> Result<()> {
        self.index(to, key)?;
        match from {
            Some(from) if from != to => self.unindex(from, key),
            _ => Ok(()),
        }
    }

    /// The live record stored in sled under `key`, decoded.
    fn read_live(&self, key: &[u8]) -> Result<Option<Record>> {
        let Some(bytes) = self.get(key)? else {
            return Ok(None);
        };
        let record = Record::decode(&bytes)?;
        Ok((!record.is_expired(self.clock.now_ms())).then_some(record))
    }

    fn create_stored(&self, key: &[u8], record: &Record) -> Result<bool> {
        let now = self.clock.now_ms();
        let encoded = IVec::from(record.encode());
        let bucket = self.bucket(record.expires_at);
        // The entry goes in first: an index entry without its record is only a stale hint,
        // a record without an entry would never be collected.
        self.index(bucket, key)?;
        let mut current = self.get(key)?;
        loop {
            let slot = Slot::judge(current, now);
            let replaced = match &slot {
                Slot::Live(..) => return Ok(false),
                Slot::Dead(_, deadline) => deadline.map(|d| self.bucket(d)),
                Slot::Missing => None,
            };
            match self.swap(key, slot.bytes(), Some(encoded.clone()))? {
                Ok(()) => {
                    self.reindex(key, replaced, bucket)?;
                    return Ok(true);
                }
                Err(found) => current = found,
            }
        }
    }

    /// A save written through to sled (when the cache cannot take the record).
    fn save_stored(&self, key: &[u8], changes: &ChangeSet) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut current = self.get(key)?;
        loop {
            let Some(bytes) = current else {
                return Ok(false);
            };
            let mut record = Record::decode(&bytes)?;
            if record.is_expired(now) {
                return Ok(false);
            }
            let from = self.bucket(record.expires_at);
            record.apply(changes);
            let to = self.bucket(record.expires_at);
            if to != from {
                self.index(to, key)?;
            }
            match self.swap(key, Some(&bytes), Some(IVec::from(record.encode())))? {
                Ok(()) => {
                    if to != from {
                        self.reindex(key, Some(from), to)?;
                    }
                    return Ok(true);
                }
                Err(found) => current = found,
            }
        }
    }

    /// Deletes the record; returns whether there was one.
    fn destroy_stored(&self, key: &[u8]) -> Result<bool> {
        let Some(bytes) = self.records.remove(key).map_err(storage)? else {
            return Ok(false);
        };
        if let Ok(deadline) = peek_expiry(&bytes) {
            self.unindex(self.bucket(deadline), key)?;
        }
        Ok(true)
    }

    /// Deletes the dead record `bytes` under `key` unless it changed meanwhile.
    fn remove_dead(&self, key: &[u8], bytes: &IVec, deadline: Option<u64>) -> Result<()> {
        if self.swap(key, Some(bytes), None)?.is_ok()
            && let Some(deadline) = deadline
        {
            self.unindex(self.bucket(deadline), key)?;
        }
        Ok(())
    }

    /// Moves the live record from `old` to `new` in two swaps: a copy under `new` (only if
    /// nothing live is there), then the deletion of `old` (only if unchanged; a save that
    /// landed meanwhile is carried over and the deletion retried; if `old` died meanwhile
    /// the copy is taken back).
    fn regenerate_stored(&self, old: &[u8], new: &[u8]) -> Result<Regenerated> {
        let now = self.clock.now_ms();
        let (mut moving, record) = loop {
            let (moving, record) = match Slot::judge(self.get(old)?, now) {
                Slot::Live(bytes, record) => (bytes, record),
                Slot::Dead(bytes, deadline) => {
                    self.remove_dead(old, &bytes, deadline)?;
                    return Ok(Regenerated::Missing);
                }
                Slot::Missing => return Ok(Regenerated::Missing),
            };
            let target = Slot::judge(self.get(new)?, now);
            let replaced = match &target {
                Slot::Live(..) => return Ok(Regenerated::Collision),
                Slot::Dead(_, deadline) => deadline.map(|d| self.bucket(d)),
                Slot::Missing => None,
            };
            let bucket = self.bucket(record.expires_at);
            self.index(bucket, new)?;
            if self
                .swap(new, target.bytes(), Some(moving.clone()))?
                .is_ok()
            {
                self.reindex(new, replaced, bucket)?;
                break (moving, record);
            }
            // Something appeared under the new id: judge it again.
        };
        let mut bucket = self.bucket(record.expires_at);
        loop {
            let found = match self.swap(old, Some(&moving), None)? {
                Ok(()) => {
                    self.unindex(bucket, old)?;
                    return Ok(Regenerated::Moved);
                }
                Err(found) => found,
            };
            match Slot::judge(found, now) {
                // A save landed on the old id meanwhile: carry it over. Only this call
                // knows the new id, so the copy is overwritten unconditionally.
                Slot::Live(bytes, record) => {
                    let to = self.bucket(record.expires_at);
                    self.index(to, new)?;
                    self.records.insert(new, bytes.clone()).map_err(storage)?;
                    self.reindex(new, Some(bucket), to)?;
                    (moving, bucket) = (bytes, to);
                }
                // Destroyed, regenerated or expired meanwhile: the copy must not outlive it.
                dead => {
                    if self.swap(new, Some(&moving), None)?.is_ok() {
                        self.unindex(bucket, new)?;
                    }
                    if let Slot::Dead(bytes, deadline) = dead {
                        self.remove_dead(old, &bytes, deadline)?;
                    }
                    return Ok(Regenerated::Missing);
                }
            }
        }
    }

    /// Live records: the records tree, judged by each record's header alone (after the
    /// cache's dirty records have been written).
    fn count(&self) -> Result<usize> {
        self.write_dirty()?;
        let now = self.clock.now_ms();
        let mut n = 0;
        for entry in self.records.iter().values() {
            let bytes = entry.map_err(storage)?;
            if peek_expiry(&bytes).is_ok_and(|d| d > now) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Examines up to [`GC_BATCH`] index entries after `after` whose bucket has begun to
    /// expire, deleting their expired records. Returns (entries seen, records removed, the
    /// last entry seen).
    fn gc_batch(&self, after: Option<IVec>) -> Result<(usize, usize, Option<IVec>)> {
        if after.is_none() {
            // A deadline a save moved (even backwards) is judged as the cache holds it.
            self.write_dirty()?;
        }
        let now = self.clock.now_ms();
        // Every record expired by now has an entry at or before the current bucket; the
        // current bucket also holds live records, which are checked and kept.
        let until = self.bucket(now).saturating_add(1).to_be_bytes().to_vec();
        let from = match after {
            Some(last) => Bound::Excluded(last.to_vec()),
            None => Bound::Unbounded,
        };
        let batch = self
            .expiry
            .range::<Vec<u8>, _>((from, Bound::Excluded(until)))
            .keys()
            .take(GC_BATCH)
            .collect::<std::result::Result<Vec<IVec>, _>>()
            .map_err(storage)?;
        let mut removed = 0;
        for entry in &batch {
            removed += usize::from(self.gc_entry(entry, now)?);
        }
        Ok((batch.len(), removed, batch.last().cloned()))
    }

    /// Judges one index entry: deletes its record if expired (or damaged), keeps the entry
    /// of a live record it still stands for, drops the entry otherwise. Returns whether a
    /// record was deleted.
    fn gc_entry(&self, entry: &[u8], now: u64) -> Result<bool> {
        let Some((bucket, key)) = entry.split_first_chunk::<8>() else {
            self.expiry.remove(entry).map_err(storage)?;
            return Ok(false);
        };
        let bucket = u64::from_be_bytes(*bucket);
        // Under the key's lock, with a newer version still only in the cache written first:
        // a deadline the cache extended is judged, never lost.
        let mut shard = self.lock(key);
        let cached = std::str::from_utf8(key).ok();
        if let Some(cached) = cached {
            self.write_entry(&mut shard, cached)?;
        }
        let mut current = self.get(key)?;
        let removed = loop {
            let Some(bytes) = current else {
                break false;
            };
            match peek_expiry(&bytes) {
                // Live: the entry stays while it is not before the deadline (a bucket only
                // ever rounds a deadline up); an earlier one is stale, the record has its own.
                Ok(deadline) if deadline > now => {
                    if deadline <= bucket {
                        return Ok(false);
                    }
                    break false;
                }
                // Expired or damaged: delete it, unless a save refreshed it meanwhile.
                _ => match self.swap(key, Some(&bytes), None)? {
                    Ok(()) => break true,
                    Err(found) => current = found,
                },
            }
        };
        if removed && let Some(cached) = cached {
            shard.map.remove(cached);
        }
        self.unindex(bucket, key)?;
        Ok(removed)
    }
}

/// The cache: every operation on a key holds its shard's lock, so for a cached key the
/// cache is the truth and sled holds the same record or an older version of it.
impl Inner {
    fn shard_of(&self, key: &[u8]) -> usize {
        // Storage keys are hex digests: any few bytes spread evenly.
        let h = key.iter().take(8).fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        usize::try_from(h % self.shards.len() as u64).unwrap_or(0)
    }

    fn lock_index(&self, index: usize) -> MutexGuard<'_, Shard> {
        match self.shards.get(index).unwrap_or(&self.shards[0]).lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The lock of `key`'s shard.
    fn lock(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        self.lock_index(self.shard_of(key))
    }

    /// Stores `record` in sled under `key` with the expiry index rules of a save, but only
    /// over a record that is there: a key sled no longer holds is never re-created. Returns
    /// whether it wrote. The caller holds `key`'s lock.
    fn write_back(&self, key: &[u8], record: &Record) -> Result<bool> {
        let encoded = IVec::from(record.encode());
        let to = self.bucket(record.expires_at);
        let mut current = self.get(key)?;
        loop {
            let Some(bytes) = current else {
                return Ok(false);
            };
            let from = peek_expiry(&bytes).ok().map(|d| self.bucket(d));
            if from != Some(to) {
                self.index(to, key)?;
            }
            match self.swap(key, Some(&bytes), Some(encoded.clone()))? {
                Ok(()) => {
                    if from != Some(to) {
                        self.reindex(key, from, to)?;
                    }
                    return Ok(true);
                }
                Err(found) => current = found,
            }
        }
    }

    /// Writes `key`'s cached record to sled if it is dirty (dropping it from the cache if
    /// sled no longer holds the key). Returns whether it wrote.
    fn write_entry(&self, shard: &mut Shard, key: &str) -> Result<bool> {
        let Some(entry) = shard.map.get_mut(key).filter(|e| e.dirty) else {
            return Ok(false);
        };
        if self.write_back(key.as_bytes(), &entry.record)? {
            entry.dirty = false;
            Ok(true)
        } else {
            shard.map.remove(key);
            Ok(false)
        }
    }

    /// Writes every dirty record to sled, one key at a time under its lock; returns how
    /// many. Keys whose write failed stay dirty (the first error is returned).
    fn write_dirty(&self) -> Result<usize> {
        let mut written = 0;
        let mut failed = None;
        for index in 0..self.shards.len() {
            let keys = std::mem::take(&mut self.lock_index(index).dirty);
            let mut keys = keys.into_iter();
            while let Some(key) = keys.next() {
                let mut shard = self.lock_index(index);
                match self.write_entry(&mut shard, &key) {
                    Ok(w) => written += usize::from(w),
                    Err(e) => {
                        shard.dirty.push(key);
                        shard.dirty.extend(keys);
                        failed.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        failed.map_or(Ok(written), Err)
    }

    /// Caches a clean `record` under `key`, evicting another entry of a full shard (written
    /// to sled first if dirty). Returns whether it cached (not if that write failed).
    fn cache(&self, shard: &mut Shard, key: &str, record: Record) -> bool {
        if !shard.map.contains_key(key) && shard.map.len() >= self.per_shard {
            let victim = shard
                .map
                .iter()
                .take(EVICTION_SCAN)
                .find(|(_, e)| !e.dirty)
                .or_else(|| shard.map.iter().next())
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                if let Err(e) = self.write_entry(shard, &victim) {
                    tracing::warn!(error = %e, "sled cache eviction could not write a session");
                    return false;
                }
                shard.map.remove(&victim);
            }
        }
        shard.map.insert(
            key.to_owned(),
            Entry {
                record,
                dirty: false,
            },
        );
        true
    }

    fn load(&self, key: &str) -> Result<Option<Record>> {
        let now = self.clock.now_ms();
        let mut shard = self.lock(key.as_bytes());
        if let Some(entry) = shard.map.get(key) {
            return Ok((!entry.record.is_expired(now)).then(|| entry.record.clone()));
        }
        let Some(record) = self.read_live(key.as_bytes())? else {
            return Ok(None);
        };
        self.cache(&mut shard, key, record.clone());
        Ok(Some(record))
    }

    fn save(&self, key: &str, changes: &ChangeSet) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut guard = self.lock(key.as_bytes());
        let shard = &mut *guard;
        if !shard.map.contains_key(key) {
            let Some(record) = self.read_live(key.as_bytes())? else {
                return Ok(false);
            };
            if !self.cache(shard, key, record) {
                return self.save_stored(key.as_bytes(), changes);
            }
        }
        let Some(entry) = shard.map.get_mut(key) else {
            return Ok(false);
        };
        if entry.record.is_expired(now) {
            return Ok(false);
        }
        entry.record.apply(changes);
        if !entry.dirty {
            entry.dirty = true;
            shard.dirty.push(key.to_owned());
        }
        Ok(true)
    }

    fn create(&self, key: &str, record: &Record) -> Result<bool> {
        let mut shard = self.lock(key.as_bytes());
        // sled must hold what the cache knows before it judges whether the id is taken.
        self.write_entry(&mut shard, key)?;
        if !self.create_stored(key.as_bytes(), record)? {
            return Ok(false);
        }
        // Replaces a cached dead record in place (no eviction for a key already held).
        self.cache(&mut shard, key, record.clone());
        Ok(true)
    }

    /// Deletes the record from sled, then from the cache (unwritten changes die with it).
    fn destroy(&self, key: &str) -> Result<bool> {
        let mut shard = self.lock(key.as_bytes());
        let stored = self.destroy_stored(key.as_bytes())?;
        let cached = shard.map.remove(key).is_some();
        Ok(stored || cached)
    }

    /// Holds both keys' locks (in shard order), writes their dirty records, moves the
    /// record in sled, then moves the cache entry along.
    fn regenerate(&self, old: &str, new: &str) -> Result<Regenerated> {
        let (a, b) = (self.shard_of(old.as_bytes()), self.shard_of(new.as_bytes()));
        let mut first = self.lock_index(a.min(b));
        let mut second = (a != b).then(|| self.lock_index(a.max(b)));
        // The shard of `key`'s index among the two held.
        macro_rules! shard {
            ($index:expr) => {
                match second.as_deref_mut() {
                    Some(s) if $index == a.max(b) => s,
                    _ => &mut *first,
                }
            };
        }
        self.write_entry(shard!(a), old)?;
        self.write_entry(shard!(b), new)?;
        let outcome = self.regenerate_stored(old.as_bytes(), new.as_bytes())?;
        if outcome != Regenerated::Collision {
            let moving = shard!(a).map.remove(old);
            shard!(b).map.remove(new);
            if let (Regenerated::Moved, Some(entry)) = (outcome, moving) {
                self.cache(shard!(b), new, entry.record);
            }
        }
        Ok(outcome)
    }
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

    #[test]
    fn index_keys_sort_by_deadline() {
        let k = [b'f'; 64];
        assert!(index_key(255, &k) < index_key(256, &k));
        assert_eq!(index_key(1, &k).len(), 72);
    }
}
