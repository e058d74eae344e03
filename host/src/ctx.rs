//! The per-run escrow context: the run's grants, policy, limits and
//! handlers, and the record of every effect it requested, scope by scope.
//!
//! One [`EscrowCtx`] lives in each run's store. The capability modules
//! (`capabilities/*.rs`) check requests and record into it; when the guest
//! has stopped, [`EscrowCtx::finish`] runs what must be undone and settles
//! every intent's fate. Deferred effects are never performed in here.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::answers::{Answers, Replaying};
use crate::backends::{Lease, LockBackend, MemoryLocks};
use crate::breakers::Breakers;
use crate::grants::Grants;
use crate::handlers::Call;
use crate::handlers::{Handler, Handlers};
use crate::limits::{Limit, Limits, MAX_ERROR_TEXT_BYTES, deadline_after, kept_failure};
use crate::outbox::{Claim, Hold, NewEntry, Outbox, OutboxError, Write};
use crate::outcome::{
    BreakerDecision, Compensation, Delivery, Failure, Fate, Fence, Intent, Invocation, LockRecord,
    Outcome, Refusal,
};
use crate::patterns::{Patterns, check_effect_name};
use crate::policy::{Decision, Policy};
use crate::run_id::RunId;

/// A run's escrow state, kept in the store's data.
///
/// Build one per run with [`EscrowCtx::new`], link the escrow interfaces with
/// [`add_to_linker`](crate::capabilities::add_to_linker), call the guest, then
/// [`finish`](EscrowCtx::finish) it with what the guest returned.
pub struct EscrowCtx {
    pub(crate) run_id: RunId,
    pub(crate) plugin: Arc<str>,
    /// Where a successful run's intents are made durable, and compensations
    /// journaled.
    pub(crate) outbox: Option<Outbox>,
    /// Whether the run delivers its own intents right after the durable
    /// commit (they are written claimed by it).
    deliver_inline: bool,
    /// Whether a successful run leaves its committed intents to the
    /// embedder instead of writing them to the outbox.
    hold: bool,
    /// Compensations journaled in the outbox, to resolve when the run ends.
    pub(crate) journaled: bool,
    /// Compensations performed in-process that failed: they stay owed in the
    /// outbox.
    failed_compensations: Vec<(u64, String)>,
    pub(crate) grants: Arc<Grants>,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) handlers: Arc<Handlers>,
    pub(crate) breakers: Arc<Breakers>,
    pub(crate) limits: Limits,
    /// When the run's deadline passes; handler calls do not wait beyond it.
    pub(crate) deadline: Instant,
    /// Requests made so far, refused ones included: the last sequence number.
    requests: u64,
    /// Every deferred request, in request order. While the run goes on, an
    /// accepted intent's fate is what the policies decided (`Committed`,
    /// `Dropped`, `Blocked`) and a scope's rollback makes it `Discarded`;
    /// [`EscrowCtx::finish`] settles the rest.
    pub(crate) records: Vec<Intent>,
    /// Every immediate request, in request order.
    pub(crate) invocations: Vec<Invocation>,
    /// Compensations registered and not yet run or dropped, oldest first.
    pub(crate) compensations: Vec<PendingCompensation>,
    /// Compensations run so far, in the order they ran.
    pub(crate) compensated: Vec<Compensation>,
    /// The locks the run holds, by guard id; released when their guard is
    /// dropped, or after the run ([`Settled::locks`]).
    pub(crate) held: HeldLocks,
    pub(crate) next_guard: u32,
    /// Every lock request, for the outcome.
    pub(crate) lock_records: Vec<LockRecord>,
    /// Lock requests made so far, refused ones included.
    pub(crate) lock_requests: usize,
    /// The keys held now with their tokens, shared by the intents recorded
    /// while they are held; `None` when the held locks changed since they
    /// were last needed (made again by [`fences`](Self::fences)).
    fences: Option<Arc<[Fence]>>,
    /// Every call through a breaker, for the outcome.
    pub(crate) breaker_decisions: Vec<BreakerDecision>,
    /// Open nested scopes, outermost first.
    pub(crate) frames: Vec<Frame>,
    pub(crate) next_frame: u32,
    /// Payload bytes held for the outcome.
    pub(crate) payload_bytes: usize,
    /// The first reason the run must fail even if the guest carries on (a
    /// forbidden effect, an exceeded limit).
    pub(crate) violation: Option<Failure>,
    /// The last rule text turned into a shared string: most intents of a run
    /// share a handful of rules, so equal texts share one allocation.
    last_rule: Option<Arc<str>>,
    /// Where a run answered from recorded answers is in them; `None` for a
    /// run that asks the world.
    pub(crate) replaying: Option<Replaying>,
    /// Whether actions are refused whatever the policy says (a plan).
    pub(crate) no_actions: bool,
    /// The effects whose committed intents hold the run for approval.
    approval: Option<Arc<Patterns>>,
}

