//! The per-run escrow context: the run's grants, policy and limits, and the
//! record of every effect it requested, scope by scope.
//!
//! One [`EscrowCtx`] lives in each run's store. The capability modules
//! (`capabilities/intents.rs`, `capabilities/scopes.rs`) record into it; when
//! the guest has stopped, [`EscrowCtx::finish`] decides every intent's fate.
//! Nothing in here performs an effect.

use std::borrow::Cow;
use std::sync::Arc;

use crate::grants::Grants;
use crate::limits::Limits;
use crate::outcome::{Failure, Fate, Intent, Refusal};
use crate::policy::Policy;

/// A run's escrow state, kept in the store's data.
///
/// Build one per run with [`EscrowCtx::new`], link the escrow interfaces with
/// [`add_to_linker`](crate::add_to_linker), call the guest, then
/// [`finish`](EscrowCtx::finish) it with what the guest returned.
#[derive(Debug)]
pub struct EscrowCtx {
    pub(crate) grants: Arc<Grants>,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) limits: Limits,
    /// Requests made so far, refused ones included: the last sequence number.
    pub(crate) requests: u64,
    /// Every recorded request, in request order.
    pub(crate) records: Vec<Record>,
    /// Open nested scopes, outermost first.
    pub(crate) frames: Vec<Frame>,
    pub(crate) next_frame: u32,
    /// Payload bytes held by `records`.
    pub(crate) payload_bytes: usize,
    /// The first reason the run must fail even if the guest carries on (a
    /// forbidden effect, an exceeded limit).
    pub(crate) violation: Option<Failure>,
}

/// One recorded request.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) effect: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) state: State,
    pub(crate) rule: Rule,
}

/// Where a recorded request stands while the run goes on.
#[derive(Debug)]
pub(crate) enum State {
    /// Accepted; its fate is settled when the run ends.
    Held(Hold),
    /// Refused when requested.
    Refused(Refusal),
    /// Thrown away by a nested scope's rollback.
    Discarded,
}

/// What the policies decided for an accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    Commit,
    Drop,
    Block,
}

/// The rule behind a record's state. Grants are kept as an index so that
/// the common path (a granted, committed intent) allocates no message.
#[derive(Debug)]
pub(crate) enum Rule {
    Grant(usize),
    Text(Cow<'static, str>),
}

/// An open nested scope.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) id: u32,
    /// Index of the first record made inside this scope.
    pub(crate) start: usize,
    /// `None` when the scope inherits its parent's rules unchanged.
    pub(crate) policy: Option<Box<dyn Policy>>,
}

impl EscrowCtx {
    /// A context for one run under `grants`, `policy` and `limits`.
    pub fn new(grants: Arc<Grants>, policy: Arc<dyn Policy>, limits: Limits) -> Self {
        Self {
            grants,
            policy,
            limits,
            requests: 0,
            records: Vec::new(),
            frames: Vec::new(),
            next_frame: 1,
            payload_bytes: 0,
            violation: None,
        }
    }

    /// The run's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Marks the run as failed unless it already is: the first violation is
    /// the one reported.
    pub(crate) fn violate(&mut self, failure: Failure) {
        self.violation.get_or_insert(failure);
    }

    /// Ends the run: combines what the guest returned with any violation the
    /// host noted, and settles the fate of every request.
    ///
    /// On success, intents the policies committed become [`Fate::Committed`]
    /// (ready for [`Host::dispatch`](crate::Host::dispatch)), and scopes the
    /// guest left open are rolled back. On failure every held intent is
    /// [`Fate::Discarded`]. Refused requests stay [`Fate::Refused`].
    pub fn finish(
        mut self,
        guest: Result<Vec<u8>, Failure>,
    ) -> (Result<Vec<u8>, Failure>, Vec<Intent>) {
        let result = match self.violation.take() {
            Some(failure) => Err(failure),
            None => guest,
        };
        while let Some(frame) = self.frames.pop() {
            let rule = format!("scope {} was still open when the run ended", frame.id);
            self.discard_from(frame.start, rule);
        }
        let failed = result.is_err();
        let grants = self.grants;
        let run_failed: Arc<str> = Arc::from("the run failed");
        // Most intents of a run share a handful of rules: keep the last one
        // made so that equal texts share one allocation.
        let mut last: Option<Arc<str>> = None;
        let mut text_rule = |text: Cow<'static, str>| match &last {
            Some(rule) if **rule == *text => Arc::clone(rule),
            _ => Arc::clone(last.insert(Arc::from(text.as_ref()))),
        };
        let intents = self
            .records
            .into_iter()
            .map(|record| {
                let (fate, rule) = match (record.state, record.rule) {
                    (State::Held(_), _) if failed => (Fate::Discarded, Arc::clone(&run_failed)),
                    (state, Rule::Grant(index)) => {
                        (settled(state), Arc::clone(grants.effect_rule(index)))
                    }
                    (state, Rule::Text(text)) => (settled(state), text_rule(text)),
                };
                Intent {
                    seq: record.seq,
                    effect: record.effect,
                    payload: record.payload,
                    fate,
                    rule,
                }
            })
            .collect();
        (result, intents)
    }
}

/// The fate of a record of a run that succeeded.
fn settled(state: State) -> Fate {
    match state {
        State::Held(Hold::Commit) => Fate::Committed,
        State::Held(Hold::Drop) => Fate::Dropped,
        State::Held(Hold::Block) => Fate::Blocked,
        State::Refused(refusal) => Fate::Refused(refusal),
        State::Discarded => Fate::Discarded,
    }
}
