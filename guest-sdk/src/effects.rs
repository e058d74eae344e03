//! Immediate effects: performed now by a host handler, and undone by a
//! compensation if the run (or the scope around them) fails later.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::sys;

/// Decodes a handler's answer; an empty answer reads as JSON `null`.
fn decode<T: DeserializeOwned>(answer: &[u8]) -> Result<T, Error> {
    let answer = if answer.is_empty() {
        b"null".as_slice()
    } else {
        answer
    };
    serde_json::from_slice(answer).map_err(Error::Decode)
}

fn encode(payload: &impl Serialize) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(payload).map_err(Error::Encode)
}

/// Performs `effect` now with `payload` (as JSON) and decodes the handler's
/// answer (as JSON).
///
/// Whether it is allowed depends on how the host declared the handler: a
/// *query* under every policy, an *action* only where the policy would let
/// the effect through.
///
/// # Errors
///
/// [`Error::Refused`] when the host refused the call (nothing was done),
/// [`Error::Failed`] when the handler failed, [`Error::Encode`] /
/// [`Error::Decode`] for payloads and answers that are not the expected JSON.
pub fn invoke<T: DeserializeOwned>(
    effect: impl AsRef<str>,
    payload: &impl Serialize,
) -> Result<T, Error> {
    decode(&invoke_bytes(effect, &encode(payload)?)?)
}

/// [`invoke`] for reading: the same call, named for what it does. The host
/// decides whether the effect is a query.
///
/// # Errors
///
/// As [`invoke`].
pub fn query<T: DeserializeOwned>(
    effect: impl AsRef<str>,
    payload: &impl Serialize,
) -> Result<T, Error> {
    invoke(effect, payload)
}

/// [`invoke`] with raw bytes in and out.
///
/// # Errors
///
/// [`Error::Refused`] or [`Error::Failed`].
pub fn invoke_bytes(effect: impl AsRef<str>, payload: &[u8]) -> Result<Vec<u8>, Error> {
    sys::invoke(effect.as_ref(), payload, None)
}

/// Performs `effect` now and registers its undo: if the run, or the
/// innermost open [`scope`](crate::scope), fails later, the host performs
/// `compensate` with `compensate_payload`, undoing in reverse order.
///
/// The undo is registered whenever the handler ran, also when it failed (a
/// failed action may have partly applied); not when the host refused.
///
/// # Errors
///
/// As [`invoke`].
pub fn invoke_reversible<T: DeserializeOwned>(
    effect: impl AsRef<str>,
    payload: &impl Serialize,
    compensate: impl AsRef<str>,
    compensate_payload: &impl Serialize,
) -> Result<T, Error> {
    let undo = (compensate.as_ref(), encode(compensate_payload)?);
    let answer = sys::invoke(effect.as_ref(), &encode(payload)?, Some((undo.0, &undo.1)))?;
    decode(&answer)
}

/// Runs a saga: a sequence of steps, each an action with its undo, in a
/// nested scope. If `body` returns `Err`, the steps already taken are undone
/// now, newest first, and the error is returned; the run may go on. If it
/// returns `Ok`, the undos move to the enclosing scope, to run if the run
/// fails later.
///
/// # Errors
///
/// `body`'s error, or the refusal to open the scope.
///
/// # Examples
///
/// ```
/// # use escrow_guest::{saga, Error};
/// # fn book(trip: &str) -> Result<(), Error> {
/// saga(|s| {
///     let flight: String = s.step("flight.book", &trip, "flight.cancel")?;
///     let hotel: String = s.step("hotel.book", &trip, "hotel.cancel")?;
///     let car: String = s.step("car.book", &trip, "car.cancel")?;
///     Ok::<_, Error>((flight, hotel, car))
/// })?;
/// # Ok(()) }
/// ```
#[cfg(feature = "scopes")]
pub fn saga<T, E: From<Error>>(body: impl FnOnce(&mut Saga) -> Result<T, E>) -> Result<T, E> {
    crate::scope(|| body(&mut Saga { _private: () }))
}

/// The steps of a [`saga`].
#[cfg(feature = "scopes")]
#[derive(Debug)]
pub struct Saga {
    _private: (),
}

#[cfg(feature = "scopes")]
impl Saga {
    /// Performs `effect` with `payload`; its undo is `compensate` with the
    /// same payload (so the payload should name what to undo, such as a
    /// reference chosen by the plugin).
    ///
    /// # Errors
    ///
    /// As [`invoke`].
    pub fn step<T: DeserializeOwned>(
        &mut self,
        effect: impl AsRef<str>,
        payload: &impl Serialize,
        compensate: impl AsRef<str>,
    ) -> Result<T, Error> {
        invoke_reversible(effect, payload, compensate, payload)
    }

    /// Performs `effect` with `payload`; its undo is `compensate` with
    /// `compensate_payload`.
    ///
    /// # Errors
    ///
    /// As [`invoke`].
    pub fn step_with<T: DeserializeOwned>(
        &mut self,
        effect: impl AsRef<str>,
        payload: &impl Serialize,
        compensate: impl AsRef<str>,
        compensate_payload: &impl Serialize,
    ) -> Result<T, Error> {
        invoke_reversible(effect, payload, compensate, compensate_payload)
    }
}
