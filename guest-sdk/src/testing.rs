//! Native mode: run plugin logic without a host and see the intents it
//! would have requested.
//!
//! ```
//! use escrow_guest::testing::{Fate, Sandbox};
//!
//! fn notify(user: &str) -> Result<(), escrow_guest::Error> {
//!     escrow_guest::defer("email.send", &user)?;
//!     Ok(())
//! }
//!
//! let recording = Sandbox::new().grant("email.*").run(|| notify("ada"));
//! assert!(recording.output.is_ok());
//! assert_eq!(recording.intents[0].effect, "email.send");
//! assert_eq!(recording.intents[0].fate, Fate::Committed);
//! ```

use crate::Refusal;
use crate::scopes::ScopePolicy;
use crate::sys::native::{State, with_sandbox};

/// A host stand-in with grants and a policy. By default everything is
/// granted and the policy commits.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    grants: Option<Vec<String>>,
    policy: ScopePolicy,
}

impl Sandbox {
    /// Everything granted, policy commit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants effects matching `pattern` (`email.*`). Once any pattern is
    /// granted, effects that match none are refused `not-granted`.
    pub fn grant(mut self, pattern: impl Into<String>) -> Self {
        self.grants
            .get_or_insert_with(Vec::new)
            .push(pattern.into());
        self
    }

    /// The run's policy: [`ScopePolicy::Inherit`] commits.
    pub fn policy(mut self, policy: ScopePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Runs `body` in a fresh sandbox on this thread and returns what it
    /// returned and the intents it requested. Scopes left open are rolled
    /// back.
    ///
    /// # Panics
    ///
    /// On a malformed grant or block pattern.
    pub fn run<T>(&self, body: impl FnOnce() -> T) -> Recording<T> {
        let state = State::new(self.grants.as_deref(), &self.policy)
            .unwrap_or_else(|e| panic!("escrow-guest sandbox: {e}"));
        let (output, state) = with_sandbox(state, body);
        let violation = state.violation.clone();
        Recording {
            output,
            intents: state.into_records(),
            violation,
        }
    }
}

/// What a sandboxed run returned and requested.
#[derive(Debug, Clone)]
pub struct Recording<T> {
    /// What the body returned.
    pub output: T,
    /// Every request, in order, with its fate as of the end of the body.
    pub intents: Vec<RecordedIntent>,
    /// Why a host would fail this run even if the body succeeded (a forbidden
    /// effect), if it would.
    pub violation: Option<String>,
}

impl<T> Recording<T> {
    /// The intents a host would dispatch if the run succeeded, in order.
    pub fn committed(&self) -> impl Iterator<Item = &RecordedIntent> {
        self.intents.iter().filter(|i| i.fate == Fate::Committed)
    }

    /// The effect names of [`Recording::committed`].
    pub fn committed_effects(&self) -> Vec<&str> {
        self.committed().map(|i| i.effect.as_str()).collect()
    }
}

/// One request recorded by the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedIntent {
    /// Sequence number, from 1; refused requests take one too.
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

/// What became of a sandboxed request.
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
