//! The run history in Postgres: `escrow_runs`, one row a run, and
//! `escrow_run_effects`, one row an effect a run requested. A batch of
//! records is two statements over arrays, whatever its size.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ENTRY_COLUMNS;
use crate::outbox::{OutboxError, RunFilter, RunRecord, RunSummary, first_run_id_at};
use crate::run_id::RunId;

/// Keeps runs, each from the arrays' same index; one kept already is left.
pub(super) const RECORD_RUNS: &str = "\
INSERT INTO escrow_runs (run_id, plugin, status, component_sha256, ended_at, effects, outcome) \
SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[], \
                     $7::TEXT[]) \
ON CONFLICT (run_id) DO NOTHING";

/// Keeps the effects of runs, a row each.
pub(super) const RECORD_EFFECTS: &str = "\
INSERT INTO escrow_run_effects (effect, run_id) \
SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) ON CONFLICT DO NOTHING";

/// The columns of [`RECORD_RUNS`] and [`RECORD_EFFECTS`] for `runs`.
pub(super) struct Columns {
    ids: Vec<String>,
    plugins: Vec<String>,
    statuses: Vec<String>,
    components: Vec<Option<String>>,
    ended: Vec<i64>,
    effects: Vec<String>,
    outcomes: Vec<String>,
    effect_names: Vec<String>,
    effect_runs: Vec<String>,
}

impl Columns {
    pub(super) fn of(runs: &[RunRecord]) -> Self {
        let mut columns = Columns {
            ids: Vec::new(),
            plugins: Vec::new(),
            statuses: Vec::new(),
            components: Vec::new(),
            ended: Vec::new(),
            effects: Vec::new(),
            outcomes: Vec::new(),
            effect_names: Vec::new(),
            effect_runs: Vec::new(),
        };
        for run in runs {
            let id = run.run_id.to_string();
            for effect in &run.effects {
                columns.effect_names.push(effect.clone());
                columns.effect_runs.push(id.clone());
            }
            columns.ids.push(id);
            columns.plugins.push(run.plugin.clone());
            columns.statuses.push(run.status.clone());
            columns.components.push(run.component_sha256.clone());
            columns.ended.push(run.ended_at_ms);
            columns
                .effects
                .push(serde_json::to_string(&run.effects).expect("names are JSON"));
            columns.outcomes.push(run.outcome.clone());
        }
        columns
    }

    pub(super) fn runs(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.ids,
            &self.plugins,
            &self.statuses,
            &self.components,
            &self.ended,
            &self.effects,
            &self.outcomes,
        ]
    }

    pub(super) fn effects(&self) -> [&(dyn ToSql + Sync); 2] {
        [&self.effect_names, &self.effect_runs]
    }
}

/// The statement and parameters of a list by `filter`: only the conditions
/// given are written, so that each reads its index.
pub(super) fn list(filter: &RunFilter) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut conditions = Vec::new();
    let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut bind = |condition: &str, value: Box<dyn ToSql + Sync + Send>| {
        values.push(value);
        conditions.push(condition.replace('?', &format!("${}", values.len())));
    };
    if let Some(status) = &filter.status {
        bind("r.status = ?", Box::new(status.clone()));
    }
    if let Some(plugin) = &filter.plugin {
        bind("r.plugin = ?", Box::new(plugin.clone()));
    }
    if let Some(effect) = &filter.effect {
        bind(
            "r.run_id IN (SELECT run_id FROM escrow_run_effects WHERE effect = ?)",
            Box::new(effect.clone()),
        );
    }
    if let Some(since) = filter.since_ms {
        bind(
            "r.run_id >= ?",
            Box::new(first_run_id_at(since).to_string()),
        );
    }
    if let Some(before) = filter.before {
        bind("r.run_id < ?", Box::new(before.to_string()));
    }
    let clause = match conditions.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", conditions.join(" AND ")),
    };
    values.push(Box::new(i64::from(filter.page())));
    let sql = format!(
        "SELECT r.run_id, r.plugin, r.status, r.component_sha256, r.ended_at, r.effects \
         FROM escrow_runs r {clause} ORDER BY r.run_id DESC LIMIT ${}",
        values.len()
    );
    (sql, values)
}

/// A run of a list.
pub(super) fn summary(row: &Row) -> Result<RunSummary, OutboxError> {
    Ok(RunSummary {
        run_id: run_id(row.get(0))?,
        plugin: row.get(1),
        status: row.get(2),
        component_sha256: row.get(3),
        ended_at_ms: row.get(4),
        effects: serde_json::from_str(row.get(5)).unwrap_or_default(),
    })
}

fn run_id(text: &str) -> Result<RunId, OutboxError> {
    text.parse()
        .map_err(|e: uuid::Error| OutboxError::Store(e.to_string()))
}

/// The run of `ONE`'s row.
pub(super) const ONE: &str = "\
SELECT plugin, status, component_sha256, ended_at, effects, outcome FROM escrow_runs \
WHERE run_id = $1";

pub(super) fn record(run_id: RunId, row: &Row) -> RunRecord {
    RunRecord {
        run_id,
        plugin: row.get(0),
        status: row.get(1),
        component_sha256: row.get(2),
        ended_at_ms: row.get(3),
        effects: serde_json::from_str(row.get(4)).unwrap_or_default(),
        outcome: row.get(5),
    }
}

/// Every entry of a run (`$1`), intents in seq order, then compensations.
pub(super) fn run_entries_sql() -> String {
    format!("SELECT {ENTRY_COLUMNS} FROM escrow_outbox WHERE run_id = $1 ORDER BY kind DESC, seq")
}

/// Deletes at most `$2` runs that ended before `$1`, with their effects.
pub(super) const PRUNE: &str = "\
WITH gone AS ( \
  DELETE FROM escrow_runs WHERE run_id IN ( \
    SELECT run_id FROM escrow_runs WHERE ended_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) \
  RETURNING run_id \
), effects AS ( \
  DELETE FROM escrow_run_effects e USING gone WHERE e.run_id = gone.run_id \
), requests AS ( \
  DELETE FROM escrow_requests WHERE ctid IN ( \
    SELECT ctid FROM escrow_requests WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) \
) \
SELECT COUNT(*) FROM gone";
