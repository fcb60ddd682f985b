//! Running blocking backend work on tokio's blocking pool, bounded by a timeout.

use std::time::Duration;

use crate::error::{Error, Result};

/// How long one blocking backend call may take before it counts as unavailable.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `work` on the blocking pool; a timeout is [`Error::Unavailable`].
pub(crate) async fn run<T, F>(provider: &'static str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::time::timeout(TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Error::backend(provider, join)),
        Err(_) => Err(Error::unavailable(provider, "blocking call timed out")),
    }
}
