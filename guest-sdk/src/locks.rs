//! Locks taken mid-run: all or nothing, in one global order, released when
//! the guard drops or, if kept, after the run.

use std::time::Duration;

use crate::error::Refusal;
use crate::sys;

/// How long [`lock`] waits for its keys.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no lock was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// The host refused: a key outside the grants, a malformed key, too many
    /// keys.
    Refused(Refusal),
    /// Not every key could be taken in time; none is held.
    Timeout,
    /// The run holds a key ordered at or after one it asked for. Take locks
    /// in key order, or all at once.
    WouldDeadlock(String),
    /// The lock service could not be reached; none is held.
    Unavailable(String),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Refused(refusal) => write!(f, "lock refused: {refusal}"),
            LockError::Timeout => f.write_str("timed out waiting for the locks"),
            LockError::WouldDeadlock(why) => write!(f, "would deadlock: {why}"),
            LockError::Unavailable(why) => write!(f, "the lock service is unavailable: {why}"),
        }
    }
}

impl std::error::Error for LockError {}

/// Locks held together. Dropping it releases them; [`Guard::keep`] holds
/// them until the run ends instead.
#[derive(Debug)]
#[must_use = "a guard that is dropped at once releases its locks at once"]
pub struct Guard(sys::GuardHandle);

impl Guard {
    /// The keys held, sorted and deduplicated.
    pub fn keys(&self) -> Vec<String> {
        sys::guard_keys(&self.0)
    }

    /// The fencing token of this acquisition: strictly greater than that of
    /// every earlier acquisition of each key. Send it along with writes so
    /// that a store can reject a stale holder.
    pub fn fencing_token(&self) -> u64 {
        sys::guard_token(&self.0)
    }

    /// Holds the locks until the run has ended and its committed intents
    /// were dispatched, so that the deferred effects they protect are
    /// applied before another run can take the same keys.
    pub fn keep(self) {
        sys::guard_keep(self.0);
    }
}

/// Takes every key in `keys` (sorted and deduplicated by the host), waiting
/// up to [`DEFAULT_LOCK_TIMEOUT`].
///
/// # Errors
///
/// See [`LockError`].
pub fn lock<I, S>(keys: I) -> Result<Guard, LockError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    lock_with_timeout(keys, DEFAULT_LOCK_TIMEOUT)
}

/// Takes every key in `keys`, waiting up to `timeout`.
///
/// # Errors
///
/// See [`LockError`].
pub fn lock_with_timeout<I, S>(keys: I, timeout: Duration) -> Result<Guard, LockError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    sys::acquire(&keys, timeout_ms).map(Guard)
}
