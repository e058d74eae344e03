//! Held runs in Postgres: their entries, and the decisions about them.
//!
//! A decision locks the run's held intents (`FOR UPDATE`) before anything
//! else: of two decisions racing, the second waits for the first, then
//! finds no held intent and reads the first's decision. The decision's
//! primary key is the last guard: a second insert of it is refused.

use tokio_postgres::Row;

use super::{COUNT_CHANGED, COUNT_GONE, insert_as};
use crate::outbox::{
    Decide, DecidedIntent, Decision, OutboxError, Verdict, intents_from_json, intents_json,
};

/// Inserts new held entries: see [`insert_as`].
pub(super) static INSERT_HELD: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_as("held"));

/// The unattempted compensations a held run (`$1`) journaled are held with
/// its intents.
pub(super) static HOLD_COMPENSATIONS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "WITH changed AS ( \
               UPDATE escrow_outbox o SET status = 'held' \
               WHERE run_id = $1 AND kind = 'compensation' AND status = 'pending' \
                 AND attempts = 0 \
               RETURNING o.status, o.attempts + o.attempts_before_retry AS attempts, \
                         o.attempts > 0 AS retrying, 'pending' AS was_status, \
                         o.attempts + o.attempts_before_retry AS was_attempts, \
                         o.attempts > 0 AS was_retrying \
             ) {COUNT_CHANGED}"
        )
    });

/// The held entries of kind `$2` of run `$1` take the status `$3`, due at
/// `$4`; counted.
static MOVE_HELD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH changed AS ( \
           UPDATE escrow_outbox o SET status = $3, due_at = $4 \
           WHERE run_id = $1 AND kind = $2 AND status = 'held' \
           RETURNING o.status, o.attempts + o.attempts_before_retry AS attempts, \
                     o.attempts > 0 AS retrying, 'held' AS was_status, \
                     o.attempts + o.attempts_before_retry AS was_attempts, \
                     o.attempts > 0 AS was_retrying \
         ) {COUNT_CHANGED}"
    )
});

/// The held compensations of an approved run (`$1`) are forgotten.
static FORGET_HELD_COMPENSATIONS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH gone AS ( \
           DELETE FROM escrow_outbox WHERE run_id = $1 AND kind = 'compensation' \
             AND status = 'held' \
           RETURNING status, attempts, attempts_before_retry \
         ) {COUNT_GONE}"
    )
});

/// How many runs were decided, by verdict, and of the rejected how many
/// expired (`$1` the reason and `$2` the decider of an expiry).
pub(super) const DECISION_COUNTS: &str = "\
SELECT verdict, COUNT(*), COUNT(*) FILTER (WHERE reason = $1 AND decided_by = $2) \
FROM escrow_decisions GROUP BY verdict";

/// The decisions, newest first, at most `$1`.
pub(super) const DECISIONS: &str = "\
SELECT run_id, plugin, verdict, decided_by, reason, decided_at, held_at, intents \
FROM escrow_decisions ORDER BY decided_at DESC, run_id DESC LIMIT $1";

/// Decides a held run in one transaction: see
/// [`OutboxStore::decide`](crate::outbox::OutboxStore::decide).
pub(super) async fn decide(
    client: &mut deadpool_postgres::Client,
    decide: &Decide,
) -> Result<Result<Decision, OutboxError>, tokio_postgres::Error> {
    let run = decide.run_id.to_string();
    let tx = client.transaction().await?;
    let held = tx
        .query(
            "SELECT seq, effect, payload, plugin, created_at FROM escrow_outbox \
             WHERE run_id = $1 AND kind = 'intent' AND status = 'held' ORDER BY ord FOR UPDATE",
            &[&run],
        )
        .await?;
    if held.is_empty() {
        return Ok(Err(refusal(&tx, decide).await?));
    }
    let plugin: String = held[0].get(3);
    let held_at = held.iter().map(|r| r.get::<_, i64>(4)).min().unwrap_or(0);
    let intents: Vec<DecidedIntent> = held
        .iter()
        .map(|r| DecidedIntent {
            seq: r.get::<_, i64>(0) as u64,
            effect: r.get(1),
            payload: crate::answers::Bytes(r.get(2)),
        })
        .collect();
    let kept = tx
        .query(
            "INSERT INTO escrow_decisions (run_id, plugin, verdict, decided_by, reason, \
             decided_at, held_at, intents) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
            &[
                &run,
                &plugin,
                &decide.verdict.as_str(),
                &decide.by,
                &decide.reason,
                &decide.now_ms,
                &held_at,
                &intents_json(&intents),
            ],
        )
        .await?;
    if kept.is_empty() {
        return Ok(Err(refusal(&tx, decide).await?));
    }
    let intents_become = match decide.verdict {
        Verdict::Approved => "pending",
        Verdict::Rejected => "rejected",
    };
    tx.execute(
        MOVE_HELD.as_str(),
        &[&run, &"intent", &intents_become, &decide.now_ms],
    )
    .await?;
    match decide.verdict {
        Verdict::Approved => {
            tx.execute(FORGET_HELD_COMPENSATIONS.as_str(), &[&run])
                .await?
        }
        Verdict::Rejected => {
            tx.execute(
                MOVE_HELD.as_str(),
                &[&run, &"compensation", &"pending", &decide.now_ms],
            )
            .await?
        }
    };
    tx.commit().await?;
    Ok(Ok(Decision {
        run_id: decide.run_id,
        plugin,
        verdict: decide.verdict,
        by: decide.by.clone(),
        reason: decide.reason.clone(),
        decided_at_ms: decide.now_ms,
        held_at_ms: held_at,
        intents,
    }))
}

/// Why a run that holds nothing (now) cannot be decided: decided already,
/// or never held.
async fn refusal(
    tx: &tokio_postgres::Transaction<'_>,
    decide: &Decide,
) -> Result<OutboxError, tokio_postgres::Error> {
    let decided = tx
        .query_opt(
            "SELECT verdict, decided_by, decided_at FROM escrow_decisions WHERE run_id = $1",
            &[&decide.run_id.to_string()],
        )
        .await?;
    Ok(match decided {
        None => OutboxError::NotHeld {
            run_id: decide.run_id,
        },
        Some(row) => match Verdict::parse(row.get(0)) {
            Ok(verdict) => OutboxError::AlreadyDecided {
                run_id: decide.run_id,
                verdict,
                by: row.get(1),
                at_ms: row.get(2),
            },
            Err(error) => error,
        },
    })
}

/// A decision as [`DECISIONS`] reads it.
pub(super) fn decision_from_row(row: &Row) -> Result<Decision, OutboxError> {
    Ok(Decision {
        run_id: row
            .get::<_, &str>(0)
            .parse()
            .map_err(|e: uuid::Error| OutboxError::Store(e.to_string()))?,
        plugin: row.get(1),
        verdict: Verdict::parse(row.get(2))?,
        by: row.get(3),
        reason: row.get(4),
        decided_at_ms: row.get(5),
        held_at_ms: row.get(6),
        intents: intents_from_json(row.get(7))?,
    })
}
