//! Running blocking backend work on tokio's blocking pool, bounded by a timeout.
//!
//! - A timeout is [`Error::Unavailable`]; the work cannot be stopped from outside, so work
//!   that loops takes a [`Cancel`] and returns once its caller has stopped waiting.
//! - The caller stops waiting when the timeout fires or its future is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// How long one blocking backend call may take before it counts as unavailable.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Tells blocking work that nobody waits for its result any more.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Whether the caller has stopped waiting (timed out, or dropped its future).
    #[cfg_attr(not(feature = "file"), allow(dead_code))]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cancels the work when the caller's future ends, however it ends.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `work` on the blocking pool; a timeout ([`TIMEOUT`]) is [`Error::Unavailable`].
pub(crate) async fn run<T, F>(provider: &'static str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    run_cancellable(provider, TIMEOUT, move |_| work()).await
}

/// As [`run`], with a given timeout, handing `work` a [`Cancel`] that is set once the
/// caller stops waiting.
pub(crate) async fn run_cancellable<T, F>(
    provider: &'static str,
    timeout: Duration,
    work: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Cancel) -> Result<T> + Send + 'static,
{
    let guard = CancelOnDrop(Cancel::default());
    let cancel = guard.0.clone();
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || work(&cancel))).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Error::backend(provider, join)),
        Err(_) => Err(Error::unavailable(provider, "blocking call timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Work that runs until cancelled, then reports it.
    fn until_cancelled(done: mpsc::Sender<()>) -> impl FnOnce(&Cancel) -> Result<()> {
        move |cancel| {
            while !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = done.send(());
            Ok(())
        }
    }

    #[tokio::test]
    async fn work_is_cancelled_when_its_caller_times_out_or_gives_up() {
        let (done, stopped) = mpsc::channel();
        let short = Duration::from_millis(20);
        let result = run_cancellable("test", short, until_cancelled(done.clone())).await;
        assert!(
            matches!(result, Err(Error::Unavailable { .. })),
            "{result:?}"
        );
        stopped.recv_timeout(Duration::from_secs(30)).unwrap();

        // The caller's own deadline, shorter than the call's: the dropped future cancels.
        let call = run_cancellable("test", Duration::from_secs(3600), until_cancelled(done));
        assert!(tokio::time::timeout(short, call).await.is_err());
        stopped.recv_timeout(Duration::from_secs(30)).unwrap();
    }
}
