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

/// The depot entry: one per request, the `FlashMessages`, which holds the request's `Store`
/// (the flash keeps its messages in the session). A private type, so no handler can take it
/// out of the depot by type (`depot.scrape`) and skip the save.
pub(crate) struct Slot(pub(crate) FlashMessages);

impl SessionDepotExt for Depot {
    fn session(&self) -> Result<&Store> {
        self.get_typed::<Slot>()
            .map(|slot| slot.0.store())
            .map_err(|_| Error::MissingMiddleware)
    }

    fn flash_mut(&mut self) -> Result<&mut FlashMessages> {
        self.get_typed_mut::<Slot>()
            .map(|slot| &mut slot.0)
            .map_err(|_| Error::MissingMiddleware)
    }
}