impl std::fmt::Debug for EscrowCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EscrowCtx")
            .field("requests", &self.requests)
            .field("frames", &self.frames.len())
            .field("violation", &self.violation)
            .finish_non_exhaustive()
    }
}

/// A compensation registered by a call whose handler ran.
pub(crate) struct PendingCompensation {
    pub(crate) seq: u64,
    pub(crate) effect: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) handler: Arc<dyn Handler>,
}

/// An open nested scope.
pub(crate) struct Frame {
    pub(crate) id: u32,
    /// Index of the first deferred record made inside this scope.
    pub(crate) start: usize,
    /// Index of the first compensation registered inside this scope.
    pub(crate) compensations: usize,
    /// `None` when the scope inherits its parent's rules unchanged.
    pub(crate) policy: Option<Box<dyn Policy>>,
}

/// Why a request was refused before it reached a policy.
pub(crate) struct Refused {
    pub(crate) refusal: Refusal,
    /// The rule recorded with it.
    pub(crate) rule: &'static str,
    /// Whether the payload is kept in the outcome (not when it was too big).
    pub(crate) keep_payload: bool,
}

impl EscrowCtx {
    /// A context for one run under `grants`, `policy` and `limits`, with no
    /// handlers (every immediate effect is refused until
    /// [`with_handlers`](EscrowCtx::with_handlers)).
    pub fn new(grants: Arc<Grants>, policy: Arc<dyn Policy>, limits: Limits) -> Self {
        static PLUGIN: OnceLock<Arc<str>> = OnceLock::new();
        let plugin = Arc::clone(PLUGIN.get_or_init(|| Arc::from("plugin")));
        Self::for_run(RunId::new(), plugin, grants, policy, limits)
    }

    /// [`EscrowCtx::new`] for the run `run_id` of `plugin`: what
    /// `Plugin::run` builds, without making an id it would replace.
    pub(crate) fn for_run(
        run_id: RunId,
        plugin: Arc<str>,
        grants: Arc<Grants>,
        policy: Arc<dyn Policy>,
        limits: Limits,
    ) -> Self {
        // Shared empty defaults: a run that is given its own (as every
        // `Plugin::run` is) pays no allocation for them.
        static NO_HANDLERS: OnceLock<Arc<Handlers>> = OnceLock::new();
        static NO_BREAKERS: OnceLock<Arc<Breakers>> = OnceLock::new();
        static OWN_LOCKS: OnceLock<Arc<dyn LockBackend>> = OnceLock::new();
        Self {
            run_id,
            plugin,
            outbox: None,
            deliver_inline: false,
            hold: false,
            journaled: false,
            failed_compensations: Vec::new(),
            grants,
            policy,
            handlers: Arc::clone(NO_HANDLERS.get_or_init(Arc::default)),
            breakers: Arc::clone(NO_BREAKERS.get_or_init(Arc::default)),
            deadline: deadline_after(Instant::now(), limits.deadline),
            limits,
            requests: 0,
            records: Vec::new(),
            invocations: Vec::new(),
            compensations: Vec::new(),
            compensated: Vec::new(),
            held: HeldLocks {
                backend: Arc::clone(OWN_LOCKS.get_or_init(|| Arc::new(MemoryLocks::new()))),
                leases: Vec::new(),
            },
            next_guard: 1,
            lock_records: Vec::new(),
            lock_requests: 0,
            fences: Some(Arc::clone(no_fences())),
            breaker_decisions: Vec::new(),
            frames: Vec::new(),
            next_frame: 1,
            payload_bytes: 0,
            violation: None,
            last_rule: None,
            replaying: None,
            no_actions: false,
            approval: None,
        }
    }

