//! The lock backend trait: all-or-nothing acquisition of sorted keys, with a
//! fencing token per acquisition.

use std::fmt;
use std::time::Duration;

/// Why a backend gave no lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Not every key was free in time; none is held.
    #[error("timed out waiting for the locks")]
    Timeout,
    /// The backend could not be used (Redis unreachable, say); none is held.
    #[error("the lock service is unavailable: {0}")]
    Unavailable(String),
}

/// Keys held together by one acquisition.
pub struct Lease {
    /// The keys, sorted and deduplicated.
    pub keys: Vec<String>,
    /// Strictly greater than the token of every earlier acquisition of each
    /// of these keys.
    pub token: u64,
    /// Identifies the holder to the backend: only the holder can release.
    pub(crate) holder: u128,
    /// Renews the lease while it is held, where the backend needs it; stops
    /// when the lease is dropped.
    pub(crate) keepalive: Option<tokio::task::AbortHandle>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("keys", &self.keys)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
    }
}

/// Where locks live. Implementations take every key of a request or none,
/// and never let two leases hold one key at once.
#[async_trait::async_trait]
pub trait LockBackend: fmt::Debug + Send + Sync + 'static {
    /// Takes every key of `keys` (sorted, deduplicated, not empty) or none,
    /// waiting at most `timeout` for them to be free.
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] when the keys were not all free in time,
    /// [`LockError::Unavailable`] when the backend failed.
    async fn acquire(&self, keys: &[String], timeout: Duration) -> Result<Lease, LockError>;

    /// Releases `lease`. A lease that has expired and been taken by another
    /// holder is left alone: only the holder can release.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the backend failed; the lease then
    /// ends when it expires.
    async fn release(&self, lease: Lease) -> Result<(), LockError>;

    /// Takes `keys` (sorted and deduplicated) at once, without a future,
    /// when a backend that keeps its table in this process finds them free:
    /// the lease keeps them. Gives them back (the default) when they must be
    /// waited for, or asked of a server, with [`acquire`](Self::acquire).
    /// The fast path of an uncontended lock.
    fn try_acquire_now(&self, keys: Vec<String>) -> Result<Lease, Vec<String>> {
        Err(keys)
    }

    /// Releases `lease` at once, without a future, in a backend that keeps
    /// its table in this process; gives the lease back (the default) when it
    /// must be released with [`release`](Self::release).
    fn release_now(&self, lease: Lease) -> Result<(), Lease> {
        Err(lease)
    }
}
