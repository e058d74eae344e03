//! The escrow WIT interfaces, one module each, implemented on [`EscrowCtx`].
//!
//! Each module checks a request against the run's grants, limits and
//! policies and records it in the context. Deferred effects are never
//! performed here: sinks dispatch them after the run, and only if it
//! succeeded. Immediate effects are performed by the embedder's handlers.

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::escrow::host;
use crate::ctx::EscrowCtx;

mod breakers;
mod effects;
mod intents;
mod locks;
mod scopes;
mod typed;

/// Adds every escrow interface (the `escrow:host/imports` world) to
/// `linker`, reading each run's [`EscrowCtx`] out of the store's data with
/// `get`.
///
/// This works for any world that includes escrow's imports: the embedder's
/// store type only has to hold an `EscrowCtx`.
///
/// # Errors
///
/// Fails if `linker` already defines one of escrow's interfaces.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut EscrowCtx,
) -> wasmtime::Result<()> {
    host::types::add_to_linker::<T, HasSelf<EscrowCtx>>(linker, get)?;
    host::intents::add_to_linker::<T, HasSelf<EscrowCtx>>(linker, get)?;
    host::scopes::add_to_linker::<T, HasSelf<EscrowCtx>>(linker, get)?;
    host::effects::add_to_linker::<T, HasSelf<EscrowCtx>>(linker, get)?;
    host::locks::add_to_linker::<T, HasSelf<EscrowCtx>>(linker, get)?;
    host::breakers::add_to_linker::<T, HasSelf<EscrowCtx>>(linker, get)?;
    Ok(())
}

impl host::types::Host for EscrowCtx {}
