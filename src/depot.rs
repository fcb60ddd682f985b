//! [`SessionDepotExt`]: the one way handlers reach their session and flash.

use salvo::Depot;

use crate::error::{Error, Result};
use crate::flash::FlashMessages;
use crate::store::Store;

/// Access to what the [`sessioner`](crate::sessioner) middleware put in the [`Depot`].
///
/// Both methods return [`Error::MissingMiddleware`] when the middleware is not installed on
/// the route, never panic.
pub trait SessionDepotExt {
    /// This request's session.
    fn session(&self) -> Result<&Store>;

    /// This request's flash: set messages for the next request (or this response), and read
    /// what this response shows with [`FlashMessages::current`].
    fn flash_mut(&mut self) -> Result<&mut FlashMessages>;
}

/// What the middleware puts in the depot: one entry, so one insertion per request. The
/// flash holds the request's [`Store`] (it keeps its messages in the session).
#[derive(Debug)]
pub(crate) struct Entry {
    pub flash: FlashMessages,
}

impl SessionDepotExt for Depot {
    fn session(&self) -> Result<&Store> {
        self.get_typed::<Entry>()
            .map(|e| e.flash.store())
            .map_err(|_| Error::MissingMiddleware)
    }

    fn flash_mut(&mut self) -> Result<&mut FlashMessages> {
        self.get_typed_mut::<Entry>()
            .map(|e| &mut e.flash)
            .map_err(|_| Error::MissingMiddleware)
    }
}
