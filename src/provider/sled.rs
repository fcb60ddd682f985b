//! `sled`: sessions in an embedded [sled](https://docs.rs/sled/0.34) 0.34 database.
//!
//! Registered as `sled`, and as `ledis` for configurations carried over from macaron (whose
//! `ledis` provider was the embedded store of its time).
//!
//! ProviderConfig: the data directory (e.g. `data/sessions.sled`), or macaron's
//! `data_dir=data/sessions.sled` (a trailing `,db=N` is accepted and ignored: the directory
//! is the namespace). The directory is created with mode `0700` if missing. sled holds an
//! exclusive lock on it, so a directory another process (or another provider in this
//! process) has open is refused when the provider is built, with
//! [`Error::ProviderConfig`].
//!
//! Layout: one tree maps [`SessionId::storage_key`] (the SHA-256 of the id, never the id) to
//! the [`Record::encode`]d record; a second tree indexes the records by expiry (key: the
//! idle deadline in big-endian milliseconds followed by the storage key), so
//! [`gc`](Provider::gc) deletes expired records in key order, in bounded batches, without
//! reading or decoding live sessions, and [`count`](Provider::count) counts index keys.
//! Every write changes both trees in one sled transaction, so the index never disagrees
//! with the records. A save reads, merges (per key) and writes the record inside that
//! transaction: concurrent requests changing different keys of one session all survive.
//!
//! Durability: `create`, `regenerate` and `destroy` return only after
//! [`flush_async`](::sled::Tree::flush_async) has written and `fsync`ed them, so a login or a
//! logout survives a crash. An ordinary `save` is durable once sled's background flusher has
//! run, every 500 ms by default: a crash can lose the value changes of the last half second,
//! never a session's existence or its death.
//!
//! sled 0.34 runs every transaction under a process-wide lock that its background flusher
//! also takes, so any call may wait for disk I/O. Every call therefore runs on tokio's
//! blocking pool and is bounded by a timeout ([`Error::Unavailable`] when it expires).
//! Opening the database happens when the provider is built (configuration time) and blocks
//! the calling thread while sled recovers its log.

use std::fmt;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree, UnabortableTransactionError,
};
use ::sled::{IVec, Transactional};
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
/// How many expired records one GC step removes (one transaction, one blocking call).
const GC_BATCH: usize = 256;

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
}

impl fmt::Debug for SledProvider {
    // sled's own `Debug` prints the trees' contents; show only where the data lives.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledProvider")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl SledProvider {
    /// Opens (or creates) the database in `dir`.
    ///
    /// Blocks while sled opens and recovers its log. A directory held by another process or
    /// provider is [`Error::ProviderConfig`].
    pub fn open(dir: impl Into<PathBuf>, clock: Clock) -> Result<Self> {
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
        Ok(SledProvider {
            inner: Arc::new(Inner {
                dir,
                db,
                records,
                expiry,
                clock,
            }),
        })
    }

    /// The registry factory (`sled` and `ledis`): the config is the data directory, or
    /// `data_dir=<dir>[,db=N]`.
    pub fn factory(ctx: &ProviderContext) -> Result<Arc<dyn Provider>> {
        Ok(Arc::new(SledProvider::open(
            parse_config(&ctx.config)?,
            ctx.clock.clone(),
        )?))
    }

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

fn parse_config(config: &str) -> Result<PathBuf> {
    let config = config.trim();
    let Some(rest) = config.strip_prefix("data_dir=") else {
        return Ok(PathBuf::from(config));
    };
    let mut parts = rest.split(',');
    let dir = parts.next().unwrap_or_default().trim();
    for part in parts.map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("db", n)) if n.trim().parse::<u32>().is_ok() => {}
            _ => {
                return Err(ProviderContext::error(
                    NAME,
                    format!("unknown setting `{part}` (expected `data_dir=<dir>[,db=N]`)"),
                ));
            }
        }
    }
    Ok(PathBuf::from(dir))
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

fn tx_error(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => storage(e),
    }
}

