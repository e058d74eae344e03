//! What the sandbox records of a run: its requests and their fates, the
//! answers of its fake handlers, its locks and breaker calls.

use std::fmt;
use std::sync::Arc;

use crate::Refusal;

/// A fake handler: the payload in, the answer or a failure message out.
pub type FakeHandler = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// How a fake handler is declared, as a host declares real ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads only: allowed under every policy.
    Query,
    /// Changes something: refused where the policy withholds the effect.
    Action,
}

/// One call through a sandboxed breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedBreakerCall {
    /// The breaker.
    pub breaker: String,
    /// The effect called through it.
    pub effect: String,
    /// Whether the breaker was open and failed the call fast.
    pub rejected: bool,
}

/// A sandboxed breaker: failures in a row, and the threshold that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimBreaker {
    pub(crate) threshold: u32,
    pub(crate) failures: u32,
}

#[cfg_attr(
    not(feature = "breakers"),
    allow(dead_code, reason = "used by the breakers feature")
)]
impl SimBreaker {
    pub(crate) fn is_open(&self) -> bool {
        self.failures >= self.threshold
    }

    pub(crate) fn count(&mut self, failed: bool) {
        self.failures = if failed { self.failures + 1 } else { 0 };
    }
}

/// One acquisition of locks in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedLock {
    /// The keys, sorted and deduplicated.
    pub keys: Vec<String>,
    /// The fencing token.
    pub token: u64,
}

/// One deferred request recorded by the sandbox.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordedIntent {
    /// Sequence number, from 1; every request takes one.
    pub seq: u64,
    /// The effect's name.
    pub effect: String,
    /// The payload as passed.
    pub payload: Vec<u8>,
    /// Its fate.
    pub fate: Fate,
}

impl RecordedIntent {
    /// Decodes the payload from JSON.
    ///
    /// # Errors
    ///
    /// When the payload is not that type's JSON.
    pub fn payload_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// What became of a sandboxed deferred request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Would be dispatched if the run succeeds.
    Committed,
    /// Kept, never dispatched (policy drop).
    Dropped,
    /// Kept, never dispatched (policy block).
    Blocked,
    /// Refused when requested.
    Refused(Refusal),
    /// Discarded by a scope that rolled back.
    Discarded,
}

impl fmt::Debug for RecordedIntent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedIntent")
            .field("seq", &self.seq)
            .field("effect", &self.effect)
            .field("payload", &Payload(&self.payload))
            .field("fate", &self.fate)
            .finish()
    }
}

/// A payload shown as its text when it is UTF-8 (JSON usually is), else as
/// bytes.
pub(crate) struct Payload<'a>(pub(crate) &'a [u8]);

impl fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text) => write!(f, "{text}"),
            Err(_) => write!(f, "{:?}", self.0),
        }
    }
}

/// One immediate request recorded by the sandbox.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordedInvocation {
    /// Sequence number, shared with deferred requests.
    pub seq: u64,
    /// The effect's name.
    pub effect: String,
    /// The payload as passed.
    pub payload: Vec<u8>,
    /// What came back.
    pub result: Answer,
}

impl fmt::Debug for RecordedInvocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedInvocation")
            .field("seq", &self.seq)
            .field("effect", &self.effect)
            .field("payload", &Payload(&self.payload))
            .field("result", &self.result)
            .finish()
    }
}

/// A compensation the sandbox ran, or would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCompensation {
    /// The sequence number of the call it undoes.
    pub seq: u64,
    /// The compensating effect.
    pub effect: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// What its fake handler answered.
    pub result: Answer,
}

/// What a fake handler gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The handler's answer.
    Ok(Vec<u8>),
    /// The sandbox refused the call; no handler ran.
    Refused(Refusal),
    /// The handler failed with this message.
    Failed(String),
    /// Not run (a compensation a failed run would run).
    Pending,
}
