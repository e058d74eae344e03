//! Write escrow plugins in Rust.
//!
//! A plugin is a function from a serde input to a serde output that requests
//! its side effects instead of performing them. Build the crate as a
//! `cdylib` for `wasm32-wasip2` and run it with `escrow run`:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Order { id: u64, email: String }
//!
//! #[derive(Serialize)]
//! struct Receipt { id: u64 }
//!
//! #[escrow_guest::plugin]
//! fn checkout(order: Order) -> Result<Receipt, escrow_guest::Error> {
//!     escrow_guest::defer("email.send", &serde_json::json!({ "to": order.email }))?;
//!     Ok(Receipt { id: order.id })
//! }
//! # fn main() {}
//! ```
//!
//! [`defer`] records an *intent*; the host dispatches it only if the run
//! returns `Ok` and nothing traps. [`invoke`] performs an immediate effect
//! through a host handler and returns its answer; [`invoke_reversible`] and
//! [`saga`] register undos that the host runs, newest first, if the run
//! fails. [`scope`] opens a nested scope whose intents are discarded, and
//! whose undos run, if it fails. [`lock`] takes locks mid-run, all or
//! nothing, in one global order. [`breaker`] opens a circuit breaker the host
//! defines; calls through it fail fast while it is open. Refusals (an effect the plugin was not
//! granted, a forbidden effect, a limit) come back as [`Refusal`] values.
//!
//! # Native mode
//!
//! On any target other than `wasm32`, the same calls record into an
//! in-memory sandbox, so plugin logic is unit-tested natively with
//! [`testing::Sandbox`]: run the function, get back the intents it would have
//! requested.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "breakers")]
mod breakers;
#[cfg(feature = "effects")]
mod effects;
mod error;
#[cfg(feature = "intents")]
mod intents;
#[cfg(feature = "locks")]
mod locks;
mod scopes;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(feature = "breakers")]
pub use breakers::{Breaker, BreakerError, BreakerState, breaker};
#[cfg(all(feature = "effects", feature = "scopes"))]
pub use effects::{Saga, saga};
#[cfg(feature = "effects")]
pub use effects::{invoke, invoke_bytes, invoke_reversible, query};
pub use error::{Error, Refusal};
/// Marks the plugin's entry point.
///
/// The function takes one argument and returns `Result<O, E>`: the input is
/// decoded from JSON (an empty input reads as `null`, or as `{}` for a struct
/// whose fields all have defaults), the output is encoded as JSON, and `E`
/// (anything `Display`) becomes the run's error. With
/// `#[plugin(bytes)]` the function takes and returns `Vec<u8>` unchanged.
///
/// Only one function per crate may carry it. On native targets it changes
/// nothing, so the function can be unit-tested directly.
pub use escrow_guest_macro::plugin;
#[cfg(feature = "intents")]
pub use intents::{PendingIntent, defer, defer_bytes, pending};
#[cfg(feature = "locks")]
pub use locks::{DEFAULT_LOCK_TIMEOUT, Guard, LockError, lock, lock_with_timeout};
pub use scopes::ScopePolicy;
#[cfg(feature = "scopes")]
pub use scopes::{Scope, scope, scope_with};

/// What the `#[plugin]` macro expands to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde::Serialize;
    pub use serde::de::DeserializeOwned;

    #[cfg(target_arch = "wasm32")]
    pub use crate::sys::bindings;
    #[cfg(target_arch = "wasm32")]
    pub use crate::sys::bindings::{Guest, export};

    /// Decodes the input, calls the plugin, encodes its output.
    pub fn call_json<I, O, E>(
        input: &[u8],
        plugin: impl FnOnce(I) -> Result<O, E>,
    ) -> Result<Vec<u8>, String>
    where
        I: DeserializeOwned,
        O: Serialize,
        E: std::fmt::Display,
    {
        let input = decode_input(input)
            .map_err(|e| format!("the input is not valid for this plugin: {e}"))?;
        // `{:#}`: an error with context (anyhow's) shows all of it.
        let output = plugin(input).map_err(|e| format!("{e:#}"))?;
        serde_json::to_vec(&output).map_err(|e| format!("cannot encode the plugin's output: {e}"))
    }

    /// Decodes the input from JSON. An empty input reads as `null`, or, for
    /// a type that does not take `null` (a struct whose fields all have
    /// defaults), as `{}`.
    fn decode_input<I: DeserializeOwned>(input: &[u8]) -> Result<I, serde_json::Error> {
        if !input.is_empty() {
            return serde_json::from_slice(input);
        }
        serde_json::from_slice(b"null")
            .or_else(|null| serde_json::from_slice(b"{}").map_err(|_| null))
    }

    /// Calls a plugin that takes and returns raw bytes.
    pub fn call_bytes<E: std::fmt::Display>(
        input: &[u8],
        plugin: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, E>,
    ) -> Result<Vec<u8>, String> {
        plugin(input.to_vec()).map_err(|e| format!("{e:#}"))
    }

    /// Checks, at a plugin's return type, that it is a `Result` whose error
    /// displays (for `Result` aliases, whose error type the macro cannot
    /// see).
    pub fn check_result<T, E: std::fmt::Display>(_: std::marker::PhantomData<Result<T, E>>) {}
}
