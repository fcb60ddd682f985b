//! The expiry index and GC.
//!
//! Invariants:
//! - An index key is a bucket followed by the storage key: the record's idle deadline
//!   rounded up to a multiple of a tenth of `max_lifetime` (big-endian milliseconds, so keys
//!   sort by time). A bucket is never before the deadline it stands for.
//! - An ordinary save, which pushes the deadline forward, writes the index only when the
//!   deadline crosses into another bucket: once every tenth of a lifetime per session.
//! - The index cannot change atomically with the record: it is a hint. A writer adds the new
//!   entry before it swaps the record (an interruption leaves a stale entry, never an
//!   unindexed record), makes sure it is still there after the swap, then removes the old
//!   one; whoever removes an entry reads the record again and puts the entry back if a
//!   concurrent writer moved the record into that bucket.
//! - Entries may be stale, orphaned or duplicated: `gc` judges each against its record's own
//!   deadline. Every record expired by now has an entry at or before the current bucket, so
//!   `gc` walks exactly those, deletes the expired (or damaged) records, but only if each is
//!   still the expired one it read, keeps the entries of the live records of the current
//!   bucket, and drops the others. `gc` thus deletes every record expired when it runs.
//! - Entries written under a larger `max_lifetime` (wider buckets) stay valid, and may be
//!   collected up to one of those buckets late.

use std::ops::Bound;

use ::sled::IVec;

use super::{Inner, storage};
use crate::error::Result;
use crate::record::peek_expiry;

/// How many index entries one GC step examines (one blocking call).
pub(super) const GC_BATCH: usize = 256;
/// The expiry index rounds deadlines up to buckets of this fraction of the idle lifetime.
pub(super) const BUCKETS_PER_LIFETIME: u64 = 10;

/// The expiry index key: the bucket, big-endian so keys sort by time, then the storage key.
fn index_key(bucket: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&bucket.to_be_bytes());
    out.extend_from_slice(key);
    out
}

impl Inner {
    /// The index bucket of `deadline`: rounded up to a multiple of the bucket width, so a
    /// bucket is never before the deadline it stands for.
    pub(super) fn bucket(&self, deadline: u64) -> u64 {
        deadline
            .div_ceil(self.bucket_ms)
            .saturating_mul(self.bucket_ms)
    }
    /// Adds the index entry for a record under `key` in `bucket` (a no-op if it is there).
    pub(super) fn index(&self, bucket: u64, key: &[u8]) -> Result<()> {
        self.writable()?;
        self.expiry
            .insert(index_key(bucket, key), &[][..])
            .map_err(storage)?;
        Ok(())
    }

    /// Removes the index entry `bucket` of `key`, then puts it back if the record under
    /// `key` belongs to that bucket after all: a writer that moved it there concurrently
    /// added the entry before our removal.
    pub(super) fn unindex(&self, bucket: u64, key: &[u8]) -> Result<()> {
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
    /// bucket `from`, if any): makes sure its entry exists (a concurrent [`unindex`](Inner::unindex) may
    /// have taken the one added before the swap) and drops the previous one.
    pub(super) fn reindex(&self, key: &[u8], from: Option<u64>, to: u64) -> Result<()> {
        self.index(to, key)?;
        match from {
            Some(from) if from != to => self.unindex(from, key),
            _ => Ok(()),
        }
    }

    /// Examines up to [`GC_BATCH`] index entries after `after` whose bucket has begun to
    /// expire, deleting their expired records. Returns (entries seen, records removed, the
    /// last entry seen).
    pub(super) fn gc_batch(&self, after: Option<IVec>) -> Result<(usize, usize, Option<IVec>)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_deadline() {
        let k = [b'f'; 64];
        assert!(index_key(255, &k) < index_key(256, &k));
        assert_eq!(index_key(1, &k).len(), 72);
    }
}