    /// The run's identity and the plugin's name (by default a fresh id and
    /// `plugin`).
    pub fn with_run(mut self, run_id: RunId, plugin: Arc<str>) -> Self {
        self.run_id = run_id;
        self.plugin = plugin;
        self
    }

    /// Makes the run durable in `outbox`: compensations are journaled before
    /// their action runs, and [`finish`](EscrowCtx::finish) writes the
    /// committed intents in one transaction before the run counts as
    /// committed.
    pub fn with_outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// With an outbox: write the committed intents claimed by this run, so
    /// that it can deliver them itself before any worker does.
    pub(crate) fn deliver_inline(mut self) -> Self {
        self.deliver_inline = true;
        self
    }

    /// With an outbox: a successful run writes nothing to it; the embedder
    /// stages the committed intents itself.
    pub(crate) fn hold(mut self) -> Self {
        self.hold = true;
        self
    }

    /// Answers every immediate effect, lock request and breaker call from
    /// `answers`, in order, instead of asking the world; see
    /// [`answers`](crate::answers). Compensations are not performed.
    pub fn answered_from(mut self, answers: Arc<Answers>) -> Self {
        self.replaying = Some(Replaying::new(answers));
        self
    }

    /// Refuses every action, whatever the policies say, and fails the run
    /// when one is asked: the run only looks (a plan).
    pub fn without_actions(mut self) -> Self {
        self.no_actions = true;
        self
    }

    /// With an outbox: holds the run for approval when one of its committed
    /// intents matches `patterns`. Its intents are written `held`, and
    /// reported [`Delivery::Held`].
    pub fn require_approval(mut self, patterns: Option<Arc<Patterns>>) -> Self {
        self.approval = patterns.filter(|p| !p.is_empty());
        self
    }

    /// Fails the run, answered from recorded answers, because it asked
    /// something they do not hold: the trap that stops the guest.
    pub(crate) fn diverge(&mut self, why: String) -> wasmtime::Error {
        tracing::debug!(%why, "replay diverged");
        self.violate(Failure::Diverged(why.clone()));
        wasmtime::format_err!(why)
    }

    /// The run's identity.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// The handlers that perform this run's immediate effects.
    pub fn with_handlers(mut self, handlers: Arc<Handlers>) -> Self {
        self.handlers = handlers;
        self
    }

    /// The breakers this run may open (by default none).
    pub fn with_breakers(mut self, breakers: Arc<Breakers>) -> Self {
        self.breakers = breakers;
        self
    }

