//! Answers: what a run was told when it asked the world something (the
//! answers of its immediate effects, its lock requests and its breakers),
//! in the order it asked, so that another run can be told the same.
//!
//! [`Answers::of`] takes them from an [`Outcome`]. A run given them
//! ([`RunOptions::answered_from`](crate::RunOptions::answered_from)) asks no
//! handler, lock backend or breaker store: each request it makes is answered
//! by the next recorded one of its kind. Grants, policies and limits still
//! apply as configured for that run. A request the answers do not hold, or
//! whose effect, keys or breaker differ from the recorded one, ends the run
//! with [`Failure::Diverged`](crate::Failure::Diverged).
//!
//! This is what plans (`--verify`) and replays are built on.

use serde::{Deserialize, Serialize};

use crate::bindings::escrow::host::effects::EffectError;
use crate::outcome::{BreakerVerdict, Outcome, Refusal};

mod bytes;

pub use bytes::Bytes;

/// Every answer a run was given, by kind, each in the order it was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers {
    /// The run's immediate effects (`invoke`, `invoke-reversible`, typed
    /// immediate functions, calls through breakers), refused ones included.
    pub calls: Vec<CallAnswer>,
    /// Its lock requests past the per-run limit, refused ones included.
    pub locks: Vec<LockAnswer>,
    /// What breakers decided for its calls through them.
    pub breakers: Vec<BreakerAnswer>,
}

/// One immediate effect asked, and what the guest was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAnswer {
    /// The effect.
    pub effect: String,
    /// The payload the guest passed.
    pub payload: Bytes,
    /// What the guest was told.
    pub reply: Reply,
}

/// What the guest was told of an immediate effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The handler's answer.
    Answer(Bytes),
    /// `effect-error::failed` with this message.
    Failed(String),
    /// `effect-error::refused`.
    Refused {
        /// The refusal's WIT name (`not-granted`, `forbidden`, `limit`,
        /// `invalid`).
        kind: String,
        /// Why.
        message: String,
    },
}

impl Reply {
    /// What the guest is told, as the WIT value.
    pub(crate) fn to_result(&self) -> Result<Vec<u8>, EffectError> {
        match self {
            Reply::Answer(bytes) => Ok(bytes.0.clone()),
            Reply::Failed(message) => Err(EffectError::Failed(message.clone())),
            Reply::Refused { kind, message } => Err(EffectError::Refused(refusal(kind, message))),
        }
    }

    fn of(result: &Result<Vec<u8>, EffectError>) -> Self {
        match result {
            Ok(answer) => Reply::Answer(Bytes(answer.clone())),
            Err(EffectError::Failed(message)) => Reply::Failed(message.clone()),
            Err(EffectError::Refused(refusal)) => Reply::Refused {
                kind: refusal.kind().to_owned(),
                message: refusal.message().to_owned(),
            },
        }
    }
}

/// The refusal a recorded kind names; an unknown kind (a newer host's)
/// reads as `invalid`.
fn refusal(kind: &str, message: &str) -> Refusal {
    let message = message.to_owned();
    match kind {
        "not-granted" => Refusal::NotGranted(message),
        "forbidden" => Refusal::Forbidden(message),
        "limit" => Refusal::Limit(message),
        _ => Refusal::Invalid(message),
    }
}

/// One lock request, and what the guest was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockAnswer {
    /// The keys: sorted and deduplicated when given, as asked when not.
    pub keys: Vec<String>,
    /// The lock's fencing token, or why there was none.
    #[serde(flatten)]
    pub reply: LockReply,
}

/// What a lock request was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockReply {
    /// Given, with this fencing token.
    Token(u64),
    /// Not given: the outcome's text of why (`timed out`, `unavailable: …`).
    Error(String),
}

/// What a breaker decided for one call through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerAnswer {
    /// The breaker.
    pub breaker: String,
    /// The effect called through it.
    pub effect: String,
    /// Its decision.
    #[serde(flatten)]
    pub verdict: BreakerReply,
}

/// A breaker's decision for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum BreakerReply {
    /// Let through (as a trial when half-open); the call's own answer is
    /// among the calls.
    Allowed {
        /// Whether it was a half-open trial.
        trial: bool,
    },
    /// Failed fast: the guest was told the circuit is open.
    Rejected {
        /// Milliseconds the guest was told to wait.
        retry_after_ms: u64,
    },
}

