//! Delivery workers: claim due entries, deliver intents through the sinks
//! and perform owed compensations through the handlers, in order per run,
//! and settle each attempt.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Claim, Entry, EntryKind, Outbox, OutboxError, PRUNE_BATCH, Prune, Settlement, Write};
use crate::handlers::{Call, Handlers};
use crate::outcome::Delivery;
use crate::sinks::{Attempt, Sinks};

/// Default pause between two looks at the outbox when nothing was due.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Runs one claim takes at most.
const CLAIM_RUNS: u32 = 1024;
/// Entries one claim takes at most.
const CLAIM_ENTRIES: u32 = 1024;
/// Settled entries written back together (one transaction, one fsync); the
/// claim's lease is renewed with them. A whole claim: delivered at once, a
/// claim is one statement to take and one to settle, written while the
/// next claim is taken and delivered.
const SETTLE_EVERY: usize = CLAIM_ENTRIES as usize;

/// Write-backs a claim may have in flight while its worker delivers the
/// next entries; the next one waits for it. One: two write-backs of one
/// claim at once would both renew its entries, and could deadlock each
/// other on Postgres. A worker that dies delivers again at most what it had
/// not written back: the last write-back of the claim before, and
/// `SETTLE_EVERY * (SETTLES_IN_FLIGHT + 1)` entries of its current claim.
const SETTLES_IN_FLIGHT: usize = 1;

/// The shortest pause between two renewals of a claim, whatever its lease.
const MIN_RENEW_EVERY: Duration = Duration::from_millis(10);
/// The least delay before an entry whose breaker was open comes due again,
/// so that a half-open breaker (retry-after 0) is not asked in a busy loop.
const MIN_RESCHEDULE_MS: u64 = 100;

/// What a worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries delivered (or compensations performed).
    pub delivered: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Entries that failed for the last time.
    pub dead: u64,
    /// Entries not attempted because their sink's breaker was open.
    pub rescheduled: u64,
    /// Entries whose claim was lost (its lease ran out and another worker
    /// took them) before they were settled.
    pub lost: u64,
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, other: Self) {
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.dead += other.dead;
        self.rescheduled += other.rescheduled;
        self.lost += other.lost;
    }
}

/// A delivery worker over an outbox: what it claims, it delivers through
/// `sinks` (their routes and breakers) and, for owed compensations,
/// performs through `handlers`.
///
/// Any number of workers, in any number of processes, may share a store:
/// a claim holds a run's entries under a token and a lease, so no two
/// workers attempt one entry at once, and a worker whose lease ran out can
/// no longer settle what another has claimed since.
#[derive(Clone)]
pub struct Worker {
    outbox: Outbox,
    sinks: Sinks,
    handlers: Arc<Handlers>,
    poll: Duration,
    /// When (ms, the outbox's clock) the worker last counted the outbox for
    /// its metrics: counting reads the whole table, so it is done at most
    /// every [`STATS_EVERY`], not on every poll.
    counted_at: Arc<AtomicI64>,
    /// When (ms, the outbox's clock) the worker last deleted delivered
    /// entries past their retention.
    pruned_at: Arc<AtomicI64>,
}

/// How often a worker counts the outbox for its metrics.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// How often a worker deletes delivered entries past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Most batches of [`PRUNE_BATCH`] one round of retention deletes, so that
/// delivery is never held up for long; a backlog is worked off over the
/// following rounds, one with each drain.
const PRUNE_BATCHES_PER_ROUND: u32 = 10;

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("outbox", &self.outbox)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

/// A worker running on a tokio task. [`WorkerHandle::stop`] ends it
/// gracefully.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<Report, OutboxError>>,
}

impl WorkerHandle {
    /// Asks the worker to stop: it finishes the delivery in flight, settles
    /// what it delivered, gives back the rest of its claim, and ends.
    /// Returns what it did over its life.
    ///
    /// # Errors
    ///
    /// The store's error if the worker stopped on one.
    pub async fn stop(self) -> Result<Report, OutboxError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| OutboxError::Store(format!("the worker task failed: {e}")))?
    }
}

