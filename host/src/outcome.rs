//! What a run returns to the embedder: the guest's result, every intent with
//! its fate and the rule that decided it, dispatch results and timings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use crate::backends::{CallResult, Transition};
pub use crate::bindings::escrow::host::effects::EffectError;
pub use crate::bindings::escrow::host::types::Refusal;
use crate::effect_kind::EffectKind;
use crate::limits::Limit;

mod json;

pub(crate) use json::fences_value;
pub use json::{OUTCOME_SCHEMA, bytes_json};

use crate::run_id::RunId;

/// What a run returned.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run's identity; every intent's idempotency key derives from it.
    pub run_id: RunId,
    /// The plugin's name (its file name, or what the embedder called it).
    pub plugin: Arc<str>,
    /// The sha256 of the component that ran, when it was loaded from its
    /// bytes: which version of the plugin this outcome is of.
    pub component_sha256: Option<Arc<str>>,
    /// The guest's output if the run succeeded, otherwise why it failed.
    pub result: Result<Vec<u8>, Failure>,
    /// Every deferred effect the run requested, in request order, with its
    /// fate.
    pub intents: Vec<Intent>,
    /// Every immediate effect the run requested, in request order, with the
    /// handler's answer or why there was none. Sequence numbers are shared
    /// with [`Outcome::intents`], so together they give the order of events.
    pub invocations: Vec<Invocation>,
    /// The locks the run took, in the order it took them.
    pub locks: Vec<LockRecord>,
    /// Every call through a breaker, in request order: let through or
    /// rejected, how it counted, and the state changes it caused.
    pub breakers: Vec<BreakerDecision>,
    /// The compensations the host ran, in the order it ran them: those of
    /// nested scopes that rolled back during the run, then, if the run
    /// failed, the rest in reverse order of registration.
    pub compensations: Vec<Compensation>,
    /// What the guest wrote to stderr (a panic message, say), at most
    /// [`MAX_GUEST_STDERR_BYTES`](crate::limits::MAX_GUEST_STDERR_BYTES).
    pub guest_stderr: Vec<u8>,
    /// Where the run's time went.
    pub timings: Timings,
}

impl Timings {
    /// The whole run.
    pub fn total(&self) -> Duration {
        self.instantiate + self.call + self.settle + self.dispatch
    }
}

impl Outcome {
    /// How the run ended, in one word.
    pub fn status(&self) -> Status {
        if self.result.is_err() {
            return Status::Failed;
        }
        if self
            .intents
            .iter()
            .any(|i| i.fate == Fate::Dispatched(Delivery::Held))
        {
            return Status::Held;
        }
        let withheld = |i: &Intent| matches!(i.fate, Fate::Dropped);
        let released = |i: &Intent| matches!(i.fate, Fate::Committed | Fate::Dispatched(_));
        if self.intents.iter().any(withheld) && !self.intents.iter().any(released) {
            Status::Dropped
        } else {
            Status::Committed
        }
    }

    /// The guest's output decoded from JSON: `None` when the run failed.
    ///
    /// # Errors
    ///
    /// When the output is not JSON of type `T`.
    pub fn output<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, serde_json::Error>> {
        self.result
            .as_ref()
            .ok()
            .map(|output| serde_json::from_slice(output))
    }

    /// Whether a compensation failed: the undo of the run, or of one of its
    /// scopes, is incomplete and needs attention.
    pub fn rollback_incomplete(&self) -> bool {
        self.compensations.iter().any(|c| c.result.is_err())
    }

    /// The intents that were handed to a sink, in dispatch order.
    pub fn dispatched(&self) -> impl Iterator<Item = &Intent> {
        self.intents
            .iter()
            .filter(|i| matches!(i.fate, Fate::Dispatched(_)))
    }

