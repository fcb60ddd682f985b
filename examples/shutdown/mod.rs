//! Graceful stop for the example servers, shared by `mod shutdown;`.
//!
//! - SIGTERM and SIGINT (Ctrl-C where there are no Unix signals) stop the server gracefully:
//!   it accepts no new connection and lets requests in flight finish, for at most [`GRACE`].
//! - The handlers are installed before [`stop_on_signal`] returns, so a signal sent once the
//!   server listens never takes the default action (killing the process).
//! - `Server::serve` then returns, and the router, which owns the session middleware and its
//!   provider, is dropped before `main` returns: sled writes its cached saves and flushes.

use std::future::Future;
use std::io;
use std::time::Duration;

use salvo::server::ServerHandle;

/// How long requests in flight may take to finish once a stop is asked for.
pub const GRACE: Duration = Duration::from_secs(5);

/// Stops the server behind `handle` gracefully on the first SIGTERM or SIGINT.
pub fn stop_on_signal(handle: ServerHandle) -> io::Result<()> {
    let signal = signal()?;
    tokio::spawn(async move {
        signal.await;
        handle.stop_graceful(GRACE);
    });
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
#[cfg(unix)]
fn signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Resolves on the first Ctrl-C; never, if it cannot be listened for.
#[cfg(not(unix))]
fn signal() -> io::Result<impl Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}