impl Worker {
    /// A worker delivering `outbox`'s entries through `sinks`, performing
    /// owed compensations with `handlers`.
    pub fn new(outbox: Outbox, sinks: Sinks, handlers: impl Into<Arc<Handlers>>) -> Self {
        Self {
            outbox,
            sinks,
            handlers: handlers.into(),
            poll: DEFAULT_POLL_INTERVAL,
            counted_at: Arc::new(AtomicI64::new(i64::MIN)),
            pruned_at: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }

    /// How long to wait before looking again when nothing was due (default
    /// [`DEFAULT_POLL_INTERVAL`]).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Delivers what is due now, claim after claim, until nothing due is
    /// left to claim; then returns. Entries that fail are rescheduled, not
    /// retried within this call.
    ///
    /// # Errors
    ///
    /// When the store fails; what was settled before stays settled.
    pub async fn run_once(&self) -> Result<Report, OutboxError> {
        let (_stop, stopped) = watch::channel(false);
        self.drain(&stopped).await
    }

    async fn drain(&self, stopped: &watch::Receiver<bool>) -> Result<Report, OutboxError> {
        let now = self.outbox.now_ms();
        let last = self.pruned_at.load(Ordering::Relaxed);
        let maintain = now.saturating_sub(last) >= PRUNE_EVERY.as_millis() as i64;
        if maintain {
            self.pruned_at.store(now, Ordering::Relaxed);
            // First, so that the compensations of runs it rejects are
            // performed in this drain.
            match self.outbox.expire_held().await {
                Ok(0) => {}
                Ok(expired) => tracing::info!(expired, "held runs expired and were rejected"),
                Err(error) => tracing::warn!(%error, "expiring held runs failed"),
            }
        }
        let report = self.drain_claims(stopped).await?;
        if maintain && self.prune_delivered(now).await {
            // A backlog is left: the next round comes with the next drain,
            // not a minute later, so that retention keeps up with any
            // delivery rate.
            self.pruned_at.store(i64::MIN, Ordering::Relaxed);
        }
        let last = self.counted_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= STATS_EVERY.as_millis() as i64 {
            self.counted_at.store(now, Ordering::Relaxed);
            if let Ok(stats) = self.outbox.store().stats().await {
                let waited = stats
                    .oldest_pending_ms
                    .map_or(0, |oldest| (now - oldest).max(0));
                let lag = Duration::from_millis(waited as u64);
                crate::observe::outbox_stats(stats.pending, stats.dead, lag);
            }
        }
        Ok(report)
    }

    /// Deletes delivered entries, and runs of the history, older than the
    /// outbox's retention, at most [`PRUNE_BATCHES_PER_ROUND`] batches of
    /// each. Returns whether more are left.
    async fn prune_delivered(&self, now: i64) -> bool {
        let retain = i64::try_from(self.outbox.retained_for().as_millis()).unwrap_or(i64::MAX);
        let before = now.saturating_sub(retain);
        let store = self.outbox.store();
        let mut left = false;
        for (what, which) in [("delivered entries", true), ("runs of the history", false)] {
            left |= 'rounds: {
                for _ in 0..PRUNE_BATCHES_PER_ROUND {
                    let deleted = match which {
                        true => store.prune(Prune::Delivered, before, PRUNE_BATCH).await,
                        false => store.prune_runs(before, PRUNE_BATCH).await,
                    };
                    match deleted {
                        Ok(deleted) if deleted == u64::from(PRUNE_BATCH) => {}
                        Ok(_) => break 'rounds false,
                        Err(error) => {
                            tracing::warn!(%error, "deleting {what} past their retention failed");
                            break 'rounds false;
                        }
                    }
                }
                true
            };
        }
        left
    }

    /// Claims and delivers until nothing is due. A claim's last
    /// write-backs are written while the next claim is taken and delivered
    /// (it holds other runs), one claim finishing at a time.
    async fn drain_claims(&self, stopped: &watch::Receiver<bool>) -> Result<Report, OutboxError> {
        let mut report = Report::default();
        let mut finishing: Option<Finishing> = None;
        let mut claimed = self.claim().await?;
        while !claimed.entries.is_empty() {
            let Claimed {
                claim,
                entries,
                taken,
            } = claimed;
            let lease = self.outbox.lease_duration();
            let ids = entries.iter().map(|e| e.id);
            let mut settler = Settler::new(self.outbox.clone(), claim, lease, taken, ids);
            report += self.deliver_claim(&mut settler, &entries, stopped).await?;
            if let Some(previous) = finishing.take() {
                report.lost += previous.wait().await?.lost;
            }
            if *stopped.borrow() {
                // What was not attempted goes back for another worker.
                report.lost += settler.finish().await?.lost;
                return Ok(report);
            }
            // A claim that took all it may could have left the rest of its
            // last run, which its settlements make due.
            let full = entries.len() >= CLAIM_ENTRIES as usize;
            finishing = Some(Finishing::spawn(settler, full));
            claimed = self.claim().await?;
            // Nothing else was due: once the last settlements are written,
            // what they made due (a retry without backoff, entries given
            // back, the rest of a run) is claimed.
            if claimed.entries.is_empty() {
                let finished = finishing.take().expect("set above").wait().await?;
                report.lost += finished.lost;
                if finished.made_due {
                    claimed = self.claim().await?;
                }
            }
        }
        if let Some(previous) = finishing {
            report.lost += previous.wait().await?.lost;
        }
        Ok(report)
    }

