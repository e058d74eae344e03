//! The breaker store trait: the shared state of every breaker, how a
//! breaker behaves, and its transitions.

use std::any::Any;
use std::fmt;
use std::time::Duration;

/// Default consecutive failures that open a breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default time a breaker stays open before a trial.
pub const DEFAULT_RECOVERY: Duration = Duration::from_secs(30);
/// Default number of trial calls a half-open breaker lets through.
pub const DEFAULT_HALF_OPEN_TRIALS: u32 = 1;
/// Default time a trial may take to report. A trial that has not reported
/// by then (its host died, its run was dropped) counts as failed: the
/// breaker opens again instead of staying half-open for ever.
pub const DEFAULT_TRIAL_LEASE: Duration = Duration::from_secs(60);
pub use crate::bindings::escrow::host::breakers::BreakerState;

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opens a breaker on a failure rate as well as on failures in a row.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRate {
    /// The share of failed calls (0 to 1) that opens the breaker.
    pub ratio: f64,
    /// The calls counted: those of the last `window`.
    pub window: Duration,
    /// The least number of calls in the window before the rate counts.
    pub min_calls: u32,
}

/// How one breaker behaves. Chosen by the operator, never by the plugin.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker (default
    /// [`DEFAULT_FAILURE_THRESHOLD`]).
    pub failure_threshold: u32,
    /// A failure rate that opens it too, if set.
    pub failure_rate: Option<FailureRate>,
    /// How long it stays open before a trial (default [`DEFAULT_RECOVERY`]).
    pub recovery: Duration,
    /// Trial calls let through when half-open (default
    /// [`DEFAULT_HALF_OPEN_TRIALS`]); all must succeed to close it.
    pub half_open_trials: u32,
    /// Patterns (`*` matches anything) on handler error messages that do
    /// not count as failures, such as `*insufficient funds*`.
    pub ignore: Vec<String>,
    /// How long a half-open trial may take to report (default
    /// [`DEFAULT_TRIAL_LEASE`]) before it counts as failed.
    pub trial_lease: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            failure_rate: None,
            recovery: DEFAULT_RECOVERY,
            half_open_trials: DEFAULT_HALF_OPEN_TRIALS,
            ignore: Vec::new(),
            trial_lease: DEFAULT_TRIAL_LEASE,
        }
    }
}

/// A state an operator sets by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// Isolated: open until reset, whatever the recovery time.
    Open,
    /// Closed, with its counts cleared.
    Closed,
}

/// The shared state could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the breaker state is unavailable: {0}")]
pub struct StoreError(pub String);

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}", self.from, self.to)
    }
}

/// Whether a call may go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It may; `trial` when it is one of a half-open breaker's trials.
    Allowed {
        /// Whether the call is a trial.
        trial: bool,
        /// The change of state admitting it caused (open → half-open).
        transition: Option<Transition>,
    },
    /// It fails fast.
    Rejected {
        /// Milliseconds before a trial is let through (0 while the admitted
        /// trials still run).
        retry_after_ms: u64,
        /// When a half-open trial had not reported within its lease: it
        /// counted as failed, and the breaker opened again (this transition).
        lapsed: Option<Transition>,
    },
}

/// How an admitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The handler answered (or failed in a way the breaker ignores).
    Success,
    /// The handler failed.
    Failure,
    /// The host refused the call before the handler ran: not counted, and a
    /// trial it held is given back.
    NotCalled,
}

impl CallResult {
    /// `success`, `failure` or `not-called`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Success => "success",
            CallResult::Failure => "failure",
            CallResult::NotCalled => "not-called",
        }
    }
}

/// Where breaker state lives. Every method applies the rules of
/// [`crate::breakers`] atomically for one breaker, so that hosts sharing a
/// store never let more trials through than configured.
///
/// [`MemoryBreakers`](super::MemoryBreakers) is known to [`Breakers`](crate::breakers::Breakers)
/// by its type (hence `Any`): its breakers answer a closed breaker's calls
/// without a future or a lock.
#[async_trait::async_trait]
pub trait BreakerStore: Any + fmt::Debug + Send + Sync {
    /// Decides whether a call may go through breaker `name` at `now_ms`.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached.
    async fn admit(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
    ) -> Result<Admission, StoreError>;

    /// Counts the result of an admitted call; returns the transition it
    /// caused.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached.
    async fn record(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
        trial: bool,
        result: CallResult,
    ) -> Result<Option<Transition>, StoreError>;

    /// Sets the state of `name` by hand: isolated (open until reset) or
    /// closed with its counts cleared. Returns the transition.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached.
    async fn force(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
        to: Forced,
    ) -> Result<Option<Transition>, StoreError>;

    /// The state of `name` at `now_ms`, changing nothing: an open breaker
    /// whose recovery time has passed reads as half-open.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached.
    async fn state(
        &self,
        name: &str,
        config: &BreakerConfig,
        now_ms: u64,
    ) -> Result<BreakerState, StoreError>;
}

