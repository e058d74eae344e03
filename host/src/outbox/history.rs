//! Run history: every finished run's outcome, kept in the outbox beside
//! its entries — committed runs and also failed and dropped ones, which
//! leave no entry — so that an operator can find any run by id, status,
//! plugin or effect, and see its intents' delivery.
//!
//! Kept only where asked ([`Outbox::keep_history`]). Records are written by
//! a task of their own, in batches, after the run has ended: a run never
//! waits for its history, and a record the queue has no room for is
//! dropped with a warning rather than held. The outbox's retention applies
//! to them as to delivered entries.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Outbox, OutboxError};
use crate::outcome::Outcome;
use crate::run_id::RunId;

/// How many finished runs may wait to be written to the history; past it,
/// records are dropped (and counted in the log) until the store catches up.
pub const HISTORY_QUEUE: usize = 10_000;

/// The most records one history write holds.
const HISTORY_BATCH: usize = 256;

/// The most runs one page of [`OutboxStore::runs`](super::OutboxStore::runs)
/// lists.
pub const MAX_RUNS_PAGE: u32 = 500;

/// A finished run, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The run.
    pub run_id: RunId,
    /// Its plugin.
    pub plugin: String,
    /// How it ended: `committed`, `dropped`, `held` or `failed`.
    pub status: String,
    /// The component that ran, when known.
    pub component_sha256: Option<String>,
    /// When it ended (ms since the Unix epoch).
    pub ended_at_ms: i64,
    /// The effects it requested, deferred and immediate, each once, sorted.
    pub effects: Vec<String>,
    /// Its outcome as JSON ([`Outcome::to_json`]).
    pub outcome: String,
}

impl RunRecord {
    /// The record of `outcome`, which ended at `ended_at_ms`.
    pub fn of(outcome: &Outcome, ended_at_ms: i64) -> Self {
        let mut effects: Vec<String> = outcome
            .intents
            .iter()
            .map(|i| i.effect.clone())
            .chain(outcome.invocations.iter().map(|c| c.effect.clone()))
            .collect();
        effects.sort_unstable();
        effects.dedup();
        RunRecord {
            run_id: outcome.run_id,
            plugin: outcome.plugin.to_string(),
            status: outcome.status().as_str().to_owned(),
            component_sha256: outcome.component_sha256.as_deref().map(str::to_owned),
            ended_at_ms,
            effects,
            outcome: outcome.to_json().to_string(),
        }
    }
}

/// A run of a list: its record without the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run.
    pub run_id: RunId,
    /// Its plugin.
    pub plugin: String,
    /// How it ended.
    pub status: String,
    /// The component that ran, when known.
    pub component_sha256: Option<String>,
    /// When it ended (ms since the Unix epoch).
    pub ended_at_ms: i64,
    /// The effects it requested, each once, sorted.
    pub effects: Vec<String>,
}

/// Which runs to list, newest first (by run id, which sorts by start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs that ended so.
    pub status: Option<String>,
    /// Only runs of this plugin.
    pub plugin: Option<String>,
    /// Only runs that requested this effect.
    pub effect: Option<String>,
    /// Only runs started at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Only runs started before this one: the cursor of the next page.
    pub before: Option<RunId>,
    /// At most this many (capped at [`MAX_RUNS_PAGE`]).
    pub limit: u32,
}

impl RunFilter {
    /// The page size asked for, within bounds.
    pub fn page(&self) -> u32 {
        self.limit.clamp(1, MAX_RUNS_PAGE)
    }
}

/// The smallest run id of a run started at `ms`: run ids are UUIDv7, whose
/// first 48 bits are the start in milliseconds.
pub fn first_run_id_at(ms: i64) -> RunId {
    let ms = u64::try_from(ms).unwrap_or(0).min((1 << 48) - 1);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    // Version 7 and the RFC 4122 variant, all random bits zero.
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    RunId::from_uuid(uuid::Uuid::from_bytes(bytes))
}

/// The writer of an outbox's history: a bounded queue, emptied in batches
/// by a task of its own.
#[derive(Debug, Clone)]
pub(crate) struct HistoryWriter {
    queue: mpsc::Sender<RunRecord>,
}

impl HistoryWriter {
    pub(crate) fn start(store: Arc<dyn super::OutboxStore>) -> Self {
        let (queue, mut records) = mpsc::channel::<RunRecord>(HISTORY_QUEUE);
        super::on_own_thread("escrow-history", async move {
            let mut batch = Vec::with_capacity(HISTORY_BATCH);
            while records.recv_many(&mut batch, HISTORY_BATCH).await > 0 {
                if let Err(error) = store.record_runs(&batch).await {
                    tracing::warn!(%error, runs = batch.len(), "run history could not be written");
                }
                batch.clear();
            }
        })
        .expect("spawning the history writer thread");
        Self { queue }
    }

    /// Queues `record`; a full queue drops it, with a warning.
    pub(crate) fn keep(&self, record: RunRecord) {
        if let Err(error) = self.queue.try_send(record) {
            let run_id = match &error {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => {
                    r.run_id
                }
            };
            tracing::warn!(%run_id, "the run history is behind; this run is not kept in it");
        }
    }
}

impl Outbox {
    /// This outbox keeping the outcome of every run that ends on a host
    /// committing into it, written after the run by a task of its own
    /// (`docs/serve.md`, "Run history"). `escrow serve` keeps it.
    pub fn keep_history(mut self) -> Self {
        let writer = HistoryWriter::start(Arc::clone(self.store()));
        Arc::make_mut(&mut self.inner).history = Some(writer);
        self
    }

    /// Keeps `outcome`'s run in the history, when this outbox keeps one.
    pub(crate) fn remember(&self, outcome: &Outcome) {
        if let Some(writer) = &self.inner.history {
            writer.keep(RunRecord::of(outcome, self.now_ms()));
        }
    }

    /// Runs by `filter`, newest first.
    ///
    /// # Errors
    ///
    /// The store's.
    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, OutboxError> {
        self.store().runs(filter).await
    }

    /// The run `run_id` as the history keeps it, if it does.
    ///
    /// # Errors
    ///
    /// The store's.
    pub async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>, OutboxError> {
        self.store().run(run_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_run_id_of_a_millisecond_sorts_before_every_run_started_then() {
        let run = RunId::new();
        let ms = run.as_uuid().get_timestamp().unwrap().to_unix();
        let ms = (ms.0 * 1000 + u64::from(ms.1) / 1_000_000) as i64;
        assert!(first_run_id_at(ms) <= run);
        assert!(first_run_id_at(ms + 1) > run);
    }
}
