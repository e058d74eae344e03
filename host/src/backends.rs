//! Backends: where shared state lives (lock tables, and later breaker
//! state), chosen by the operator, never by the plugin.
//!
//! Each kind of state is a trait with a small surface, an in-memory
//! implementation that is the embedded default, and a Redis implementation
//! (cargo feature `redis`) for many hosts. Changing a backend never widens
//! what a plugin may do: that is the grants' job.

mod locks;
mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use locks::{Lease, LockBackend, LockError};
pub use memory::MemoryLocks;
#[cfg(feature = "redis")]
pub use redis::RedisLocks;
