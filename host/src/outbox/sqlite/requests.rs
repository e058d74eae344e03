//! Request keys in SQLite: `escrow_requests`, one row a key of a plugin.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::outbox::{RequestClaim, RequestKey};

/// Claims `key`: see [`OutboxStore::claim_request`](crate::outbox::OutboxStore::claim_request).
pub(super) fn claim(
    conn: &mut Connection,
    key: &RequestKey,
    now_ms: i64,
    stale_before_ms: i64,
) -> rusqlite::Result<RequestClaim> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let held: Option<(String, Option<i64>, Option<String>, i64)> = tx
        .prepare_cached(
            "SELECT input_sha256, status, answer, created_at FROM escrow_requests \
             WHERE plugin = ?1 AND key = ?2",
        )?
        .query_row(params![key.plugin, key.key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let claim = match held {
        None => {
            tx.prepare_cached(
                "INSERT INTO escrow_requests (plugin, key, input_sha256, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key.plugin, key.key, key.input_sha256, now_ms])?;
            RequestClaim::New
        }
        Some((input, _, _, _)) if input != key.input_sha256 => RequestClaim::OtherInput,
        Some((_, Some(status), answer, _)) => RequestClaim::Done {
            status: u16::try_from(status).unwrap_or(500),
            answer: answer.unwrap_or_default(),
        },
        Some((_, None, _, created)) if created < stale_before_ms => {
            tx.prepare_cached(
                "UPDATE escrow_requests SET created_at = ?3 WHERE plugin = ?1 AND key = ?2",
            )?
            .execute(params![key.plugin, key.key, now_ms])?;
            RequestClaim::New
        }
        Some(_) => RequestClaim::InProgress,
    };
    tx.commit()?;
    Ok(claim)
}

/// Keeps the answer of `key`'s request.
pub(super) fn answer(
    conn: &Connection,
    key: &RequestKey,
    status: u16,
    answer: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE escrow_requests SET status = ?3, answer = ?4 WHERE plugin = ?1 AND key = ?2",
    )?
    .execute(params![key.plugin, key.key, status, answer])?;
    Ok(())
}

/// Gives `key` back, unanswered.
pub(super) fn release(conn: &Connection, key: &RequestKey) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM escrow_requests WHERE plugin = ?1 AND key = ?2 AND status IS NULL",
    )?
    .execute(params![key.plugin, key.key])?;
    Ok(())
}
