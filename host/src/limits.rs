//! Per-run limits: every bound on what a guest can make the host do.
//!
//! Each limit is a named constant with its default here, so the security
//! decisions are reviewable in one place. Exceeding any of them fails the run
//! cleanly: the guest is told (a `limit` refusal) or stopped (a trap), and
//! nothing it recorded is dispatched.

use std::time::{Duration, Instant};

/// Default wall-clock deadline of a run. A guest still running after it is
/// stopped, so a plugin in an infinite loop costs at most this much time.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Default cap on a run's linear memory (64 MiB), enforced on every
/// `memory.grow`: a plugin cannot exhaust the host's memory.
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 64 << 20;

/// Default maximum number of effect requests per run (refused ones count): a
/// loop that enqueues forever fails the run instead of growing the host's
/// record without bound.
pub const DEFAULT_MAX_INTENTS: usize = 1_000;

/// Default maximum size of one intent's payload (1 MiB).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Default maximum of all payload bytes a run may record (16 MiB). Payloads
/// are copied out of the guest, so without this bound a run could hold
/// `max_intents * max_payload_bytes` of host memory.
pub const DEFAULT_MAX_TOTAL_PAYLOAD_BYTES: usize = 16 << 20;

/// Default maximum depth of nested scopes (the run's own scope not counted).
pub const DEFAULT_MAX_SCOPE_DEPTH: usize = 32;

/// Default maximum of lock keys a run holds at once (one request counts all
/// its keys).
pub const DEFAULT_MAX_LOCKS: usize = 16;

/// Default maximum of lock acquisitions a run may ask for, granted or
/// refused: each is recorded for the outcome, so a guest that takes and drops
/// a lock in a loop cannot grow the host's record without bound.
pub const DEFAULT_MAX_LOCK_ACQUISITIONS: usize = 1_000;

/// Default time a failed run's compensations may take, all together, after
/// the guest stopped. What is left when it runs out is reported failed (and
/// stays owed in the outbox, if there is one).
pub const DEFAULT_COMPENSATION_BUDGET: Duration = Duration::from_secs(10);

/// How long after its deadline a run blocked in a host call (a WASI sleep or
/// poll, a store round trip) is cut off. Escrow's own waits end at the
/// deadline and record what they did; the grace lets them.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// Most bytes one host call may copy out of the guest (its arguments: an
/// effect name, a payload, a list of lock keys), set on every run's store.
/// A call past it traps and the run fails; escrow's own payload limits
/// refuse far smaller payloads first, so a well-behaved guest never meets
/// it. (wasmtime's default, made explicit.)
pub const MAX_HOST_CALL_COPY_BYTES: usize = 128 << 20;

/// Most component-model handles (resources: scopes, lock guards, breakers,
/// WASI streams) a run may hold at once, set on every run's store. Creating
/// one more traps and the run fails. (wasmtime's default, made explicit.)
pub const MAX_RESOURCE_HANDLES: usize = 100_000;

/// Most bytes (as wasmtime counts them: names, values and their overhead)
/// one `wasi:http` header or trailer set may hold, as HTTP proxies bound
/// headers. Every outgoing request is refused, so a guest needs no more;
/// past it wasmtime's `wasi:http` traps and the run fails. With at most
/// [`MAX_RESOURCE_HANDLES`] sets, this bounds what a guest's headers make
/// the host keep.
pub const MAX_HTTP_FIELDS_BYTES: usize = 8 << 10;

/// Most bytes of an outgoing `wasi:http` body the host buffers per write
/// (one write is buffered). The request is refused, so the body is never
/// read: a guest writing more waits until its deadline.
pub const MAX_HTTP_BODY_CHUNK_BYTES: usize = 8 << 10;

/// Longest effect name the host accepts, in bytes. Effect names are
/// identifiers (`payments.charge`), not data; a longer one is `invalid`.
pub const MAX_EFFECT_NAME_BYTES: usize = 128;

/// Longest lock key the host accepts, in bytes.
pub const MAX_LOCK_KEY_BYTES: usize = 256;

/// Most patterns a guest may pass when it opens a `block` scope.
pub const MAX_SCOPE_BLOCK_PATTERNS: usize = 64;

/// Bytes of the guest's stderr kept for the outcome (a panic message, say).
/// Writes past this are refused to the guest and lost.
pub const MAX_GUEST_STDERR_BYTES: usize = 64 << 10;

/// Most bytes of a failure's text kept in the outcome when the guest chose
/// or shaped it: the message of its `err`, a trap's message and backtrace
/// (the backtrace names the component's own functions). A longer text is
/// cut, and the cut says how long it was.
pub const MAX_FAILURE_TEXT_BYTES: usize = 64 << 10;

