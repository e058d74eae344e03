//! The run history in SQLite: `escrow_runs`, one row a run, and
//! `escrow_run_effects`, one row an effect a run requested, so that a list
//! filtered by effect reads an index, not every outcome.

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::outbox::{Entry, RunFilter, RunRecord, RunSummary, first_run_id_at};
use crate::run_id::RunId;

/// Keeps `runs`; one kept already is left as it is.
pub(super) fn record(conn: &mut Connection, runs: &[RunRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut run = tx.prepare_cached(
            "INSERT OR IGNORE INTO escrow_runs (run_id, plugin, status, component_sha256, \
             ended_at, effects, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut effect = tx.prepare_cached(
            "INSERT OR IGNORE INTO escrow_run_effects (effect, run_id) VALUES (?1, ?2)",
        )?;
        for record in runs {
            let id = record.run_id.to_string();
            let effects = serde_json::to_string(&record.effects).expect("names are JSON");
            run.execute(params![
                id,
                record.plugin,
                record.status,
                record.component_sha256,
                record.ended_at_ms,
                effects,
                record.outcome,
            ])?;
            for name in &record.effects {
                effect.execute(params![name, id])?;
            }
        }
    }
    tx.commit()
}

/// Runs by `filter`, newest first: only the conditions given are written,
/// so that each reads its index.
pub(super) fn list(conn: &Connection, filter: &RunFilter) -> rusqlite::Result<Vec<RunSummary>> {
    let mut conditions = Vec::new();
    let mut values: Vec<Sql> = Vec::new();
    let mut bind = |condition: &str, value: Sql| {
        values.push(value);
        conditions.push(condition.replace('?', &format!("?{}", values.len())));
    };
    if let Some(status) = &filter.status {
        bind("r.status = ?", Sql::Text(status.clone()));
    }
    if let Some(plugin) = &filter.plugin {
        bind("r.plugin = ?", Sql::Text(plugin.clone()));
    }
    if let Some(effect) = &filter.effect {
        bind(
            "r.run_id IN (SELECT run_id FROM escrow_run_effects WHERE effect = ?)",
            Sql::Text(effect.clone()),
        );
    }
    if let Some(since) = filter.since_ms {
        bind(
            "r.run_id >= ?",
            Sql::Text(first_run_id_at(since).to_string()),
        );
    }
    if let Some(before) = filter.before {
        bind("r.run_id < ?", Sql::Text(before.to_string()));
    }
    let clause = match conditions.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", conditions.join(" AND ")),
    };
    values.push(Sql::Integer(i64::from(filter.page())));
    let sql = format!(
        "SELECT r.run_id, r.plugin, r.status, r.component_sha256, r.ended_at, r.effects \
         FROM escrow_runs r {clause} ORDER BY r.run_id DESC LIMIT ?{}",
        values.len()
    );
    conn.prepare_cached(&sql)?
        .query_map(params_from_iter(values), |r| {
            Ok(RunSummary {
                run_id: run_id(r.get::<_, String>(0)?)?,
                plugin: r.get(1)?,
                status: r.get(2)?,
                component_sha256: r.get(3)?,
                ended_at_ms: r.get(4)?,
                effects: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            })
        })?
        .collect()
}

fn run_id(text: String) -> rusqlite::Result<RunId> {
    text.parse().map_err(|e: uuid::Error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// How many runs started at or after `since_ms`, by status.
pub(super) fn counts(conn: &Connection, since_ms: i64) -> rusqlite::Result<Vec<(String, u64)>> {
    conn.prepare_cached(
        "SELECT status, COUNT(*) FROM escrow_runs WHERE run_id >= ?1 GROUP BY status \
         ORDER BY status",
    )?
    .query_map([first_run_id_at(since_ms).to_string()], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?
    .collect()
}

/// The run `run_id`, as kept.
pub(super) fn one(conn: &Connection, run_id: RunId) -> rusqlite::Result<Option<RunRecord>> {
    conn.prepare_cached(
        "SELECT plugin, status, component_sha256, ended_at, effects, outcome FROM escrow_runs \
         WHERE run_id = ?1",
    )?
    .query_row([run_id.to_string()], |r| {
        Ok(RunRecord {
            run_id,
            plugin: r.get(0)?,
            status: r.get(1)?,
            component_sha256: r.get(2)?,
            ended_at_ms: r.get(3)?,
            effects: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
            outcome: r.get(5)?,
        })
    })
    .optional()
}

/// Every entry of `run_id`, intents in seq order, then compensations.
pub(super) fn entries(conn: &Connection, run_id: RunId) -> rusqlite::Result<Vec<Entry>> {
    conn.prepare_cached(&format!(
        "SELECT {} FROM escrow_outbox WHERE run_id = ?1 ORDER BY kind DESC, seq",
        super::ENTRY_COLUMNS
    ))?
    .query_map([run_id.to_string()], super::entry_from_row)?
    .collect()
}

/// Deletes at most `limit` runs that ended before `ended_before_ms`, with
/// their effects.
pub(super) fn prune(
    conn: &mut Connection,
    ended_before_ms: i64,
    limit: u32,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let gone: Vec<String> = tx
        .prepare_cached(
            "DELETE FROM escrow_runs WHERE run_id IN (SELECT run_id FROM escrow_runs \
             WHERE ended_at < ?1 LIMIT ?2) RETURNING run_id",
        )?
        .query_map(params![ended_before_ms, limit], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    {
        let mut effects = tx.prepare_cached("DELETE FROM escrow_run_effects WHERE run_id = ?1")?;
        for run in &gone {
            effects.execute([run])?;
        }
    }
    tx.prepare_cached(
        "DELETE FROM escrow_requests WHERE rowid IN (SELECT rowid FROM escrow_requests \
         WHERE created_at < ?1 LIMIT ?2)",
    )?
    .execute(params![ended_before_ms, limit])?;
    tx.commit()?;
    Ok(gone.len() as u64)
}
