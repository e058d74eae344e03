//! Native mode: run plugin logic without a host and see the intents it
//! would have requested, the immediate effects it performed through fake
//! handlers, and the compensations that ran.
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

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::scopes::ScopePolicy;
use crate::sys::native::{State, with_sandbox};

pub(crate) mod recorded;

pub use recorded::{
    Answer, FakeHandler, Fate, Kind, RecordedBreakerCall, RecordedCompensation, RecordedIntent,
    RecordedInvocation, RecordedLock, SimBreaker,
};

/// A host stand-in with grants, a policy and fake handlers. As on the host,
/// nothing is granted by default: grant what the plugin may request with
/// [`grant`](Sandbox::grant) and [`grant_lock`](Sandbox::grant_lock), or take
/// the grants of the plugin's `escrow.toml` with
/// [`from_config`](Sandbox::from_config). The policy commits, and no handler
/// exists until one is faked.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) grants: Option<Vec<String>>,
    pub(crate) lock_grants: Option<Vec<String>>,
    pub(crate) policy: ScopePolicy,
    pub(crate) handlers: HashMap<String, (Kind, FakeHandler)>,
    pub(crate) breakers: HashMap<String, SimBreaker>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("grants", &self.grants)
            .field("lock_grants", &self.lock_grants)
            .field("policy", &self.policy)
            .field(
                "handlers",
                &self
                    .handlers
                    .iter()
                    .map(|(e, (k, _))| (e, k))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// Nothing granted (deny by default, as on the host), policy commit,
    /// no handlers.
    pub fn new() -> Self {
        Self {
            grants: Some(Vec::new()),
            lock_grants: Some(Vec::new()),
            policy: ScopePolicy::default(),
            handlers: HashMap::new(),
            breakers: HashMap::new(),
        }
    }

    /// A sandbox with the grants and policy of an `escrow.toml`: its
    /// `[grants] effects` and `locks`, its `policy` and `block`. Native tests
    /// then see the grants production runs get.
    ///
    /// # Panics
    ///
    /// When the file cannot be read or is not valid TOML of that shape: a
    /// test should fail loudly.
    pub fn from_config(path: impl AsRef<std::path::Path>) -> Self {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!(
                "escrow-guest sandbox: cannot read `{}`: {e}",
                path.display()
            )
        });
        let config: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("escrow-guest sandbox: `{}`: {e}", path.display()));
        let strings = |value: Option<&toml::Value>| -> Vec<String> {
            value
                .and_then(toml::Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let grants = config.get("grants").and_then(toml::Value::as_table);
        let mut sandbox = Self::new();
        sandbox.grants = Some(strings(grants.and_then(|g| g.get("effects"))));
        sandbox.lock_grants = Some(strings(grants.and_then(|g| g.get("locks"))));
        let block = strings(config.get("block"));
        sandbox.policy = match config.get("policy").and_then(toml::Value::as_str) {
            Some("drop") => ScopePolicy::Drop,
            Some("assert-none") => ScopePolicy::AssertNone,
            _ if !block.is_empty() => ScopePolicy::Block(block),
            _ => ScopePolicy::Inherit,
        };
        sandbox
    }

    /// Grants effects matching `pattern` (`email.*`; `*` for all). Effects
    /// that match no granted pattern are refused `not-granted`.
    pub fn grant(mut self, pattern: impl Into<String>) -> Self {
        self.grants
            .get_or_insert_with(Vec::new)
            .push(pattern.into());
        self
    }

    /// Grants locks on keys matching `pattern` (`account:*`). Keys that
    /// match no granted pattern are refused. The sandbox checks grants, key
    /// order and names; it has one run, so no lock is ever contended.
    pub fn grant_lock(mut self, pattern: impl Into<String>) -> Self {
        self.lock_grants
            .get_or_insert_with(Vec::new)
            .push(pattern.into());
        self
    }

    /// The run's policy: [`ScopePolicy::Inherit`] commits.
    pub fn policy(mut self, policy: ScopePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// A breaker named `name` that opens after `failure_threshold` failures
    /// in a row and then stays open for the rest of the sandboxed run (the
    /// sandbox has no clock: recovery is the host's business).
    pub fn breaker(mut self, name: impl Into<String>, failure_threshold: u32) -> Self {
        self.breakers.insert(
            name.into(),
            SimBreaker {
                threshold: failure_threshold.max(1),
                failures: 0,
            },
        );
        self
    }

    /// A breaker named `name` that is open from the start.
    pub fn open_breaker(mut self, name: impl Into<String>) -> Self {
        self.breakers.insert(
            name.into(),
            SimBreaker {
                threshold: 1,
                failures: 1,
            },
        );
        self
    }

    /// A fake handler for the query `effect`.
    pub fn query(
        self,
        effect: impl Into<String>,
        handler: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        self.handler(effect, Kind::Query, handler)
    }

    /// A fake handler for the action `effect`.
    pub fn action(
        self,
        effect: impl Into<String>,
        handler: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        self.handler(effect, Kind::Action, handler)
    }

    fn handler(
        mut self,
        effect: impl Into<String>,
        kind: Kind,
        handler: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        self.handlers
            .insert(effect.into(), (kind, Arc::new(handler)));
        self
    }

    /// Runs `body` in a fresh sandbox on this thread and returns what it
    /// returned and what it requested. Scopes left open are rolled back.
    ///
    /// # Panics
    ///
    /// On a malformed grant or block pattern.
    pub fn run<T>(&self, body: impl FnOnce() -> T) -> Recording<T> {
        let state = State::new(
            self.grants.as_deref(),
            self.lock_grants.as_deref(),
            &self.policy,
            self.handlers.clone(),
            self.breakers.clone(),
        )
        .unwrap_or_else(|e| panic!("escrow-guest sandbox: {e}"));
        let (output, mut state) = with_sandbox(state, body);
        let registered_compensations = state.end();
        Recording {
            output,
            intents: state.records,
            invocations: state.invocations,
            compensations: state.compensations,
            registered_compensations,
            locks: state.locks,
            breaker_calls: state.breaker_calls,
            violation: state.violation,
        }
    }
}

/// What a sandboxed run returned and requested.
#[derive(Debug, Clone)]
pub struct Recording<T> {
    /// What the body returned.
    pub output: T,
    /// Every deferred request, in order, with its fate as of the end of the
    /// body.
    pub intents: Vec<RecordedIntent>,
    /// Every immediate request, in order, with its answer.
    pub invocations: Vec<RecordedInvocation>,
    /// The compensations that ran when scopes rolled back, in the order they
    /// ran.
    pub compensations: Vec<RecordedCompensation>,
    /// The compensations still registered at the end, newest first: what a
    /// host would run if this run failed (their result is
    /// [`Answer::Pending`]).
    pub registered_compensations: Vec<RecordedCompensation>,
    /// The locks taken, in order, with their fencing tokens.
    pub locks: Vec<RecordedLock>,
    /// The calls through breakers, in order.
    pub breaker_calls: Vec<RecordedBreakerCall>,
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