    /// Delivers a claim's entries, run by run, until it is stopped or the
    /// claim is lost.
    async fn deliver_claim(
        &self,
        settler: &mut Settler,
        entries: &[Entry],
        stopped: &watch::Receiver<bool>,
    ) -> Result<Report, OutboxError> {
        let mut report = Report::default();
        for run in entries.chunk_by(|a, b| a.entry.run_id == b.entry.run_id) {
            if *stopped.borrow() || settler.lost() {
                break;
            }
            report += deliver_run(&self.sinks, &self.handlers, settler, run, stopped)
                .await?
                .report;
        }
        Ok(report)
    }

    /// Claims what is due now, under a fresh claim.
    async fn claim(&self) -> Result<Claimed, OutboxError> {
        let taken = Instant::now();
        let now = self.outbox.now_ms();
        let claim = Claim::new(now, self.outbox.lease_duration());
        let entries = self
            .outbox
            .store()
            .claim(&claim, now, CLAIM_RUNS, CLAIM_ENTRIES)
            .await?;
        Ok(Claimed {
            claim,
            entries,
            taken,
        })
    }

    /// Delivers until `stop` is sent `true`. Between two drains it waits
    /// for a run of this process to commit, for the store to say another
    /// process wrote ([`OutboxStore::changes`](super::OutboxStore::changes)),
    /// or for the poll interval (entries whose backoff ends come due
    /// without a write), whichever comes first.
    async fn follow(self, mut stopped: watch::Receiver<bool>) -> Result<Report, OutboxError> {
        let mut report = Report::default();
        let mut changes = self.outbox.store().changes().await;
        loop {
            // Registered before draining, so that a commit made while the
            // drain runs wakes the wait after it.
            let committed = self.outbox.work().notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            match self.drain(&stopped).await {
                Ok(done) => report += done,
                Err(error) => {
                    tracing::warn!(%error, "the outbox worker could not claim; trying again");
                }
            }
            if *stopped.borrow() {
                return Ok(report);
            }
            let written_elsewhere = async {
                match &mut changes {
                    Some(changes) => changes.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = committed => {}
                () = written_elsewhere => {}
                _ = stopped.changed() => {}
            }
            if *stopped.borrow() {
                return Ok(report);
            }
        }
    }

    /// Runs the worker on the current tokio runtime until
    /// [`WorkerHandle::stop`]. A store error is logged and the worker tries
    /// again after the poll interval.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(self) -> WorkerHandle {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.follow(stopped));
        WorkerHandle { stop, task }
    }
}

/// Settles attempts under one claim, in batches (one transaction, so one
/// fsync, per batch), renewing the claim's lease with each, and gives back
/// what the claim still holds when done.
pub(crate) struct Settler {
    outbox: Outbox,
    claim: Claim,
    /// How long the claim lasts from each renewal.
    lease: Duration,
    pending: Vec<(i64, Settlement)>,
    /// When the claim's lease was last extended (when it was taken, at
    /// first).
    renewed_at: Instant,
    /// Write-backs sent and not answered yet, oldest first: how many
    /// settlements each held, and its answer to come.
    in_flight: VecDeque<(u64, WriteBack)>,
    /// Claimed entries not settled yet: renewed with the claim, and given
    /// back at the end.
    unsettled: foldhash::HashSet<i64>,
    lost: u64,
    /// Whether a settlement made its entry due now.
    made_due: bool,
}

impl Settler {
    /// A settler for the entries `claimed` (their ids) held by `claim`,
    /// taken at `taken`, whose lease is `lease` from each renewal.
    pub(crate) fn new(
        outbox: Outbox,
        claim: Claim,
        lease: Duration,
        taken: Instant,
        claimed: impl IntoIterator<Item = i64>,
    ) -> Self {
        Self {
            outbox,
            claim,
            lease,
            pending: Vec::new(),
            renewed_at: taken,
            in_flight: VecDeque::new(),
            unsettled: claimed.into_iter().collect(),
            lost: 0,
            made_due: false,
        }
    }