    /// The intents a sink failed to deliver, or that had no sink. Intents
    /// [`Delivery::Queued`] in the outbox are not among them.
    pub fn undelivered(&self) -> impl Iterator<Item = &Intent> {
        self.dispatched().filter(|i| {
            !matches!(
                i.fate,
                Fate::Dispatched(Delivery::Delivered | Delivery::Queued | Delivery::Held)
            )
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The run succeeded; its committed intents were dispatched.
    Committed,
    /// The run succeeded and its policy dropped what it requested: nothing was
    /// dispatched.
    Dropped,
    /// The run succeeded and its intents wait in the outbox for approval.
    Held,
    /// The run failed; every intent was discarded.
    Failed,
}

impl Status {
    /// `committed`, `dropped`, `held` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Committed => "committed",
            Status::Dropped => "dropped",
            Status::Held => "held",
            Status::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One effect request of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The run that recorded it.
    pub run_id: RunId,
    /// The plugin that recorded it.
    pub plugin: Arc<str>,
    /// The request's sequence number within the run, from 1.
    pub seq: u64,
    /// The effect's name.
    pub effect: String,
    /// The payload exactly as the guest passed it.
    pub payload: Vec<u8>,
    /// What became of it.
    pub fate: Fate,
    /// The rule that decided the fate: the grant that allowed it, the policy
    /// that withheld it, or why it was discarded. Shared between the intents
    /// a rule decided.
    pub rule: Arc<str>,
    /// The locks the run held when it recorded the intent, with their
    /// fencing tokens: a sink can reject work from a stale holder.
    pub fences: Arc<[Fence]>,
}

impl Intent {
    /// `{run_id}:{seq}`: the same on every retry and redelivery of this
    /// intent, so that a consumer can deliver it at most once.
    pub fn idempotency_key(&self) -> String {
        self.run_id.idempotency_key(self.seq)
    }
}

/// One lock key held, and the fencing token of its acquisition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lock key.
    pub key: String,
    /// The fencing token.
    pub token: u64,
}

/// One call through a breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerDecision {
    /// The request's sequence number.
    pub seq: u64,
    /// The breaker.
    pub breaker: Arc<str>,
    /// The immediate effect called through it.
    pub effect: String,
    /// What the breaker did with the call.
    pub verdict: BreakerVerdict,
    /// The state changes the call caused, in order.
    pub transitions: Vec<Transition>,
}

/// What a breaker did with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerVerdict {
    /// Refused before the breaker was asked: the breaker could not be opened
    /// (not granted, not defined, a malformed name; `effect` is then empty),
    /// or the call's effect name was malformed. The guest got this refusal.
    Refused(Refusal),
    /// Let through (as a trial when half-open); how its result counted.
    Allowed {
        /// Whether it was a half-open trial.
        trial: bool,
        /// How the call's result counted.
        counted: CallResult,
    },
    /// Failed fast; the handler was not called.
    Rejected {
        /// Milliseconds before a trial is let through.
        retry_after_ms: u64,
    },
}

/// One lock request of a run, granted or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// The keys: sorted and deduplicated when granted; as asked (at most
    /// `max_locks` of them, each cut to
    /// [`MAX_LOCK_KEY_BYTES`](crate::limits::MAX_LOCK_KEY_BYTES)) when not.
    pub keys: Vec<String>,
    /// The fencing token of the acquisition, or why no lock was given (what
    /// the guest was told).
    pub result: Result<u64, String>,
}

impl LockRecord {
    /// The fencing token, if the locks were given.
    pub fn token(&self) -> Option<u64> {
        self.result.as_ref().ok().copied()
    }
}

/// What became of an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Committed and waiting to be dispatched. Only seen by an embedder that
    /// settles a run without dispatching it; [`Plugin::run`](crate::plugin::Plugin::run)
    /// dispatches every committed intent.
    Committed,
    /// Handed to a sink after the run succeeded, with the sink's answer.
    Dispatched(Delivery),
    /// Kept for inspection and never dispatched (policy `drop`).
    Dropped,
    /// Kept visible and never dispatched (policy `block`).
    Blocked,
    /// Refused when requested; the guest got this refusal.
    Refused(Refusal),
    /// Thrown away because the run failed or its nested scope rolled back.
    Discarded,
}

impl Fate {
    /// Whether the intent was accepted and is still waiting for the run's end.
    pub(crate) fn is_held(&self) -> bool {
        matches!(self, Fate::Committed | Fate::Dropped | Fate::Blocked)
    }

    /// The fate's name: `committed`, `dispatched`, `dropped`, `blocked`,
    /// `refused` or `discarded`.
    pub fn name(&self) -> &'static str {
        match self {
            Fate::Committed => "committed",
            Fate::Dispatched(_) => "dispatched",
            Fate::Dropped => "dropped",
            Fate::Blocked => "blocked",
            Fate::Refused(_) => "refused",
            Fate::Discarded => "discarded",
        }
    }
}

