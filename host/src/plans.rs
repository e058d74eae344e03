//! Plans and replays: what a plugin would do, seen before it does it.
//!
//! - A [`Plan`] is a run that performed no action and dispatched nothing:
//!   its intents, the answers of its queries, and digests of the component
//!   and configuration it ran under. [`Plan::apply`] dispatches exactly its
//!   intents, once, and refuses when the plugin or configuration changed.
//! - A replay ([`Plugin::replay`](crate::Plugin::replay)) runs a plugin
//!   version on [`Recording`](crate::recording::Recording)s of real runs,
//!   answering every immediate effect, lock and breaker from the recording,
//!   and reports what it would do differently, down to the JSON fields.
//!
//! Both sit above the library: they run plugins through its public API
//! ([`RunOptions::answered_from`](crate::RunOptions::answered_from),
//! [`RunOptions::without_actions`](crate::RunOptions::without_actions),
//! [`Plugin::dispatch_committed`](crate::Plugin::dispatch_committed)) and
//! read outcomes, never a store. `docs/plans.md` and `docs/replay.md`
//! describe them as built.

mod diff;
mod plan;
mod replay;

pub use diff::{Difference, FieldChange, MAX_ALIGNED_PAIRS};
pub use plan::{Applied, DEFAULT_PLAN_LIFETIME, PLAN_VERSION, Plan, PlanError, PlannedIntent};
pub use replay::{ReplayReport, RunReplay, Verdict};
