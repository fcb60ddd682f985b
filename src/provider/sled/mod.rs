//! `sled`: sessions in an embedded [sled](https://docs.rs/sled/0.34) 0.34 database.
//!
//! Registered as `sled`, and as `ledis` for configurations carried over from macaron (whose
//! `ledis` provider was the embedded store of its time).
//!
//! ProviderConfig: the data directory (e.g. `data/sessions.sled`), or macaron's
//! `data_dir=data/sessions.sled[,db=N][,cache=N]` (`db` is accepted and ignored: the
//! directory is the namespace; `cache` bounds the write-behind cache, in sessions).
//!
//! Invariants:
//! - Records are stored under [`SessionId::storage_key`] (the SHA-256 of the id, never the
//!   id), [`Record::encode`]d; a second tree indexes them by expiry, so
//!   [`gc`](Provider::gc) deletes every record expired when it runs, in bounded batches,
//!   without reading live sessions far from expiry.
//! - The directory is created with mode `0700` if missing. sled locks it: a directory
//!   another process (or another provider in this process) has open is
//!   [`Error::ProviderConfig`] when the provider is built.
//! - On Unix, the files sled creates in the directory (`conf`, `db`, `snap.*`, `blobs/*`)
//!   are made `0600` and its `blobs` folder `0700` when the provider opens (failing that is
//!   [`Error::ProviderConfig`]), after every writer pass (500 ms), after
//!   [`SledProvider::persist`] and on close; nothing else in the directory is touched. sled
//!   has no mode option, so a blob it writes for a record of more than about 128 KiB has
//!   the process umask's mode until the next pass, inside the private `blobs` folder.
//! - Every write is a single-key compare-and-swap, never a sled transaction: concurrent
//!   saves changing different keys of one session all survive, a save never re-creates a
//!   destroyed, expired or regenerated session, and the old id is dead once `regenerate`
//!   returns.
//! - A write-behind cache of decoded records, about [`DEFAULT_CACHE_CAPACITY`] sessions
//!   ([`SledProvider::open_with_cache`], or `cache=N`), is the truth for the keys it holds;
//!   a writer thread stores the changed ones in sled every 500 ms.
//!
//! Durability:
//! - `create`, `regenerate` and `destroy` return only after
//!   [`flush_async`](::sled::Tree::flush_async) has written and `fsync`ed them: a login or a
//!   logout survives a crash.
//! - An ordinary `save` reaches the disk at the writer's next pass (at most 500 ms later,
//!   plus the time a pass takes), which ends with a flush: a crash can lose the value
//!   changes of the last half second or so, never a session's existence or its death.
//! - [`SledProvider::persist`] runs a pass now; dropping the provider (its last handle)
//!   runs one too, logging a failure.
//!
//! Where the work runs (no async worker waits for a lock held across sled I/O):
//! - `load` and `save`, the calls of every request, are answered on the async worker
//!   ([`Provider::load_now`], [`Provider::save_now`]) only if the session's cache shard is
//!   free (`try_lock`) and the session is cached: a hash lookup and a record clone or
//!   merge. Nothing on the worker touches sled or waits for a lock.
//! - A held shard (a writer pass, `gc` or a lifecycle call on one of its keys) or a cache
//!   miss (a first visit after a restart or an eviction, an unknown id) sends the call to
//!   tokio's blocking pool, where the miss reads sled and caches the record.
//! - `create`, `regenerate`, `destroy`, `count`, `gc`, [`SledProvider::persist`] and those
//!   fallbacks run on the blocking pool, bounded by a timeout ([`Error::Unavailable`] when
//!   it expires; the blocked thread finishes its call). Flushes run on sled's own threads,
//!   bounded by the same timeout, with no shard lock held.
//! - Building the provider opens the database and blocks the calling thread while sled
//!   recovers its log; it needs no tokio runtime.
//! - sled's lock mode is process-wide: other code in the process that runs a sled
//!   transaction, `apply_batch` or `checksum`, on any sled database, puts these calls behind
//!   sled's global lock (still correct, only slower).

