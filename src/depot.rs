//! [`SessionDepotExt`]: the one way handlers reach their session.

use salvo::Depot;

use crate::error::{Error, Result};
use crate::store::Store;

/// Access to the session the [`sessioner`](crate::sessioner) middleware put in the [`Depot`].
pub trait SessionDepotExt {
    /// This request's session; [`Error::MissingMiddleware`] when the middleware is not
    /// installed on the route.
    fn session(&self) -> Result<&Store>;
}

impl SessionDepotExt for Depot {
    fn session(&self) -> Result<&Store> {
        self.get_typed::<Store>()
            .map_err(|_| Error::MissingMiddleware)
    }
}