    /// Records how an attempt ended; writes back what is pending once
    /// [`SETTLE_EVERY`] settlements wait, or once a third of the lease has
    /// passed since the last renewal (so that a claim whose entries are slow
    /// to deliver is renewed before its lease runs out).
    async fn push(&mut self, id: i64, settlement: Settlement) -> Result<(), OutboxError> {
        self.unsettled.remove(&id);
        self.made_due |= match &settlement {
            Settlement::Retry { due_at_ms, .. } | Settlement::Reschedule { due_at_ms, .. } => {
                *due_at_ms <= self.outbox.now_ms()
            }
            Settlement::Release => true,
            Settlement::Delivered | Settlement::Dead { .. } => false,
        };
        self.pending.push((id, settlement));
        if self.pending.len() >= SETTLE_EVERY || self.renewed_at.elapsed() >= self.renew_every() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Whether the claim's lease ran out and another worker took entries:
    /// nothing more is attempted under it.
    fn lost(&self) -> bool {
        self.lost > 0
    }

    /// How often the claim is renewed while an attempt takes long: three
    /// times a lease, so that one late renewal does not lose it.
    fn renew_every(&self) -> Duration {
        (self.lease / 3).max(MIN_RENEW_EVERY)
    }

    /// Sends the pending settlements (maybe none, to renew the claim) with
    /// the claim's lease extended from now, through the outbox's group
    /// committer, in a transaction shared with other runs' commits and
    /// settlements, without waiting for its answer; waits first for the
    /// answers of earlier ones while [`SETTLES_IN_FLIGHT`] are in flight,
    /// and counts the settlements the claim had lost.
    async fn write_back(&mut self) -> Result<(), OutboxError> {
        while self.in_flight.len() >= SETTLES_IN_FLIGHT {
            self.answered().await?;
        }
        let now_ms = self.outbox.now_ms();
        // Renewing rewrites every entry the claim still holds: only when a
        // third of the lease has passed since the last renewal, or when the
        // renewal is all this write-back is for.
        let settlements = std::mem::take(&mut self.pending);
        let renew = settlements.is_empty() || self.renewed_at.elapsed() >= self.renew_every();
        if renew {
            self.renewed_at = Instant::now();
            self.claim.lease_until_ms = now_ms + self.lease.as_millis() as i64;
        }
        let settled = settlements.len() as u64;
        let renewed = match renew {
            true => self.unsettled.iter().copied().collect(),
            false => Vec::new(),
        };
        let answer = self.outbox.send(Write::Settle {
            claim: self.claim.clone(),
            settlements,
            now_ms,
            renewed,
        });
        self.in_flight.push_back((settled, Box::pin(answer)));
        Ok(())
    }

    /// Waits for the oldest write-back in flight.
    async fn answered(&mut self) -> Result<(), OutboxError> {
        let Some((settled, answer)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let held = answer.await?;
        let lost = settled - held.min(settled);
        if lost > 0 {
            tracing::warn!(
                lost,
                "the claim's lease ran out; another worker holds those entries"
            );
        }
        self.lost += lost;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), OutboxError> {
        match self.pending.is_empty() {
            true => Ok(()),
            false => self.write_back().await,
        }
    }

    /// Writes back what is pending and gives back the rest of the claim.
    pub(crate) async fn finish(mut self) -> Result<Finished, OutboxError> {
        self.flush().await?;
        while !self.in_flight.is_empty() {
            self.answered().await?;
        }
        if !self.unsettled.is_empty() {
            let ids: Vec<i64> = self.unsettled.iter().copied().collect();
            self.outbox.store().release(&self.claim, &ids).await?;
            self.made_due = true;
        }
        Ok(Finished {
            lost: self.lost,
            made_due: self.made_due,
        })
    }
}

/// What one claim took.
struct Claimed {
    claim: Claim,
    /// In delivery order, each run's entries together.
    entries: Vec<Entry>,
    /// When it was taken.
    taken: Instant,
}

/// How a claim's settlements ended.
pub(crate) struct Finished {
    /// Settled entries the claim had lost to another worker.
    pub(crate) lost: u64,
    /// Whether its settlements made entries due now: retried without
    /// backoff, or given back.
    pub(crate) made_due: bool,
}

/// A claim's settler finishing on a task of its own, while its worker
/// takes the next claim.
struct Finishing {
    task: tokio::task::JoinHandle<Result<Finished, OutboxError>>,
    /// Whether the claim took all it may: what follows its last run is due
    /// once it is settled.
    full: bool,
}

impl Finishing {
    fn spawn(settler: Settler, full: bool) -> Self {
        Self {
            task: tokio::spawn(settler.finish()),
            full,
        }
    }

    async fn wait(self) -> Result<Finished, OutboxError> {
        match self.task.await {
            Ok(finished) => finished.map(|f| Finished {
                made_due: f.made_due || self.full,
                ..f
            }),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(OutboxError::Store(
                "the runtime stopped while a claim was settled".into(),
            )),
        }
    }
}

/// The answer to come of a write-back.
type WriteBack = Pin<Box<dyn Future<Output = Result<u64, OutboxError>> + Send>>;

/// What delivering one run's claimed entries came to.
pub(crate) struct RunDelivery {
    pub(crate) report: Report,
    /// For each entry given, in order: what happened to it.
    pub(crate) deliveries: Vec<Delivery>,
}

/// Delivers the claimed `entries` of one run, in order. An entry that must
/// be retried later stops the run's delivery: the entries after it are not
/// attempted (they go back with the claim), so that order holds.
pub(crate) async fn deliver_run(
    sinks: &Sinks,
    handlers: &Handlers,
    settler: &mut Settler,
    entries: &[Entry],
    stopped: &watch::Receiver<bool>,
) -> Result<RunDelivery, OutboxError> {
    let mut report = Report::default();
    let mut deliveries = Vec::with_capacity(entries.len());
    let mut blocked = false;
    let outbox = settler.outbox.clone();
    for entry in entries {
        if blocked || settler.lost() || *stopped.borrow() {
            deliveries.push(Delivery::Queued);
            continue;
        }
        // A slow sink or handler does not let the claim lapse: it is renewed
        // while the attempt runs.
        let attempt = attempt(&outbox, sinks, handlers, entry);
        tokio::pin!(attempt);
        let (settlement, delivery) = loop {
            tokio::select! {
                // The attempt first: one that answers at once (an
                // in-process sink) never arms the renewal timer.
                biased;
                done = &mut attempt => break done,
                () = tokio::time::sleep(settler.renew_every()) => {
                    if let Err(error) = settler.write_back().await {
                        tracing::warn!(%error, "renewing a delivery claim failed");
                    }
                }
            }
        };
        match &settlement {
            Settlement::Delivered => report.delivered += 1,
            Settlement::Dead { .. } => report.dead += 1,
            Settlement::Retry { .. } => (report.retried, blocked) = (report.retried + 1, true),
            Settlement::Reschedule { .. } => {
                (report.rescheduled, blocked) = (report.rescheduled + 1, true);
            }
            Settlement::Release => blocked = true,
        }
        settler.push(entry.id, settlement).await?;
        deliveries.push(delivery);
    }
    Ok(RunDelivery { report, deliveries })
}

/// One attempt at one entry.
async fn attempt(
    outbox: &Outbox,
    sinks: &Sinks,
    handlers: &Handlers,
    entry: &Entry,
) -> (Settlement, Delivery) {
    let retry = outbox.retry();
    let failed = |error: String| {
        let now = outbox.now_ms();
        retry.after_failure(entry.attempts, now, error)
    };
    match entry.entry.kind {
        EntryKind::Intent => match sinks.attempt(&entry.to_intent()).await {
            Attempt::Delivered => (Settlement::Delivered, Delivery::Delivered),
            Attempt::Failed(error) => (failed(error.clone()), Delivery::Failed(error)),
            Attempt::NoSink => (
                failed("no sink route matches the effect".into()),
                Delivery::NoSink,
            ),
            Attempt::BreakerOpen {
                retry_after_ms,
                message,
            } => (
                Settlement::Reschedule {
                    due_at_ms: outbox.now_ms() + retry_after_ms.max(MIN_RESCHEDULE_MS) as i64,
                    reason: message.clone(),
                },
                Delivery::NotAttempted(message),
            ),
        },
        EntryKind::Compensation => {
            let e = &entry.entry;
            let Some(registered) = handlers.get(&e.effect) else {
                let error = format!("no handler performs the compensation `{}`", e.effect);
                return (failed(error.clone()), Delivery::Failed(error));
            };
            let timeout = handlers.call_timeout();
            let call = Call {
                effect: &e.effect,
                payload: &e.payload,
                run_id: e.run_id,
                seq: e.seq,
                compensation: true,
            };
            match tokio::time::timeout(timeout, registered.handler.call(call)).await {
                Ok(Ok(_)) => (Settlement::Delivered, Delivery::Delivered),
                Ok(Err(error)) => (
                    failed(error.to_string()),
                    Delivery::Failed(error.to_string()),
                ),
                Err(_) => {
                    let error = format!("the handler did not answer within {timeout:?}");
                    (failed(error.clone()), Delivery::Failed(error))
                }
            }
        }
    }
}