impl Answers {
    /// The answers `outcome`'s run was given. Breaker calls refused before
    /// any breaker was asked are left out: a run given these answers
    /// refuses them itself, by its own grants.
    pub fn of(outcome: &Outcome) -> Self {
        Answers {
            calls: outcome
                .invocations
                .iter()
                .map(|call| CallAnswer {
                    effect: call.effect.clone(),
                    payload: Bytes(call.payload.clone()),
                    reply: Reply::of(&call.result),
                })
                .collect(),
            locks: outcome
                .locks
                .iter()
                .map(|lock| LockAnswer {
                    keys: lock.keys.clone(),
                    reply: match &lock.result {
                        Ok(token) => LockReply::Token(*token),
                        Err(error) => LockReply::Error(error.clone()),
                    },
                })
                .collect(),
            breakers: outcome
                .breakers
                .iter()
                .filter_map(|decision| {
                    let verdict = match decision.verdict {
                        BreakerVerdict::Refused(_) => return None,
                        BreakerVerdict::Allowed { trial, .. } => BreakerReply::Allowed { trial },
                        BreakerVerdict::Rejected { retry_after_ms } => {
                            BreakerReply::Rejected { retry_after_ms }
                        }
                    };
                    Some(BreakerAnswer {
                        breaker: decision.breaker.to_string(),
                        effect: decision.effect.clone(),
                        verdict,
                    })
                })
                .collect(),
        }
    }
}

/// A run's place in the answers it is given: the next answer of each kind.
#[derive(Debug)]
pub(crate) struct Replaying {
    answers: std::sync::Arc<Answers>,
    calls: usize,
    locks: usize,
    breakers: usize,
}

impl Replaying {
    pub(crate) fn new(answers: std::sync::Arc<Answers>) -> Self {
        Self {
            answers,
            calls: 0,
            locks: 0,
            breakers: 0,
        }
    }

    /// The recorded answer of the next immediate effect, which must be
    /// `effect`; else why the run diverged.
    pub(crate) fn call(&mut self, effect: &str) -> Result<&CallAnswer, String> {
        self.calls += 1;
        let number = self.calls;
        match self.answers.calls.get(number - 1) {
            Some(recorded) if recorded.effect == effect => Ok(recorded),
            Some(recorded) => Err(format!(
                "diverged at call #{number}: asked {effect}, the recording has {}",
                recorded.effect
            )),
            None => Err(format!(
                "diverged at call #{number}: asked {effect}, the recording has no more calls"
            )),
        }
    }

    /// The recorded answer of the next lock request, which must be for the
    /// same keys (in any order); else why the run diverged.
    pub(crate) fn lock(&mut self, keys: &[String]) -> Result<&LockAnswer, String> {
        self.locks += 1;
        let number = self.locks;
        let set = |keys: &[String]| {
            let mut keys = keys.to_vec();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        match self.answers.locks.get(number - 1) {
            Some(recorded) if set(&recorded.keys) == set(keys) => Ok(recorded),
            Some(recorded) => Err(format!(
                "diverged at lock request #{number}: asked {keys:?}, the recording has {:?}",
                recorded.keys
            )),
            None => Err(format!(
                "diverged at lock request #{number}: asked {keys:?}, the recording has no more \
                 lock requests"
            )),
        }
    }

    /// The recorded decision of the next breaker call, which must be the
    /// same breaker and effect; else why the run diverged.
    pub(crate) fn breaker(&mut self, breaker: &str, effect: &str) -> Result<BreakerReply, String> {
        self.breakers += 1;
        let number = self.breakers;
        match self.answers.breakers.get(number - 1) {
            Some(recorded) if recorded.breaker == breaker && recorded.effect == effect => {
                Ok(recorded.verdict)
            }
            Some(recorded) => Err(format!(
                "diverged at breaker call #{number}: asked {effect} through `{breaker}`, the \
                 recording has {} through `{}`",
                recorded.effect, recorded.breaker
            )),
            None => Err(format!(
                "diverged at breaker call #{number}: asked {effect} through `{breaker}`, the \
                 recording has no more breaker calls"
            )),
        }
    }
}
