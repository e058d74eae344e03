//! Circuit breakers: named by the operator, granted to plugins, with state
//! shared by every run of a host (and every host on one Redis).
//!
//! ```text
//!             failures reach the threshold
//!   ┌────────┐ ───────────────────────────▶ ┌──────┐
//!   │ closed │                              │ open │ ◀──┐
//!   └────────┘ ◀──────────┐                 └──────┘    │ a trial fails
//!                         │ the trials         │        │
//!                         │ all succeed        │ the recovery time passed
//!                         │                    ▼        │
//!                         │              ┌───────────┐  │
//!                         └───────────── │ half-open │ ─┘
//!                                        └───────────┘
//! ```
//!
//! While closed, calls go through and their results are counted: the
//! breaker opens after `failure_threshold` failures in a row, or, if a
//! failure rate is set, when at least `min_calls` calls in the last `window`
//! failed at `ratio` or more. While open, calls fail fast, without reaching
//! the handler. Once `recovery` has passed, the next call moves it to
//! half-open, where `half_open_trials` calls are let through: if one fails it
//! opens again (for another `recovery`); when all succeed it closes. Calls
//! beyond the trials fail fast too. Handler errors whose message matches an
//! `ignore` pattern do not count as failures (the dependency answered), and a
//! call the host refused before the handler ran does not count at all.
//!
//! Every state change and every rejected call is a [`BreakerEvent`]:
//! subscribe with [`Breakers::subscribe`]; each is also logged.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use tokio::sync::broadcast;
use wildmatch::WildMatch;

pub use crate::backends::breakers::{
    BreakerConfig, BreakerState, DEFAULT_FAILURE_THRESHOLD, DEFAULT_HALF_OPEN_TRIALS,
    DEFAULT_RECOVERY, DEFAULT_TRIAL_LEASE, FailureRate, Forced,
};
use crate::backends::{
    Admission, BreakerStore, CallResult, LocalCircuit, MemoryBreakers, Transition,
};
use crate::clock::{Clock, SystemClock};
use crate::patterns::{NameError, check_effect_name};

/// Events kept for a subscriber that reads slower than they happen.
const EVENT_BUFFER: usize = 1024;

/// Something that happened to a breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerEvent {
    /// The breaker's name.
    pub breaker: String,
    /// What happened.
    pub kind: EventKind,
    /// When, by the breakers' clock (milliseconds).
    pub at_ms: u64,
}

/// What happened to a breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// It changed state.
    StateChanged {
        /// The state it left.
        from: BreakerState,
        /// The state it entered.
        to: BreakerState,
    },
    /// A call failed fast.
    Rejected {
        /// Milliseconds left before a trial is let through.
        retry_after_ms: u64,
    },
    /// The shared state could not be reached: calls go through (fail open)
    /// until it can be.
    StoreUnavailable(String),
    /// A half-open trial did not report within its lease (its host died, or
    /// its run was dropped): it counted as failed, and the breaker opened
    /// again.
    TrialLapsed,
    /// An operator set the state by hand (`escrow breakers open|reset`).
    Forced(BreakerState),
}

/// A breaker's definition with its compiled ignore patterns, and its state
/// when that is kept in this process.
#[derive(Debug)]
pub(crate) struct Defined {
    pub(crate) name: Arc<str>,
    pub(crate) config: BreakerConfig,
    ignore: Vec<WildMatch>,
    local: Option<Arc<LocalCircuit>>,
}

/// The breakers of a host: their definitions, where their state lives, the
/// clock, and the event stream.
pub struct Breakers {
    /// In the order defined; a run's breaker handle is an index.
    defined: Vec<Defined>,
    by_name: foldhash::HashMap<String, usize>,
    store: Arc<dyn BreakerStore>,
    /// The store as itself when it is the in-process one.
    memory: Option<Arc<MemoryBreakers>>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<BreakerEvent>,
}

impl fmt::Debug for Breakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breakers")
            .field("defined", &self.names())
            .field("store", &self.store)
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for Breakers {
    fn default() -> Self {
        Self::new(Arc::new(MemoryBreakers::new()))
    }
}

