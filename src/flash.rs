//! Flash messages: one per level, shown exactly once, kept inside the server-side session.
//!
//! Storage: the outgoing flash is written into the visitor's session record under a reserved
//! key, so it is as tamper-proof as the session itself (nothing to sign, no key to manage,
//! no cookie to outgrow 4 KB). A visitor without a session who is sent a flash gets one.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::Store;

/// The session key the outgoing flash is stored under.
pub(crate) const FLASH_KEY: &str = "__sessioner.flash";

/// The four messages a page can show, as macaron's `session.Flash`.
///
/// Askama templates read `flash.success_msg` and friends (empty when unset). Serialized, the
/// fields carry macaron's names, so a serde-driven engine or a JSON API reads
/// `Flash.SuccessMsg` exactly as macaron's templates did:
///
/// ```
/// let flash = sessioner::Flash { success_msg: "Saved".into(), ..Default::default() };
/// let json = serde_json::to_string(&flash).unwrap();
/// assert_eq!(json, r#"{"SuccessMsg":"Saved","ErrorMsg":"","InfoMsg":"","WarningMsg":""}"#);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Flash {
    /// Success message (`SuccessMsg`).
    pub success_msg: String,
    /// Error message (`ErrorMsg`).
    pub error_msg: String,
    /// Information message (`InfoMsg`).
    pub info_msg: String,
    /// Warning message (`WarningMsg`).
    pub warning_msg: String,
}

/// A flash level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `SuccessMsg`.
    Success,
    /// `ErrorMsg`.
    Error,
    /// `InfoMsg`.
    Info,
    /// `WarningMsg`.
    Warning,
}

impl Flash {
    /// True when no level holds a message.
    pub fn is_empty(&self) -> bool {
        self.success_msg.is_empty()
            && self.error_msg.is_empty()
            && self.info_msg.is_empty()
            && self.warning_msg.is_empty()
    }

    /// The message slot of `level`.
    #[doc(hidden)]
    pub fn slot(&mut self, level: Level) -> &mut String {
        match level {
            Level::Success => &mut self.success_msg,
            Level::Error => &mut self.error_msg,
            Level::Info => &mut self.info_msg,
            Level::Warning => &mut self.warning_msg,
        }
    }

    /// Encodes the flash as it is stored in the session (JSON with macaron's names).
    #[doc(hidden)]
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a stored flash; `None` when it is damaged, so a bad flash shows nothing.
    #[doc(hidden)]
    pub fn decode(raw: &str) -> Option<Flash> {
        serde_json::from_str(raw).ok()
    }

    /// Copies every non-empty message of `other` over this one.
    fn overlay(&mut self, other: &Flash) {
        for (mine, theirs) in [
            (&mut self.success_msg, &other.success_msg),
            (&mut self.error_msg, &other.error_msg),
            (&mut self.info_msg, &other.info_msg),
            (&mut self.warning_msg, &other.warning_msg),
        ] {
            if !theirs.is_empty() {
                mine.clone_from(theirs);
            }
        }
    }
}

/// This request's flash: setters for the next request (or, with `_now`, for this response),
/// and [`current`](FlashMessages::current) for what this response shows.
///
/// Reach it with [`depot.flash_mut()`](crate::SessionDepotExt::flash_mut); setting a level
/// again replaces its message, as macaron.
///
/// ```no_run
/// use salvo::prelude::*;
/// use sessioner::SessionDepotExt;
///
/// #[handler]
/// async fn save(depot: &mut Depot, res: &mut Response) -> Result<(), sessioner::Error> {
///     depot.flash_mut()?.success("Saved.");
///     res.render(Redirect::other("/"));
///     Ok(())
/// }
///
/// #[handler]
/// async fn home(depot: &mut Depot) -> Result<String, sessioner::Error> {
///     let flash = depot.flash_mut()?.current().await?;
///     Ok(flash.success_msg)
/// }
/// ```
#[derive(Debug)]
pub struct FlashMessages {
    store: Store,
    /// Allocated on first use: most requests never touch the flash.
    state: Option<Box<State>>,
    /// The middleware took the outgoing flash: later messages can reach no one.
    released: bool,
}

