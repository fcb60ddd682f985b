//! `file`: one file per session under a root directory.
//!
//! ProviderConfig: the root directory (default [`DEFAULT_DIR`], `data/sessions` as macaron),
//! created if missing. A record lives at `<root>/<h[0..2]>/<h>` where `h` is the SHA-256 of
//! the session id ([`SessionId::storage_key`]), so no path is ever built from client input.
//!
//! Permissions and platforms:
//!
//! - Unix: directories are created with mode `0700`, record files with `0600`.
//! - Windows: directories and files take the default ACL inherited from their parent; place
//!   the root where only the server's account can read. Directories are not flushed after a
//!   rename or a delete (std cannot open a directory as a file there), so a machine crash can
//!   undo the last create, regenerate or destroy; a record's contents are still flushed.
//!
//! Durability, chosen with `sync=` after the directory (`data/sessions,sync=lifecycle`):
//!
//! - `sync=always` (the default): every write goes to a new temporary file in the same
//!   directory, is `fsync`ed, then renamed over the record, and the directory is `fsync`ed
//!   after the rename (and after a delete), so a crash leaves either the old or the new
//!   record, never a torn one, and a save or a destroy that was answered stays done. The cost
//!   is two disk flushes per save: on a virtual disk, a few thousand saves per second at most.
//! - `sync=lifecycle`: creating, regenerating and destroying a session (a login, a logout)
//!   are written and flushed as above. An ordinary save overwrites the record file in place
//!   with a single `write` (padded with spaces to the old length, so it never needs a
//!   truncation) and is not flushed: readers in this process never see it half done (they
//!   take the same lock), it survives a crash of the process at once, and a crash of the
//!   machine once the kernel has written it back (on Linux within about 30 s by default). A
//!   machine crash can therefore lose the last seconds of value changes, or tear a record
//!   that was being written back. A record carries its length and a checksum
//!   ([`Record::decode`] checks both), so a torn one reads as damaged: it is removed and
//!   the visitor starts afresh, never sees a mix of old and new values. Many times faster
//!   than `always`: no file is created, renamed or deleted per save, and a request's load
//!   and save, being page-cache reads and writes, run at once on the async worker instead
//!   of travelling to tokio's blocking pool and back (the hand-off cost more than the
//!   work). They never wait for a lock there: if the session's stripe lock is taken (a
//!   create, regenerate or destroy holds it across its `fsync`s), they go to the blocking
//!   pool. The price: a record missing from the page cache (after a restart, or evicted)
//!   is read from the disk on the worker thread, and a disk so slow that the kernel
//!   throttles writers stalls those requests' worker thread.
//!
//! Everything else (every call with `sync=always`; create, regenerate, destroy, count and
//! GC in both modes) runs on tokio's blocking pool, bounded by a timeout. Count and GC run
//! as many short calls, each over a bounded batch of files, so a store of any size is
//! collected without a timeout.
//!
//! Nothing is deleted or overwritten because of an I/O error: GC removes only records that
//! are expired or do not decode, and a file that cannot be read is logged and kept.
//!
//! Concurrent requests of this process on one session are serialised by a striped lock and
//! merged per key; several processes sharing one root directory are not coordinated (last
//! writer wins per record).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use async_trait::async_trait;

mod os;
mod scan;
#[cfg(test)]
mod tests;

use self::os::{create_new, make_dir, sync_dir, write_at_start};
use self::scan::Cursor;
use super::blocking::{self, Cancel};
use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

const NAME: &str = "file";
/// The root directory when `provider_config` is empty, as macaron.
pub const DEFAULT_DIR: &str = "data/sessions";
const STRIPES: usize = 64;
/// Numbers temporary files.
static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The file provider.
#[derive(Debug)]
pub struct FileProvider {
    inner: Arc<Inner>,
    /// How long one blocking call may take ([`blocking::TIMEOUT`]; shorter in tests).
    timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    stripes: Box<[Mutex<()>]>,
    clock: Clock,
    sync: SyncMode,
    /// How many directory entries each scan batch examined.
    #[cfg(test)]
    batches: Mutex<Vec<usize>>,
}

