//! The durable outbox: where a committed run's intents are written, in one
//! transaction, before the run reports `committed`, and where delivery
//! workers find them.
//!
//! ```text
//! run ends ok ─▶ Outbox::write(Commit) ─▶ group commit (one transaction, one fsync
//!                                          for every run waiting) ─▶ `committed`
//! Worker: claim (lease + token) ─▶ deliver through the sinks, in seq order per run
//!         ─▶ settle: delivered │ retry later (backoff) │ dead
//! ```
//!
//! Two stores implement [`OutboxStore`]: [`SqliteOutbox`] (a file, the
//! embedded default) and, with the `postgres` feature, `PostgresOutbox`
//! (many hosts, any number of workers). Both keep one table,
//! `escrow_outbox`, whose schema is migrated by the code (`docs/delivery.md`).
//!
//! The same table journals the compensations of immediate actions: a
//! compensation is written before its action's handler is called, deleted
//! when the run commits, and performed by a worker once it is due if the
//! run never finished (its host died). Delivery of both kinds is
//! at-least-once; every entry carries an idempotency key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::clock::{Clock, SystemClock};
use crate::limits::{MAX_ERROR_TEXT_BYTES, kept_failure};
use crate::outcome::{Fence, Intent};
use crate::run_id::RunId;

mod approval;
mod committer;
mod history;
mod requests;
mod sqlite;
mod worker;

#[cfg(feature = "postgres")]
mod postgres;

pub use approval::{
    DEFAULT_APPROVAL_EXPIRY, Decide, DecidedIntent, Decision, DecisionCounts, EXPIRED,
    EXPIRY_DECIDER, Hold, MAX_DECIDER_BYTES, MAX_REASON_BYTES, Verdict,
};
pub(crate) use approval::{intents_from_json, intents_json};
pub use committer::GROUP_LINGER;
pub use history::{
    HISTORY_QUEUE, MAX_RUNS_PAGE, RunFilter, RunRecord, RunSummary, first_run_id_at,
};
#[cfg(feature = "postgres")]
pub use postgres::{
    POSTGRES_CONNECT_TIMEOUT, POSTGRES_IDLE_TRANSACTION_TIMEOUT, POSTGRES_NOTIFY_INTERVAL,
    POSTGRES_POOL_SIZE, POSTGRES_STATEMENT_TIMEOUT, PostgresOutbox,
};
pub use requests::{
    MAX_REQUEST_KEY_BYTES, REQUEST_CLAIM_TIMEOUT, RequestClaim, RequestKey, check_request_key,
};
pub use sqlite::{
    SQLITE_BUSY_PAUSE, SQLITE_BUSY_TIMEOUT, SQLITE_WATCH_MAX, SQLITE_WATCH_MIN, SqliteOutbox,
};
pub use worker::{DEFAULT_POLL_INTERVAL, Report, Worker, WorkerHandle};
pub(crate) use worker::{Settler, deliver_run};

/// Default number of delivery attempts before an entry is dead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Default delay before the first retry; each retry doubles it.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Default longest delay between two attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Default lease of a claim: a worker that has not settled or renewed its
/// claim by then is presumed dead, and its entries may be claimed again.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Default lease of the claim a host takes on the intents it commits, to
/// deliver them itself right after the run. It is renewed while the host
/// delivers, so it can be short: if the host dies, a worker takes the
/// intents this long after its last renewal, not a worker's whole lease.
/// The price: a host stalled longer than this (a long GC-like pause, a
/// stopped process) may deliver an intent a worker has taken too; the
/// idempotency key is the same for both.
pub const DEFAULT_DELIVERY_LEASE: Duration = Duration::from_secs(5);
/// Default time delivered entries are kept before workers delete them.
pub const DEFAULT_RETAIN_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most entries one prune statement deletes: deletion goes in batches this
/// size, each its own short transaction, so that it never holds a long lock.
pub const PRUNE_BATCH: u32 = 1000;
/// Default time, after a run's deadline, before the compensations it
/// journaled and never resolved are owed (its host is presumed dead).
pub const DEFAULT_COMPENSATION_GRACE: Duration = Duration::from_secs(60);

/// What an outbox's group committer has done so far
/// ([`Outbox::group_commits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommits {
    /// Transactions committed (one fsync each).
    pub transactions: u64,
    /// Writes (runs' commits, journal entries, settlements) they held.
    pub writes: u64,
}

/// Whether opening an outbox may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the store (the file, the schema) when it is missing: what a
    /// host that commits runs into it does.
    Create,
    /// Refuse a store that does not hold an outbox yet: what tools that read
    /// or repair one do, so that a mistyped path is an error, not a new,
    /// empty outbox.
    Existing,
}

