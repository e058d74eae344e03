//! Deferred effects: recorded now, dispatched by the host after the run
//! succeeds.

use serde::Serialize;

use crate::error::Error;
use crate::sys;

/// Requests `effect` with `payload` encoded as JSON, to be performed once
/// the run has succeeded. Returns the request's sequence number.
///
/// Nothing happens now. If the run fails, or the [`scope`](crate::scope) around
/// this call rolls back, the intent is discarded.
///
/// # Errors
///
/// [`Error::Refused`] when the host refuses (not granted, forbidden, a
/// limit, a malformed name); [`Error::Encode`] when the payload cannot be
/// encoded.
pub fn defer(effect: impl AsRef<str>, payload: &impl Serialize) -> Result<u64, Error> {
    let payload = serde_json::to_vec(payload).map_err(Error::Encode)?;
    defer_bytes(effect, &payload)
}

/// Like [`defer`], with a payload of raw bytes passed on unchanged.
///
/// # Errors
///
/// [`Error::Refused`] when the host refuses.
pub fn defer_bytes(effect: impl AsRef<str>, payload: &[u8]) -> Result<u64, Error> {
    sys::enqueue(effect.as_ref(), payload).map_err(Error::Refused)
}

/// An intent the run has recorded and not discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIntent {
    /// Its sequence number within the run.
    pub seq: u64,
    /// The effect's name.
    pub effect: String,
    /// The payload as recorded.
    pub payload: Vec<u8>,
}

impl PendingIntent {
    /// Decodes the payload from JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the payload is not that type's JSON.
    pub fn payload_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.payload).map_err(Error::Decode)
    }
}

/// The intents recorded so far and not discarded, in order, including those
/// inside scopes that are still open.
pub fn pending() -> Vec<PendingIntent> {
    sys::pending()
}