    /// The backend this run takes its locks from (by default one lock table
    /// shared by every context that was given no other).
    pub fn with_locks(mut self, backend: Arc<dyn LockBackend>) -> Self {
        self.held.backend = backend;
        self
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

    /// Takes the next sequence number, or refuses once the run has made
    /// `max_intents` requests. Requests past the limit are not recorded, so a
    /// guest that loops on requests cannot grow the host's memory.
    pub(crate) fn next_seq(&mut self) -> Result<u64, Refusal> {
        self.requests += 1;
        let max = self.limits.max_intents;
        if self.requests > max as u64 {
            self.violate(Failure::Limit(Limit::Intents));
            return Err(Refusal::Limit(format!(
                "{}: at most {max} requests per run",
                Limit::Intents
            )));
        }
        Ok(self.requests)
    }

    /// The checks every request passes before a policy sees it: a well-formed
    /// effect name, payload limits, a grant. `payload` is all the request
    /// would have the host hold. Returns the index of the grant.
    pub(crate) fn check_request(&mut self, effect: &str, payload: usize) -> Result<usize, Refused> {
        if let Err(error) = check_effect_name(effect) {
            return Err(Refused {
                refusal: Refusal::Invalid(error.to_string()),
                rule: "malformed effect name",
                keep_payload: false,
            });
        }
        let limits = &self.limits;
        let exceeded = if payload > limits.max_payload_bytes {
            Some((Limit::PayloadSize, limits.max_payload_bytes))
        } else if self.payload_bytes + payload > limits.max_total_payload_bytes {
            Some((Limit::TotalPayload, limits.max_total_payload_bytes))
        } else {
            None
        };
        if let Some((limit, max)) = exceeded {
            self.violate(Failure::Limit(limit));
            return Err(Refused {
                refusal: Refusal::Limit(format!(
                    "{limit}: {payload} bytes of payload, at most {max}"
                )),
                rule: "payload too large",
                keep_payload: false,
            });
        }
        self.grants
            .effect_grant_index(effect)
            .ok_or_else(|| Refused {
                refusal: Refusal::NotGranted(format!(
                    "`{effect}` is not covered by the plugin's grants"
                )),
                rule: "no grant covers it",
                keep_payload: true,
            })
    }

    /// Asks the run's policy, then each open scope's from the outermost in:
    /// any `Forbid` wins, otherwise the outermost rule that withholds the
    /// effect decides. A nested scope can therefore narrow, never widen.
    pub(crate) fn decide(&self, effect: &str, payload: &[u8]) -> Decision {
        let mut decided = self.policy.decide(effect, payload);
        if matches!(decided, Decision::Forbid(_)) {
            return decided;
        }
        for frame in &self.frames {
            let Some(policy) = &frame.policy else {
                continue;
            };
            let scoped = |rule: Cow<'static, str>| Cow::Owned(format!("scope {} {rule}", frame.id));
            match policy.decide(effect, payload) {
                Decision::Commit => {}
                Decision::Forbid(rule) => return Decision::Forbid(scoped(rule)),
                _ if !decided.is_commit() => {}
                Decision::Drop(rule) => decided = Decision::Drop(scoped(rule)),
                Decision::Block(rule) => decided = Decision::Block(scoped(rule)),
            }
        }
        decided
    }

    /// The keys held now with their tokens, for an intent or a journal entry
    /// recorded now; made again only after the held locks changed, so that
    /// taking and releasing locks with nothing recorded between costs
    /// nothing here.
    #[inline]
    pub(crate) fn fences(&mut self) -> Arc<[Fence]> {
        match &self.fences {
            Some(fences) => Arc::clone(fences),
            None => self.make_fences(),
        }
    }

    #[cold]
    fn make_fences(&mut self) -> Arc<[Fence]> {
        let leases = &self.held.leases;
        let fences: Arc<[Fence]> = if leases.is_empty() {
            Arc::clone(no_fences())
        } else {
            leases
                .iter()
                .flat_map(|(_, lease)| {
                    lease.keys.iter().map(|key| Fence {
                        key: key.clone(),
                        token: lease.token,
                    })
                })
                .collect()
        };
        Arc::clone(self.fences.insert(fences))
    }

    /// Notes that a lock was taken or released: the fences are made again
    /// when next needed.
    pub(crate) fn held_locks_changed(&mut self) {
        self.fences = None;
    }

    /// `text` as a shared rule, reusing the last one made when equal.
    pub(crate) fn rule(&mut self, text: &str) -> Arc<str> {
        match &self.last_rule {
            Some(rule) if **rule == *text => Arc::clone(rule),
            _ => Arc::clone(self.last_rule.insert(Arc::from(text))),
        }
    }

    /// Marks the held intents recorded from `start` on as discarded.
    pub(crate) fn discard_from(&mut self, start: usize, rule: &Arc<str>) {
        for intent in &mut self.records[start..] {
            if intent.fate.is_held() {
                intent.fate = Fate::Discarded;
                intent.rule = Arc::clone(rule);
            }
        }
    }

    /// Runs the compensations registered from `start` on, newest first, and
    /// records each result; none waits beyond `until`. A failing
    /// compensation does not stop the others.
    ///
    /// Each stays registered until its handler has answered, so that a run
    /// cut off in the middle still owes the ones it had not done. During the
    /// run (`last_chance` false), running out of time leaves the rest
    /// registered for [`finish`](EscrowCtx::finish), which has a budget of
    /// its own; at the end they are reported failed.
    pub(crate) async fn compensate_from(
        &mut self,
        start: usize,
        cause: &Arc<str>,
        until: Instant,
        last_chance: bool,
    ) {
        let timeout = self.handlers.call_timeout();
        while self.compensations.len() > start {
            if !last_chance && Instant::now() >= until {
                return;
            }
            let undo = self.compensations.last().expect("checked by the loop");
            let call = Call {
                effect: &undo.effect,
                payload: &undo.payload,
                run_id: self.run_id,
                seq: undo.seq,
                compensation: true,
            };
            let left = until.saturating_duration_since(Instant::now());
            let result = if self.replaying.is_some() {
                Err("not performed: a replay calls no handler".to_owned())
            } else if left.is_zero() {
                Err("the time for compensations ran out before this one".to_owned())
            } else {
                let wait = timeout.min(left);
                match tokio::time::timeout(wait, undo.handler.call(call)).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(error)) => Err(kept_failure(error.to_string(), MAX_ERROR_TEXT_BYTES)),
                    Err(_) if wait < timeout && !last_chance => return,
                    Err(_) if wait < timeout => {
                        Err(format!("the time for compensations ran out after {wait:?}"))
                    }
                    Err(_) => Err(format!("the handler did not answer within {timeout:?}")),
                }
            };
            let undo = self.compensations.pop().expect("still registered");
            tracing::debug!(
                seq = undo.seq, effect = %undo.effect, ok = result.is_ok(), %cause,
                "compensation"
            );
            if let Err(error) = &result {
                tracing::warn!(
                    run_id = %self.run_id, seq = undo.seq, effect = %undo.effect, %error,
                    "compensation failed"
                );
                if self.journaled {
                    self.failed_compensations.push((undo.seq, error.clone()));
                }
            }
            self.compensated.push(Compensation {
                seq: undo.seq,
                effect: undo.effect,
                payload: undo.payload,
                cause: Arc::clone(cause),
                result,
            });
        }
    }

    /// Ends the run: combines what the guest returned with any violation the
    /// host noted, undoes what must be undone, and settles the fate of every
    /// request. Call it once the guest has stopped.
    ///
    /// Scopes the guest left open are rolled back, compensations included.
    /// On success, intents keep the fate the policies gave them:
    /// [`Fate::Committed`] ones are ready for
    /// [`Host::dispatch`](crate::host::Host::dispatch), and the remaining
    /// compensations are dropped. On failure every committed, dropped or
    /// blocked intent becomes [`Fate::Discarded`] and the remaining
    /// compensations run, newest first. Refused requests stay refused.
    ///
    /// With an [outbox](EscrowCtx::with_outbox), a successful run's
    /// committed intents are written to it, durably, before the run counts
    /// as committed; if that fails the run fails with [`Failure::Outbox`].
    ///
    /// The locks the run still holds are handed back in [`Settled::locks`]:
    /// release them once the committed intents are dispatched. The outcome's
    /// stderr and timings are left empty for the caller.
    pub async fn finish(mut self, guest: Result<Vec<u8>, Failure>) -> Settled {
        // Undoing has a budget of its own, from when the guest stopped.
        let until = deadline_after(Instant::now(), self.limits.compensation_budget);
        let mut result = match self.violation.take() {
            Some(failure) => Err(failure),
            None => guest,
        };
        while let Some(frame) = self.frames.pop() {
            let rule: Arc<str> = Arc::from(format!(
                "scope {} was still open when the run ended",
                frame.id
            ));
            self.discard_from(frame.start, &rule);
            self.compensate_from(frame.compensations, &rule, until, true)
                .await;
        }
        let mut claim = None;
        // Whether the store, not this process, decides what is owed: the
        // commit's answer was lost, so it may or may not have landed.
        let mut in_doubt = false;
        if result.is_ok()
            && !self.hold
            && let Some(outbox) = self.outbox.clone()
        {
            match self.commit_durably(&outbox).await {
                Ok(claimed) => claim = claimed,
                Err((failure, doubt)) => {
                    result = Err(failure);
                    in_doubt = doubt;
                }
            }
        }
        if result.is_err() {
            let failed: Arc<str> = Arc::from("the run failed");
            self.discard_from(0, &failed);
            if in_doubt {
                // Left journaled: if the commit landed they are resolved, and
                // if not a worker performs them once they are due.
                self.compensations.clear();
            } else {
                self.compensate_from(0, &failed, until, true).await;
                self.resolve_journal().await;
            }
        }
        let outcome = Outcome {
            run_id: self.run_id,
            plugin: self.plugin,
            component_sha256: None,
            result,
            intents: self.records,
            invocations: self.invocations,
            locks: self.lock_records,
            breakers: self.breaker_decisions,
            compensations: self.compensated,
            guest_stderr: Vec::new(),
            timings: Default::default(),
        };
        Settled {
            outcome,
            locks: self.held,
            claim,
        }
    }

    /// Writes the committed intents, and resolves the journaled
    /// compensations, in one durable transaction. Returns the claim the
    /// intents were written under, or the failure and whether the commit is
    /// in doubt.
    async fn commit_durably(&mut self, outbox: &Outbox) -> Result<Option<Claim>, (Failure, bool)> {
        let intents: Vec<NewEntry> = self
            .records
            .iter()
            .filter(|i| i.fate == Fate::Committed)
            .map(NewEntry::intent)
            .collect();
        if intents.is_empty() && !self.journaled {
            return Ok(None);
        }
        let now_ms = outbox.now_ms();
        let held = self
            .approval
            .as_ref()
            .is_some_and(|p| intents.iter().any(|i| p.is_match(&i.effect)));
        let claim = (self.deliver_inline && !intents.is_empty() && !held)
            .then(|| Claim::new(now_ms, outbox.delivery_lease_duration()));
        let has_intents = !intents.is_empty();
        let failed_compensations = std::mem::take(&mut self.failed_compensations);
        let written = if held {
            let hold = Hold {
                run_id: self.run_id,
                intents,
                now_ms,
                journaled: self.journaled,
                failed_compensations,
            };
            outbox.hold(hold).await
        } else {
            let write = Write::Commit {
                run_id: self.run_id,
                intents,
                claim: claim.clone(),
                now_ms,
                journaled: self.journaled,
                failed_compensations,
            };
            outbox.write(write).await.map(drop)
        };
        if held && written.is_ok() {
            self.mark_held();
        }
        let Err(error) = written else {
            return Ok(claim);
        };
        // The answer may have been lost after the transaction committed: ask.
        let landed = if has_intents {
            outbox.store().committed(self.run_id).await
        } else {
            Err(error.clone())
        };
        // The failure says "outbox:" once: the store's message without its
        // own prefix.
        let error = match error {
            OutboxError::Store(message) => message,
            other => other.to_string(),
        };
        match landed {
            Ok(true) => {
                if held {
                    self.mark_held();
                }
                Ok(claim)
            }
            Ok(false) => Err((
                Failure::Outbox(format!(
                    "the committed intents could not be stored: {error}"
                )),
                false,
            )),
            Err(_) => Err((
                Failure::Outbox(format!(
                    "the commit is in doubt ({error}); the store decides whether its intents \
                     are delivered or its compensations performed"
                )),
                true,
            )),
        }
    }

    /// Reports the committed intents held for approval in the outbox.
    fn mark_held(&mut self) {
        for intent in self
            .records
            .iter_mut()
            .filter(|i| i.fate == Fate::Committed)
        {
            intent.fate = Fate::Dispatched(Delivery::Held);
        }
    }

    /// After a failed run performed its compensations: forgets the journaled
    /// ones that succeeded, and leaves those that failed owed.
    async fn resolve_journal(&mut self) {
        let Some(outbox) = self.outbox.clone().filter(|_| self.journaled) else {
            return;
        };
        let write = Write::Resolve {
            run_id: self.run_id,
            failed: std::mem::take(&mut self.failed_compensations),
            due_at_ms: outbox.now_ms(),
        };
        if let Err(error) = outbox.write(write).await {
            tracing::warn!(
                run_id = %self.run_id, %error,
                "the performed compensations could not be marked done; a worker performs them again"
            );
        }
    }
}

