//! One run: a fresh store and instance, the limits, the call, the settling of
//! every intent and the dispatch of the committed ones.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument as _;

use crate::answers::Answers;
use crate::ctx::{EscrowCtx, Settled};
use crate::error::Error;
use crate::grants::Grants;
use crate::limits::{
    DEADLINE_GRACE, Limit, LimitExceeded, Limits, MAX_FAILURE_TEXT_BYTES, deadline_after,
    kept_failure,
};
use crate::outbox::{Claim, Hold, NewEntry, Outbox, Settler, Write};
use crate::outcome::{Delivery, Failure, Fate, Intent, Outcome, Timings};
use crate::patterns::Patterns;
use crate::plugin::Plugin;
use crate::policy::{Commit, Policy};
use crate::recording::Recording;
use crate::run_id::RunId;
use crate::store::RunState;

/// How to run a plugin once: its input, grants, policy and limits.
///
/// The defaults are deny-by-default: no grants, policy [`Commit`], the
/// default [`Limits`], empty input.
#[derive(Debug, Clone)]
pub struct RunOptions {
    input: Vec<u8>,
    grants: Arc<Grants>,
    policy: Arc<dyn Policy>,
    limits: Limits,
    dispatch: Dispatch,
    answers: Option<Arc<Answers>>,
    without_actions: bool,
    record: Option<Arc<Path>>,
    approval: Option<Arc<Patterns>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            input: Vec::new(),
            grants: Arc::new(Grants::new()),
            policy: Arc::new(Commit),
            limits: Limits::default(),
            dispatch: Dispatch::Now,
            answers: None,
            without_actions: false,
            record: None,
            approval: None,
        }
    }
}

/// The sha256 (lowercase hex) of each part of a run's configuration that
/// decides its effects: see [`Plugin::config_digest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigDigest {
    /// The grants.
    pub grants: String,
    /// The policy of the run's scope, blocks included.
    pub policy: String,
    /// The handlers: the effects they perform, their kinds, their timeout.
    pub handlers: String,
    /// The sink routes: the effects each route takes, and the timeout.
    pub routes: String,
}

impl ConfigDigest {
    /// The names of the parts that differ from `other`: `grants`, `policy`,
    /// `handlers`, `routes`.
    pub fn changed(&self, other: &ConfigDigest) -> Vec<&'static str> {
        [
            ("grants", self.grants == other.grants),
            ("policy", self.policy == other.policy),
            ("handlers", self.handlers == other.handlers),
            ("routes", self.routes == other.routes),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
    }
}

/// What [`Plugin::dispatch_committed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The intents were dispatched now (with an outbox: written to it and
    /// delivered, or left to a worker).
    Now,
    /// The outbox already held intents of this run: nothing was written or
    /// dispatched again.
    Already,
}

/// What a successful run does with its committed intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dispatch {
    /// Deliver them now, in order, through the sinks. With an outbox they
    /// are first written to it, durably; those a sink fails to take stay
    /// there for a worker to retry. The default.
    #[default]
    Now,
    /// Write them to the host's outbox and leave them to a delivery worker
    /// (`escrow run --no-deliver`). Needs an outbox.
    Later,
    /// Neither: they stay [`Fate::Committed`](crate::outcome::Fate::Committed) in the
    /// outcome, for the embedder to stage in a transaction of its own
    /// (`PostgresOutbox::stage`) or to dispatch. Compensations journaled in
    /// the host's outbox stay owed until that transaction resolves them.
    Hold,
}

impl RunOptions {
    /// The defaults: no grants, policy `commit`, default limits, no input.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes passed to the plugin's `run` export.
    pub fn input(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.input = input.into();
        self
    }

    /// What the plugin may request. Pass an `Arc<Grants>` to share one set
    /// between many runs.
    pub fn grants(mut self, grants: impl Into<Arc<Grants>>) -> Self {
        self.grants = grants.into();
        self
    }

