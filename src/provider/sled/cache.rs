//! The write-behind cache of decoded records.
//!
//! Invariants:
//! - sled locks its directory, so the provider is the only writer of its trees and an
//!   in-process cache is coherent.
//! - The cache is split into [`SHARDS`] shards (fewer for a tiny bound), each behind a mutex
//!   that is also the lock of every key in it: every read into the cache, every write of one
//!   of its keys to sled and every change of its entries happens under it. So for a cached
//!   key the cache is the truth, and sled holds the same record or an older one.
//! - `load` answers from the cache (an expired entry reads as `None`); a miss reads and
//!   decodes the record and caches it.
//! - `save` applies the change set to the cached record (caching it first on a miss) and
//!   marks it dirty; a missing or expired record is `false` and nothing is written.
//! - The writer thread stores the dirty records every [`WRITE_BEHIND`], each under its key's
//!   lock and only over a record sled still holds, then flushes with no lock held: the saves
//!   of one session between two passes become one write. It holds the provider weakly and
//!   stops when the provider is dropped.
//! - `create`, `destroy` and `regenerate` take the key's lock (both keys', in shard order,
//!   for `regenerate`), write that key's dirty record, act on sled, then update the cache:
//!   the writer never stores a stale copy of a session they removed.
//! - `count` and `gc` write the dirty records first; `gc` judges each expired candidate
//!   under its key's lock after writing a newer cached version, and drops the cache entries
//!   of the records it deletes.
//! - A full shard evicts a clean entry, or writes a dirty one to sled first (if that write
//!   fails, the new record is not cached and a save writes through).
//! - On the async worker (`load_now`, `save_now`) a shard is only `try_lock`ed and sled is
//!   never touched: a busy shard or a key that is not cached is `None`, left to the
//!   blocking pool.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{MutexGuard, TryLockError, Weak};
use std::time::Duration;

use ::sled::IVec;

use super::{Inner, files};
use crate::error::Result;
use crate::provider::Regenerated;
use crate::record::{ChangeSet, Record, peek_expiry};

/// The cache is split into this many independently locked shards (fewer for a tiny bound).
pub(super) const SHARDS: usize = 64;
/// How long a saved change may wait in the cache before the writer stores it in sled.
pub(super) const WRITE_BEHIND: Duration = Duration::from_millis(500);
/// How many entries an eviction looks at for a clean one before writing a dirty one out.
const EVICTION_SCAN: usize = 16;

/// One cached session.
pub(super) struct Entry {
    record: Record,
    /// Changed by saves since it was last stored in sled.
    dirty: bool,
}

/// One lock's share of the cache. Its mutex is also the per-key lock of every key in it:
/// every read into the cache and every write to sled of one of its keys happens under it.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) map: HashMap<String, Entry>,
    /// Keys that became dirty since the writer last took the list (possibly stale: a key
    /// destroyed meanwhile is skipped).
    dirty: Vec<String>,
}

/// The writer thread: every `pass_every` ([`WRITE_BEHIND`]), stores the dirty records in
/// sled and flushes them; stops as soon as the provider is gone (its sender dropped, or
/// nothing to upgrade).
pub(super) fn write_behind(inner: &Weak<Inner>, stop: &mpsc::Receiver<()>, pass_every: Duration) {
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(pass_every) {
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
        if let Err(e) = files::restrict(&inner.dir) {
            tracing::warn!(error = %e, "sled files could not be made private");
        }
    }
}

/// The cached record under `key` as `load` sees it (an expired one reads as `None`); `None`
/// if the key is not cached.
fn cached(shard: &Shard, key: &str, now: u64) -> Option<Option<Record>> {
    let entry = shard.map.get(key)?;
    Some((!entry.record.is_expired(now)).then(|| entry.record.clone()))
}

/// Applies `changes` to the cached record under `key` and marks it dirty: whether it was
/// live (an expired one is left alone); `None` if the key is not cached.
fn apply(shard: &mut Shard, key: &str, changes: &ChangeSet, now: u64) -> Option<bool> {
    let entry = shard.map.get_mut(key)?;
    if entry.record.is_expired(now) {
        return Some(false);
    }
    entry.record.apply(changes);
    if !entry.dirty {
        entry.dirty = true;
        shard.dirty.push(key.to_owned());
    }
    Some(true)
}

