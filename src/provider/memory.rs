//! `memory`: sessions in this process's memory, sharded, with a bounded capacity.
//!
//! ProviderConfig: empty, or `max_sessions=N` (default [`DEFAULT_MAX_SESSIONS`]).
//! When the store is full, creating a session first removes expired records; if it is still
//! full, creation fails with [`Error::CapacityExceeded`] (answered `503`) and every existing
//! session keeps working. Live sessions are never evicted to make room, so a flood of new
//! visitors cannot log anybody out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Provider, ProviderContext, Regenerated};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::record::{ChangeSet, Record};

/// Default bound on the number of stored sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 1_000_000;
const SHARDS: usize = 64;

type Shard = HashMap<SessionId, Record>;

/// Ids are uniformly random hex, so their first two characters spread evenly.
fn shard_index(id: &SessionId) -> usize {
    let b = id.as_str().as_bytes();
    (usize::from(b[0]) * 31 + usize::from(b[1])) % SHARDS
}

/// The in-memory provider. Data is lost when the process ends.
#[derive(Debug)]
pub struct MemoryProvider {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
    max_sessions: usize,
    clock: Clock,
}

impl MemoryProvider {
    /// A provider holding at most `max_sessions` sessions.
    pub fn new(max_sessions: usize, clock: Clock) -> Self {
        MemoryProvider {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            len: AtomicUsize::new(0),
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
        let now = self.clock.now_ms();
        Ok(self
            .shard(id)
            .get(id)
            .filter(|r| !r.is_expired(now))
            .cloned())
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let now = self.clock.now_ms();
        if self.len.load(Ordering::Relaxed) >= self.max_sessions {
            for i in 0..SHARDS {
                self.sweep_shard(i, now);
            }
            if self.len.load(Ordering::Relaxed) >= self.max_sessions {
                tracing::warn!(
                    max = self.max_sessions,
                    "memory session store full; refusing a new session"
                );
                return Err(Error::CapacityExceeded);
            }
        }
        let mut shard = self.shard(id);
        match shard.get(id) {
            Some(r) if !r.is_expired(now) => Ok(false),
            Some(_) => {
                shard.insert(id.clone(), record.clone());
                Ok(true)
            }
            None => {
                shard.insert(id.clone(), record.clone());
                self.len.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        let now = self.clock.now_ms();
        match self.shard(id).get_mut(id) {
            Some(r) if !r.is_expired(now) => {
                r.apply(changes);
                Ok(true)
            }
            _ => Ok(false),
        }
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
            removed += self.sweep_shard(i, now);
            // One shard per batch: let requests run between batches.
            tokio::task::yield_now().await;
        }
        Ok(removed)
    }
}