/// When writes are flushed to the disk (`sync=` in the provider config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Every write, ordinary saves included (the default).
    #[default]
    Always,
    /// Creating, regenerating and destroying a session; ordinary saves are left to the kernel.
    Lifecycle,
}

impl FileProvider {
    /// A provider storing records under `root`, creating it (`0700`) if needed, flushing
    /// every write ([`SyncMode::Always`]).
    pub fn open(root: impl Into<PathBuf>, clock: Clock) -> Result<Self> {
        Self::with_sync(root, clock, SyncMode::Always)
    }

    /// As [`open`](FileProvider::open), with the given flush policy.
    pub fn with_sync(root: impl Into<PathBuf>, clock: Clock, sync: SyncMode) -> Result<Self> {
        let root = root.into();
        if root.as_os_str().is_empty() {
            return Err(ProviderContext::error(
                NAME,
                "the root directory must not be empty",
            ));
        }
        make_dir(&root).map_err(|e| {
            ProviderContext::error(NAME, format!("cannot create {}: {e}", root.display()))
        })?;
        Ok(FileProvider {
            inner: Arc::new(Inner {
                root,
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                clock,
                sync,
                #[cfg(test)]
                batches: Mutex::default(),
            }),
            timeout: blocking::TIMEOUT,
        })
    }

    /// The provider with blocking calls bounded by `timeout` instead of [`blocking::TIMEOUT`].
    #[cfg(test)]
    pub(crate) fn with_timeout(self, timeout: Duration) -> Self {
        FileProvider { timeout, ..self }
    }

    /// The registry factory: the config is the root directory (`data_dir=..` accepted too),
    /// [`DEFAULT_DIR`] when empty, optionally followed by `,sync=always` or
    /// `,sync=lifecycle` (see the module docs).
    pub fn factory(ctx: &ProviderContext) -> Result<Arc<dyn Provider>> {
        let (dir, sync) = parse_config(&ctx.config)?;
        Ok(Arc::new(FileProvider::with_sync(
            dir,
            ctx.clock.clone(),
            sync,
        )?))
    }

    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> io::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking::run(NAME, self.timeout, move || work(&inner).map_err(io_error)).await
    }

    /// Runs a scan to its end, one blocking call per batch, summing what the batches return.
    async fn scan(
        &self,
        batch: fn(&Inner, &mut Cursor, &Cancel) -> io::Result<usize>,
    ) -> Result<usize> {
        let mut cursor = Cursor::default();
        let mut total = 0;
        loop {
            let inner = Arc::clone(&self.inner);
            let (next, n) = blocking::run_cancellable(NAME, self.timeout, move |cancel| {
                let n = batch(&inner, &mut cursor, cancel).map_err(io_error)?;
                Ok((cursor, n))
            })
            .await?;
            total += n;
            if next.done() {
                return Ok(total);
            }
            cursor = next;
            // Let requests run between batches.
            tokio::task::yield_now().await;
        }
    }
}

fn parse_config(config: &str) -> Result<(&str, SyncMode)> {
    let config = config.trim();
    let (dir, sync) = match config.rsplit_once(',') {
        Some((dir, setting)) if setting.trim().starts_with("sync=") => {
            let sync = match setting.trim().trim_start_matches("sync=").trim() {
                "always" => SyncMode::Always,
                "lifecycle" => SyncMode::Lifecycle,
                other => {
                    return Err(ProviderContext::error(
                        NAME,
                        format!("unknown sync mode `{other}` (expected `always` or `lifecycle`)"),
                    ));
                }
            };
            (dir.trim(), sync)
        }
        _ => (config, SyncMode::Always),
    };
    let dir = dir.strip_prefix("data_dir=").unwrap_or(dir);
    Ok((if dir.is_empty() { DEFAULT_DIR } else { dir }, sync))
}