use std::fmt;
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
#[cfg(test)]
mod failure_tests;
mod files;
mod records;

use cache::{SHARDS, Shard, WRITE_BEHIND, write_behind};
use expiry::{BUCKETS_PER_LIFETIME, GC_BATCH};

const NAME: &str = "sled";
const RECORDS_TREE: &[u8] = b"sessioner/records";
const EXPIRY_TREE: &[u8] = b"sessioner/expiry";
/// The idle lifetime [`SledProvider::open`] assumes: `Options`' default `max_lifetime`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// How many decoded sessions the cache holds by default (see the module documentation).
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// The sled provider. Share it behind an `Arc`; dropping it stops the writer thread (waiting
/// for a pass in progress), then writes and flushes what only the cache holds before the
/// drop returns, so a `main` that drops its router loses nothing.
pub struct SledProvider {
    inner: Arc<Inner>,
    writer: Option<Writer>,
    /// How long one blocking call or flush may take ([`blocking::TIMEOUT`]; shorter in tests).
    timeout: Duration,
}

/// The write-behind thread, and the channel whose closing stops it.
struct Writer {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Drop for SledProvider {
    fn drop(&mut self) {
        if let Some(Writer { stop, thread }) = self.writer.take() {
            drop(stop);
            // A pass in progress holds the database; wait for it, so the last writes and the
            // flush happen here (`Inner`'s drop, when `inner` goes next), not on the writer
            // thread after the process may have ended.
            if thread.join().is_err() {
                tracing::warn!("the sled writer thread panicked");
            }
        }
    }
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
    /// Makes every write to sled fail, as a full or failing disk would (unit tests only).
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
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
        SledProvider::open_with_writer(dir, clock, max_lifetime, cache_capacity, WRITE_BEHIND)
    }

    /// [`open_with_cache`](SledProvider::open_with_cache) with the writer thread's passes
    /// `pass_every` apart.
    fn open_with_writer(
        dir: impl Into<PathBuf>,
        clock: Clock,
        max_lifetime: Duration,
        cache_capacity: usize,
        pass_every: Duration,
    ) -> Result<Self> {
        let dir = dir.into();
        if dir.as_os_str().is_empty() {
            return Err(ProviderContext::error(
                NAME,
                "the data directory must not be empty",
            ));
        }
        files::create_dir(&dir).map_err(|e| {
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
        files::restrict(&dir).map_err(|e| {
            ProviderContext::error(
                NAME,
                format!("cannot make the files in {} private: {e}", dir.display()),
            )
        })?;
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
            #[cfg(test)]
            fail_writes: Default::default(),
        });
        let weak = Arc::downgrade(&inner);
        let thread = thread::Builder::new()
            .name("sessioner-sled-writer".into())
            .spawn(move || write_behind(&weak, &stopped, pass_every))
            .map_err(|e| {
                ProviderContext::error(NAME, format!("cannot start the writer thread: {e}"))
            })?;
        Ok(SledProvider {
            inner,
            writer: Some(Writer { stop, thread }),
            timeout: blocking::TIMEOUT,
        })
    }

    /// The provider with blocking calls and flushes bounded by `timeout` instead of
    /// [`blocking::TIMEOUT`].
    #[cfg(test)]
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
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
            files::restrict(&i.dir).map_err(|e| Error::backend(NAME, e))?;
            Ok(written)
        })
        .await
    }

    /// Runs `work` on tokio's blocking pool, bounded by the timeout ([`blocking::TIMEOUT`]).
    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking::run(NAME, self.timeout, move || work(&inner)).await
    }

    /// Waits until everything written so far is on disk.
    async fn flush(&self) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.inner.db.flush_async()).await {
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

impl Inner {
    /// Before a write to sled: the injected failure of a unit test, if one is set.
    fn writable(&self) -> Result<()> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(storage(::sled::Error::Io(std::io::Error::other(
                "injected write failure",
            ))));
        }
        Ok(())
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
        if let Err(e) = files::restrict(&self.dir) {
            tracing::warn!(error = %e, "sled files could not be made private on close");
        }
    }
}

