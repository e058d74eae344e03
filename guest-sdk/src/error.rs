//! Refusals and errors a plugin can handle.

use std::fmt;

/// Why the host refused a request. Every refusal is a value; the host never
/// traps a plugin for asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The plugin's grants do not cover the request.
    NotGranted(String),
    /// A policy forbids effects here (`assert-none`). The run will fail even
    /// if the plugin handles this.
    Forbidden(String),
    /// A limit of the run was reached. The run will fail even if the plugin
    /// handles this.
    Limit(String),
    /// The request is malformed (an invalid effect name or pattern).
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotGranted(m) => write!(f, "not granted: {m}"),
            Refusal::Forbidden(m) => write!(f, "forbidden: {m}"),
            Refusal::Limit(m) => write!(f, "limit: {m}"),
            Refusal::Invalid(m) => write!(f, "invalid: {m}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Anything an escrow call can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The host refused the request; nothing was done.
    Refused(Refusal),
    /// The handler of an immediate effect ran and failed, with its message.
    /// It may have partly applied.
    Failed(String),
    /// The payload could not be encoded as JSON.
    Encode(serde_json::Error),
    /// An answer from the host could not be decoded.
    Decode(serde_json::Error),
    /// No lock was taken.
    #[cfg(feature = "locks")]
    Lock(crate::LockError),
    /// A breaker was open: the handler was not called. A trial is let
    /// through after this long.
    #[cfg(feature = "breakers")]
    CircuitOpen(std::time::Duration),
    /// The plugin's own failure (`Error::msg`, or `?` on a `String` or
    /// `&str`): the run returns `err` with this message.
    Plugin(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(refusal) => write!(f, "refused: {refusal}"),
            Error::Failed(message) => write!(f, "failed: {message}"),
            Error::Encode(e) => write!(f, "cannot encode the payload as JSON: {e}"),
            Error::Decode(e) => write!(f, "cannot decode the host's answer: {e}"),
            #[cfg(feature = "locks")]
            Error::Lock(e) => e.fmt(f),
            #[cfg(feature = "breakers")]
            Error::CircuitOpen(retry) => write!(
                f,
                "the circuit is open; a trial in {} ms",
                retry.as_millis()
            ),
            Error::Plugin(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Refused(refusal) => Some(refusal),
            Error::Failed(_) => None,
            Error::Encode(e) | Error::Decode(e) => Some(e),
            #[cfg(feature = "locks")]
            Error::Lock(e) => Some(e),
            #[cfg(feature = "breakers")]
            Error::CircuitOpen(_) => None,
            Error::Plugin(_) => None,
        }
    }
}

#[cfg(feature = "locks")]
impl From<crate::LockError> for Error {
    fn from(error: crate::LockError) -> Self {
        Error::Lock(error)
    }
}

/// Lets `?` turn a lock error into a plugin's `String` error.
#[cfg(feature = "locks")]
impl From<crate::LockError> for String {
    fn from(error: crate::LockError) -> Self {
        error.to_string()
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Error::Refused(refusal)
    }
}

/// Lets `?` turn an escrow error into a plugin's `String` error.
impl From<Error> for String {
    fn from(error: Error) -> Self {
        error.to_string()
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Plugin(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::Plugin(message.to_owned())
    }
}

impl Error {
    /// The plugin's own failure, with `message`.
    ///
    /// ```
    /// fn check(quantity: u32) -> Result<(), escrow_guest::Error> {
    ///     if quantity == 0 {
    ///         return Err(escrow_guest::Error::msg("an order needs at least one item"));
    ///     }
    ///     Ok(())
    /// }
    /// assert_eq!(check(0).unwrap_err().to_string(), "an order needs at least one item");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        Error::Plugin(message.to_string())
    }

    /// The refusal, if the host refused the request.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}
