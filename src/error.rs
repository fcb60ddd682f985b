//! The crate's single error type.

use salvo::http::StatusCode;
use salvo::{Depot, Request, Response, Writer, async_trait};

/// A boxed error from a backend or a codec, kept as the `source()` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in sessioner.
///
/// Configuration variants come from [`Options::build`](crate::Options::build) and
/// [`try_sessioner`](crate::try_sessioner); the others can happen while a request runs.
/// Used as a Salvo [`Writer`], an error becomes a `503` (backend unavailable, capacity
/// reached) or `500` (everything else) with no body of its own (Salvo's catcher may render
/// its generic error page): no backend detail reaches the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `Options.provider` names no registered provider.
    #[error("unknown session provider `{0}`")]
    UnknownProvider(String),
    /// `register` was called twice with the same name.
    #[error("a session provider named `{0}` is already registered")]
    DuplicateProvider(String),
    /// An option has a value sessioner cannot use.
    #[error("invalid session option {option}: {reason}")]
    InvalidOption {
        /// The option's name (macaron's key, e.g. `COOKIE_NAME`).
        option: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A provider could not make sense of `Options.provider_config`, or could not open its store.
    #[error("session provider `{provider}` rejected its configuration: {reason}")]
    ProviderConfig {
        /// The provider's registered name.
        provider: String,
        /// Why the configuration was rejected.
        reason: String,
    },
    /// A string given as a session id is not one (wrong length or alphabet).
    #[error("invalid session id")]
    InvalidSessionId,
    /// A session key is reserved for sessioner's own use (it starts with `__sessioner`).
    #[error("session key `{0}` is reserved")]
    ReservedKey(String),
    /// A value could not be serialized into the session.
    #[error("cannot serialize session value `{key}`")]
    Serialize {
        /// The key being set.
        key: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value does not deserialize into the requested type.
    #[error("cannot deserialize session value `{key}`")]
    Deserialize {
        /// The key being read.
        key: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored record is damaged. The record is removed and the visitor starts afresh.
    #[error("corrupt session record")]
    Corrupt(#[source] BoxError),
    /// The backend cannot be reached or did not answer in time. Maps to `503`.
    #[error("session backend `{provider}` unavailable")]
    Unavailable {
        /// The provider's name.
        provider: &'static str,
        /// What the backend or the timeout said.
        #[source]
        source: BoxError,
    },
    /// The backend answered with an error.
    #[error("session backend `{provider}` failed")]
    Backend {
        /// The provider's name.
        provider: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The memory provider is full of live sessions and cannot create another. Maps to `503`.
    #[error("session store is full")]
    CapacityExceeded,
    /// The operating system's random number generator failed; no weaker fallback is used.
    #[error("the OS random number generator failed")]
    Random(#[source] BoxError),
    /// The request's session middleware is missing: `sessioner(..)` is not among its hoops.
    #[error("no session in the depot: add `sessioner(..)` with `Router::hoop`")]
    MissingMiddleware,
    /// Every freshly generated id was already taken (a provider answered `create` or
    /// `regenerate` with a collision several times in a row; 128-bit ids never collide, so
    /// this points at a broken provider or a broken random number generator).
    #[error("no free session id after {attempts} attempts")]
    IdCollision {
        /// How many ids were tried.
        attempts: usize,
    },
    /// The [`Store`](crate::Store) was used after the middleware had released it: the response
    /// is on its way, so a change made now could reach neither the backend nor the cookie.
    /// Finish session work before the handler returns, or write through
    /// [`Sessioner::provider`](crate::Sessioner::provider) with the id read earlier.
    #[error("the session was used after the response was released")]
    Released,
    /// The backend cannot do this operation at all (memcached cannot list its keys, so it
    /// cannot `count`). Maps to `500`.
    #[error("session backend `{provider}` does not support {operation}")]
    Unsupported {
        /// The provider's name.
        provider: &'static str,
        /// What was asked, e.g. `"count"`.
        operation: &'static str,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::Unavailable { .. } | Error::CapacityExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// [`Error::Backend`]: backend `provider` answered with an error (a `500`).
    pub fn backend(provider: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            provider,
            source: source.into(),
        }
    }

    /// [`Error::Unavailable`]: backend `provider` cannot be reached or timed out (a `503`; the
    /// visitor keeps the cookie and the app recovers when the backend returns).
    pub fn unavailable(provider: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            provider,
            source: source.into(),
        }
    }

    /// [`Error::Unsupported`]: backend `provider` cannot do `operation` at all.
    pub fn unsupported(provider: &'static str, operation: &'static str) -> Self {
        Error::Unsupported {
            provider,
            operation,
        }
    }

    /// [`Error::Corrupt`]: a stored record does not decode. Returned from
    /// [`Provider::load`](crate::Provider::load), it makes the middleware remove the record
    /// and start the visitor afresh.
    pub fn corrupt(source: impl Into<BoxError>) -> Self {
        Error::Corrupt(source.into())
    }

    /// [`Error::ProviderConfig`]: provider `provider` rejects its configuration. Name the part
    /// that is wrong in `reason`, and never echo a password.
    pub fn provider_config(provider: &str, reason: impl std::fmt::Display) -> Self {
        Error::ProviderConfig {
            provider: provider.to_owned(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            option,
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl Writer for Error {
    /// Answers with [`Error::status_code`] and no body of its own; the detail goes to the log only.
    async fn write(self, _req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        tracing::warn!(error = %self, "session error answered with {}", self.status_code());
        res.status_code(self.status_code());
        res.body(salvo::http::ResBody::None);
    }
}