/// Reads a whole (small) file without asking for its size first.
fn read_all(f: &mut File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

enum Read2 {
    Missing,
    /// A live record, and the length of its file.
    Live(Record, usize),
    Dead,
}

impl Inner {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(&key[..2]).join(key)
    }

    fn stripe(&self, key: &str) -> usize {
        usize::from_str_radix(&key[..2], 16).unwrap_or(0) % STRIPES
    }

    fn lock(&self, stripe: usize) -> MutexGuard<'_, ()> {
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A stripe lock if it is free at once; `None` if another thread holds it (possibly
    /// across an `fsync`), so an async worker never waits for it.
    fn try_lock(&self, stripe: usize) -> Option<MutexGuard<'_, ()>> {
        match self.stripes[stripe].try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Reads a record; a damaged one is returned as an `InvalidData` error.
    fn read(&self, key: &str) -> io::Result<Read2> {
        match self.open(key, false)? {
            Some(mut f) => self.judge(&read_all(&mut f)?),
            None => Ok(Read2::Missing),
        }
    }

    /// Opens the record file of `key` (for reading, and writing if `write`), if there is one.
    fn open(&self, key: &str, write: bool) -> io::Result<Option<File>> {
        match OpenOptions::new()
            .read(true)
            .write(write)
            .open(self.path(key))
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Decodes a record file's bytes; a damaged one is an `InvalidData` error.
    fn judge(&self, bytes: &[u8]) -> io::Result<Read2> {
        let record =
            Record::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(if record.is_expired(self.clock.now_ms()) {
            Read2::Dead
        } else {
            Read2::Live(record, bytes.len())
        })
    }

    /// Writes a record atomically (temporary file, rename); `flush` makes it durable first.
    fn write(&self, key: &str, record: &Record, flush: bool) -> io::Result<()> {
        let path = self.path(key);
        let dir = self.root.join(&key[..2]);
        // Unique within this process (the key's stripe lock is held) and across processes.
        let tmp = dir.join(format!(
            ".{key}.{}-{}.tmp",
            std::process::id(),
            TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let create = || create_new(&tmp);
        let mut f = match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_dir(&dir)?;
                create()?
            }
            other => other?,
        };
        let result = (|| {
            f.write_all(&record.encode())?;
            if flush {
                f.sync_data()?;
            }
            fs::rename(&tmp, &path)?;
            if flush {
                // The rename itself is durable only once the directory is synced.
                sync_dir(&dir)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The live record under `key`; the caller holds the key's stripe lock.
    fn load(&self, key: &str, _held: &MutexGuard<'_, ()>) -> io::Result<Option<Record>> {
        Ok(match self.read(key)? {
            Read2::Live(r, _) => Some(r),
            _ => None,
        })
    }

    /// Applies `changes` to the live record under `key`; `false` if there is none.
    ///
    /// `sync=always` writes a new file (see [`write`](Inner::write)). `sync=lifecycle`
    /// overwrites the record file in place, through the handle it read it with, in one
    /// `write` padded with spaces to the old length (the decoder ignores what follows the
    /// record's own length), so a shorter record needs no truncation; if a crash tears the
    /// write, the checksum makes the record damaged, never a mix of old and new values.
    /// The caller holds the key's stripe lock, as readers do, so none sees a write in progress.
    fn save(&self, key: &str, changes: &ChangeSet, _held: &MutexGuard<'_, ()>) -> io::Result<bool> {
        if self.sync == SyncMode::Always {
            let Read2::Live(mut record, _) = self.read(key)? else {
                return Ok(false);
            };
            record.apply(changes);
            self.write(key, &record, true)?;
            return Ok(true);
        }
        let Some(mut f) = self.open(key, true)? else {
            return Ok(false);
        };
        let Read2::Live(mut record, old_len) = self.judge(&read_all(&mut f)?)? else {
            return Ok(false);
        };
        record.apply(changes);
        let mut bytes = record.encode();
        if bytes.len() < old_len {
            bytes.resize(old_len, b' ');
        }
        write_at_start(&f, &bytes)?;
        Ok(true)
    }

    /// Deletes a record; `durable` syncs the directory too, so a destroyed session stays dead
    /// across a crash (GC needs no such care: an expired record stays expired).
    fn remove(&self, key: &str, durable: bool) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Ok(()) if durable => sync_dir(&self.root.join(&key[..2])),
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a live record is stored under `key`; an expired or damaged one leaves the key
    /// free, a read error is returned (a record that cannot be read is never overwritten).
    fn occupied(&self, key: &str) -> io::Result<bool> {
        match self.read(key) {
            Ok(read) => Ok(matches!(read, Read2::Live(..))),
            Err(e) if damaged(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether `e` says a record does not decode (see [`Inner::judge`]), which makes it garbage;
/// any other error may be transient (`EMFILE`, `EACCES`, `EIO`) and deletes nothing.
fn damaged(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
}

/// A file operation's failure: a record that does not decode (`InvalidData`, from
/// [`Inner::judge`]) is [`Error::Corrupt`], anything else a backend error.
fn io_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::InvalidData {
        Error::Corrupt(Box::new(e))
    } else {
        Error::backend(NAME, e)
    }
}

#[async_trait]
impl Provider for FileProvider {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let key = id.storage_key();
        self.run(move |i| i.load(&key, &i.lock(i.stripe(&key))))
            .await
    }

    /// With `sync=lifecycle` a load is a page-cache read: done at once, on the caller's
    /// thread, unless the session's stripe lock is taken (`None`: [`load`](Provider::load)
    /// waits for it on the blocking pool).
    fn load_now(&self, id: &SessionId) -> Option<Result<Option<Record>>> {
        if self.inner.sync != SyncMode::Lifecycle {
            return None;
        }
        let key = id.storage_key();
        let held = self.inner.try_lock(self.inner.stripe(&key))?;
        Some(self.inner.load(&key, &held).map_err(io_error))
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let (key, record) = (id.storage_key(), record.clone());
        self.run(move |i| {
            let _guard = i.lock(i.stripe(&key));
            if i.occupied(&key)? {
                return Ok(false);
            }
            i.write(&key, &record, true).map(|()| true)
        })
        .await
    }

    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        let (key, changes) = (id.storage_key(), changes.clone());
        self.run(move |i| i.save(&key, &changes, &i.lock(i.stripe(&key))))
            .await
    }

    /// With `sync=lifecycle` a save is a page-cache write: done at once, on the caller's
    /// thread, unless the session's stripe lock is taken (as [`load_now`](Provider::load_now)).
    fn save_now(&self, id: &SessionId, changes: &ChangeSet) -> Option<Result<bool>> {
        if self.inner.sync != SyncMode::Lifecycle {
            return None;
        }
        let key = id.storage_key();
        let held = self.inner.try_lock(self.inner.stripe(&key))?;
        Some(self.inner.save(&key, changes, &held).map_err(io_error))
    }

    async fn destroy(&self, id: &SessionId) -> Result<()> {
        let key = id.storage_key();
        self.run(move |i| {
            let _guard = i.lock(i.stripe(&key));
            i.remove(&key, true)
        })
        .await
    }

    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
        let (old, new) = (old.storage_key(), new.storage_key());
        self.run(move |i| {
            let (a, b) = (i.stripe(&old), i.stripe(&new));
            let _first = i.lock(a.min(b));
            let _second = (a != b).then(|| i.lock(a.max(b)));
            if i.occupied(&new)? {
                return Ok(Regenerated::Collision);
            }
            let outcome = match i.read(&old)? {
                Read2::Live(record, _) => {
                    i.write(&new, &record, true)?;
                    Regenerated::Moved
                }
                _ => Regenerated::Missing,
            };
            i.remove(&old, true)?;
            Ok(outcome)
        })
        .await
    }

    async fn count(&self) -> Result<usize> {
        self.scan(Inner::count_batch).await
    }

    async fn gc(&self) -> Result<usize> {
        self.scan(Inner::gc_batch).await
    }
}
