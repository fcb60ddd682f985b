//! Proof the suite can fail: providers each breaking one promise, run through the clause
//! functions, make exactly the clauses that check that promise panic; the honest memory
//! provider under the same wrapper passes them.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use async_trait::async_trait;
use sessioner::provider::memory::MemoryProvider;
use sessioner::testing::{self, Expiry, block_on};
use sessioner::{ChangeSet, Clock, Provider, Record, Regenerated, Result, SessionId};

/// The one promise a [`Broken`] provider breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// None: a plain memory provider, answering nothing at once.
    Honest,
    /// `save` on a missing, destroyed or regenerated-away id creates the record (a zombie).
    SaveRecreates,
    /// `gc` removes the expired records but reports none.
    GcCountsNothing,
    /// `load_now` answers "absent" for every id.
    LoadNowLies,
    /// `create` checks for a live record, then inserts over whatever is there: not atomic,
    /// so two racing creates of one id both succeed.
    CreateChecksThenInserts,
}

#[derive(Debug)]
struct Broken {
    fault: Fault,
    inner: MemoryProvider,
}

fn broken(fault: Fault) -> Arc<dyn Provider> {
    Arc::new(Broken {
        fault,
        inner: MemoryProvider::new(1_000_000, Clock::system()),
    })
}

#[async_trait]
impl Provider for Broken {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        self.inner.load(id).await
    }
    fn load_now(&self, _: &SessionId) -> Option<Result<Option<Record>>> {
        (self.fault == Fault::LoadNowLies).then_some(Ok(None))
    }
    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        if self.fault == Fault::CreateChecksThenInserts {
            if self.inner.load(id).await?.is_some() {
                return Ok(false);
            }
            // Widens the gap between the check and the insert, as a round trip would.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            self.inner.destroy(id).await?;
        }
        self.inner.create(id, record).await
    }
    async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        if self.fault == Fault::SaveRecreates && self.inner.load(id).await?.is_none() {
            let mut zombie = Record::default();
            zombie.apply(changes);
            return self.inner.create(id, &zombie).await;
        }
        self.inner.save(id, changes).await
    }
    async fn destroy(&self, id: &SessionId) -> Result<()> {
        self.inner.destroy(id).await
    }
    async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
        self.inner.regenerate(old, new).await
    }
    async fn count(&self) -> Result<usize> {
        self.inner.count().await
    }
    async fn gc(&self) -> Result<usize> {
        let removed = self.inner.gc().await?;
        Ok(if self.fault == Fault::GcCountsNothing {
            0
        } else {
            removed
        })
    }
}

/// Whether `clause` panics against a provider with `fault`.
fn fails<F, Fut>(fault: Fault, clause: F) -> bool
where
    F: FnOnce(Arc<dyn Provider>) -> Fut,
    Fut: Future,
{
    let provider = broken(fault);
    catch_unwind(AssertUnwindSafe(|| block_on(clause(provider)))).is_err()
}

/// Asserts `clause` passes on the honest provider and fails on one with `fault`.
fn catches<F, Fut>(fault: Fault, clause: F)
where
    F: Fn(Arc<dyn Provider>) -> Fut,
    Fut: Future,
{
    assert!(!fails(Fault::Honest, &clause), "the honest provider failed");
    assert!(fails(fault, &clause), "{fault:?} went unnoticed");
}

#[test]
fn a_save_that_recreates_destroyed_records_fails_the_suite() {
    catches(Fault::SaveRecreates, testing::save_never_recreates);
    catches(Fault::SaveRecreates, testing::regenerate_moves_atomically);
    catches(
        Fault::SaveRecreates,
        testing::expired_records_read_as_absent,
    );
}

#[test]
fn a_gc_that_miscounts_fails_the_suite() {
    catches(Fault::GcCountsNothing, |p| {
        testing::gc_removes_and_counts_expired_records(p, Expiry::ByGc)
    });
    // And a backend whose gc does the removing must not pass as expiring by itself.
    assert!(fails(Fault::Honest, |p| {
        testing::gc_removes_and_counts_expired_records(p, Expiry::ByBackend)
    }));
}

#[test]
fn a_fast_path_that_disagrees_fails_the_suite() {
    catches(Fault::LoadNowLies, testing::fast_paths_agree);
}

#[test]
fn a_create_that_is_not_atomic_fails_the_suite() {
    catches(
        Fault::CreateChecksThenInserts,
        testing::racing_creates_of_one_id_have_one_winner,
    );
    // The one-at-a-time clause cannot see it: the race is the point.
    assert!(!fails(
        Fault::CreateChecksThenInserts,
        testing::create_is_insert_if_absent
    ));
}
