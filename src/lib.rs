//! # sessioner
//!
//! Server-side sessions and flash messages for [Salvo](https://salvo.rs), over pluggable
//! storage: what go-macaron's `session` middleware gave Go apps, with its bugs fixed.
//!
//! ```no_run
//! use salvo::prelude::*;
//! use sessioner::{Options, SessionDepotExt, sessioner};
//!
//! #[handler]
//! async fn counter(depot: &mut Depot) -> Result<String, sessioner::Error> {
//!     let session = depot.session()?;
//!     let n = session.get::<u64>("count").await?.unwrap_or(0) + 1;
//!     session.set("count", &n).await?;
//!     Ok(format!("visits: {n}"))
//! }
//!
//! #[tokio::main]
//! async fn main() {
//!     let router = Router::new()
//!         .hoop(sessioner(Options {
//!             provider: "file".into(),
//!             provider_config: "data/sessions".into(),
//!             ..Default::default()
//!         }))
//!         .push(Router::with_path("counter").get(counter));
//!     let acceptor = TcpListener::new("127.0.0.1:5800").bind().await;
//!     Server::new(acceptor).serve(router).await;
//! }
//! ```
//!
//! ## How it behaves
//!
//! - The session id travels in one `HttpOnly` cookie (`SameSite=Lax` by default). It is
//!   parsed strictly ([`SessionId`]) before any backend sees it; anything malformed counts as
//!   no cookie.
//! - Sessions are created lazily: a visitor who only reads gets no record and no cookie.
//!   An unknown, expired or destroyed id is never adopted; a new random id is minted instead.
//! - At the end of the request only the changed keys are written, before the response is
//!   sent: a failed save is a `500`, an unreachable backend a `503`, with no detail in the
//!   body (Salvo's generic error page); the detail goes to the `tracing` log, without ids.
//! - [`Store::regenerate_id`] and [`Store::destroy`] kill the old id at once; a slow request
//!   that loaded the session earlier cannot bring it back.
//!
//! ## Flash messages
//!
//! [`depot.flash_mut()`](SessionDepotExt::flash_mut) sets success, error, info and warning
//! messages for the next request (or, with `_now`, for this response), and
//! [`FlashMessages::current`] returns the [`Flash`] this response shows: askama templates
//! read `flash.success_msg`, serde sees macaron's `SuccessMsg`. Flashes live in the
//! server-side session, so they cannot be forged and never grow a cookie.
//!
//! ## Providers and features
//!
//! | provider | feature | `provider_config` |
//! |---|---|---|
//! | `memory` | `memory` (default) | empty, or `max_sessions=N` |
//! | `file` | `file` (default) | a directory, e.g. `data/sessions` |
//! | `sled`, alias `ledis` | `sled` (default) | a directory, e.g. `data/sessions.sled`, or `data_dir=<dir>` |
//! | `redis` | `redis` | `addr=127.0.0.1:6379,password=..,db=0,prefix=..`, or a `redis://` / `rediss://` URL (`?prefix=..`) |
//!
//! Register your own with [`register`].
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(unreachable_pub)]

mod clock;
mod depot;
mod error;
mod flash;
mod handler;
mod id;
mod options;
pub mod provider;
mod record;
mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use clock::Clock;
pub use depot::SessionDepotExt;
pub use error::{BoxError, Error, Result};
pub use flash::{Flash, FlashMessages, Level};
pub use handler::{Sessioner, sessioner, try_sessioner};
pub use id::{DEFAULT_ID_LENGTH, MAX_ID_LENGTH, MIN_ID_LENGTH, SessionId};
pub use options::{Options, SameSite};
pub use provider::{Provider, ProviderContext, Regenerated, register};
pub use record::{ChangeSet, Record};
pub use store::{SessionData, Store};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