/// What went wrong with the outbox's store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The store could not be opened or reached.
    #[error("cannot open the outbox `{what}`: {message}")]
    Open {
        /// The file or URL.
        what: String,
        /// Why.
        message: String,
    },
    /// The store holds something this version cannot read: a schema from a
    /// newer escrow, or a file that is not an outbox.
    #[error("the outbox `{what}` is unusable: {message}")]
    Corrupt {
        /// The file or URL.
        what: String,
        /// Why.
        message: String,
    },
    /// A retry named entries that cannot be retried; nothing was changed.
    #[error("{}", not_retriable(unknown, delivered, decided))]
    NotRetriable {
        /// Ids the outbox does not hold.
        unknown: Vec<i64>,
        /// Ids of entries delivered already.
        delivered: Vec<i64>,
        /// Ids of entries of runs held for approval or rejected: a decision
        /// moves those, not a retry.
        decided: Vec<i64>,
    },
    /// A decision named a run that holds nothing: it was never held, or
    /// is unknown. Nothing was changed.
    #[error("run {run_id} is not held for approval: nothing was changed")]
    NotHeld {
        /// The run.
        run_id: RunId,
    },
    /// A decision named a run decided already. Nothing was changed.
    #[error(
        "run {run_id} was already {verdict} by {by} at {}: nothing was changed",
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis((*at_ms).max(0) as u64)
        )
    )]
    AlreadyDecided {
        /// The run.
        run_id: RunId,
        /// What was decided.
        verdict: Verdict,
        /// By whom.
        by: String,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// An operation failed.
    #[error("outbox: {0}")]
    Store(String),
    /// The outbox's writer is gone (its thread panicked).
    #[error("outbox: the writer has stopped")]
    Closed,
}

/// The columns an [`Entry`] is read from, in the order both stores read
/// them.
const ENTRY_COLUMNS: &str = "id, kind, run_id, seq, plugin, effect, payload, fences, status, \
                             attempts, due_at, last_error, created_at, attempts_before_retry";

/// The age of the oldest pending entry, how many pending entries a claim
/// holds and until when: read through the indexes of pending entries,
/// whatever else the table holds.
const PENDING_STATS: &str = "SELECT (SELECT MIN(created_at) FROM escrow_outbox \
                                      WHERE status = 'pending'), \
                             COUNT(*), MAX(lease_until) FROM escrow_outbox \
                             WHERE status = 'pending' AND claim_token IS NOT NULL";

/// How many [`ENTRY_COLUMNS`] there are: the index of a column selected
/// after them.
const ENTRY_COLUMN_COUNT: usize = {
    let bytes = ENTRY_COLUMNS.as_bytes();
    let (mut i, mut commas) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b',' {
            commas += 1;
        }
        i += 1;
    }
    commas + 1
};

/// The message of [`OutboxError::NotRetriable`].
fn not_retriable(unknown: &[i64], delivered: &[i64], decided: &[i64]) -> String {
    let ids = |ids: &[i64]| {
        ids.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !unknown.is_empty() {
        parts.push(format!("no entry has the id {}", ids(unknown)));
    }
    if !delivered.is_empty() {
        parts.push(format!("{} delivered already", ids(delivered)));
    }
    if !decided.is_empty() {
        parts.push(format!(
            "{} held for approval or rejected (approve the run instead)",
            ids(decided)
        ));
    }
    format!("nothing retried: {}", parts.join("; "))
}

/// The ids of a [`Retry::Ids`], deduplicated, when every one names a
/// pending or dead entry (`found` holds the status of each id the store
/// holds); else the refusal naming the others.
fn retriable(ids: &[i64], found: &HashMap<i64, String>) -> Result<Vec<i64>, OutboxError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let (mut unknown, mut delivered, mut decided) = (Vec::new(), Vec::new(), Vec::new());
    for &id in &ids {
        match found.get(&id).map(String::as_str) {
            None => unknown.push(id),
            Some("delivered") => delivered.push(id),
            Some("held" | "rejected") => decided.push(id),
            Some(_) => {}
        }
    }
    match unknown.is_empty() && delivered.is_empty() && decided.is_empty() {
        true => Ok(ids),
        false => Err(OutboxError::NotRetriable {
            unknown,
            delivered,
            decided,
        }),
    }
}

/// Whether an entry is an intent to deliver or a compensation to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A committed intent, delivered through the sinks in seq order.
    Intent,
    /// A journaled compensation, performed by its handler in reverse seq
    /// order if its run never resolved it.
    Compensation,
}

impl EntryKind {
    /// `intent` or `compensation`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Intent => "intent",
            EntryKind::Compensation => "compensation",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, OutboxError> {
        match s {
            "intent" => Ok(EntryKind::Intent),
            "compensation" => Ok(EntryKind::Compensation),
            other => Err(OutboxError::Store(format!("unknown entry kind `{other}`"))),
        }
    }