/// The state machine of one breaker, shared by the stores: the in-memory
/// store keeps it in a map, the Redis store runs the same rules in Lua.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Circuit {
    pub(crate) state: State,
    /// Failures in a row while closed.
    pub(crate) failures: u32,
    /// Recent calls while closed, oldest first: when, and whether it failed.
    pub(crate) window: std::collections::VecDeque<(u64, bool)>,
    /// While open: when a trial may go through.
    pub(crate) open_until: u64,
    /// While half-open: trials let through, and trials that succeeded.
    pub(crate) trials: u32,
    pub(crate) successes: u32,
    /// While half-open: when the last trial let through must have reported.
    pub(crate) trial_until: u64,
}

/// `open_until` of an isolated breaker: later than any clock reads.
pub(crate) const ISOLATED: u64 = 1 << 60;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum State {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl From<State> for BreakerState {
    fn from(state: State) -> Self {
        match state {
            State::Closed => BreakerState::Closed,
            State::Open => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

impl Circuit {
    /// Closed with no failure counted: a success or an admission changes
    /// nothing.
    pub(crate) fn is_clean(&self) -> bool {
        self.state == State::Closed && self.failures == 0
    }

    pub(crate) fn state_at(&self, now: u64) -> BreakerState {
        match self.state {
            State::Open if now >= self.open_until => BreakerState::HalfOpen,
            state => state.into(),
        }
    }

    fn enter(&mut self, to: State) -> Option<Transition> {
        let from = self.state;
        *self = Circuit {
            state: to,
            ..Circuit::default()
        };
        Some(Transition {
            from: from.into(),
            to: to.into(),
        })
    }

    pub(crate) fn admit(&mut self, config: &BreakerConfig, now: u64) -> Admission {
        let mut transition = None;
        if self.state == State::Open && now >= self.open_until {
            transition = self.enter(State::HalfOpen);
        }
        match self.state {
            State::Closed => Admission::Allowed {
                trial: false,
                transition,
            },
            State::Open => Admission::Rejected {
                retry_after_ms: self.open_until - now,
                lapsed: None,
            },
            State::HalfOpen if self.trials < config.half_open_trials.max(1) => {
                self.trials += 1;
                self.trial_until = now + config.trial_lease.as_millis() as u64;
                Admission::Allowed {
                    trial: true,
                    transition,
                }
            }
            // A trial that never reported counts as failed.
            State::HalfOpen if now >= self.trial_until => {
                let lapsed = self.open(config, now);
                Admission::Rejected {
                    retry_after_ms: self.open_until - now,
                    lapsed,
                }
            }
            State::HalfOpen => Admission::Rejected {
                retry_after_ms: 0,
                lapsed: None,
            },
        }
    }

    pub(crate) fn force(&mut self, to: Forced) -> Option<Transition> {
        let transition = match to {
            Forced::Open => {
                let transition = self.enter(State::Open);
                self.open_until = ISOLATED;
                transition
            }
            Forced::Closed => self.enter(State::Closed),
        };
        transition.filter(|t| t.from != t.to)
    }

    pub(crate) fn record(
        &mut self,
        config: &BreakerConfig,
        now: u64,
        trial: bool,
        result: CallResult,
    ) -> Option<Transition> {
        match (self.state, trial, result) {
            (State::HalfOpen, true, CallResult::NotCalled) => {
                self.trials = self.trials.saturating_sub(1);
                None
            }
            (State::HalfOpen, true, CallResult::Failure) => self.open(config, now),
            (State::HalfOpen, true, CallResult::Success) => {
                self.successes += 1;
                (self.successes >= config.half_open_trials.max(1))
                    .then(|| self.enter(State::Closed))
                    .flatten()
            }
            (State::Closed, false, CallResult::Success | CallResult::Failure) => {
                let failed = result == CallResult::Failure;
                self.failures = if failed { self.failures + 1 } else { 0 };
                if let Some(rate) = &config.failure_rate {
                    let window = rate.window.as_millis() as u64;
                    self.window.push_back((now, failed));
                    while self
                        .window
                        .front()
                        .is_some_and(|(at, _)| at + window <= now)
                    {
                        self.window.pop_front();
                    }
                }
                self.tripped(config)
                    .then(|| self.open(config, now))
                    .flatten()
            }
            // A late result from another state changes nothing.
            _ => None,
        }
    }

    fn tripped(&self, config: &BreakerConfig) -> bool {
        if self.failures >= config.failure_threshold.max(1) {
            return true;
        }
        config.failure_rate.as_ref().is_some_and(|rate| {
            let calls = self.window.len();
            let failed = self.window.iter().filter(|(_, failed)| *failed).count();
            calls >= rate.min_calls.max(1) as usize && failed as f64 >= rate.ratio * calls as f64
        })
    }

    fn open(&mut self, config: &BreakerConfig, now: u64) -> Option<Transition> {
        let transition = self.enter(State::Open);
        self.open_until = now + config.recovery.as_millis() as u64;
        transition
    }
}
