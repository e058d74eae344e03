//! Request keys in Postgres: `escrow_requests`, one row a key of a plugin.
//! A claim inserts the key, or locks the row that holds it: of two requests
//! with one key, the second waits for the first's claim to commit.

use crate::outbox::{RequestClaim, RequestKey};

/// Claims `key`: see [`OutboxStore::claim_request`](crate::outbox::OutboxStore::claim_request).
pub(super) async fn claim(
    client: &mut deadpool_postgres::Client,
    key: &RequestKey,
    now_ms: i64,
    stale_before_ms: i64,
) -> Result<RequestClaim, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO escrow_requests (plugin, key, input_sha256, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (plugin, key) DO NOTHING",
            &[&key.plugin, &key.key, &key.input_sha256, &now_ms],
        )
        .await?;
    if inserted == 1 {
        tx.commit().await?;
        return Ok(RequestClaim::New);
    }
    let row = tx
        .query_one(
            "SELECT input_sha256, status, answer, created_at FROM escrow_requests \
             WHERE plugin = $1 AND key = $2 FOR UPDATE",
            &[&key.plugin, &key.key],
        )
        .await?;
    let (input, status, answer, created): (String, Option<i32>, Option<String>, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let claim = match status {
        _ if input != key.input_sha256 => RequestClaim::OtherInput,
        Some(status) => RequestClaim::Done {
            status: u16::try_from(status).unwrap_or(500),
            answer: answer.unwrap_or_default(),
        },
        None if created < stale_before_ms => {
            tx.execute(
                "UPDATE escrow_requests SET created_at = $3 WHERE plugin = $1 AND key = $2",
                &[&key.plugin, &key.key, &now_ms],
            )
            .await?;
            RequestClaim::New
        }
        None => RequestClaim::InProgress,
    };
    tx.commit().await?;
    Ok(claim)
}

/// Keeps the answer of `key`'s request.
pub(super) const ANSWER: &str =
    "UPDATE escrow_requests SET status = $3, answer = $4 WHERE plugin = $1 AND key = $2";

/// Gives a key back, unanswered.
pub(super) const RELEASE: &str =
    "DELETE FROM escrow_requests WHERE plugin = $1 AND key = $2 AND status IS NULL";