impl Breakers {
    /// No breakers yet, their state kept in `store`, on the system clock.
    pub fn new(store: Arc<dyn BreakerStore>) -> Self {
        let any: Arc<dyn Any + Send + Sync> = Arc::clone(&store) as _;
        Self {
            defined: Vec::new(),
            by_name: foldhash::HashMap::default(),
            memory: any.downcast::<MemoryBreakers>().ok(),
            store,
            clock: Arc::new(SystemClock),
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// Defines the breaker `name` (an effect-like name, `payments`).
    ///
    /// # Errors
    ///
    /// A malformed name.
    pub fn define(&mut self, name: &str, config: BreakerConfig) -> Result<&mut Self, NameError> {
        check_effect_name(name)?;
        let defined = Defined {
            name: Arc::from(name),
            ignore: config.ignore.iter().map(|p| WildMatch::new(p)).collect(),
            config,
            local: self.memory.as_ref().map(|memory| memory.circuit(name)),
        };
        match self.by_name.get(name) {
            Some(&index) => self.defined[index] = defined,
            None => {
                self.by_name.insert(name.to_owned(), self.defined.len());
                self.defined.push(defined);
            }
        }
        Ok(self)
    }

    /// Uses `clock` for time (default [`SystemClock`]).
    pub fn clock(&mut self, clock: Arc<dyn Clock>) -> &mut Self {
        self.clock = clock;
        self
    }

    /// Every later event, in the order they happen. A subscriber that falls
    /// more than 1024 events behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<BreakerEvent> {
        self.events.subscribe()
    }

    /// The names of the defined breakers, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether `name` is defined.
    pub fn is_defined(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The state of `name` now, as the store sees it.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached, or `name` is not defined.
    pub async fn state(&self, name: &str) -> Result<BreakerState, String> {
        let defined = self
            .defined(name)
            .ok_or_else(|| format!("no breaker `{name}` is defined"))?;
        self.store
            .state(name, &defined.config, self.clock.now_ms())
            .await
            .map_err(|e| e.to_string())
    }

    pub(crate) fn defined(&self, name: &str) -> Option<&Defined> {
        self.by_name.get(name).map(|&index| &self.defined[index])
    }

    /// The position of `name` among the definitions: what a run keeps for
    /// a breaker it opened.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The definition at `position`, if there is one.
    pub(crate) fn try_at(&self, position: usize) -> Option<&Defined> {
        self.defined.get(position)
    }

    /// The definition of `name`, if it is defined.
    pub fn config(&self, name: &str) -> Option<&BreakerConfig> {
        self.defined(name).map(|d| &d.config)
    }

    /// Sets the state of `name` by hand, on every host sharing the store:
    /// [`Forced::Open`] isolates it (calls fail fast until it is reset),
    /// [`Forced::Closed`] closes it with its counts cleared.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached, or `name` is not defined.
    pub async fn force(&self, name: &str, to: Forced) -> Result<Option<Transition>, String> {
        let defined = self
            .defined(name)
            .ok_or_else(|| format!("no breaker `{name}` is defined"))?;
        let now = self.clock.now_ms();
        let transition = self
            .store
            .force(name, &defined.config, now, to)
            .await
            .map_err(|e| e.to_string())?;
        let state = match to {
            Forced::Open => BreakerState::Open,
            Forced::Closed => BreakerState::Closed,
        };
        self.emit(name, EventKind::Forced(state), now);
        self.transitioned(name, transition, now);
        Ok(transition)
    }

    /// Asks whether a call may go through the breaker now. A store that
    /// cannot be reached lets the call through (fail open) and says so in an
    /// event. A clean in-process breaker answers without the clock or a lock.
    pub(crate) async fn admit(&self, defined: &Defined) -> Admission {
        let config = &defined.config;
        if let Some(admission) = defined.local.as_ref().and_then(|l| l.admit_clean(config)) {
            return admission;
        }
        let (name, now) = (&*defined.name, self.clock.now_ms());
        let admitted = match &defined.local {
            Some(local) => Ok(local.with(|c| c.admit(config, now))),
            None => self.store.admit(name, config, now).await,
        };
        match admitted {
            Ok(admission) => {
                match &admission {
                    Admission::Allowed { transition, .. } => {
                        self.transitioned(name, *transition, now)
                    }
                    Admission::Rejected {
                        retry_after_ms,
                        lapsed,
                    } => {
                        if let Some(transition) = lapsed {
                            self.emit(name, EventKind::TrialLapsed, now);
                            self.transitioned(name, Some(*transition), now);
                        }
                        self.emit(
                            name,
                            EventKind::Rejected {
                                retry_after_ms: *retry_after_ms,
                            },
                            now,
                        );
                    }
                }
                admission
            }
            Err(error) => {
                self.emit(name, EventKind::StoreUnavailable(error.to_string()), now);
                Admission::Allowed {
                    trial: false,
                    transition: None,
                }
            }
        }
    }

    /// Counts the result of a call admitted by [`Breakers::admit`]; returns
    /// the transition it caused.
    pub(crate) async fn record(
        &self,
        defined: &Defined,
        trial: bool,
        result: CallResult,
    ) -> Option<Transition> {
        let config = &defined.config;
        if let Some(local) = &defined.local
            && local.records_nothing(config, trial, result)
        {
            return None;
        }
        let (name, now) = (&*defined.name, self.clock.now_ms());
        let recorded = match &defined.local {
            Some(local) => Ok(local.with(|c| c.record(config, now, trial, result))),
            None => self.store.record(name, config, now, trial, result).await,
        };
        match recorded {
            Ok(transition) => {
                self.transitioned(name, transition, now);
                transition
            }
            Err(error) => {
                self.emit(name, EventKind::StoreUnavailable(error.to_string()), now);
                None
            }
        }
    }

    fn transitioned(&self, name: &str, transition: Option<Transition>, now: u64) {
        if let Some(Transition { from, to }) = transition {
            crate::observe::breaker_state(name, to);
            self.emit(name, EventKind::StateChanged { from, to }, now);
        }
    }

    fn emit(&self, name: &str, kind: EventKind, at_ms: u64) {
        match &kind {
            EventKind::StateChanged { from, to } => {
                tracing::info!(breaker = name, %from, %to, "breaker changed state")
            }
            EventKind::Rejected { retry_after_ms } => {
                tracing::debug!(breaker = name, retry_after_ms, "breaker rejected a call")
            }
            EventKind::StoreUnavailable(error) => {
                tracing::warn!(breaker = name, %error, "breaker state unreachable; letting calls through")
            }
            EventKind::TrialLapsed => {
                tracing::warn!(
                    breaker = name,
                    "a half-open trial never reported; counted as failed"
                )
            }
            EventKind::Forced(state) => {
                tracing::info!(breaker = name, %state, "breaker set by hand")
            }
        }
        // No subscriber is not an error.
        let _ = self.events.send(BreakerEvent {
            breaker: name.to_owned(),
            kind,
            at_ms,
        });
    }
}

impl Defined {
    /// Whether a handler's failure message is one the breaker ignores.
    pub(crate) fn ignores(&self, message: &str) -> bool {
        self.ignore.iter().any(|p| p.matches(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failures_racing_clean_admissions_on_threads_open_an_in_process_breaker_once() {
        let mut breakers = Breakers::default();
        breakers.define("racy", BreakerConfig::default()).unwrap();
        let breakers = Arc::new(breakers);
        let mut events = breakers.subscribe();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let breakers = Arc::clone(&breakers);
                tokio::spawn(async move {
                    let defined = breakers.defined("racy").unwrap();
                    let mut rejected = 0;
                    for _ in 0..100 {
                        match breakers.admit(defined).await {
                            Admission::Allowed { trial, .. } => {
                                breakers.record(defined, trial, CallResult::Failure).await;
                            }
                            Admission::Rejected { .. } => rejected += 1,
                        }
                    }
                    rejected
                })
            })
            .collect();
        let mut rejected = 0;
        for task in tasks {
            rejected += task.await.unwrap();
        }
        let mut opened = 0;
        while let Ok(event) = events.try_recv() {
            if let EventKind::StateChanged { from, to } = event.kind {
                assert_eq!((from, to), (BreakerState::Closed, BreakerState::Open));
                opened += 1;
            }
        }
        assert_eq!(opened, 1, "opened once, by the threshold");
        // Through went the threshold's failures and at most one call a task
        // admitted while the opening one was recorded; the rest failed fast
        // (fewer events than the stream keeps, so none was lost).
        assert!(rejected >= 8 * 100 - 5 - 8, "{rejected} rejected");
        assert_eq!(breakers.state("racy").await.unwrap(), BreakerState::Open);
    }
}