    /// The delivery order of entry `seq` within its run: intents in seq
    /// order, compensations in reverse.
    pub(crate) fn ord(self, seq: u64) -> i64 {
        match self {
            EntryKind::Intent => seq as i64,
            EntryKind::Compensation => -(seq as i64),
        }
    }
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryStatus {
    /// Waiting to be delivered (or performed), now or at its due time.
    Pending,
    /// Delivered: a sink accepted it, or its compensation succeeded.
    Delivered,
    /// Given up after the configured number of attempts; kept with its last
    /// error until retried by hand.
    Dead,
    /// Of a run held for approval: not due until the run is approved.
    Held,
    /// Of a run rejected: never delivered.
    Rejected,
}

impl EntryStatus {
    /// `pending`, `delivered`, `dead`, `held` or `rejected`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Pending => "pending",
            EntryStatus::Delivered => "delivered",
            EntryStatus::Dead => "dead",
            EntryStatus::Held => "held",
            EntryStatus::Rejected => "rejected",
        }
    }
}

impl std::str::FromStr for EntryStatus {
    type Err = OutboxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(EntryStatus::Pending),
            "delivered" => Ok(EntryStatus::Delivered),
            "dead" => Ok(EntryStatus::Dead),
            "held" => Ok(EntryStatus::Held),
            "rejected" => Ok(EntryStatus::Rejected),
            other => Err(OutboxError::Store(format!(
                "unknown status `{other}`; use pending, delivered, dead, held or rejected"
            ))),
        }
    }
}

/// One entry as it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Intent or compensation.
    pub kind: EntryKind,
    /// The run that recorded it.
    pub run_id: RunId,
    /// Its sequence number in the run (for a compensation: the call it
    /// undoes).
    pub seq: u64,
    /// The plugin that recorded it.
    pub plugin: String,
    /// The effect to deliver, or the compensating effect to perform.
    pub effect: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The locks held when it was recorded.
    pub fences: Vec<Fence>,
}

impl NewEntry {
    /// The entry for a committed intent.
    pub fn intent(intent: &Intent) -> Self {
        Self {
            kind: EntryKind::Intent,
            run_id: intent.run_id,
            seq: intent.seq,
            plugin: intent.plugin.to_string(),
            effect: intent.effect.clone(),
            payload: intent.payload.clone(),
            fences: intent.fences.to_vec(),
        }
    }
}

/// One entry as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The store's id for it.
    pub id: i64,
    /// What was written.
    pub entry: NewEntry,
    /// Where it stands.
    pub status: EntryStatus,
    /// Delivery attempts since the entry was written or last retried by
    /// hand: the ones its retry policy counts.
    pub attempts: u32,
    /// Delivery attempts made before it was last retried by hand (kept, so
    /// that a retry does not erase its history).
    pub attempts_before_retry: u32,
    /// When it may next be attempted (ms since the Unix epoch).
    pub due_at_ms: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was written (ms since the Unix epoch).
    pub created_at_ms: i64,
}

impl Entry {
    /// `{run_id}:{seq}` for an intent, `{run_id}:{seq}:compensate` for a
    /// compensation: the same on every attempt.
    pub fn idempotency_key(&self) -> String {
        match self.entry.kind {
            EntryKind::Intent => self.entry.run_id.idempotency_key(self.entry.seq),
            EntryKind::Compensation => self.entry.run_id.compensation_key(self.entry.seq),
        }
    }

    /// The entry as an [`Intent`], for the sinks.
    pub fn to_intent(&self) -> Intent {
        let e = &self.entry;
        Intent {
            run_id: e.run_id,
            plugin: Arc::from(e.plugin.as_str()),
            seq: e.seq,
            effect: e.effect.clone(),
            payload: e.payload.clone(),
            fate: crate::outcome::Fate::Committed,
            rule: Arc::from("committed to the outbox"),
            fences: Arc::from(e.fences.clone()),
        }
    }

    /// The entry as JSON, as `escrow outbox list --json` and `escrow serve`'s
    /// API show it: times in RFC 3339 ([`time_text`]), the payload as
    /// [`bytes_json`](crate::outcome::bytes_json) writes it.
    pub fn to_json(&self) -> serde_json::Value {
        let e = &self.entry;
        serde_json::json!({
            "id": self.id,
            "kind": e.kind.as_str(),
            "status": self.status.as_str(),
            "run_id": e.run_id.to_string(),
            "seq": e.seq,
            "idempotency_key": self.idempotency_key(),
            "plugin": e.plugin,
            "effect": e.effect,
            "payload": crate::outcome::bytes_json(&e.payload),
            "attempts": self.attempts,
            "attempts_before_retry": self.attempts_before_retry,
            "due_at": time_text(self.due_at_ms),
            "created_at": time_text(self.created_at_ms),
            "last_error": self.last_error,
        })
    }
}

