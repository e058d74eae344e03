//! Circuit breakers: immediate effects through a breaker the host defines,
//! failing fast while it is open.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Refusal};
use crate::sys;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail fast until the recovery time has passed.
    Open,
    /// A limited number of trial calls go through.
    HalfOpen,
}

/// Why a call through a breaker gave no answer.
#[derive(Debug)]
pub enum BreakerError {
    /// The breaker is open; the handler was not called. A trial is let
    /// through after `retry_after` (zero while admitted trials still run).
    CircuitOpen {
        /// Time left before a trial.
        retry_after: Duration,
    },
    /// The call went through and failed, or was refused.
    Effect(Error),
}

impl std::fmt::Display for BreakerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BreakerError::CircuitOpen { retry_after } => {
                write!(
                    f,
                    "the circuit is open; a trial in {} ms",
                    retry_after.as_millis()
                )
            }
            BreakerError::Effect(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for BreakerError {}

impl From<BreakerError> for Error {
    fn from(error: BreakerError) -> Self {
        match error {
            BreakerError::CircuitOpen { retry_after } => Error::CircuitOpen(retry_after),
            BreakerError::Effect(error) => error,
        }
    }
}

/// Lets `?` turn a breaker error into a plugin's `String` error.
impl From<BreakerError> for String {
    fn from(error: BreakerError) -> Self {
        error.to_string()
    }
}

/// A breaker the plugin was granted.
#[derive(Debug)]
pub struct Breaker(sys::BreakerHandle);

/// Opens the breaker `name` (defined by the host, and granted).
///
/// # Errors
///
/// A refusal when the grants do not cover it or the host defines no such
/// breaker.
pub fn breaker(name: impl AsRef<str>) -> Result<Breaker, Refusal> {
    sys::breaker_open(name.as_ref()).map(Breaker)
}

impl Breaker {
    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        sys::breaker_state(&self.0)
    }

    /// Performs the immediate effect `effect` with `payload` (JSON) through
    /// the breaker and decodes the answer (JSON; empty reads as `null`).
    ///
    /// # Errors
    ///
    /// [`BreakerError::CircuitOpen`] without calling the handler while the
    /// breaker is open; otherwise as [`invoke`](crate::invoke).
    pub fn invoke<T: DeserializeOwned>(
        &self,
        effect: impl AsRef<str>,
        payload: &impl Serialize,
    ) -> Result<T, BreakerError> {
        let payload =
            serde_json::to_vec(payload).map_err(|e| BreakerError::Effect(Error::Encode(e)))?;
        let answer = self.invoke_bytes(effect, &payload)?;
        let answer = if answer.is_empty() {
            b"null".to_vec()
        } else {
            answer
        };
        serde_json::from_slice(&answer).map_err(|e| BreakerError::Effect(Error::Decode(e)))
    }

    /// [`Breaker::invoke`] with raw bytes in and out.
    ///
    /// # Errors
    ///
    /// As [`Breaker::invoke`].
    pub fn invoke_bytes(
        &self,
        effect: impl AsRef<str>,
        payload: &[u8],
    ) -> Result<Vec<u8>, BreakerError> {
        sys::breaker_invoke(&self.0, effect.as_ref(), payload)
    }
}