#[async_trait]
impl Provider for SledProvider {
    // A cache hit is answered at once; anything else runs on the blocking pool (see the
    // module documentation).
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let key = id.storage_key();
        self.run(move |i| i.load(&key)).await
    }

    fn load_now(&self, id: &SessionId) -> Option<Result<Option<Record>>> {
        self.inner.load_now(&id.storage_key())
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
        let (key, changes) = (id.storage_key(), changes.clone());
        self.run(move |i| i.save(&key, &changes)).await
    }

    fn save_now(&self, id: &SessionId, changes: &ChangeSet) -> Option<Result<bool>> {
        self.inner.save_now(&id.storage_key(), changes)
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

    /// R12: a request never waits for a shard lock that another thread holds (across sled
    /// I/O, in the writer's pass, GC or a lifecycle call): `load_now` and `save_now` hand
    /// the call to the blocking pool instead, where it completes once the lock is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r12_sled_load_now_and_save_now_never_wait_for_a_held_shard_lock() {
        use std::sync::mpsc;

        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::system();
        let p = SledProvider::open(dir.path().join("db"), clock.clone()).unwrap();
        let sid = SessionId::generate(32).unwrap();
        let record = Record {
            values: [("k".to_owned(), "1".to_owned())].into(),
            expires_at: clock.now_ms() + 3_600_000,
            absolute_deadline: None,
        };
        assert!(p.create(&sid, &record).await.unwrap());
        let changes = ChangeSet {
            set: vec![("k".to_owned(), "2".to_owned())],
            expires_at: clock.now_ms() + 3_600_000,
            ..Default::default()
        };

        // Another thread holds the session's shard lock until told to let go.
        let (held_tx, held) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let (inner, key) = (Arc::clone(&p.inner), sid.storage_key());
        let holder = thread::spawn(move || {
            let _guard = inner.lock(key.as_bytes());
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        held.recv().unwrap();

        // Asked from a thread of its own, so a call that blocks cannot hang the suite.
        let share = || SledProvider {
            inner: Arc::clone(&p.inner),
            writer: None,
            timeout: p.timeout,
        };
        let (answer_tx, answer) = mpsc::channel();
        let (asking, asked, probe) = (share(), sid.clone(), changes.clone());
        thread::spawn(move || {
            let load = asking.load_now(&asked).map(|r| r.unwrap());
            let save = asking.save_now(&asked, &probe).map(|r| r.unwrap());
            let _ = answer_tx.send((load, save));
        });
        let answered = answer.recv_timeout(Duration::from_secs(5));
        // The async path waits for the lock on the blocking pool, not on a worker.
        let (loader, loaded_id) = (share(), sid.clone());
        let loading = tokio::spawn(async move { loader.load(&loaded_id).await });
        let (saver, saved_id, saved) = (share(), sid.clone(), changes.clone());
        let saving = tokio::spawn(async move { saver.save(&saved_id, &saved).await });
        release.send(()).unwrap();
        holder.join().unwrap();
        let (load, save) = answered.expect("load_now/save_now waited for a held shard lock");
        assert!(load.is_none(), "load_now answered despite the held lock");
        assert!(save.is_none(), "save_now answered despite the held lock");
        assert!(loading.await.unwrap().unwrap().is_some());
        assert!(saving.await.unwrap().unwrap());

        // With the lock free, a cached session is answered at once.
        let loaded = p.load_now(&sid).unwrap().unwrap().unwrap();
        assert_eq!(loaded.values["k"], "2");
        assert!(p.save_now(&sid, &changes).unwrap().unwrap());
    }

    /// R12: the calls answered on the async worker never touch sled; a cache miss (which
    /// could mean reading sled, and caching it writing another record out) goes to the
    /// blocking pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r12_sled_inline_calls_never_write_to_sled() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::system();
        // One cached session, and no writer pass during the test.
        let hour = Duration::from_secs(3600);
        let p = SledProvider::open_with_writer(dir.path().join("db"), clock.clone(), hour, 1, hour)
            .unwrap();
        let record = Record {
            values: [("k".to_owned(), "1".to_owned())].into(),
            expires_at: clock.now_ms() + 3_600_000,
            absolute_deadline: None,
        };
        let change = |v: &str| ChangeSet {
            set: vec![("k".to_owned(), v.to_owned())],
            expires_at: clock.now_ms() + 3_600_000,
            ..Default::default()
        };
        let (a, b) = (
            SessionId::generate(32).unwrap(),
            SessionId::generate(32).unwrap(),
        );
        assert!(p.create(&b, &record).await.unwrap());
        // `a` takes the only cache slot; its change is only in the cache.
        assert!(p.create(&a, &record).await.unwrap());
        assert!(p.save_now(&a, &change("2")).unwrap().unwrap());
        let stored = |sid: &SessionId| {
            let bytes = p.inner.records.get(sid.storage_key()).unwrap().unwrap();
            Record::decode(&bytes).unwrap().values["k"].clone()
        };
        // `b` is not cached: reading or saving it is sled's work (and saving it would evict,
        // that is write out, `a`), so neither happens on the worker.
        assert!(p.load_now(&b).is_none(), "a cache miss read sled inline");
        assert!(p.save_now(&b, &change("3")).is_none());
        assert_eq!(stored(&a), "1", "an inline call wrote to sled");
        // The blocking pool does it.
        assert!(p.save(&b, &change("3")).await.unwrap());
        assert_eq!(stored(&a), "2");
        assert_eq!(p.load(&b).await.unwrap().unwrap().values["k"], "3");
    }

    /// Dropping the provider while the writer thread is in a pass waits for the pass, then
    /// writes and flushes before the drop returns: a `main` that drops its router and
    /// returns loses nothing.
    #[test]
    fn dropping_the_provider_mid_pass_writes_and_flushes_before_returning() {
        use std::sync::mpsc;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let clock = Clock::system();
        let hour = Duration::from_secs(3600);
        let pass = Duration::from_millis(5);
        let p = SledProvider::open_with_writer(&path, clock.clone(), hour, 1000, pass).unwrap();
        let sid = SessionId::generate(32).unwrap();
        let key = sid.storage_key();
        let record = Record {
            values: [("k".to_owned(), "1".to_owned())].into(),
            expires_at: clock.now_ms() + 3_600_000,
            absolute_deadline: None,
        };
        assert!(p.inner.create(&key, &record).unwrap());
        let changes = ChangeSet {
            set: vec![("k".to_owned(), "2".to_owned())],
            expires_at: clock.now_ms() + 3_600_000,
            ..Default::default()
        };
        assert!(
            p.inner.save(&key, &changes).unwrap(),
            "a change only the cache holds"
        );

        // Hold the session's shard, then wait until the writer is in a pass (it holds the
        // database: a second strong handle), stuck on that shard.
        let inner = Arc::clone(&p.inner);
        let guard = inner.lock(key.as_bytes());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&inner) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "no writer pass started"
            );
            thread::yield_now();
        }
        let (dropped_tx, dropped) = mpsc::channel();
        thread::spawn(move || {
            drop(p);
            let _ = dropped_tx.send(());
        });
        assert!(
            dropped.recv_timeout(Duration::from_millis(300)).is_err(),
            "the drop returned while the writer still held the database"
        );
        drop(guard);
        drop(inner);
        dropped.recv().unwrap();

        // sled releases its directory lock from a thread of its own just after: retried.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let reopened = std::iter::repeat_with(std::time::Instant::now)
            .take_while(|now| *now < deadline)
            .find_map(|_| match SledProvider::open(&path, clock.clone()) {
                Ok(p) => Some(p),
                Err(Error::ProviderConfig { reason, .. }) if reason.contains("in use") => {
                    thread::yield_now();
                    None
                }
                Err(e) => panic!("cannot reopen: {e}"),
            })
            .expect("the directory stayed locked");
        let values = reopened.inner.load(&key).unwrap().unwrap().values;
        assert_eq!(values["k"], "2");
    }
}