/// `ms` since the Unix epoch in RFC 3339, to the millisecond
/// (`2026-12-07T10:50:06.123Z`): how the outbox's times are shown. A time
/// before the epoch is shown as the epoch.
pub fn time_text(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// A claim on entries: only its holder can settle them, and only until its
/// lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Random and unique per claim.
    pub token: String,
    /// Until when (ms since the Unix epoch) nobody else may claim the entries.
    pub lease_until_ms: i64,
}

impl Claim {
    /// A fresh claim lasting `lease` from `now_ms`.
    pub fn new(now_ms: i64, lease: Duration) -> Self {
        Self {
            token: uuid::Uuid::new_v4().simple().to_string(),
            lease_until_ms: now_ms + lease.as_millis() as i64,
        }
    }
}

/// A durable change, applied with others in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Attempts under `claim` ended: `settlements` (entry id, how it ended)
    /// are applied to the entries the claim still holds, and the entries
    /// `renewed` it still holds are extended to its lease. Its answer is
    /// how many settled entries were still held: an entry whose lease ran
    /// out and was claimed again since is left alone.
    Settle {
        /// The claim the attempts were made under.
        claim: Claim,
        /// Each entry's id and how its attempt ended.
        settlements: Vec<(i64, Settlement)>,
        /// When (stamps delivered entries).
        now_ms: i64,
        /// The ids of the claim's entries not settled yet whose lease is
        /// extended to `claim.lease_until_ms`; empty for none. Each is
        /// rewritten, so a worker renews only as often as its lease needs.
        renewed: Vec<i64>,
    },
    /// A run committed: its committed intents become pending entries, due
    /// now, and the compensations it journaled are resolved: dropped, but
    /// for those that failed in a nested scope's rollback, which stay owed.
    /// With a claim, the intents are written already claimed by it, for the
    /// run to deliver them itself.
    Commit {
        /// The run.
        run_id: RunId,
        /// Its committed intents, in seq order.
        intents: Vec<NewEntry>,
        /// A claim the entries are written under.
        claim: Option<Claim>,
        /// When the entries are written (ms since the Unix epoch).
        now_ms: i64,
        /// Whether the run journaled compensations, which the commit
        /// resolves.
        journaled: bool,
        /// Compensations performed during the run that failed (the seq of
        /// the call they undo, and the error): they stay owed, due now.
        failed_compensations: Vec<(u64, String)>,
    },
    /// A compensation is about to be owed: journaled before its action's
    /// handler is called, due at `due_at_ms` unless the run resolves it.
    Journal {
        /// The compensation.
        entry: NewEntry,
        /// When it is owed if its run never ends (ms since the Unix epoch).
        due_at_ms: i64,
        /// When it is written.
        now_ms: i64,
    },
    /// A failed run performed its compensations: those that failed stay
    /// owed, due at `due_at_ms`; the others are forgotten.
    Resolve {
        /// The run.
        run_id: RunId,
        /// Compensations that failed: the seq of the call they undo, and the
        /// error.
        failed: Vec<(u64, String)>,
        /// When the failed ones are due again.
        due_at_ms: i64,
    },
}

impl Write {
    /// Whether it makes entries due now that no claim holds: workers
    /// waiting for work should look.
    pub fn wakes_workers(&self) -> bool {
        match self {
            Write::Commit {
                intents,
                claim,
                failed_compensations,
                ..
            } => (claim.is_none() && !intents.is_empty()) || !failed_compensations.is_empty(),
            Write::Settle { .. } | Write::Journal { .. } | Write::Resolve { .. } => false,
        }
    }
}

/// How a claimed entry's attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Delivered (or performed).
    Delivered,
    /// Failed; attempted again at `due_at_ms`. Counts an attempt.
    Retry {
        /// When.
        due_at_ms: i64,
        /// Why it failed.
        error: String,
    },
    /// Failed for the last time. Counts an attempt.
    Dead {
        /// Why it failed.
        error: String,
    },
    /// Not attempted (its sink's breaker is open); due again at
    /// `due_at_ms`. Counts no attempt.
    Reschedule {
        /// When.
        due_at_ms: i64,
        /// Why it was not attempted.
        reason: String,
    },
    /// Not attempted; the claim is given up and the entry is due as before.
    Release,
}

/// Which entries to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only entries with this status.
    pub status: Option<EntryStatus>,
    /// At most this many, oldest first (default 100).
    pub limit: Option<u32>,
}

