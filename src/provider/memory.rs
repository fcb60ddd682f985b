//! `memory`: sessions in this process's memory, sharded, with a bounded capacity.
//!
//! ProviderConfig: empty, or `max_sessions=N` (default [`DEFAULT_MAX_SESSIONS`]).
//! When the store is full, creating a session first removes expired records; if it is still
//! full, creation fails with [`Error::CapacityExceeded`] (answered `503`) and every existing
//! session keeps working. Live sessions are never evicted to make room, so a flood of new
//! visitors cannot log anybody out.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

/// Default bound on the number of stored sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 1_000_000;
/// Shards, each a lock and a table; GC sweeps one shard per step (about 4k sessions per
/// step at a million sessions), so no lock is held long.
const SHARDS: usize = 256;
/// When the store is full, how often creating a session may sweep it for expired records.
const FULL_SWEEP_EVERY_MS: u64 = 1_000;
/// The most expired records one GC step removes before it yields.
const GC_STEP: usize = 256;

type Shard = HashMap<SessionId, Stored, BuildHasherDefault<IdHasher>>;

/// Hashes session ids cheaply. SipHash guards a table against keys an attacker chooses; the
/// keys stored here are ids this server generated from the OS CSPRNG (a client's id is only
/// ever looked up, never inserted), so they are uniformly random already and a multiply-mix
/// over their bytes spreads them as well as SipHash does, at a fraction of the cost.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Ids are uniformly random hex, so their first two characters spread evenly over 256 shards.
fn shard_index(id: &SessionId) -> usize {
    let hex = |b: u8| {
        usize::from(
            if b.is_ascii_digit() {
                b - b'0'
            } else {
                b.wrapping_sub(b'a') + 10
            } & 0x0f,
        )
    };
    let b = id.as_str().as_bytes();
    (hex(b[0]) << 4 | hex(b[1])) % SHARDS
}

/// A record as this provider keeps it: the values in one boxed slice rather than a hash table
/// per session, which keeps a small session to about 200 bytes beyond its values.
#[derive(Debug)]
struct Stored {
    values: Box<[(Box<str>, Box<str>)]>,
    expires_at: u64,
    /// 0 when there is no absolute deadline.
    absolute_deadline: u64,
}

impl Stored {
    fn new(record: &Record) -> Self {
        Stored {
            values: record
                .values
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
            expires_at: record.expires_at,
            absolute_deadline: record.absolute_deadline.unwrap_or(0),
        }
    }

    fn record(&self) -> Record {
        Record {
            values: self
                .values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            expires_at: self.expires_at,
            absolute_deadline: (self.absolute_deadline != 0).then_some(self.absolute_deadline),
        }
    }

    fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }

    /// [`Record::apply`] on the compact form: flush, deletes, sets, new deadline.
    fn apply(&mut self, changes: &ChangeSet) {
        if changes.flushed || !changes.deleted.is_empty() || !changes.set.is_empty() {
            let mut values = if changes.flushed {
                Vec::new()
            } else {
                std::mem::take(&mut self.values).into_vec()
            };
            values.retain(|(k, _)| !changes.deleted.iter().any(|d| **d == **k));
            for (key, value) in &changes.set {
                match values.iter_mut().find(|(k, _)| **k == **key) {
                    Some(slot) => slot.1 = value.as_str().into(),
                    None => values.push((key.as_str().into(), value.as_str().into())),
                }
            }
            self.values = values.into_boxed_slice();
        }
        self.expires_at = changes.expires_at;
    }
}

/// The in-memory provider. Data is lost when the process ends.
#[derive(Debug)]
pub struct MemoryProvider {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
    /// When a full store was last swept (ms since the epoch).
    last_full_sweep: AtomicU64,
    max_sessions: usize,
    clock: Clock,
}

impl MemoryProvider {
    /// A provider holding at most `max_sessions` sessions.
    pub fn new(max_sessions: usize, clock: Clock) -> Self {
        MemoryProvider {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            len: AtomicUsize::new(0),
            last_full_sweep: AtomicU64::new(0),
            max_sessions,
            clock,
        }
    }