/// The expiry index key: the deadline, big-endian so keys sort by time, then the storage key.
fn index_key(expires_at: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// What a transaction finds under a storage key.
enum Slot {
    Missing,
    Live(IVec, Record),
    Expired(u64),
    /// Undecodable; the deadline if at least the header could be read.
    Corrupt(Option<u64>, Error),
}

fn read(
    records: &TransactionalTree,
    key: &[u8],
    now: u64,
) -> std::result::Result<Slot, UnabortableTransactionError> {
    let Some(bytes) = records.get(key)? else {
        return Ok(Slot::Missing);
    };
    Ok(match Record::decode(&bytes) {
        Ok(r) if r.is_expired(now) => Slot::Expired(r.expires_at),
        Ok(r) => Slot::Live(bytes, r),
        Err(e) => Slot::Corrupt(peek_expiry(&bytes).ok(), e),
    })
}

/// Removes a dead (expired or damaged) record and its index entry.
fn remove_dead(
    records: &TransactionalTree,
    expiry: &TransactionalTree,
    key: &[u8],
    deadline: Option<u64>,
) -> std::result::Result<(), UnabortableTransactionError> {
    records.remove(key)?;
    if let Some(deadline) = deadline {
        expiry.remove(index_key(deadline, key))?;
    }
    Ok(())
}

type TxResult<T> = ConflictableTransactionResult<T, Error>;

impl Inner {
    /// Runs `f` as one transaction over both trees.
    fn transaction<T>(
        &self,
        f: impl Fn(&TransactionalTree, &TransactionalTree) -> TxResult<T>,
    ) -> Result<T> {
        (&self.records, &self.expiry)
            .transaction(|(records, expiry)| f(records, expiry))
            .map_err(tx_error)
    }

    fn load(&self, key: &[u8]) -> Result<Option<Record>> {
        let Some(bytes) = self.records.get(key).map_err(storage)? else {
            return Ok(None);
        };
        let record = Record::decode(&bytes)?;
        Ok((!record.is_expired(self.clock.now_ms())).then_some(record))
    }

    fn create(&self, key: &[u8], record: &Record) -> Result<bool> {
        let now = self.clock.now_ms();
        let encoded = record.encode();
        let index = index_key(record.expires_at, key);
        self.transaction(|records, expiry| {
            match read(records, key, now)? {
                Slot::Live(..) => return Ok(false),
                Slot::Expired(deadline) => remove_dead(records, expiry, key, Some(deadline))?,
                // A damaged record does not hold its id: it is replaced.
                Slot::Corrupt(deadline, _) => remove_dead(records, expiry, key, deadline)?,
                Slot::Missing => {}
            }
            records.insert(key, encoded.as_slice())?;
            expiry.insert(index.as_slice(), &[][..])?;
            Ok(true)
        })
    }

    fn save(&self, key: &[u8], changes: &ChangeSet) -> Result<bool> {
        let now = self.clock.now_ms();
        self.transaction(|records, expiry| match read(records, key, now)? {
            Slot::Live(_, mut record) => {
                let before = record.expires_at;
                record.apply(changes);
                if record.expires_at != before {
                    expiry.remove(index_key(before, key))?;
                    expiry.insert(index_key(record.expires_at, key), &[][..])?;
                }
                records.insert(key, record.encode())?;
                Ok(true)
            }
            Slot::Corrupt(_, e) => Err(ConflictableTransactionError::Abort(e)),
            Slot::Missing | Slot::Expired(_) => Ok(false),
        })
    }

    /// Deletes the record; returns whether there was one.
    fn destroy(&self, key: &[u8]) -> Result<bool> {
        self.transaction(|records, expiry| {
            let Some(bytes) = records.remove(key)? else {
                return Ok(false);
            };
            if let Ok(deadline) = peek_expiry(&bytes) {
                expiry.remove(index_key(deadline, key))?;
            }
            Ok(true)
        })
    }

    fn regenerate(&self, old: &[u8], new: &[u8]) -> Result<Regenerated> {
        let now = self.clock.now_ms();
        self.transaction(|records, expiry| {
            let target = match read(records, new, now)? {
                Slot::Live(..) => return Ok(Regenerated::Collision),
                Slot::Expired(deadline) => Some(Some(deadline)),
                Slot::Corrupt(deadline, _) => Some(deadline),
                Slot::Missing => None,
            };
            match read(records, old, now)? {
                Slot::Live(bytes, record) => {
                    if let Some(deadline) = target {
                        remove_dead(records, expiry, new, deadline)?;
                    }
                    records.remove(old)?;
                    expiry.remove(index_key(record.expires_at, old))?;
                    records.insert(new, bytes)?;
                    expiry.insert(index_key(record.expires_at, new), &[][..])?;
                    Ok(Regenerated::Moved)
                }
                Slot::Expired(deadline) => {
                    remove_dead(records, expiry, old, Some(deadline))?;
                    Ok(Regenerated::Missing)
                }
                Slot::Corrupt(_, e) => Err(ConflictableTransactionError::Abort(e)),
                Slot::Missing => Ok(Regenerated::Missing),
            }
        })
    }

    /// Live records: index entries whose deadline is after now.
    fn count(&self) -> Result<usize> {
        let from = self.clock.now_ms().saturating_add(1).to_be_bytes();
        let mut n = 0;
        for key in self.expiry.range(from..).keys() {
            key.map_err(storage)?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes up to [`GC_BATCH`] expired records; returns (index entries seen, records removed).
    fn gc_batch(&self) -> Result<(usize, usize)> {
        let until = self.clock.now_ms().saturating_add(1).to_be_bytes();
        let batch = self
            .expiry
            .range(..until)
            .keys()
            .take(GC_BATCH)
            .collect::<std::result::Result<Vec<IVec>, _>>()
            .map_err(storage)?;
        if batch.is_empty() {
            return Ok((0, 0));
        }
        let removed = self.transaction(|records, expiry| {
            let mut removed = 0;
            for entry in &batch {
                expiry.remove(entry)?;
                let Some((deadline, key)) = entry.split_first_chunk::<8>() else {
                    continue;
                };
                let Some(bytes) = records.get(key)? else {
                    continue;
                };
                // The record's own deadline decides: a newer one has its own index entry.
                match peek_expiry(&bytes) {
                    Ok(d) if d.to_be_bytes() != *deadline => {}
                    _ => {
                        records.remove(key)?;
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })?;
        Ok((batch.len(), removed))
    }
}

#[async_trait]
impl Provider for SledProvider {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let key = id.storage_key();
        self.run(move |i| i.load(key.as_bytes())).await
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let (key, record) = (id.storage_key(), record.clone());
        let created = self.run(move |i| i.create(key.as_bytes(), &record)).await?;
        if created {
            self.flush().await?;
        }
        Ok(created)
    }

    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        let (key, changes) = (id.storage_key(), changes.clone());
        self.run(move |i| i.save(key.as_bytes(), &changes)).await
    }

    async fn destroy(&self, id: &SessionId) -> Result<()> {
        let key = id.storage_key();
        if self.run(move |i| i.destroy(key.as_bytes())).await? {
            self.flush().await?;
        }
        Ok(())
    }

    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
        let (old, new) = (old.storage_key(), new.storage_key());
        let outcome = self
            .run(move |i| i.regenerate(old.as_bytes(), new.as_bytes()))
            .await?;
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
        loop {
            let (seen, removed) = self.run(Inner::gc_batch).await?;
            total += removed;
            if seen < GC_BATCH {
                return Ok(total);
            }
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
        assert_eq!(parse_config(" data/s ").unwrap(), PathBuf::from("data/s"));
        assert_eq!(
            parse_config("data_dir=./app.db,db=0").unwrap(),
            PathBuf::from("./app.db")
        );
        assert!(parse_config("data_dir=x,bogus=1").is_err());
    }

    #[test]
    fn index_keys_sort_by_deadline() {
        let k = [b'f'; 64];
        assert!(index_key(255, &k) < index_key(256, &k));
        assert_eq!(index_key(1, &k).len(), 72);
    }
}
