//! Backends: where shared state lives (lock tables, breaker state), chosen
//! by the operator, never by the plugin.
//!
//! Each kind of state is a trait with a small surface, an in-memory
//! implementation that is the embedded default, and a Redis implementation
//! (cargo feature `redis`) for many hosts. Changing a backend never widens
//! what a plugin may do: that is the grants' job.

pub(crate) mod breakers;
mod locks;
mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use breakers::{Admission, BreakerStore, CallResult, StoreError, Transition};
pub use locks::{Lease, LockBackend, LockError};
pub(crate) use memory::LocalCircuit;
pub use memory::{MemoryBreakers, MemoryLocks};
#[cfg(feature = "redis")]
pub(crate) use redis::Store as RedisStore;
#[cfg(feature = "redis")]
pub use redis::{DEFAULT_LEASE, DEFAULT_STORE_TIMEOUT, RedisBreakers, RedisLocks};