/// Counts and lag of an outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pending entries.
    pub pending: u64,
    /// Delivered entries.
    pub delivered: u64,
    /// Dead entries.
    pub dead: u64,
    /// Pending entries that already failed at least once.
    pub retrying: u64,
    /// Attempts made, over every entry, retried ones' earlier attempts
    /// included.
    pub attempts: u64,
    /// When the oldest pending entry was written (ms since the Unix epoch).
    pub oldest_pending_ms: Option<i64>,
    /// Pending entries held by a worker's (or a delivering host's) claim: no
    /// other worker takes them until the claim is settled, given back, or
    /// its lease ends.
    pub claimed: u64,
    /// When the last of those leases ends (ms since the Unix epoch), unless
    /// renewed; it may have ended already if its holder died.
    pub claimed_until_ms: Option<i64>,
    /// Entries of runs held for approval.
    pub held: u64,
    /// Entries of rejected runs.
    pub rejected: u64,
    /// The held runs decided so far.
    pub decisions: DecisionCounts,
}

/// Which entries to bring back to `pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// These ids, dead or pending ones. All or nothing: if one is unknown
    /// or delivered, none is changed ([`OutboxError::NotRetriable`]).
    Ids(Vec<i64>),
    /// Every dead entry the filter matches (every one, by default).
    Dead(DeadFilter),
}

/// Which dead entries a [`Retry::Dead`] brings back: those of a plugin, of
/// an effect, or both; every one when neither is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Only entries of this plugin.
    pub plugin: Option<String>,
    /// Only entries of this effect.
    pub effect: Option<String>,
}

/// A watch on the writes other processes make to a store, for a worker
/// waiting for work ([`OutboxStore::changes`]).
#[async_trait::async_trait]
pub trait Changes: Send {
    /// Resolves when the store may have been written to since the last
    /// call returned (or since the watch began); it may resolve when
    /// nothing new is due, never later than the store can tell.
    async fn changed(&mut self);
}

/// A store of outbox entries. Implementations apply a batch of writes in
/// one durable transaction, and never let two claims hold an entry.
#[async_trait::async_trait]
pub trait OutboxStore: fmt::Debug + Send + Sync + 'static {
    /// Applies every write of `batch` in one transaction, durable when this
    /// returns `Ok`, with one answer per write (for a [`Write::Settle`], how
    /// many entries its claim still held; 0 for the others); none of them
    /// on `Err`.
    async fn write(&self, batch: &[Write]) -> Result<Vec<u64>, OutboxError>;

    /// How many batches [`OutboxStore::write`] may apply at once (default
    /// 1): a store with one writer at a time (SQLite) gains nothing from
    /// more; one with a pool of connections (Postgres) overlaps their round
    /// trips and fsyncs.
    fn concurrent_writes(&self) -> usize {
        1
    }

    /// Claims up to `max_runs` runs whose next entry is due at `now_ms` and
    /// not claimed, with every pending entry of each (at most `max_entries`
    /// in all, the first ones in delivery order). Returns the entries, run
    /// by run, in delivery order.
    async fn claim(
        &self,
        claim: &Claim,
        now_ms: i64,
        max_runs: u32,
        max_entries: u32,
    ) -> Result<Vec<Entry>, OutboxError>;

    /// Whether the intents of `run_id` are in the store: asked when the
    /// answer to a commit was lost.
    async fn committed(&self, run_id: RunId) -> Result<bool, OutboxError>;

    /// The entries of `run_id` that `claim` holds, in delivery order.
    async fn claimed(&self, claim: &Claim, run_id: RunId) -> Result<Vec<Entry>, OutboxError>;

    /// Gives up the entries `ids` that `claim` still holds. Entries are
    /// found by id, not by claim: no index covers the claim, so that taking
    /// one rewrites no index entry.
    async fn release(&self, claim: &Claim, ids: &[i64]) -> Result<(), OutboxError>;

    /// Entries by filter, oldest first.
    async fn list(&self, filter: &Filter) -> Result<Vec<Entry>, OutboxError>;

    /// Counts by status and the age of the oldest pending entry.
    async fn stats(&self) -> Result<Stats, OutboxError>;

    /// Makes entries pending again, due at `now_ms`, with a fresh count of
    /// attempts (the earlier ones added to `attempts_before_retry`). Returns
    /// how many.
    async fn retry(&self, which: &Retry, now_ms: i64) -> Result<u64, OutboxError>;

    /// Makes every pending entry due at `now_ms` at the latest, keeping its
    /// attempts: backoff waived, as for a drill. Returns how many moved.
    async fn expedite(&self, now_ms: i64) -> Result<u64, OutboxError>;

    /// Deletes at most `limit` entries of `which` that ended before
    /// `ended_before_ms`: delivered ones by their delivery time, dead ones
    /// by the time their last attempt was due. Returns how many.
    async fn prune(
        &self,
        which: Prune,
        ended_before_ms: i64,
        limit: u32,
    ) -> Result<u64, OutboxError>;

    /// Writes a committed run held for approval, in one transaction: its
    /// intents `held`; its journaled compensations `held` too, but for those
    /// in `failed_compensations`, which stay owed as a commit leaves them.
    async fn hold(&self, hold: &Hold) -> Result<(), OutboxError>;

    /// Decides the held run `decide.run_id` in one transaction: keeps the
    /// decision with the run's intents as they are, then, approved, makes
    /// its held intents pending, due now, and forgets its held
    /// compensations; rejected, makes its held intents `rejected` and its
    /// held compensations pending, due now. Of two decisions of one run,
    /// from any processes, exactly one is kept.
    ///
    /// # Errors
    ///
    /// [`OutboxError::AlreadyDecided`] when the run was decided already,
    /// [`OutboxError::NotHeld`] when it holds no entry; nothing changed.
    async fn decide(&self, decide: &Decide) -> Result<Decision, OutboxError>;

    /// The decisions kept, newest first, at most `limit`.
    async fn decisions(&self, limit: u32) -> Result<Vec<Decision>, OutboxError>;

    /// At most `limit` runs held since before `held_before_ms`, oldest
    /// first.
    async fn held_runs(&self, held_before_ms: i64, limit: u32) -> Result<Vec<RunId>, OutboxError>;

    /// Keeps finished runs in the history; a run kept already is left as
    /// it is.
    async fn record_runs(&self, runs: &[RunRecord]) -> Result<(), OutboxError>;

    /// Runs by `filter`, newest first.
    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, OutboxError>;

    /// The run `run_id` as the history keeps it.
    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>, OutboxError>;

    /// Every entry of `run_id`, intents in seq order then compensations:
    /// where each of its intents stands.
    async fn run_entries(&self, run_id: RunId) -> Result<Vec<Entry>, OutboxError>;

    /// How many runs started at or after `since_ms` the history keeps, by
    /// status.
    async fn run_counts(&self, since_ms: i64) -> Result<Vec<(String, u64)>, OutboxError>;

    /// Deletes at most `limit` runs of the history that ended before
    /// `ended_before_ms`, and as many request keys made before it. Returns
    /// how many runs.
    async fn prune_runs(&self, ended_before_ms: i64, limit: u32) -> Result<u64, OutboxError>;

    /// Claims `key` for a request at `now_ms`, unless a request holds it or
    /// answered it: a claim made before `stale_before_ms` and never
    /// answered is taken over.
    async fn claim_request(
        &self,
        key: &RequestKey,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<RequestClaim, OutboxError>;

    /// Keeps the answer of the request that claimed `key`.
    async fn answer_request(
        &self,
        key: &RequestKey,
        status: u16,
        answer: &str,
    ) -> Result<(), OutboxError>;

    /// Gives `key` back, unanswered: the request did not run.
    async fn release_request(&self, key: &RequestKey) -> Result<(), OutboxError>;

    /// A watch on what other processes write, so that a waiting worker
    /// wakes when they commit instead of at its next poll; `None` (the
    /// default) when the store cannot tell, and workers poll. Writes made
    /// through this process's [`Outbox`] wake its workers without it.
    async fn changes(&self) -> Option<Box<dyn Changes>> {
        None
    }
}