    /// The registry factory: parses `max_sessions=N` from the context's config.
    pub fn factory(ctx: &ProviderContext) -> Result<Arc<dyn Provider>> {
        let mut max = DEFAULT_MAX_SESSIONS;
        for part in ctx
            .config
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part.split_once('=') {
                Some(("max_sessions", n)) => {
                    max = n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        ProviderContext::error("memory", "max_sessions must be a positive integer")
                    })?;
                }
                _ => {
                    return Err(ProviderContext::error(
                        "memory",
                        format!("unknown setting `{part}`"),
                    ));
                }
            }
        }
        Ok(Arc::new(MemoryProvider::new(max, ctx.clock.clone())))
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, Shard> {
        self.lock(shard_index(id))
    }

    /// Moves `old` to `new`; `to` is `None` when both live in `from`'s shard.
    fn move_record(
        &self,
        from: &mut Shard,
        to: Option<&mut Shard>,
        old: &SessionId,
        new: &SessionId,
        now: u64,
    ) -> Regenerated {
        let target_taken = match &to {
            Some(t) => t.get(new),
            None => from.get(new),
        }
        .is_some_and(|r| !r.is_expired(now));
        if target_taken {
            return Regenerated::Collision;
        }
        let Some(record) = from.remove(old) else {
            return Regenerated::Missing;
        };
        self.len.fetch_sub(1, Ordering::Relaxed);
        if record.is_expired(now) {
            return Regenerated::Missing;
        }
        if to.unwrap_or(from).insert(new.clone(), record).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Regenerated::Moved
    }

    fn load_live(&self, id: &SessionId) -> Option<Record> {
        let now = self.clock.now_ms();
        self.shard(id)
            .get(id)
            .filter(|r| !r.is_expired(now))
            .map(Stored::record)
    }

    fn save_live(&self, id: &SessionId, changes: &ChangeSet) -> bool {
        let now = self.clock.now_ms();
        match self.shard(id).get_mut(id) {
            Some(r) if !r.is_expired(now) => {
                r.apply(changes);
                true
            }
            _ => false,
        }
    }

    fn sweep_shard(&self, index: usize, now: u64) -> usize {
        let mut shard = self.lock(index);
        let before = shard.len();
        shard.retain(|_, r| !r.is_expired(now));
        let removed = before - shard.len();
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        Ok(self.load_live(id))
    }

    fn load_now(&self, id: &SessionId) -> Option<Result<Option<Record>>> {
        Some(Ok(self.load_live(id)))
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let now = self.clock.now_ms();
        if self.len.load(Ordering::Relaxed) >= self.max_sessions {
            // A full sweep walks every session: at most one per second, so a flood of
            // newcomers against a full store costs one sweep, not one per request.
            let last = self.last_full_sweep.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= FULL_SWEEP_EVERY_MS
                && self
                    .last_full_sweep
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                for i in 0..SHARDS {
                    self.sweep_shard(i, now);
                }
                if self.len.load(Ordering::Relaxed) >= self.max_sessions {
                    tracing::warn!(
                        max = self.max_sessions,
                        "memory session store full; refusing new sessions"
                    );
                }
            }
            if self.len.load(Ordering::Relaxed) >= self.max_sessions {
                return Err(Error::CapacityExceeded);
            }
        }
        let mut shard = self.shard(id);
        match shard.get(id) {
            Some(r) if !r.is_expired(now) => Ok(false),
            Some(_) => {
                shard.insert(id.clone(), Stored::new(record));
                Ok(true)
            }
            None => {
                shard.insert(id.clone(), Stored::new(record));
                self.len.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        Ok(self.save_live(id, changes))
    }

    fn save_now(&self, id: &SessionId, changes: &ChangeSet) -> Option<Result<bool>> {
        Some(Ok(self.save_live(id, changes)))
    }

    async fn destroy(&self, id: &SessionId) -> Result<()> {
        if self.shard(id).remove(id).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
        let now = self.clock.now_ms();
        let (a, b) = (shard_index(old), shard_index(new));
        // Both shards stay locked (in index order, once if they coincide): the move is atomic.
        Ok(if a == b {
            self.move_record(&mut self.lock(a), None, old, new, now)
        } else {
            let mut low = self.lock(a.min(b));
            let mut high = self.lock(a.max(b));
            if a < b {
                self.move_record(&mut low, Some(&mut high), old, new, now)
            } else {
                self.move_record(&mut high, Some(&mut low), old, new, now)
            }
        })
    }

    async fn count(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        Ok(self
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .filter(|r| !r.is_expired(now))
                    .count()
            })
            .sum())
    }

    async fn gc(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let mut removed = 0;
        for i in 0..SHARDS {
            loop {
                // Take at most GC_STEP expired records out under the lock, free them after it,
                // then let requests run: no step holds a lock or the thread for long.
                let batch: Vec<(SessionId, Stored)> = self
                    .lock(i)
                    .extract_if(|_, r| r.is_expired(now))
                    .take(GC_STEP)
                    .collect();
                let n = batch.len();
                self.len.fetch_sub(n, Ordering::Relaxed);
                removed += n;
                drop(batch);
                tokio::task::yield_now().await;
                if n < GC_STEP {
                    break;
                }
            }
            // A table never shrinks by itself: after a wave of sessions expires, give the
            // memory back once the shard is under a quarter full (room to double kept).
            let mut shard = self.lock(i);
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                let keep = shard.len() * 2;
                shard.shrink_to(keep);
            }
        }
        Ok(removed)
    }
}
