//! The per-run escrow context: the run's grants, policy and limits, and the
//! record of every effect it requested, scope by scope.
//!
//! One [`EscrowCtx`] lives in each run's store. The capability modules
//! (`capabilities/intents.rs`, `capabilities/scopes.rs`) record into it; when
//! the guest has stopped, [`EscrowCtx::finish`] decides every intent's fate.
//! Nothing in here performs an effect.

use std::sync::Arc;

use crate::grants::Grants;
use crate::limits::Limits;
use crate::outcome::{Failure, Fate, Intent};
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
    /// Every recorded request, in request order. While the run goes on, an
    /// accepted intent's fate is what the policies decided (`Committed`,
    /// `Dropped`, `Blocked`) and a scope's rollback makes it `Discarded`;
    /// [`EscrowCtx::finish`] settles the rest.
    pub(crate) records: Vec<Intent>,
    /// Open nested scopes, outermost first.
    pub(crate) frames: Vec<Frame>,
    pub(crate) next_frame: u32,
    /// Payload bytes held by `records`.
    pub(crate) payload_bytes: usize,
    /// The first reason the run must fail even if the guest carries on (a
    /// forbidden effect, an exceeded limit).
    pub(crate) violation: Option<Failure>,
    /// The last rule text turned into a shared string: most intents of a run
    /// share a handful of rules, so equal texts share one allocation.
    last_rule: Option<Arc<str>>,
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
            last_rule: None,
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
    /// Scopes the guest left open are rolled back. On success, intents keep
    /// the fate the policies gave them: [`Fate::Committed`] ones are ready for
    /// [`Host::dispatch`](crate::Host::dispatch). On failure every committed,
    /// dropped or blocked intent becomes [`Fate::Discarded`]. Refused requests
    /// stay [`Fate::Refused`].
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
        if result.is_err() {
            let failed: Arc<str> = Arc::from("the run failed");
            for intent in &mut self.records {
                if intent.fate.is_held() {
                    intent.fate = Fate::Discarded;
                    intent.rule = Arc::clone(&failed);
                }
            }
        }
        (result, self.records)
    }

    /// `text` as a shared rule, reusing the last one made when equal.
    pub(crate) fn rule(&mut self, text: &str) -> Arc<str> {
        match &self.last_rule {
            Some(rule) if **rule == *text => Arc::clone(rule),
            _ => Arc::clone(self.last_rule.insert(Arc::from(text))),
        }
    }
}
