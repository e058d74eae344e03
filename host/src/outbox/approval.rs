//! Held runs: committed runs whose intents wait in the outbox for a person
//! to approve or reject them, and the decisions, kept.
//!
//! ```text
//! run commits, an intent matches [approval] require ─▶ Outbox::hold: intents `held`
//!   approve ─▶ intents `pending`, due now ─▶ workers deliver them in order
//!   reject  ─▶ intents `rejected` (never delivered); journaled compensations due now
//!   neither within the expiry ─▶ rejected by `escrow`, reason `expired`
//! ```
//!
//! A decision is one row per run, written in the transaction that moves
//! the run's entries: of two decisions racing, from any processes, exactly
//! one is kept and the other is refused ([`OutboxError::AlreadyDecided`]).

use std::fmt;
use std::time::Duration;

use super::{NewEntry, Outbox, OutboxError, PRUNE_BATCH};
use crate::limits::kept;
use crate::run_id::RunId;

/// How long a run stays held before it is rejected with reason
/// [`EXPIRED`], unless configured otherwise (`[approval] expire_after`).
pub const DEFAULT_APPROVAL_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The reason of a rejection for want of a decision in time.
pub const EXPIRED: &str = "expired";

/// Who rejects the runs that expire.
pub const EXPIRY_DECIDER: &str = "escrow";

/// The most bytes of a decider's name kept with a decision.
pub const MAX_DECIDER_BYTES: usize = 256;

/// The most bytes of a decision's reason kept with it.
pub const MAX_REASON_BYTES: usize = 4096;

/// What was decided about a held run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Its intents are delivered.
    Approved,
    /// Its intents are never delivered; its journaled compensations are
    /// performed.
    Rejected,
}

impl Verdict {
    /// `approved` or `rejected`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, OutboxError> {
        match text {
            "approved" => Ok(Verdict::Approved),
            "rejected" => Ok(Verdict::Rejected),
            other => Err(OutboxError::Store(format!("unknown verdict `{other}`"))),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A committed run to write held: its intents wait for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The run.
    pub run_id: RunId,
    /// Its committed intents, in seq order.
    pub intents: Vec<NewEntry>,
    /// When (ms since the Unix epoch).
    pub now_ms: i64,
    /// Whether the run journaled compensations: they are held with the
    /// intents, performed if the run is rejected and forgotten if it is
    /// approved.
    pub journaled: bool,
    /// Compensations performed during the run that failed (the seq of the
    /// call they undo, and the error): they stay owed, due now, whatever is
    /// decided.
    pub failed_compensations: Vec<(u64, String)>,
}

/// A decision to make about a held run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decide {
    /// The run.
    pub run_id: RunId,
    /// Approve or reject.
    pub verdict: Verdict,
    /// Who decides.
    pub by: String,
    /// Why, if said.
    pub reason: Option<String>,
    /// When (ms since the Unix epoch).
    pub now_ms: i64,
}

/// A decision about a held run, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The run.
    pub run_id: RunId,
    /// Its plugin.
    pub plugin: String,
    /// What was decided.
    pub verdict: Verdict,
    /// Who decided.
    pub by: String,
    /// Why, if said.
    pub reason: Option<String>,
    /// When (ms since the Unix epoch).
    pub decided_at_ms: i64,
    /// When the run was held.
    pub held_at_ms: i64,
    /// The run's intents as they were when decided, in seq order.
    pub intents: Vec<DecidedIntent>,
}

/// An intent of a decided run, as it was decided.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecidedIntent {
    /// Its sequence number.
    pub seq: u64,
    /// The effect.
    pub effect: String,
    /// The payload.
    pub payload: crate::answers::Bytes,
}

/// How many runs were decided, by verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecisionCounts {
    /// Runs approved.
    pub approved: u64,
    /// Runs rejected, expired ones included.
    pub rejected: u64,
    /// Runs rejected because no one decided in time.
    pub expired: u64,
}

/// The decided intents of a run as the stores keep them: JSON.
pub(crate) fn intents_json(intents: &[DecidedIntent]) -> String {
    serde_json::to_string(intents).expect("intents are always JSON")
}

/// Decided intents read back from [`intents_json`].
pub(crate) fn intents_from_json(text: &str) -> Result<Vec<DecidedIntent>, OutboxError> {
    serde_json::from_str(text)
        .map_err(|e| OutboxError::Store(format!("a decision's intents do not read back: {e}")))
}

impl Outbox {
    /// Writes a committed run held for approval, in one transaction of its
    /// own: its intents `held`, none due.
    ///
    /// # Errors
    ///
    /// The store's; nothing was written.
    pub async fn hold(&self, hold: Hold) -> Result<(), OutboxError> {
        self.store().hold(&hold).await
    }

    /// Approves the held run `run_id`: its intents become due now, and
    /// workers deliver them in order; its journaled compensations are
    /// forgotten. Returns the decision as kept.
    ///
    /// # Errors
    ///
    /// [`OutboxError::NotHeld`] when the run holds nothing,
    /// [`OutboxError::AlreadyDecided`] when it was decided already; in
    /// either case nothing changed.
    pub async fn approve(
        &self,
        run_id: RunId,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Decision, OutboxError> {
        self.decide(run_id, Verdict::Approved, by, reason).await
    }

    /// Rejects the held run `run_id`: its intents are never delivered, and
    /// the compensations its reversible actions journaled become due now,
    /// performed by workers once each. Returns the decision as kept.
    ///
    /// # Errors
    ///
    /// As [`approve`](Self::approve).
    pub async fn reject(
        &self,
        run_id: RunId,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Decision, OutboxError> {
        self.decide(run_id, Verdict::Rejected, by, reason).await
    }

    async fn decide(
        &self,
        run_id: RunId,
        verdict: Verdict,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Decision, OutboxError> {
        let decide = Decide {
            run_id,
            verdict,
            by: kept(by.to_owned(), MAX_DECIDER_BYTES),
            reason: reason.map(|r| kept(r.to_owned(), MAX_REASON_BYTES)),
            now_ms: self.now_ms(),
        };
        let decision = self.store().decide(&decide).await?;
        // Entries became due: a worker of this process looks now.
        self.work().notify_waiters();
        Ok(decision)
    }

    /// The decisions kept, newest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// The store's.
    pub async fn decisions(&self, limit: u32) -> Result<Vec<Decision>, OutboxError> {
        self.store().decisions(limit).await
    }

    /// Rejects, with reason [`EXPIRED`], every run held longer than
    /// [`approval_expires_after`](Self::approval_expires_after), [`PRUNE_BATCH`] runs at a
    /// time. Returns how many. Workers do this as they prune.
    ///
    /// # Errors
    ///
    /// The store's; runs rejected before it stay rejected.
    pub async fn expire_held(&self) -> Result<u64, OutboxError> {
        let expiry = i64::try_from(self.approval_expires_after().as_millis()).unwrap_or(i64::MAX);
        let before = self.now_ms().saturating_sub(expiry);
        let mut expired = 0;
        loop {
            let runs = self.store().held_runs(before, PRUNE_BATCH).await?;
            let mut decided = 0;
            for run_id in &runs {
                match self
                    .decide(*run_id, Verdict::Rejected, EXPIRY_DECIDER, Some(EXPIRED))
                    .await
                {
                    Ok(_) => decided += 1,
                    // Decided meanwhile, by a person or another worker.
                    Err(OutboxError::AlreadyDecided { .. } | OutboxError::NotHeld { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            expired += decided;
            if runs.len() < PRUNE_BATCH as usize || decided == 0 {
                return Ok(expired);
            }
        }
    }
}
