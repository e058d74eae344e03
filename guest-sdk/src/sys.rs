//! The escrow imports: the host's on `wasm32`, an in-memory sandbox anywhere
//! else. Both offer the same functions.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native;
#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::*;
#[cfg(target_arch = "wasm32")]
pub use wasm::bindings;
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::*;
