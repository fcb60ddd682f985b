//! Records and their compare-and-swap writes.
//!
//! Invariants:
//! - No sled transactions, `apply_batch` or `checksum`: once any has run, sled 0.34 puts
//!   every operation of the process behind one global `RwLock`, which transactions take
//!   exclusively and the flusher holds while it writes. Every write is a single-key
//!   [`compare_and_swap`](::sled::Tree::compare_and_swap) on the records tree.
//! - A save written through (when its record cannot be cached) reads the record, checks
//!   that it is live, merges the change set per key and swaps the result in only over the
//!   bytes it read, retrying on a conflict: concurrent saves of different keys all survive,
//!   and a destroyed, expired or regenerated session is never re-created. A damaged record
//!   is [`Error::Corrupt`](crate::Error::Corrupt).
//! - `create` swaps from absent, or from an expired or damaged record (which does not hold
//!   its id).
//! - `regenerate` copies the record under the new id (only if nothing live is there), then
//!   deletes the old id only if it is unchanged: a save that landed meanwhile is carried
//!   over and the deletion retried; if the old id died meanwhile the copy is taken back. The
//!   old id is dead when it returns, and a session is never live under both ids past the
//!   call.
//! - `count` walks the records, not the index, and reads each deadline from the record's
//!   header without decoding its values.

use ::sled::IVec;

use super::{Inner, storage};
use crate::error::Result;
use crate::provider::Regenerated;
use crate::record::{ChangeSet, Record, peek_expiry};

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
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        self.records.get(key).map_err(storage)
    }

    /// Replaces `old` (`None`: absent) by `new` (`None`: delete) under `key`, if `old` is
    /// still what is stored.
    pub(super) fn swap(&self, key: &[u8], old: Option<&IVec>, new: Option<IVec>) -> Result<Swap> {
        self.writable()?;
        Ok(self
            .records
            .compare_and_swap(key, old, new)
            .map_err(storage)?
            .map_err(|e| e.current))
    }

    /// The live record stored in sled under `key`, decoded.
    pub(super) fn read_live(&self, key: &[u8]) -> Result<Option<Record>> {
        let Some(bytes) = self.get(key)? else {
            return Ok(None);
        };
        let record = Record::decode(&bytes)?;
        Ok((!record.is_expired(self.clock.now_ms())).then_some(record))
    }

    pub(super) fn create_stored(&self, key: &[u8], record: &Record) -> Result<bool> {
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
    pub(super) fn save_stored(&self, key: &[u8], changes: &ChangeSet) -> Result<bool> {
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
    pub(super) fn destroy_stored(&self, key: &[u8]) -> Result<bool> {
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
    pub(super) fn regenerate_stored(&self, old: &[u8], new: &[u8]) -> Result<Regenerated> {
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
    pub(super) fn count(&self) -> Result<usize> {
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
}
