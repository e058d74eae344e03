//! Idempotency keys of requests that run plugins (`escrow serve`'s
//! `Idempotency-Key`): the first request with a key runs; a retry of it gets
//! the first one's answer, kept in the outbox, instead of a second run.

use std::time::Duration;

/// The longest idempotency key accepted.
pub const MAX_REQUEST_KEY_BYTES: usize = 255;

/// How long a request may hold its key without answering before a retry may
/// take it over (its process died mid-run).
pub const REQUEST_CLAIM_TIMEOUT: Duration = Duration::from_secs(600);

/// A request's key: scoped to its plugin, with the sha256 of its input so
/// that a key reused for another input is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// The plugin the request runs.
    pub plugin: String,
    /// The client's key.
    pub key: String,
    /// The sha256 of the request's input, in lowercase hex.
    pub input_sha256: String,
}

/// What a key says of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestClaim {
    /// The first request with this key: it runs, and keeps its answer.
    New,
    /// A request with this key is running now.
    InProgress,
    /// A request with this key was answered: this answer.
    Done {
        /// Its HTTP status.
        status: u16,
        /// Its body.
        answer: String,
    },
    /// The key was used with another input.
    OtherInput,
}

/// Checks a client's idempotency key: at most [`MAX_REQUEST_KEY_BYTES`]
/// printable ASCII characters.
///
/// # Errors
///
/// What is wrong with it, in one line.
pub fn check_request_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_REQUEST_KEY_BYTES {
        return Err(format!(
            "an idempotency key is 1 to {MAX_REQUEST_KEY_BYTES} characters; this one is {}",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an idempotency key is printable ASCII, without spaces".into());
    }
    Ok(())
}