/// Most bytes kept of a handler's or a sink's error message (either may
/// echo what the guest sent): with a call's failure in the outcome, with a
/// failed compensation, with a delivery attempt in the outbox. The outcome
/// holds at most one per request, so this times `max_intents` bounds them.
pub const MAX_ERROR_TEXT_BYTES: usize = 2 << 10;

/// The limits of one run. Start from [`Limits::default`], which uses the
/// `DEFAULT_*` constants of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline, enforced by epoch interruption.
    pub deadline: Duration,
    /// Cap on linear memory, in bytes.
    pub max_memory_bytes: usize,
    /// Maximum number of effect requests per run.
    pub max_intents: usize,
    /// Maximum size of one payload, in bytes.
    pub max_payload_bytes: usize,
    /// Maximum of all payload bytes recorded by the run.
    pub max_total_payload_bytes: usize,
    /// Maximum depth of nested scopes.
    pub max_scope_depth: usize,
    /// Maximum of lock keys held at once.
    pub max_locks: usize,
    /// Maximum of lock acquisitions asked for, granted or refused.
    pub max_lock_acquisitions: usize,
    /// Time for a failed run's compensations, all together.
    pub compensation_budget: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_intents: DEFAULT_MAX_INTENTS,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_total_payload_bytes: DEFAULT_MAX_TOTAL_PAYLOAD_BYTES,
            max_scope_depth: DEFAULT_MAX_SCOPE_DEPTH,
            max_locks: DEFAULT_MAX_LOCKS,
            max_lock_acquisitions: DEFAULT_MAX_LOCK_ACQUISITIONS,
            compensation_budget: DEFAULT_COMPENSATION_BUDGET,
        }
    }
}

/// Which limit a run exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// [`Limits::deadline`].
    Deadline,
    /// [`Limits::max_memory_bytes`].
    Memory,
    /// [`Limits::max_intents`].
    Intents,
    /// [`Limits::max_payload_bytes`].
    PayloadSize,
    /// [`Limits::max_total_payload_bytes`].
    TotalPayload,
    /// [`Limits::max_scope_depth`].
    ScopeDepth,
    /// [`Limits::max_locks`].
    Locks,
    /// [`Limits::max_lock_acquisitions`].
    LockAcquisitions,
}

impl Limit {
    /// The limit's name as used in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Deadline => "deadline",
            Limit::Memory => "max_memory_bytes",
            Limit::Intents => "max_intents",
            Limit::PayloadSize => "max_payload_bytes",
            Limit::TotalPayload => "max_total_payload_bytes",
            Limit::ScopeDepth => "max_scope_depth",
            Limit::Locks => "max_locks",
            Limit::LockAcquisitions => "max_lock_acquisitions",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The error a run stops with when it exceeds a limit the host enforces by
/// trapping (memory, deadline).
#[derive(Debug, thiserror::Error)]
#[error("the run exceeded its {0} limit")]
pub(crate) struct LimitExceeded(pub(crate) Limit);

/// How far off a deadline too far for an `Instant` is put instead: a
/// century, which no run lives to see.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The instant `duration` after `from`, or a century after it when the sum
/// is past what an `Instant` holds: a limit of `Duration::MAX` is a
/// deadline that never comes, not a panic.
pub(crate) fn deadline_after(from: Instant, duration: Duration) -> Instant {
    from.checked_add(duration).unwrap_or(from + NEVER)
}

/// What the host keeps of a text that a guest chose or shaped: at most `max`
/// bytes of it, cut at a character boundary, in an allocation of at most
/// `max` bytes.
///
/// The bound is on the bytes *allocated*, not on the length: a string
/// lifted from the guest is as large as the guest made it, and cutting it
/// in place (`String::truncate`) keeps the whole allocation, so 1,000
/// refused requests with a 32 MiB name would keep 32 GB. A text whose
/// allocation fits is kept as it is, without a copy.
pub(crate) fn kept(text: String, max: usize) -> String {
    if text.capacity() <= max {
        return text;
    }
    text[..text.floor_char_boundary(max)].to_owned()
}

/// [`kept`] for a failure's text: a text longer than `max` bytes is cut and
/// ends with how long it was, so that a reader knows it was cut.
pub(crate) fn kept_failure(text: String, max: usize) -> String {
    if text.len() <= max {
        return kept(text, max);
    }
    let note = format!("… ({} bytes in all)", text.len());
    let end = text.floor_char_boundary(max.saturating_sub(note.len()));
    let mut cut = String::with_capacity(end + note.len());
    cut.push_str(&text[..end]);
    cut.push_str(&note);
    cut
}