/// The cache: every operation on a key holds its shard's lock, so for a cached key the
/// cache is the truth and sled holds the same record or an older version of it.
impl Inner {
    pub(super) fn shard_of(&self, key: &[u8]) -> usize {
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
    pub(super) fn lock(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        self.lock_index(self.shard_of(key))
    }

    /// The lock of `key`'s shard, if no one holds it.
    fn try_lock(&self, key: &[u8]) -> Option<MutexGuard<'_, Shard>> {
        match self.shards.get(self.shard_of(key))?.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
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
    pub(super) fn write_entry(&self, shard: &mut Shard, key: &str) -> Result<bool> {
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
    pub(super) fn write_dirty(&self) -> Result<usize> {
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
    pub(super) fn cache(&self, shard: &mut Shard, key: &str, record: Record) -> bool {
        if !shard.map.contains_key(key) && shard.map.len() >= self.per_shard {
            let victim = shard
                .map
                .iter()
                .take(EVICTION_SCAN)
                .find(|(_, e)| !e.dirty)
                .or_else(|| shard.map.iter().next())
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else {
                return false;
            };
            if let Err(e) = self.write_entry(shard, &victim) {
                tracing::warn!(error = %e, "sled cache eviction could not write a session");
                return false;
            }
            shard.map.remove(&victim);
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

    /// `load` on the async worker, from the cache only: `None` if `key`'s lock is taken or
    /// `key` is not cached (the caller then runs [`load`](Inner::load) on the blocking pool).
    /// Never touches sled.
    pub(super) fn load_now(&self, key: &str) -> Option<Result<Option<Record>>> {
        let shard = self.try_lock(key.as_bytes())?;
        cached(&shard, key, self.clock.now_ms()).map(Ok)
    }

    /// From the cache, or else from sled (then cached).
    pub(super) fn load(&self, key: &str) -> Result<Option<Record>> {
        let mut shard = self.lock(key.as_bytes());
        if let Some(found) = cached(&shard, key, self.clock.now_ms()) {
            return Ok(found);
        }
        let Some(record) = self.read_live(key.as_bytes())? else {
            return Ok(None);
        };
        self.cache(&mut shard, key, record.clone());
        Ok(Some(record))
    }

    /// `save` on the async worker, in the cache only: `None` if `key`'s lock is taken or
    /// `key` is not cached (the caller then runs [`save`](Inner::save) on the blocking pool).
    /// Never touches sled.
    pub(super) fn save_now(&self, key: &str, changes: &ChangeSet) -> Option<Result<bool>> {
        let mut shard = self.try_lock(key.as_bytes())?;
        apply(&mut shard, key, changes, self.clock.now_ms()).map(Ok)
    }

    /// Applies `changes` to the cached record, caching it from sled first on a miss; a record
    /// that cannot be cached (its eviction victim could not be written) is saved to sled.
    pub(super) fn save(&self, key: &str, changes: &ChangeSet) -> Result<bool> {
        let mut shard = self.lock(key.as_bytes());
        if !shard.map.contains_key(key) {
            let Some(record) = self.read_live(key.as_bytes())? else {
                return Ok(false);
            };
            if !self.cache(&mut shard, key, record) {
                return self.save_stored(key.as_bytes(), changes);
            }
        }
        Ok(apply(&mut shard, key, changes, self.clock.now_ms()).unwrap_or(false))
    }

    pub(super) fn create(&self, key: &str, record: &Record) -> Result<bool> {
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
    pub(super) fn destroy(&self, key: &str) -> Result<bool> {
        let mut shard = self.lock(key.as_bytes());
        let stored = self.destroy_stored(key.as_bytes())?;
        let cached = shard.map.remove(key).is_some();
        Ok(stored || cached)
    }

    /// Holds both keys' locks (in shard order), writes their dirty records, moves the
    /// record in sled, then moves the cache entry along.
    pub(super) fn regenerate(&self, old: &str, new: &str) -> Result<Regenerated> {
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
