//! escrow: a WebAssembly component host that holds a plugin's side effects in
//! escrow until its run succeeds.
//!
//! A *plugin* is a Wasm component. It cannot touch the world: each effect it
//! wants is a request through an escrow WIT import (`wit/escrow.wit`). The
//! host checks the request against the plugin's [`Grants`] (deny by
//! default) and records it as an *intent* in the run's *scope*. When the run
//! ends, the scope's [`Policy`] has decided every intent's fate: committed
//! intents are delivered to [`sinks`] in the order they were recorded, but
//! only if the guest's export returned `ok` and nothing trapped; dropped and
//! blocked intents are kept for inspection; after a failure every intent is
//! discarded. The [`Outcome`] of a run lists all of it.
//!
//! ```text
//! guest request ─▶ capability (grant, limits, policy) ─▶ scope ─▶ Outcome ─▶ sinks
//! ```
//!
//! Data flows one way: capabilities record and never dispatch; sinks never
//! see a run that failed.
//!
//! # Running a plugin
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use escrow_host::{Grants, Host, RunOptions, policy, sinks::FnSink};
//!
//! let host = Host::builder()
//!     .route("email.*", FnSink(|intent: &escrow_host::Intent| {
//!         println!("send {}", String::from_utf8_lossy(&intent.payload));
//!         Ok::<_, escrow_host::CallError>(())
//!     }))?
//!     .build()?;
//! let plugin = host.load_file("checkout.wasm")?;
//! let outcome = plugin
//!     .run(RunOptions::new()
//!         .input(br#"{"order": 7}"#)
//!         .grants(Grants::new().effects(["email.*", "payments.charge"])?)
//!         .policy(policy::Commit))
//!     .await?;
//! for intent in &outcome.intents {
//!     println!("#{} {} {}", intent.seq, intent.effect, intent.fate.name());
//! }
//! # Ok(()) }
//! ```
//!
//! # Worlds of your own
//!
//! An embedder's world may `include escrow:host/imports@0.1.0;` and export
//! its own functions. Generate its bindings with
//! `with: { "escrow:host": escrow_host::bindings::escrow::host }`, keep an
//! [`EscrowCtx`] in the store (given the host's handlers, locks and
//! breakers), link escrow with [`add_to_linker`], bound the call with
//! [`set_deadline`], then [`EscrowCtx::finish`] the run, [`Host::dispatch`]
//! its committed intents, and release the [`Settled::locks`].

pub mod answers;
pub mod backends;
pub mod bindings;
pub mod breakers;
mod capabilities;
pub mod clock;
pub mod config;
mod ctx;
pub mod document;
mod effect_kind;
mod error;
pub mod grants;
pub mod handlers;
mod host;
pub mod limits;
pub mod observe;
pub mod outbox;
mod outcome;
pub mod patterns;
pub mod plans;
mod plugin;
pub mod policy;
pub mod recording;
mod run;
mod run_id;
#[cfg(feature = "serve")]
pub mod serve;
pub mod sinks;
mod store;
pub mod text;
pub mod typed;
mod wasi_http;

pub use capabilities::add_to_linker;
pub use ctx::{EscrowCtx, HeldLocks, Settled};
pub use error::{CallError, Error};
pub use grants::Grants;
pub use host::{
    DEFAULT_MAX_CONCURRENT_RUNS, DEFAULT_SLOT, EPOCH_TICK, Host, HostBuilder, SlotSize,
};
pub use limits::Limits;
pub use outbox::Outbox;
pub use outcome::{
    BreakerDecision, BreakerVerdict, Compensation, Delivery, EffectError, Failure, Fate, Fence,
    Intent, Invocation, LockRecord, OUTCOME_SCHEMA, Outcome, Refusal, Status, Timings, bytes_json,
};
pub use plugin::Plugin;
pub use policy::Policy;
pub use run::{Committed, ConfigDigest, Dispatch, RunOptions};
pub use run_id::RunId;
pub use store::{MAX_TABLE_ELEMENTS, set_deadline};

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_and_plugins_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<crate::Host>();
        shared::<crate::Plugin>();
        shared::<crate::RunOptions>();
    }
}