/// The next handle id from the counter `next`, skipping ids `in_use`: ids
/// wrap around instead of overflowing (a guest may open scopes billions of
/// times in a long run), and stay unique among the handles still open.
pub(crate) fn next_id(next: &mut u32, in_use: impl Fn(u32) -> bool) -> u32 {
    let mut id = *next;
    while in_use(id) {
        id = id.wrapping_add(1);
    }
    *next = id.wrapping_add(1);
    id
}

/// The fences of intents recorded while no lock is held, shared.
pub(crate) fn no_fences() -> &'static Arc<[Fence]> {
    static NO_FENCES: OnceLock<Arc<[Fence]>> = OnceLock::new();
    NO_FENCES.get_or_init(|| Arc::from([]))
}

/// A finished run: its outcome, and the locks it still holds.
#[derive(Debug)]
pub struct Settled {
    /// What the run did; its committed intents wait for dispatch.
    pub outcome: Outcome,
    /// The locks the run still holds. Release them after dispatching the
    /// committed intents, so that the effects they protect are applied
    /// before another run can take the same keys. Dropping them releases
    /// them too, in the background.
    pub locks: HeldLocks,
    /// The claim the committed intents were written under in the outbox,
    /// for the run to deliver them itself.
    pub(crate) claim: Option<Claim>,
}