#[derive(Debug, Default)]
struct State {
    next: Flash,
    now: Flash,
    /// The incoming flash, once read (and so consumed).
    incoming: Option<Flash>,
}

impl FlashMessages {
    pub(crate) fn new(store: Store) -> Self {
        FlashMessages {
            store,
            state: None,
            released: false,
        }
    }

    /// The session the flash lives in.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    fn state(&mut self) -> &mut State {
        self.state.get_or_insert_with(Box::default)
    }

    /// Sets `level`'s message, for the next request, or for this response when `now`
    /// (macaron's `current` flag). `now` messages are never stored.
    ///
    /// Set after the middleware released the request (from an outer hoop, after the
    /// response), a message reaches no one: it is dropped and logged at error level.
    pub fn set(&mut self, level: Level, message: impl Into<String>, now: bool) -> &mut Self {
        if self.released {
            tracing::error!(
                ?level,
                "flash message set after the session was released; dropped"
            );
            return self;
        }
        let state = self.state();
        *(if now { &mut state.now } else { &mut state.next }).slot(level) = message.into();
        self
    }

    /// A success message for the next request.
    pub fn success(&mut self, message: impl Into<String>) -> &mut Self {
        self.set(Level::Success, message, false)
    }
    /// An error message for the next request.
    pub fn error(&mut self, message: impl Into<String>) -> &mut Self {
        self.set(Level::Error, message, false)
    }
    /// An information message for the next request.
    pub fn info(&mut self, message: impl Into<String>) -> &mut Self {
        self.set(Level::Info, message, false)
    }
    /// A warning message for the next request.
    pub fn warning(&mut self, message: impl Into<String>) -> &mut Self {
        self.set(Level::Warning, message, false)
    }
    /// A success message for this response only.
    pub fn success_now(&mut self, message: impl Into<String>) -> &mut Self {
        self.set(Level::Success, message, true)
    }
    /// An error message for this response only.
    pub fn error_now(&mut self, message: impl Into<String>) -> &mut Self {
        self.set(Level::Error, message, true)
    }
    /// An information message for this response only.
    pub fn info_now(&mut self, message: impl Into<String>) -> &mut Self {
        self.set(Level::Info, message, true)
    }
    /// A warning message for this response only.
    pub fn warning_now(&mut self, message: impl Into<String>) -> &mut Self {
        self.set(Level::Warning, message, true)
    }

    /// What this response shows: the flash the previous request left, overlaid by this
    /// request's `_now` messages. Reading consumes the stored flash: it is shown exactly once.
    pub async fn current(&mut self) -> Result<Flash> {
        let mut flash = match self.state.as_ref().and_then(|s| s.incoming.clone()) {
            Some(f) => f,
            None => {
                let incoming = match self.store.get_raw(FLASH_KEY).await? {
                    Some(raw) => {
                        self.store.delete_raw(FLASH_KEY).await?;
                        // A stored flash that does not decode shows nothing (fail closed).
                        Flash::decode(&raw).unwrap_or_default()
                    }
                    None => Flash::default(),
                };
                self.state().incoming.insert(incoming).clone()
            }
        };
        flash.overlay(&self.state().now);
        Ok(flash)
    }

    /// Takes the outgoing flash, after which setters only log; empty when no message was set
    /// for the next request.
    pub(crate) fn release(&mut self) -> Flash {
        self.released = true;
        self.state
            .as_mut()
            .map(|s| std::mem::take(&mut s.next))
            .unwrap_or_default()
    }
}

/// Stores an outgoing flash in the session, merged over any flash nobody read yet.
pub(crate) async fn store_next(store: &Store, next: Flash) -> Result<()> {
    let mut stored = match store.get_raw(FLASH_KEY).await? {
        Some(raw) => Flash::decode(&raw).unwrap_or_default(),
        None => Flash::default(),
    };
    stored.overlay(&next);
    store.set_raw(FLASH_KEY, stored.encode()).await
}