/// Which ended entries to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Delivered entries, and those of rejected runs (their decisions are
    /// kept).
    Delivered,
    /// Those, and dead entries (which are otherwise kept until retried).
    DeliveredAndDead,
}

impl Prune {
    /// Each status deleted, as the stores write it, with the column that
    /// says when its entries ended: delivered ones when delivered, those
    /// of rejected runs when rejected, dead ones when their last attempt
    /// was due.
    pub(crate) fn statuses(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Prune::Delivered => &[("delivered", "delivered_at"), ("rejected", "due_at")],
            Prune::DeliveredAndDead => &[
                ("delivered", "delivered_at"),
                ("rejected", "due_at"),
                ("dead", "due_at"),
            ],
        }
    }
}

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before an entry is dead (default [`DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: u32,
    /// The delay before the first retry (default [`DEFAULT_BACKOFF_BASE`]).
    pub base: Duration,
    /// The longest delay (default [`DEFAULT_BACKOFF_MAX`]).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base: DEFAULT_BACKOFF_BASE,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failed attempt: `base · 2^(attempts-1)`,
    /// capped at `max`, of which a random half is taken away (jitter), so
    /// that entries that failed together do not all come back together.
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(32);
        let full = self.base.saturating_mul(1u32 << exp.min(31)).min(self.max);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// How a failed attempt settles: retried later, or dead after the last
    /// attempt. `attempts` counts the attempts before this one.
    pub fn after_failure(&self, attempts: u32, now_ms: i64, error: String) -> Settlement {
        let error = kept_failure(error, MAX_ERROR_TEXT_BYTES);
        if attempts + 1 >= self.max_attempts {
            Settlement::Dead { error }
        } else {
            Settlement::Retry {
                due_at_ms: now_ms + self.delay(attempts + 1).as_millis() as i64,
                error,
            }
        }
    }
}

/// The wall clock in milliseconds since the Unix epoch, for what is written
/// without an outbox at hand ([`PostgresOutbox::stage`]); everything else
/// reads the outbox's [`Clock`].
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs `task` to completion on a thread of its own, with a runtime of its
/// own, so that it does not depend on the caller's runtime staying alive.
pub(crate) fn on_own_thread(
    name: &str,
    task: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a thread's runtime")
                .block_on(task);
        })
        .map(drop)
}

impl Stats {
    /// Adds the counts of one status: its entries, the attempts made on
    /// them, and how many of them failed at least once.
    pub(crate) fn add(&mut self, status: &str, count: u64, attempts: u64, retrying: u64) {
        self.attempts += attempts;
        match status {
            "pending" => {
                self.pending = count;
                self.retrying = retrying;
            }
            "delivered" => self.delivered = count,
            "dead" => self.dead = count,
            "held" => self.held = count,
            "rejected" => self.rejected = count,
            _ => {}
        }
    }
}

/// An entry's fences as stored: a JSON list of `{"key", "token"}`.
pub(crate) fn fences_json(fences: &[Fence]) -> String {
    crate::outcome::fences_value(fences).to_string()
}

/// Fences read back from [`fences_json`]; what does not parse is dropped.
pub(crate) fn fences_from_json(text: &str) -> Vec<Fence> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    value
        .as_array()
        .map(|fences| {
            fences
                .iter()
                .filter_map(|f| {
                    Some(Fence {
                        key: f["key"].as_str()?.to_owned(),
                        token: f["token"].as_u64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A durable outbox: a store, written through a group committer, with its
/// retry policy and clock.
///
/// Writes from concurrent runs that arrive while a transaction is being
/// committed wait and go together into the next one: durable throughput is
/// one fsync per group, not per run. `Outbox` is cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// Clones share the store and the group committer.
#[derive(Clone)]
struct Inner {
    store: Arc<dyn OutboxStore>,
    writes: mpsc::UnboundedSender<committer::Pending>,
    retry: RetryPolicy,
    lease: Duration,
    delivery_lease: Duration,
    retain_delivered: Duration,
    approval_expiry: Duration,
    compensation_grace: Duration,
    clock: Arc<dyn Clock>,
    /// Transactions the group committer made, and the writes they held.
    groups: Arc<committer::Counters>,
    /// Where finished runs go, when the outbox keeps their history.
    history: Option<history::HistoryWriter>,
    /// Notified when a group made entries due that no claim holds.
    work: Arc<Notify>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("store", &self.inner.store)
            .field("retry", &self.inner.retry)
            .field("lease", &self.inner.lease)
            .field("delivery_lease", &self.inner.delivery_lease)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox over `store`, with the default retry policy, lease and
    /// compensation grace, and the system clock.
    pub fn new(store: impl OutboxStore) -> Self {
        Self::with_store(Arc::new(store))
    }

    /// An outbox over a shared store.
    pub fn with_store(store: Arc<dyn OutboxStore>) -> Self {
        Self::build(
            store,
            RetryPolicy::default(),
            DEFAULT_LEASE,
            DEFAULT_COMPENSATION_GRACE,
            Arc::new(SystemClock),
        )
    }

    fn build(
        store: Arc<dyn OutboxStore>,
        retry: RetryPolicy,
        lease: Duration,
        compensation_grace: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (writes, queue) = mpsc::unbounded_channel();
        let groups: Arc<committer::Counters> = Arc::default();
        let work = Arc::new(Notify::new());
        committer::spawn(
            Arc::clone(&store),
            queue,
            Arc::clone(&groups),
            Arc::clone(&work),
        );
        Self {
            inner: Arc::new(Inner {
                store,
                writes,
                retry,
                lease,
                delivery_lease: DEFAULT_DELIVERY_LEASE,
                retain_delivered: DEFAULT_RETAIN_DELIVERED,
                approval_expiry: DEFAULT_APPROVAL_EXPIRY,
                compensation_grace,
                clock,
                groups,
                work,
                history: None,
            }),
        }
    }

    /// This outbox with another retry policy.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        Arc::make_mut(&mut self.inner).retry = retry;
        self
    }

    /// This outbox with another claim lease for workers (default
    /// [`DEFAULT_LEASE`]).
    pub fn lease(mut self, lease: Duration) -> Self {
        Arc::make_mut(&mut self.inner).lease = lease;
        self
    }

    /// This outbox keeping delivered entries this long before its workers
    /// delete them (default [`DEFAULT_RETAIN_DELIVERED`]). Dead entries are
    /// kept until retried or pruned by hand.
    pub fn retain_delivered(mut self, retain: Duration) -> Self {
        Arc::make_mut(&mut self.inner).retain_delivered = retain;
        self
    }

    /// This outbox rejecting runs held for approval this long after they
    /// were held, with reason [`EXPIRED`] (default
    /// [`DEFAULT_APPROVAL_EXPIRY`]); its workers do it as they prune.
    pub fn approval_expiry(mut self, expiry: Duration) -> Self {
        Arc::make_mut(&mut self.inner).approval_expiry = expiry;
        self
    }

    /// This outbox with another lease for the claim a host takes on the
    /// intents it commits and delivers itself (default
    /// [`DEFAULT_DELIVERY_LEASE`]).
    pub fn delivery_lease(mut self, lease: Duration) -> Self {
        Arc::make_mut(&mut self.inner).delivery_lease = lease;
        self
    }

    /// This outbox with another compensation grace (default
    /// [`DEFAULT_COMPENSATION_GRACE`]): how long after a run's deadline its
    /// unresolved compensations are owed.
    pub fn compensation_grace(mut self, grace: Duration) -> Self {
        Arc::make_mut(&mut self.inner).compensation_grace = grace;
        self
    }

    /// This outbox reading the time from `clock` (for tests of backoff).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        Arc::make_mut(&mut self.inner).clock = clock;
        self
    }

    /// Applies `write` durably, in a transaction shared with the writes of
    /// other runs waiting at the same time. Returns the write's answer (for
    /// a [`Write::Settle`], how many entries its claim still held).
    ///
    /// # Errors
    ///
    /// When the store failed; the write was not applied, unless the store
    /// lost its answer after committing (see `docs/delivery.md`).
    pub async fn write(&self, write: Write) -> Result<u64, OutboxError> {
        self.send(write).await
    }

    /// Hands `write` to the group committer now and returns its answer to
    /// come, so that the caller can go on meanwhile (a worker delivering
    /// the next entries while the last ones are settled).
    pub(crate) fn send(
        &self,
        write: Write,
    ) -> impl Future<Output = Result<u64, OutboxError>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let sent = self.inner.writes.send((write, done));
        async move {
            sent.map_err(|_| OutboxError::Closed)?;
            answer.await.map_err(|_| OutboxError::Closed)?
        }
    }

    /// How many transactions the group committer made, and how many writes
    /// they held: with concurrent runs, fewer transactions than writes.
    pub fn group_commits(&self) -> GroupCommits {
        GroupCommits {
            transactions: self.inner.groups.transactions.load(Ordering::Relaxed),
            writes: self.inner.groups.writes.load(Ordering::Relaxed),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn OutboxStore> {
        &self.inner.store
    }

    /// Notified whenever a write through this outbox (or a clone) made
    /// entries due that no claim holds: a worker of this process waits on
    /// it, and wakes as soon as a run commits.
    pub(crate) fn work(&self) -> &Notify {
        &self.inner.work
    }

    /// The retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The lease of a worker's claim.
    pub fn lease_duration(&self) -> Duration {
        self.inner.lease
    }

    /// The lease of a host's claim on the intents it delivers itself.
    pub fn delivery_lease_duration(&self) -> Duration {
        self.inner.delivery_lease
    }

    /// How long delivered entries are kept.
    pub fn retained_for(&self) -> Duration {
        self.inner.retain_delivered
    }

    /// How long a run stays held before it expires.
    pub fn approval_expires_after(&self) -> Duration {
        self.inner.approval_expiry
    }

    /// Deletes every entry of `which` that ended before `ended_before_ms`,
    /// [`PRUNE_BATCH`] at a time (each batch its own transaction). Returns
    /// how many.
    ///
    /// # Errors
    ///
    /// The store's; what earlier batches deleted stays deleted.
    pub async fn prune(&self, which: Prune, ended_before_ms: i64) -> Result<u64, OutboxError> {
        let mut deleted = 0;
        loop {
            let batch = self
                .store()
                .prune(which, ended_before_ms, PRUNE_BATCH)
                .await?;
            deleted += batch;
            if batch < u64::from(PRUNE_BATCH) {
                return Ok(deleted);
            }
        }
    }

    /// How long after a run's deadline its unresolved compensations are owed.
    pub fn grace(&self) -> Duration {
        self.inner.compensation_grace
    }

    /// The time, in ms since the Unix epoch, by the outbox's clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap_with_at_most_half_taken_away() {
        let policy = RetryPolicy {
            max_attempts: 20,
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        for attempts in 1..=12u32 {
            let full = Duration::from_secs(1 << (attempts - 1)).min(Duration::from_secs(60));
            for _ in 0..50 {
                let delay = policy.delay(attempts);
                assert!(delay >= full / 2 && delay <= full, "{attempts}: {delay:?}");
            }
        }
    }

    #[test]
    fn the_last_attempt_makes_an_entry_dead() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(matches!(
            policy.after_failure(1, 0, "x".into()),
            Settlement::Retry { .. }
        ));
        assert_eq!(
            policy.after_failure(2, 0, "x".into()),
            Settlement::Dead { error: "x".into() }
        );
    }
}