    /// The policy of the run's scope.
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The policy of the run's scope, shared with other runs.
    pub fn shared_policy(mut self, policy: Arc<dyn Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// The run's limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What a successful run does with its committed intents (default
    /// [`Dispatch::Now`]).
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// Answers every immediate effect, lock request and breaker call from
    /// `answers`, in order: no handler, lock backend or breaker store is
    /// asked, and no compensation is performed. A request they do not hold
    /// fails the run with [`Failure::Diverged`]. See [`crate::answers`].
    pub fn answered_from(mut self, answers: impl Into<Arc<Answers>>) -> Self {
        self.answers = Some(answers.into());
        self
    }

    /// Refuses every action (`forbidden`), whatever the policies say, and
    /// fails the run when one is asked: queries are performed, deferred
    /// effects recorded. What a plan runs under.
    pub fn without_actions(mut self) -> Self {
        self.without_actions = true;
        self
    }

    /// Writes a [`Recording`] of the run into `dir` (which must exist) when
    /// it ends, as `{run_id}.json`: its input, every answer it was given,
    /// and what it requested and returned, for `escrow replay`. A recording
    /// that cannot be written is logged and does not change the run.
    pub fn record(mut self, dir: impl AsRef<Path>) -> Self {
        self.record = Some(Arc::from(dir.as_ref()));
        self
    }

    /// Holds the run for approval when one of its committed intents
    /// matches `patterns`, instead of the host's patterns
    /// ([`HostBuilder::require_approval`](crate::HostBuilder::require_approval));
    /// empty patterns hold no run. A held run needs an outbox, and a
    /// dispatch other than [`Dispatch::Hold`].
    pub fn require_approval(mut self, patterns: Patterns) -> Self {
        self.approval = Some(Arc::new(patterns));
        self
    }

    /// The patterns that hold a run for approval: the run's own, else the
    /// host's.
    fn approval(&self, host: &crate::host::Host) -> Option<Arc<Patterns>> {
        match &self.approval {
            Some(own) => (!own.is_empty()).then(|| Arc::clone(own)),
            None => host.approval().cloned(),
        }
    }

    /// The input set by [`input`](Self::input).
    pub fn input_bytes(&self) -> &[u8] {
        &self.input
    }
}

impl Plugin {
    /// The sha256 of each part of the configuration that decides the
    /// effects of this plugin's runs under `options`, besides the component
    /// and the input. A plan made under one is not applied under another.
    pub fn config_digest(&self, options: &RunOptions) -> ConfigDigest {
        use sha2::Digest as _;
        let digest = |described: String| format!("{:x}", sha2::Sha256::digest(described));
        ConfigDigest {
            grants: digest(format!("{:?}", options.grants)),
            policy: digest(format!("{:?}", options.policy)),
            handlers: digest(format!("{:?}", self.handlers)),
            routes: digest(format!("{:?}", self.sinks)),
        }
    }

    /// Runs the plugin once, in a fresh instance: immediate effects are
    /// performed by the handlers as the guest asks; when it stops, what must
    /// be undone is compensated and, if the run succeeded, its committed
    /// intents are dispatched.
    ///
    /// Waits for a free instance slot when the host already runs its
    /// maximum of concurrent runs.
    ///
    /// # Errors
    ///
    /// Only for host-side problems: a granted directory that cannot be
    /// opened, limits above what the host allows, an instance that cannot be
    /// created. A guest that fails gives an `Ok` [`Outcome`] whose result says
    /// why.
    pub async fn run(&self, options: RunOptions) -> Result<Outcome, Error> {
        let run_id = RunId::new();
        let span = tracing::info_span!(
            "escrow.run",
            plugin = %self.name,
            %run_id,
            policy = ?options.policy,
            status = tracing::field::Empty,
            intents = tracing::field::Empty,
            dispatched = tracing::field::Empty,
            withheld = tracing::field::Empty,
            refused = tracing::field::Empty,
            discarded = tracing::field::Empty,
            instantiate_us = tracing::field::Empty,
            call_us = tracing::field::Empty,
            dispatch_us = tracing::field::Empty,
        );
        let record = options
            .record
            .clone()
            .map(|dir| (dir, options.input.clone()));
        let outcome = self
            .run_as(run_id, options)
            .instrument(span.clone())
            .await?;
        if let Some((dir, input)) = record {
            let recording = Recording::of(&outcome, &input);
            if let Err(error) = recording.write_into(&dir) {
                tracing::warn!(%run_id, %error, "the run could not be recorded");
            }
        }
        crate::observe::close_span(&span, &outcome);
        if let Some(outbox) = &self.outbox {
            outbox.remember(&outcome);
        }
        for observer in self.host.observers() {
            observer(&outcome);
        }
        Ok(outcome)
    }