/// A sink's answer for one dispatched intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The sink accepted the intent.
    Delivered,
    /// The sink failed; the message says why.
    Failed(String),
    /// No sink route matches the effect.
    NoSink,
    /// The route's breaker is open: delivery was not attempted, and the
    /// intent is ready to be retried later. The message says until when.
    NotAttempted(String),
    /// Stored in the durable outbox and not attempted yet: a delivery worker
    /// delivers it (after the run's earlier intents, where one of them must
    /// be retried first).
    Queued,
    /// Stored in the durable outbox, held for approval: delivered once the
    /// run is approved, never if it is rejected.
    Held,
}

/// One immediate effect the run requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The request's sequence number within the run (shared with intents).
    pub seq: u64,
    /// The effect's name.
    pub effect: String,
    /// The payload exactly as the guest passed it.
    pub payload: Vec<u8>,
    /// The kind of the handler, if one is registered for the effect.
    pub kind: Option<EffectKind>,
    /// The handler's answer, or why there is none.
    pub result: Result<Vec<u8>, EffectError>,
    /// The compensating effect registered with the call, if it was
    /// `invoke-reversible` and the handler was called.
    pub compensation: Option<String>,
}

/// A compensation the host ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compensation {
    /// The sequence number of the call it undoes.
    pub seq: u64,
    /// The compensating effect.
    pub effect: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Why it ran: a nested scope's rollback, or the run's failure.
    pub cause: Arc<str>,
    /// The handler's answer, or its failure.
    pub result: Result<Vec<u8>, String>,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The export returned `err` with this message.
    GuestError(String),
    /// The guest trapped (a panic, an `unreachable`, a bad memory access).
    Trap(String),
    /// The run exceeded one of its limits.
    Limit(Limit),
    /// The run succeeded but its committed intents could not be made durable
    /// in the outbox; nothing of it is delivered (unless the message says the
    /// commit is in doubt: see `docs/delivery.md`).
    Outbox(String),
    /// The guest requested an effect where a policy forbids effects; the run
    /// fails even if the guest handled the refusal.
    Forbidden {
        /// The effect requested.
        effect: String,
        /// The rule that forbade it.
        rule: String,
    },
    /// The run was answered from recorded [`Answers`](crate::answers::Answers)
    /// and asked something they do not hold: the message says which request
    /// and what the recording has instead.
    Diverged(String),
    /// A typed effect whose signature has no error channel was refused,
    /// failed, or was answered with a value its result type cannot hold.
    TypedEffect {
        /// The effect.
        effect: String,
        /// What happened.
        reason: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::GuestError(message) => write!(f, "the plugin returned an error: {message}"),
            Failure::Trap(message) => write!(f, "the plugin trapped: {message}"),
            Failure::Limit(limit) => write!(f, "the run exceeded its {limit} limit"),
            Failure::Outbox(message) => write!(f, "outbox: {message}"),
            Failure::Forbidden { effect, rule } => {
                write!(
                    f,
                    "the plugin requested `{effect}` where {rule} forbids effects"
                )
            }
            Failure::TypedEffect { effect, reason } => write!(f, "`{effect}`: {reason}"),
            Failure::Diverged(message) => f.write_str(message),
        }
    }
}

impl Refusal {
    /// What was refused and why.
    pub fn message(&self) -> &str {
        match self {
            Refusal::NotGranted(m)
            | Refusal::Forbidden(m)
            | Refusal::Limit(m)
            | Refusal::Invalid(m) => m,
        }
    }

    /// The variant's WIT name: `not-granted`, `forbidden`, `limit` or `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NotGranted(_) => "not-granted",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Limit(_) => "limit",
            Refusal::Invalid(_) => "invalid",
        }
    }
}

/// Where a run's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Creating the store and instantiating the component.
    pub instantiate: Duration,
    /// The export call, host calls included.
    pub call: Duration,
    /// Tearing down the instance, running compensations and settling every
    /// intent's fate.
    pub settle: Duration,
    /// Delivering committed intents to sinks.
    pub dispatch: Duration,
}