/// Locks held by a run, with the backend they came from.
pub struct HeldLocks {
    pub(crate) backend: Arc<dyn LockBackend>,
    /// Leases by guard id, in acquisition order.
    pub(crate) leases: Vec<(u32, Lease)>,
}

impl std::fmt::Debug for HeldLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.leases.iter().map(|(_, lease)| lease))
            .finish()
    }
}

impl HeldLocks {
    /// Releases every lock, newest first.
    pub async fn release(mut self) {
        release_all(Arc::clone(&self.backend), std::mem::take(&mut self.leases)).await;
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

async fn release_all(backend: Arc<dyn LockBackend>, leases: Vec<(u32, Lease)>) {
    for (_, lease) in leases.into_iter().rev() {
        let keys = lease.keys.clone();
        if let Err(error) = backend.release(lease).await {
            tracing::warn!(?keys, %error, "releasing locks failed; they end when their lease expires");
        }
    }
}

impl Drop for HeldLocks {
    /// A run abandoned midway (its future dropped) still gives its locks
    /// back.
    fn drop(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        let leases = std::mem::take(&mut self.leases);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(release_all(Arc::clone(&self.backend), leases));
            }
            Err(_) => tracing::warn!(
                "locks dropped outside an async runtime: they end when their lease expires"
            ),
        }
    }
}