    async fn run_as(&self, run_id: RunId, options: RunOptions) -> Result<Outcome, Error> {
        let host_max = self.host.max_memory_bytes();
        if options.limits.max_memory_bytes > host_max {
            return Err(Error::Limits(format!(
                "the run's memory limit ({} bytes) is above the host's ({host_max} bytes)",
                options.limits.max_memory_bytes
            )));
        }
        if options.dispatch == Dispatch::Later && self.outbox.is_none() {
            return Err(Error::NoOutbox);
        }
        let approval = options.approval(&self.host);
        if approval.is_some() {
            if self.outbox.is_none() {
                return Err(Error::Approval(
                    "runs held for approval wait in the outbox, and this plugin has none".into(),
                ));
            }
            if options.dispatch == Dispatch::Hold {
                return Err(Error::Approval(
                    "a run whose intents the embedder stages (`Dispatch::Hold`) cannot be held \
                     for approval"
                        .into(),
                ));
            }
        }
        // Slots bound the instances alive at once; the permit is given back
        // as soon as the store is gone, before delivery.
        let waiting = Instant::now();
        let slot = self
            .host
            .slots()
            .acquire()
            .await
            .expect("the slot semaphore is never closed");

        let started = Instant::now();
        let deadline = options.limits.deadline;
        let mut escrow = EscrowCtx::for_run(
            run_id,
            Arc::clone(&self.name),
            options.grants,
            options.policy,
            options.limits,
        )
        .with_handlers(Arc::clone(&self.handlers))
        .with_locks(Arc::clone(&self.locks))
        .with_breakers(Arc::clone(&self.breakers))
        .require_approval(approval);
        if let Some(answers) = options.answers {
            escrow = escrow.answered_from(answers);
        }
        if options.without_actions {
            escrow = escrow.without_actions();
        }
        if let Some(outbox) = &self.outbox {
            escrow = escrow.with_outbox(outbox.clone());
            escrow = match options.dispatch {
                Dispatch::Now => escrow.deliver_inline(),
                Dispatch::Later => escrow,
                Dispatch::Hold => escrow.hold(),
            };
        }
        let mut store = RunState::store(self.pre.engine(), escrow)?;

        // Epoch interruption stops a guest that computes; a guest blocked in
        // a host call (a WASI sleep, say) is cut off here, a little after the
        // deadline so that escrow's own waits, which end at the deadline,
        // can record what they did.
        let cut_off = deadline_after(started, deadline.saturating_add(DEADLINE_GRACE));
        let instance = self.pre.instantiate_async(&mut store).await;
        let instantiated = Instant::now();
        let guest = match instance {
            Ok(instance) => {
                let call = instance.call_run(&mut store, &options.input);
                match tokio::time::timeout_at(cut_off.into(), call).await {
                    Ok(returned) => guest_result(returned),
                    Err(_) => Err(Failure::Limit(Limit::Deadline)),
                }
            }
            // The initial memory may already exceed the cap.
            Err(error) => match error.downcast_ref::<LimitExceeded>() {
                Some(LimitExceeded(limit)) => Err(Failure::Limit(*limit)),
                None => return Err(Error::Instantiate(error)),
            },
        };
        let called = Instant::now();
        let state = store.into_data();
        let guest_stderr = state.stderr();
        drop(slot);
        let Settled {
            mut outcome,
            locks,
            claim,
        } = state.escrow.finish(guest).await;
        let settled = Instant::now();
        if outcome.result.is_ok() {
            match (&self.outbox, options.dispatch) {
                (_, Dispatch::Hold) => {}
                (None, _) => self.sinks.dispatch(&mut outcome.intents).await,
                (Some(outbox), _) => {
                    self.deliver_stored(outbox, claim, outcome.run_id, &mut outcome.intents)
                        .await
                }
            }
        }
        // Locks protect the run's effects, and deferred effects happen at
        // dispatch: they are released only now.
        locks.release().await;
        outcome.guest_stderr = guest_stderr;
        outcome.component_sha256 = self.sha256.clone();
        outcome.timings = Timings {
            instantiate: instantiated - started,
            call: called - instantiated,
            settle: settled - called,
            dispatch: settled.elapsed(),
        };
        crate::observe::record_run(
            &self.metric_keys,
            &outcome,
            started - waiting,
            waiting.elapsed(),
        );
        Ok(outcome)
    }

    /// Delivers the intents a run wrote to the outbox under `claim`, through
    /// the sinks, settling each in the outbox; without a claim (or when the
    /// store cannot be read) they are left to a worker.
    async fn deliver_stored(
        &self,
        outbox: &Outbox,
        claim: Option<Claim>,
        run_id: RunId,
        intents: &mut [Intent],
    ) {
        let deliveries = match claim {
            None => Vec::new(),
            Some(claim) => match outbox.store().claimed(&claim, run_id).await {
                Ok(entries) => {
                    let (_stop, stopped) = tokio::sync::watch::channel(false);
                    let lease = outbox.delivery_lease_duration();
                    let ids = entries.iter().map(|e| e.id);
                    let mut settler =
                        Settler::new(outbox.clone(), claim, lease, Instant::now(), ids);
                    let delivered = crate::outbox::deliver_run(
                        &self.sinks,
                        &self.handlers,
                        &mut settler,
                        &entries,
                        &stopped,
                    )
                    .await;
                    let settled = settler.finish().await;
                    match (delivered, settled) {
                        (Ok(done), Ok(_)) => entries
                            .iter()
                            .map(|e| e.entry.seq)
                            .zip(done.deliveries)
                            .collect(),
                        (Err(error), _) | (_, Err(error)) => {
                            tracing::warn!(%run_id, %error, "settling inline deliveries failed; a worker delivers them again");
                            Vec::new()
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%run_id, %error, "reading back the stored intents failed; a worker delivers them");
                    Vec::new()
                }
            },
        };
        for intent in intents.iter_mut().filter(|i| i.fate == Fate::Committed) {
            let delivery = deliveries
                .iter()
                .find(|(seq, _)| *seq == intent.seq)
                .map_or(Delivery::Queued, |(_, d)| d.clone());
            intent.fate = Fate::Dispatched(delivery);
        }
    }

    /// Dispatches intents committed outside a run of this plugin (a plan's)
    /// as the run `run_id`: their idempotency keys are `{run_id}:{seq}`.
    ///
    /// With an outbox they are written to it once: when it already holds
    /// intents of `run_id`, nothing is written or delivered and the answer is
    /// [`Committed::Already`]. Otherwise they are written and delivered as a
    /// run's are, and those a sink fails to take stay there for a worker.
    /// Without an outbox they are handed to the sinks, every time this is
    /// called. Only intents whose fate is [`Fate::Committed`] are dispatched;
    /// each becomes [`Fate::Dispatched`].
    ///
    /// # Errors
    ///
    /// [`Error::Outbox`] when the outbox cannot be read or written; nothing
    /// was delivered.
    pub async fn dispatch_committed(
        &self,
        run_id: RunId,
        intents: &mut [Intent],
        options: &RunOptions,
    ) -> Result<Committed, Error> {
        let Some(outbox) = &self.outbox else {
            self.sinks.dispatch(intents).await;
            return Ok(Committed::Now);
        };
        if !intents.iter().any(|i| i.fate == Fate::Committed) {
            return Ok(Committed::Now);
        }
        let store_error = |error: crate::outbox::OutboxError| Error::Outbox(error.to_string());
        if outbox
            .store()
            .committed(run_id)
            .await
            .map_err(store_error)?
        {
            return Ok(Committed::Already);
        }
        let now_ms = outbox.now_ms();
        let entries: Vec<NewEntry> = intents
            .iter()
            .filter(|i| i.fate == Fate::Committed)
            .map(NewEntry::intent)
            .collect();
        let held = options
            .approval(&self.host)
            .is_some_and(|p| entries.iter().any(|e| p.is_match(&e.effect)));
        let claim = Claim::new(now_ms, outbox.delivery_lease_duration());
        let written = if held {
            let hold = Hold {
                run_id,
                intents: entries,
                now_ms,
                journaled: false,
                failed_compensations: Vec::new(),
            };
            outbox.hold(hold).await
        } else {
            let write = Write::Commit {
                run_id,
                intents: entries,
                claim: Some(claim.clone()),
                now_ms,
                journaled: false,
                failed_compensations: Vec::new(),
            };
            outbox.write(write).await.map(drop)
        };
        if let Err(error) = written {
            // Another dispatch of the same run won, or this one landed and
            // its answer was lost: either way the store holds it once.
            return match outbox.store().committed(run_id).await {
                Ok(true) => Ok(Committed::Already),
                _ => Err(store_error(error)),
            };
        }
        if held {
            for intent in intents.iter_mut().filter(|i| i.fate == Fate::Committed) {
                intent.fate = Fate::Dispatched(Delivery::Held);
            }
        } else {
            self.deliver_stored(outbox, Some(claim), run_id, intents)
                .await;
        }
        Ok(Committed::Now)
    }

    /// [`Plugin::run`] with `input` encoded as JSON; read the output with
    /// [`Outcome::output`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(plugin: escrow_host::Plugin) -> Result<(), Box<dyn std::error::Error>> {
    /// #[derive(serde::Serialize)]
    /// struct Order { id: u64 }
    /// #[derive(serde::Deserialize)]
    /// struct Receipt { order: u64 }
    ///
    /// let outcome = plugin.run_json(&Order { id: 7 }, escrow_host::RunOptions::new()).await?;
    /// if let Some(receipt) = outcome.output::<Receipt>() {
    ///     println!("order {}", receipt?.order);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Plugin::run`], and [`Error::Input`] when `input` cannot be
    /// encoded.
    pub async fn run_json<In: serde::Serialize + ?Sized>(
        &self,
        input: &In,
        options: RunOptions,
    ) -> Result<Outcome, Error> {
        let input = serde_json::to_vec(input).map_err(|e| Error::Input(e.to_string()))?;
        self.run(options.input(input)).await
    }

    /// [`Plugin::run`] for callers that are not async: blocks the calling
    /// thread until the run is over.
    ///
    /// # Errors
    ///
    /// As [`Plugin::run`], and [`Error::BlockingInAsync`] when called from
    /// inside an async runtime (where blocking would stall it).
    pub fn run_blocking(&self, options: RunOptions) -> Result<Outcome, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::BlockingInAsync);
        }
        self.host.blocking_runtime().block_on(self.run(options))
    }
}

/// What the guest's call amounts to.
fn guest_result(returned: wasmtime::Result<Result<Vec<u8>, String>>) -> Result<Vec<u8>, Failure> {
    match returned {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(message)) => Err(Failure::GuestError(kept_failure(
            message,
            MAX_FAILURE_TEXT_BYTES,
        ))),
        Err(error) => Err(match error.downcast_ref::<LimitExceeded>() {
            Some(LimitExceeded(limit)) => Failure::Limit(*limit),
            None => Failure::Trap(kept_failure(
                match error.downcast_ref::<wasmtime::Trap>() {
                    // The backtrace is there only when the host asked for it.
                    Some(trap) => match error.downcast_ref::<wasmtime::WasmBacktrace>() {
                        Some(backtrace) => format!("{trap}\n{backtrace}"),
                        None => trap.to_string(),
                    },
                    None => format!("{error:#}"),
                },
                MAX_FAILURE_TEXT_BYTES,
            )),
        }),
    }
}
