//! The outbox in a SQLite file: the embedded default. WAL mode with
//! `synchronous = FULL`, so a committed transaction is on disk (fsync'd)
//! before it returns; several processes may share the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::{
    Changes, Claim, Decide, DecidedIntent, Decision, ENTRY_COLUMN_COUNT, ENTRY_COLUMNS, EXPIRED,
    EXPIRY_DECIDER, Entry, EntryKind, EntryStatus, Filter, Hold, NewEntry, OpenMode, OutboxError,
    OutboxStore, PENDING_STATS, Prune, RequestClaim, RequestKey, Retry, RunFilter, RunRecord,
    RunSummary, Settlement, Stats, Verdict, Write, fences_from_json, fences_json,
    intents_from_json, intents_json, retriable,
};
use crate::run_id::RunId;

mod history;
mod requests;

/// How long an operation waits for another process's transaction on the
/// same file before it fails.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an operation pauses before it tries again a file another
/// connection is writing. SQLite's own busy handler pauses longer each try
/// (up to 100 ms), which a writer that holds the file for a millisecond at a
/// time (a worker settling while runs commit) turns into tail latency.
pub const SQLITE_BUSY_PAUSE: Duration = Duration::from_millis(1);

/// SQLite's busy handler: tries again every [`SQLITE_BUSY_PAUSE`] until
/// [`SQLITE_BUSY_TIMEOUT`] has passed, then lets the operation fail busy.
fn wait_while_busy(tries: i32) -> bool {
    let waited = SQLITE_BUSY_PAUSE * u32::try_from(tries).unwrap_or(u32::MAX);
    if waited >= SQLITE_BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(SQLITE_BUSY_PAUSE);
    true
}

/// Prepared statements a connection keeps: more than the store has.
const STATEMENT_CACHE: usize = 64;

/// How soon a waiting worker first looks whether another process wrote to
/// the file; each look that finds nothing doubles the pause, up to
/// [`SQLITE_WATCH_MAX`]. A look reads one counter in the shared memory of
/// the WAL (`PRAGMA data_version`), not the table.
pub const SQLITE_WATCH_MIN: Duration = Duration::from_millis(1);

/// The longest pause between two looks of a waiting worker at the file.
pub const SQLITE_WATCH_MAX: Duration = Duration::from_millis(25);

/// The triggers that keep `escrow_outbox_counts`: one row a status, so
/// that stats read a handful of rows whatever the table holds. Created by
/// the migration to version 3, and again by version 4, which rebuilds the
/// table.
macro_rules! counted_triggers {
    () => {
        r"
CREATE TRIGGER escrow_outbox_counted_insert AFTER INSERT ON escrow_outbox BEGIN
    UPDATE escrow_outbox_counts SET entries = entries + 1,
        attempts = attempts + NEW.attempts + NEW.attempts_before_retry,
        retrying = retrying + (NEW.attempts > 0)
    WHERE status = NEW.status;
END;
CREATE TRIGGER escrow_outbox_counted_delete AFTER DELETE ON escrow_outbox BEGIN
    UPDATE escrow_outbox_counts SET entries = entries - 1,
        attempts = attempts - OLD.attempts - OLD.attempts_before_retry,
        retrying = retrying - (OLD.attempts > 0)
    WHERE status = OLD.status;
END;
CREATE TRIGGER escrow_outbox_counted_update
AFTER UPDATE OF status, attempts, attempts_before_retry ON escrow_outbox
WHEN OLD.status <> NEW.status OR OLD.attempts <> NEW.attempts
  OR OLD.attempts_before_retry <> NEW.attempts_before_retry
BEGIN
    UPDATE escrow_outbox_counts SET entries = entries - 1,
        attempts = attempts - OLD.attempts - OLD.attempts_before_retry,
        retrying = retrying - (OLD.attempts > 0)
    WHERE status = OLD.status;
    UPDATE escrow_outbox_counts SET entries = entries + 1,
        attempts = attempts + NEW.attempts + NEW.attempts_before_retry,
        retrying = retrying + (NEW.attempts > 0)
    WHERE status = NEW.status;
END;
"
    };
}

/// The schema, one migration per version; `escrow_schema` records the last
/// one applied.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE escrow_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL CHECK (kind IN ('intent', 'compensation')),
    run_id      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    ord         INTEGER NOT NULL,
    plugin      TEXT    NOT NULL,
    effect      TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    fences      TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER NOT NULL,
    claim_token TEXT,
    lease_until INTEGER,
    last_error  TEXT,
    created_at  INTEGER NOT NULL,
    delivered_at INTEGER,
    UNIQUE (run_id, kind, seq)
);
CREATE INDEX escrow_outbox_runs ON escrow_outbox (status, run_id, ord);
CREATE INDEX escrow_outbox_due ON escrow_outbox (status, due_at);
",
    r"
ALTER TABLE escrow_outbox ADD COLUMN attempts_before_retry INTEGER NOT NULL DEFAULT 0;
CREATE INDEX escrow_outbox_ended ON escrow_outbox (status, COALESCE(delivered_at, due_at));
CREATE INDEX escrow_outbox_claims ON escrow_outbox (claim_token) WHERE claim_token IS NOT NULL;
",
    // Indexes over the rows their queries read (a settled entry leaves the
    // pending ones), and counts kept by triggers, so that stats read three
    // rows whatever the table holds.
    concat!(
        r"
DROP INDEX escrow_outbox_runs;
DROP INDEX escrow_outbox_due;
DROP INDEX escrow_outbox_ended;
CREATE INDEX escrow_outbox_pending_runs ON escrow_outbox (run_id, ord) WHERE status = 'pending';
CREATE INDEX escrow_outbox_pending_due ON escrow_outbox (due_at, id) WHERE status = 'pending';
CREATE INDEX escrow_outbox_pending_age ON escrow_outbox (created_at) WHERE status = 'pending';
CREATE INDEX escrow_outbox_delivered ON escrow_outbox (delivered_at) WHERE status = 'delivered';
CREATE INDEX escrow_outbox_dead ON escrow_outbox (due_at) WHERE status = 'dead';
CREATE TABLE escrow_outbox_counts (
    status   TEXT    PRIMARY KEY,
    entries  INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    retrying INTEGER NOT NULL
);
INSERT INTO escrow_outbox_counts (status, entries, attempts, retrying)
SELECT s.status, COUNT(o.id), COALESCE(SUM(o.attempts + o.attempts_before_retry), 0),
       COALESCE(SUM(o.attempts > 0), 0)
FROM (SELECT 'pending' AS status UNION ALL SELECT 'delivered' UNION ALL SELECT 'dead') AS s
LEFT JOIN escrow_outbox o ON o.status = s.status
GROUP BY s.status;
",
        counted_triggers!(),
        r""
    ),
    // Runs held for approval, and the decisions about them: two statuses
    // more (a CHECK constraint SQLite only changes by rebuilding the
    // table, its ids and sequence kept) and a table of decisions, one row
    // a run.
    concat!(
        r"
CREATE TABLE escrow_outbox_next (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL CHECK (kind IN ('intent', 'compensation')),
    run_id      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    ord         INTEGER NOT NULL,
    plugin      TEXT    NOT NULL,
    effect      TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    fences      TEXT    NOT NULL,
    status      TEXT    NOT NULL
                CHECK (status IN ('pending', 'delivered', 'dead', 'held', 'rejected')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER NOT NULL,
    claim_token TEXT,
    lease_until INTEGER,
    last_error  TEXT,
    created_at  INTEGER NOT NULL,
    delivered_at INTEGER,
    attempts_before_retry INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, kind, seq)
);
INSERT INTO escrow_outbox_next (id, kind, run_id, seq, ord, plugin, effect, payload, fences,
    status, attempts, due_at, claim_token, lease_until, last_error, created_at, delivered_at,
    attempts_before_retry)
SELECT id, kind, run_id, seq, ord, plugin, effect, payload, fences, status, attempts, due_at,
    claim_token, lease_until, last_error, created_at, delivered_at, attempts_before_retry
FROM escrow_outbox;
DELETE FROM sqlite_sequence WHERE name = 'escrow_outbox_next';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'escrow_outbox_next', seq FROM sqlite_sequence WHERE name = 'escrow_outbox';
DROP TABLE escrow_outbox;
ALTER TABLE escrow_outbox_next RENAME TO escrow_outbox;
CREATE INDEX escrow_outbox_claims ON escrow_outbox (claim_token) WHERE claim_token IS NOT NULL;
CREATE INDEX escrow_outbox_pending_runs ON escrow_outbox (run_id, ord) WHERE status = 'pending';
CREATE INDEX escrow_outbox_pending_due ON escrow_outbox (due_at, id) WHERE status = 'pending';
CREATE INDEX escrow_outbox_pending_age ON escrow_outbox (created_at) WHERE status = 'pending';
CREATE INDEX escrow_outbox_delivered ON escrow_outbox (delivered_at) WHERE status = 'delivered';
CREATE INDEX escrow_outbox_dead ON escrow_outbox (due_at) WHERE status = 'dead';
CREATE INDEX escrow_outbox_held ON escrow_outbox (run_id, ord) WHERE status = 'held';
CREATE INDEX escrow_outbox_held_age ON escrow_outbox (created_at, run_id) WHERE status = 'held';
CREATE INDEX escrow_outbox_rejected ON escrow_outbox (due_at) WHERE status = 'rejected';
",
        counted_triggers!(),
        r"INSERT INTO escrow_outbox_counts (status, entries, attempts, retrying)
VALUES ('held', 0, 0, 0), ('rejected', 0, 0, 0);
CREATE TABLE escrow_decisions (
    run_id     TEXT    PRIMARY KEY,
    plugin     TEXT    NOT NULL,
    verdict    TEXT    NOT NULL CHECK (verdict IN ('approved', 'rejected')),
    decided_by TEXT    NOT NULL,
    reason     TEXT,
    decided_at INTEGER NOT NULL,
    held_at    INTEGER NOT NULL,
    intents    TEXT    NOT NULL
);
CREATE INDEX escrow_decisions_decided ON escrow_decisions (decided_at);
"
    ),
    // The run history (`outbox/history.rs`): one row a run, and one an
    // effect it requested, for lists filtered by effect.
    r"
CREATE TABLE escrow_runs (
    run_id           TEXT    PRIMARY KEY,
    plugin           TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    component_sha256 TEXT,
    ended_at         INTEGER NOT NULL,
    effects          TEXT    NOT NULL,
    outcome          TEXT    NOT NULL
);
CREATE INDEX escrow_runs_status ON escrow_runs (status, run_id);
CREATE INDEX escrow_runs_plugin ON escrow_runs (plugin, run_id);
CREATE INDEX escrow_runs_ended ON escrow_runs (ended_at);
CREATE TABLE escrow_run_effects (
    effect TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (effect, run_id)
) WITHOUT ROWID;
CREATE INDEX escrow_run_effects_run ON escrow_run_effects (run_id);
",
    // Idempotency keys of requests that run plugins (`outbox/requests.rs`).
    r"
CREATE TABLE escrow_requests (
    plugin       TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    input_sha256 TEXT    NOT NULL,
    status       INTEGER,
    answer       TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (plugin, key)
);
CREATE INDEX escrow_requests_created ON escrow_requests (created_at);
",
];

/// An outbox in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteOutbox {
    /// Opens (creating if needed) the outbox file at `path` and migrates its
    /// schema.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Open`] when the file cannot be opened or created,
    /// [`OutboxError::Corrupt`] when it is not an outbox this version can use.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OutboxError> {
        Self::open_with(path, OpenMode::Create)
    }

    /// Opens the outbox file at `path`, creating it only under
    /// [`OpenMode::Create`], and migrates its schema.
    ///
    /// # Errors
    ///
    /// As [`SqliteOutbox::open`]; under [`OpenMode::Existing`], also
    /// [`OutboxError::Open`] when there is no file at `path` or the file
    /// holds no outbox.
    pub fn open_with(path: impl AsRef<Path>, mode: OpenMode) -> Result<Self, OutboxError> {
        let path = path.as_ref().to_owned();
        let what = path.display().to_string();
        let open = |message: String| OutboxError::Open {
            what: what.clone(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(open(format!(
                "the directory `{}` does not exist",
                parent.display()
            )));
        }
        let flags = match mode {
            OpenMode::Create => OpenFlags::default(),
            OpenMode::Existing if !path.is_file() => {
                return Err(open(
                    "there is no such file (a run with an outbox creates it)".into(),
                ));
            }
            OpenMode::Existing => OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE,
        };
        let mut conn =
            Connection::open_with_flags(&path, flags).map_err(|e| open(e.to_string()))?;
        let corrupt = |e: rusqlite::Error| OutboxError::Corrupt {
            what: what.clone(),
            message: e.to_string(),
        };
        if mode == OpenMode::Existing {
            let tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'escrow_outbox'",
                    [],
                    |r| r.get(0),
                )
                .map_err(corrupt)?;
            if tables == 0 {
                return Err(open("the file holds no escrow outbox".into()));
            }
        }
        conn.busy_handler(Some(wait_while_busy)).map_err(corrupt)?;
        // Every statement the store runs stays prepared.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(corrupt)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open(format!("WAL mode is not available (got `{mode}`)")));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(corrupt)?;
        migrate(&mut conn).map_err(|message| OutboxError::Corrupt {
            what: what.clone(),
            message,
        })?;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(|e| OutboxError::Store(e.to_string()))
        })
        .await
        .map_err(|e| OutboxError::Store(format!("the outbox task failed: {e}")))?
    }
}

/// How many runs were decided, by verdict, and of the rejected how many
/// expired (`?1` the reason and `?2` the decider of an expiry).
const DECISION_COUNTS: &str = "SELECT verdict, COUNT(*), \
                               COALESCE(SUM(reason IS ?1 AND decided_by IS ?2), 0) \
                               FROM escrow_decisions GROUP BY verdict";

/// Claims up to `?2` runs whose first pending entry is due at `?1` and not
/// held by a live claim, with their pending entries in delivery order, at
/// most `?5` in all, under the token `?3` until `?4`: one statement.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH heads AS ( \
           SELECT h.run_id, h.due_at, h.id FROM escrow_outbox h \
           WHERE h.status = 'pending' AND h.due_at <= ?1 \
             AND (h.lease_until IS NULL OR h.lease_until < ?1) \
             AND NOT EXISTS (SELECT 1 FROM escrow_outbox p WHERE p.run_id = h.run_id \
                             AND p.status = 'pending' AND p.ord < h.ord) \
           ORDER BY h.due_at, h.id LIMIT ?2 \
         ), taken AS ( \
           SELECT e.id, row_number() OVER (ORDER BY heads.due_at, heads.id, e.ord) AS place \
           FROM heads JOIN escrow_outbox e ON e.run_id = heads.run_id AND e.status = 'pending' \
         ) \
         UPDATE escrow_outbox SET claim_token = ?3, lease_until = ?4 \
         WHERE id IN (SELECT id FROM taken WHERE place <= ?5) \
         RETURNING {ENTRY_COLUMNS}, ord"
    )
});

/// What another connection committed, as far as `conn` can tell: the file's
/// `data_version` changes with every commit made through any other
/// connection.
struct FileChanges {
    conn: Connection,
    seen: i64,
    /// Whether the last look failed: the next failures back off like looks
    /// that find nothing, instead of waking the worker every time.
    failing: bool,
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

#[async_trait::async_trait]
impl Changes for FileChanges {
    async fn changed(&mut self) {
        let mut pause = SQLITE_WATCH_MIN;
        loop {
            tokio::time::sleep(pause).await;
            match data_version(&self.conn) {
                Ok(version) if version == self.seen => self.failing = false,
                Ok(version) => {
                    self.seen = version;
                    self.failing = false;
                    return;
                }
                // Busy (a writer holds the file) or failing: the worker
                // looks for itself, once.
                Err(_) if !self.failing => {
                    self.failing = true;
                    return;
                }
                Err(_) => {}
            }
            pause = (pause * 2).min(SQLITE_WATCH_MAX);
        }
    }
}

/// Applies the migrations the file lacks, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS escrow_schema (version INTEGER NOT NULL)")
        .map_err(|e| e.to_string())?;
    let version: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM escrow_schema",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(format!(
            "its schema is version {version}, written by a newer escrow; this one knows up to {known}"
        ));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(migration).map_err(|e| e.to_string())?;
        tx.execute("DELETE FROM escrow_schema", [])
            .map_err(|e| e.to_string())?;
        tx.execute(
            "INSERT INTO escrow_schema (version) VALUES (?1)",
            [i as i64 + 1],
        )
        .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

fn insert(
    tx: &Transaction<'_>,
    entry: &NewEntry,
    due_at: i64,
    claim: Option<&Claim>,
    now: i64,
) -> rusqlite::Result<()> {
    insert_as(tx, EntryStatus::Pending, entry, due_at, claim, now)
}

fn insert_as(
    tx: &Transaction<'_>,
    status: EntryStatus,
    entry: &NewEntry,
    due_at: i64,
    claim: Option<&Claim>,
    now: i64,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, fences, \
         status, attempts, due_at, claim_token, lease_until, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?13, 0, ?9, ?10, ?11, ?12)",
    )?;
    insert.execute(params![
        entry.kind.as_str(),
        entry.run_id.to_string(),
        entry.seq as i64,
        entry.kind.ord(entry.seq),
        entry.plugin,
        entry.effect,
        entry.payload,
        fences_json(&entry.fences),
        due_at,
        claim.map(|c| c.token.as_str()),
        claim.map(|c| c.lease_until_ms),
        now,
        status.as_str(),
    ])?;
    Ok(())
}

/// Keeps the failed compensations of `run` owed (an attempt counted, due at
/// `due_at`) and forgets its other journaled ones.
fn resolve(
    tx: &Transaction<'_>,
    run: &str,
    failed: &[(u64, String)],
    due_at: i64,
) -> rusqlite::Result<()> {
    owe(tx, run, failed, due_at)?;
    tx.prepare_cached(
        "DELETE FROM escrow_outbox WHERE run_id = ?1 AND kind = 'compensation' \
         AND status = 'pending' AND attempts = 0",
    )?
    .execute([run])?;
    Ok(())
}

/// Keeps the failed compensations of `run` owed: an attempt counted, due
/// at `due_at`.
fn owe(
    tx: &Transaction<'_>,
    run: &str,
    failed: &[(u64, String)],
    due_at: i64,
) -> rusqlite::Result<()> {
    let mut owe = tx.prepare_cached(
        "UPDATE escrow_outbox SET attempts = attempts + 1, last_error = ?3, due_at = ?4 \
         WHERE run_id = ?1 AND kind = 'compensation' AND seq = ?2 AND status = 'pending'",
    )?;
    for (seq, error) in failed {
        owe.execute(params![run, *seq as i64, error, due_at])?;
    }
    Ok(())
}

/// Writes a held run: see [`OutboxStore::hold`].
fn hold(tx: &Transaction<'_>, hold: &Hold) -> rusqlite::Result<()> {
    for intent in &hold.intents {
        insert_as(
            tx,
            EntryStatus::Held,
            intent,
            hold.now_ms,
            None,
            hold.now_ms,
        )?;
    }
    if hold.journaled {
        let run = hold.run_id.to_string();
        owe(tx, &run, &hold.failed_compensations, hold.now_ms)?;
        tx.prepare_cached(
            "UPDATE escrow_outbox SET status = 'held' WHERE run_id = ?1 \
             AND kind = 'compensation' AND status = 'pending' AND attempts = 0",
        )?
        .execute([run])?;
    }
    Ok(())
}

/// Decides a held run: see [`OutboxStore::decide`]. The transaction is
/// immediate, so the check and the decision see no other writer between.
fn decide(
    tx: &Transaction<'_>,
    decide: &Decide,
) -> rusqlite::Result<Result<Decision, OutboxError>> {
    let run = decide.run_id.to_string();
    let decided = tx
        .prepare_cached(
            "SELECT verdict, decided_by, decided_at FROM escrow_decisions WHERE run_id = ?1",
        )?
        .query_row([&run], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })
        .optional()?;
    if let Some((verdict, by, at_ms)) = decided {
        return Ok(Err(match Verdict::parse(&verdict) {
            Ok(verdict) => OutboxError::AlreadyDecided {
                run_id: decide.run_id,
                verdict,
                by,
                at_ms,
            },
            Err(error) => error,
        }));
    }
    let mut plugin = String::new();
    let mut held_at = i64::MAX;
    let intents: Vec<DecidedIntent> = tx
        .prepare_cached(
            "SELECT seq, effect, payload, plugin, created_at FROM escrow_outbox \
             WHERE run_id = ?1 AND kind = 'intent' AND status = 'held' ORDER BY ord",
        )?
        .query_map([&run], |r| {
            plugin = r.get(3)?;
            held_at = held_at.min(r.get(4)?);
            Ok(DecidedIntent {
                seq: r.get::<_, i64>(0)? as u64,
                effect: r.get(1)?,
                payload: crate::answers::Bytes(r.get(2)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    if intents.is_empty() {
        return Ok(Err(OutboxError::NotHeld {
            run_id: decide.run_id,
        }));
    }
    tx.prepare_cached(
        "INSERT INTO escrow_decisions (run_id, plugin, verdict, decided_by, reason, decided_at, \
         held_at, intents) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        run,
        plugin,
        decide.verdict.as_str(),
        decide.by,
        decide.reason,
        decide.now_ms,
        held_at,
        intents_json(&intents),
    ])?;
    let intents_become = match decide.verdict {
        Verdict::Approved => "pending",
        Verdict::Rejected => "rejected",
    };
    tx.prepare_cached(&format!(
        "UPDATE escrow_outbox SET status = '{intents_become}', due_at = ?2 \
         WHERE run_id = ?1 AND kind = 'intent' AND status = 'held'"
    ))?
    .execute(params![run, decide.now_ms])?;
    match decide.verdict {
        Verdict::Approved => tx
            .prepare_cached(
                "DELETE FROM escrow_outbox WHERE run_id = ?1 AND kind = 'compensation' \
                 AND status = 'held'",
            )?
            .execute([&run])?,
        Verdict::Rejected => tx
            .prepare_cached(
                "UPDATE escrow_outbox SET status = 'pending', due_at = ?2 WHERE run_id = ?1 \
                 AND kind = 'compensation' AND status = 'held'",
            )?
            .execute(params![run, decide.now_ms])?,
    };
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

fn decision_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Decision, OutboxError>> {
    let run_id: String = row.get(0)?;
    let verdict: String = row.get(2)?;
    let intents: String = row.get(7)?;
    let read = || -> Result<Decision, OutboxError> {
        Ok(Decision {
            run_id: run_id
                .parse()
                .map_err(|e: uuid::Error| OutboxError::Store(e.to_string()))?,
            plugin: row.get(1).map_err(|e| OutboxError::Store(e.to_string()))?,
            verdict: Verdict::parse(&verdict)?,
            by: row.get(3).map_err(|e| OutboxError::Store(e.to_string()))?,
            reason: row.get(4).map_err(|e| OutboxError::Store(e.to_string()))?,
            decided_at_ms: row.get(5).map_err(|e| OutboxError::Store(e.to_string()))?,
            held_at_ms: row.get(6).map_err(|e| OutboxError::Store(e.to_string()))?,
            intents: intents_from_json(&intents)?,
        })
    };
    Ok(read())
}

/// Applies `settlements` for entries `claim` holds and extends the entries
/// `renewed` it holds to its lease; returns how many settled entries were
/// still held.
fn settle(
    tx: &Transaction<'_>,
    claim: &Claim,
    settlements: &[(i64, Settlement)],
    now_ms: i64,
    renewed: &[i64],
) -> rusqlite::Result<u64> {
    let now = now_ms;
    let mut held = 0;
    for (id, settlement) in settlements {
        let token = &claim.token;
        held += match settlement {
            Settlement::Delivered => tx
                .prepare_cached(
                    "UPDATE escrow_outbox SET status = 'delivered', attempts = attempts + 1, \
                 delivered_at = ?3, last_error = NULL, claim_token = NULL, lease_until = NULL \
                 WHERE id = ?1 AND claim_token = ?2",
                )?
                .execute(params![id, token, now])?,
            Settlement::Retry { due_at_ms, error } => tx
                .prepare_cached(
                    "UPDATE escrow_outbox SET attempts = attempts + 1, due_at = ?3, \
                 last_error = ?4, claim_token = NULL, lease_until = NULL \
                 WHERE id = ?1 AND claim_token = ?2",
                )?
                .execute(params![id, token, due_at_ms, error])?,
            Settlement::Dead { error } => tx
                .prepare_cached(
                    "UPDATE escrow_outbox SET status = 'dead', attempts = attempts + 1, \
                 last_error = ?3, claim_token = NULL, lease_until = NULL \
                 WHERE id = ?1 AND claim_token = ?2",
                )?
                .execute(params![id, token, error])?,
            Settlement::Reschedule { due_at_ms, reason } => tx
                .prepare_cached(
                    "UPDATE escrow_outbox SET due_at = ?3, last_error = ?4, \
                 claim_token = NULL, lease_until = NULL \
                 WHERE id = ?1 AND claim_token = ?2",
                )?
                .execute(params![id, token, due_at_ms, reason])?,
            Settlement::Release => tx
                .prepare_cached(
                    "UPDATE escrow_outbox SET claim_token = NULL, lease_until = NULL \
                 WHERE id = ?1 AND claim_token = ?2",
                )?
                .execute(params![id, token])?,
        } as u64;
    }
    let mut renew = tx.prepare_cached(
        "UPDATE escrow_outbox SET lease_until = ?3 WHERE id = ?1 AND claim_token = ?2",
    )?;
    for id in renewed {
        renew.execute(params![id, claim.token, claim.lease_until_ms])?;
    }
    Ok(held)
}

/// Applies one write; returns how many entries a settlement found still
/// held by its claim (0 for other writes).
fn apply(tx: &Transaction<'_>, write: &Write) -> rusqlite::Result<u64> {
    match write {
        Write::Settle {
            claim,
            settlements,
            now_ms,
            renewed,
        } => return settle(tx, claim, settlements, *now_ms, renewed),
        Write::Commit {
            run_id,
            intents,
            claim,
            now_ms,
            journaled,
            failed_compensations,
        } => {
            for intent in intents {
                insert(tx, intent, *now_ms, claim.as_ref(), *now_ms)?;
            }
            if *journaled {
                resolve(tx, &run_id.to_string(), failed_compensations, *now_ms)?;
            }
        }
        Write::Journal {
            entry,
            due_at_ms,
            now_ms,
        } => insert(tx, entry, *due_at_ms, None, *now_ms)?,
        Write::Resolve {
            run_id,
            failed,
            due_at_ms,
        } => resolve(tx, &run_id.to_string(), failed, *due_at_ms)?,
    }
    Ok(0)
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let kind: String = row.get(1)?;
    let run_id: String = row.get(2)?;
    let fences: String = row.get(7)?;
    let status: String = row.get(8)?;
    let bad = |i: usize, e: OutboxError| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(Entry {
        id: row.get(0)?,
        entry: NewEntry {
            kind: EntryKind::parse(&kind).map_err(|e| bad(1, e))?,
            run_id: run_id
                .parse()
                .map_err(|e: uuid::Error| bad(2, OutboxError::Store(e.to_string())))?,
            seq: row.get::<_, i64>(3)? as u64,
            plugin: row.get(4)?,
            effect: row.get(5)?,
            payload: row.get(6)?,
            fences: fences_from_json(&fences),
        },
        status: status.parse().map_err(|e| bad(8, e))?,
        attempts: row.get::<_, i64>(9)? as u32,
        due_at_ms: row.get(10)?,
        last_error: row.get(11)?,
        created_at_ms: row.get(12)?,
        attempts_before_retry: row.get::<_, i64>(13)? as u32,
    })
}

#[async_trait::async_trait]
impl OutboxStore for SqliteOutbox {
    async fn write(&self, batch: &[Write]) -> Result<Vec<u64>, OutboxError> {
        let batch = batch.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let answers = batch
                .iter()
                .map(|write| apply(&tx, write))
                .collect::<rusqlite::Result<_>>()?;
            tx.commit()?;
            Ok(answers)
        })
        .await
    }

    async fn claim(
        &self,
        claim: &Claim,
        now_ms: i64,
        max_runs: u32,
        max_entries: u32,
    ) -> Result<Vec<Entry>, OutboxError> {
        let claim = claim.clone();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut claimed: Vec<(i64, Entry)> = tx
                .prepare_cached(&CLAIM)?
                .query_map(
                    params![
                        now_ms,
                        max_runs,
                        claim.token,
                        claim.lease_until_ms,
                        max_entries
                    ],
                    |r| Ok((r.get(ENTRY_COLUMN_COUNT)?, entry_from_row(r)?)),
                )?
                .collect::<rusqlite::Result<_>>()?;
            tx.commit()?;
            // Run by run, in the order their heads (first entries) came
            // due, each in delivery order: the order the claim took them in.
            let mut heads: HashMap<RunId, (i64, i64)> = HashMap::new();
            for (_, entry) in &claimed {
                let head = heads
                    .entry(entry.entry.run_id)
                    .or_insert((entry.due_at_ms, entry.id));
                *head = (*head).min((entry.due_at_ms, entry.id));
            }
            claimed.sort_by_key(|(ord, entry)| (heads[&entry.entry.run_id], *ord));
            Ok(claimed.into_iter().map(|(_, entry)| entry).collect())
        })
        .await
    }

    async fn committed(&self, run_id: RunId) -> Result<bool, OutboxError> {
        let run = run_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM escrow_outbox WHERE run_id = ?1 AND kind = 'intent')",
                [run],
                |r| r.get(0),
            )
        })
        .await
    }

    async fn claimed(&self, claim: &Claim, run_id: RunId) -> Result<Vec<Entry>, OutboxError> {
        let (token, run) = (claim.token.clone(), run_id.to_string());
        self.with(move |conn| {
            let mut query = conn.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM escrow_outbox \
                 WHERE run_id = ?2 AND status = 'pending' AND claim_token = ?1 ORDER BY ord"
            ))?;
            query.query_map([token, run], entry_from_row)?.collect()
        })
        .await
    }

    async fn release(&self, claim: &Claim, ids: &[i64]) -> Result<(), OutboxError> {
        let (token, ids) = (claim.token.clone(), ids.to_vec());
        self.with(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut release = tx.prepare_cached(
                    "UPDATE escrow_outbox SET claim_token = NULL, lease_until = NULL \
                     WHERE id = ?1 AND claim_token = ?2",
                )?;
                for id in ids {
                    release.execute(params![id, token])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Entry>, OutboxError> {
        let status = filter.status.map(|s| s.as_str());
        let limit = filter.limit.unwrap_or(100);
        self.with(move |conn| {
            let mut query = conn.prepare(&format!(
                "SELECT {ENTRY_COLUMNS} FROM escrow_outbox \
                 WHERE (?1 IS NULL OR status = ?1) ORDER BY id LIMIT ?2"
            ))?;
            query
                .query_map(params![status, limit], entry_from_row)?
                .collect()
        })
        .await
    }

    async fn stats(&self) -> Result<Stats, OutboxError> {
        self.with(|conn| {
            let mut stats = Stats::default();
            let mut counts = conn.prepare_cached(
                "SELECT status, entries, attempts, retrying FROM escrow_outbox_counts",
            )?;
            let rows = counts.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (status, count, attempts, retrying) = row?;
                stats.add(&status, count as u64, attempts as u64, retrying as u64);
            }
            (
                stats.oldest_pending_ms,
                stats.claimed,
                stats.claimed_until_ms,
            ) = conn.prepare_cached(PENDING_STATS)?.query_row([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })?;
            let mut decisions = conn.prepare_cached(DECISION_COUNTS)?;
            let rows = decisions.query_map(params![EXPIRED, EXPIRY_DECIDER], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (verdict, count, expired) = row?;
                match verdict.as_str() {
                    "approved" => stats.decisions.approved = count as u64,
                    _ => {
                        stats.decisions.rejected = count as u64;
                        stats.decisions.expired = expired as u64;
                    }
                }
            }
            Ok(stats)
        })
        .await
    }

    async fn hold(&self, held: &Hold) -> Result<(), OutboxError> {
        let held = held.clone();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            hold(&tx, &held)?;
            tx.commit()
        })
        .await
    }

    async fn decide(&self, which: &Decide) -> Result<Decision, OutboxError> {
        let which = which.clone();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let decided = decide(&tx, &which)?;
            if decided.is_ok() {
                tx.commit()?;
            }
            Ok(decided)
        })
        .await?
    }

    async fn decisions(&self, limit: u32) -> Result<Vec<Decision>, OutboxError> {
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT run_id, plugin, verdict, decided_by, reason, decided_at, held_at, \
                 intents FROM escrow_decisions ORDER BY decided_at DESC, rowid DESC LIMIT ?1",
            )?
            .query_map([limit], decision_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await?
        .into_iter()
        .collect()
    }

    async fn held_runs(&self, held_before_ms: i64, limit: u32) -> Result<Vec<RunId>, OutboxError> {
        let runs: Vec<String> = self
            .with(move |conn| {
                conn.prepare_cached(
                    "SELECT run_id FROM escrow_outbox WHERE status = 'held' AND created_at < ?1 \
                     GROUP BY run_id ORDER BY MIN(created_at) LIMIT ?2",
                )?
                .query_map(params![held_before_ms, limit], |r| r.get(0))?
                .collect()
            })
            .await?;
        runs.iter()
            .map(|run| {
                run.parse()
                    .map_err(|e: uuid::Error| OutboxError::Store(e.to_string()))
            })
            .collect()
    }

    async fn record_runs(&self, runs: &[RunRecord]) -> Result<(), OutboxError> {
        let runs = runs.to_vec();
        self.with(move |conn| history::record(conn, &runs)).await
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, OutboxError> {
        let filter = filter.clone();
        self.with(move |conn| history::list(conn, &filter)).await
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>, OutboxError> {
        self.with(move |conn| history::one(conn, run_id)).await
    }

    async fn run_entries(&self, run_id: RunId) -> Result<Vec<Entry>, OutboxError> {
        self.with(move |conn| history::entries(conn, run_id)).await
    }

    async fn run_counts(&self, since_ms: i64) -> Result<Vec<(String, u64)>, OutboxError> {
        self.with(move |conn| history::counts(conn, since_ms)).await
    }

    async fn prune_runs(&self, ended_before_ms: i64, limit: u32) -> Result<u64, OutboxError> {
        self.with(move |conn| history::prune(conn, ended_before_ms, limit))
            .await
    }

    async fn claim_request(
        &self,
        key: &RequestKey,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<RequestClaim, OutboxError> {
        let key = key.clone();
        self.with(move |conn| requests::claim(conn, &key, now_ms, stale_before_ms))
            .await
    }

    async fn answer_request(
        &self,
        key: &RequestKey,
        status: u16,
        answer: &str,
    ) -> Result<(), OutboxError> {
        let (key, answer) = (key.clone(), answer.to_owned());
        self.with(move |conn| requests::answer(conn, &key, status, &answer))
            .await
    }

    async fn release_request(&self, key: &RequestKey) -> Result<(), OutboxError> {
        let key = key.clone();
        self.with(move |conn| requests::release(conn, &key)).await
    }

    async fn retry(&self, which: &Retry, now_ms: i64) -> Result<u64, OutboxError> {
        let which = which.clone();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let set = "UPDATE escrow_outbox SET status = 'pending', \
                       attempts_before_retry = attempts_before_retry + attempts, attempts = 0, \
                       due_at = ?1, claim_token = NULL, lease_until = NULL";
            let changed = match &which {
                Retry::Dead(filter) => tx.execute(
                    &format!(
                        "{set} WHERE status = 'dead' AND (?2 IS NULL OR plugin = ?2) \
                         AND (?3 IS NULL OR effect = ?3)"
                    ),
                    params![now_ms, filter.plugin, filter.effect],
                )?,
                Retry::Ids(ids) => {
                    let mut found = HashMap::new();
                    let mut status =
                        tx.prepare_cached("SELECT status FROM escrow_outbox WHERE id = ?1")?;
                    for &id in ids {
                        if let Some(s) = status.query_row([id], |r| r.get(0)).optional()? {
                            found.insert(id, s);
                        }
                    }
                    drop(status);
                    let ids = match retriable(ids, &found) {
                        Ok(ids) => ids,
                        Err(refused) => return Ok(Err(refused)),
                    };
                    let mut changed = 0;
                    for id in ids {
                        changed +=
                            tx.execute(&format!("{set} WHERE id = ?2"), params![now_ms, id])?;
                    }
                    changed
                }
            };
            tx.commit()?;
            Ok(Ok(changed as u64))
        })
        .await?
    }

    async fn prune(
        &self,
        which: Prune,
        ended_before_ms: i64,
        limit: u32,
    ) -> Result<u64, OutboxError> {
        self.with(move |conn| {
            let mut deleted = 0;
            for (status, ended) in which.statuses() {
                let left = i64::from(limit) - deleted as i64;
                if left <= 0 {
                    break;
                }
                // The status written out, so that its partial index serves.
                deleted += conn
                    .prepare_cached(&format!(
                        "DELETE FROM escrow_outbox WHERE id IN (SELECT id FROM escrow_outbox \
                         WHERE status = '{status}' AND {ended} < ?1 LIMIT ?2)"
                    ))?
                    .execute(params![ended_before_ms, left])?;
            }
            Ok(deleted as u64)
        })
        .await
    }

    /// Watches `PRAGMA data_version` on a connection of its own: it changes
    /// whenever another connection, in this process or another, commits.
    async fn changes(&self) -> Option<Box<dyn Changes>> {
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .inspect_err(|error| tracing::warn!(%error, "cannot watch the outbox file; polling"))
            .ok()?;
        // A look never waits for a lock: busy means someone writes.
        conn.busy_timeout(Duration::ZERO).ok()?;
        let seen = data_version(&conn).ok()?;
        Some(Box::new(FileChanges {
            conn,
            seen,
            failing: false,
        }))
    }

    async fn expedite(&self, now_ms: i64) -> Result<u64, OutboxError> {
        self.with(move |conn| {
            let moved = conn.execute(
                "UPDATE escrow_outbox SET due_at = ?1 WHERE status = 'pending' AND due_at > ?1",
                [now_ms],
            )?;
            Ok(moved as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::EntryStatus;
    use crate::outcome::Fence;

    fn schema_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
        conn.query_row("SELECT MAX(version) FROM escrow_schema", [], |r| r.get(0))
            .optional()
            .map(Option::flatten)
    }

    fn entry(run_id: RunId, seq: u64) -> NewEntry {
        NewEntry {
            kind: EntryKind::Intent,
            run_id,
            seq,
            plugin: "p".into(),
            effect: "email.send".into(),
            payload: b"{}".to_vec(),
            fences: vec![Fence {
                key: "k".into(),
                token: 3,
            }],
        }
    }

    #[tokio::test]
    async fn a_file_that_is_not_an_outbox_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        std::fs::write(
            &path,
            b"this is not a database, just some text of some length",
        )
        .unwrap();
        let error = SqliteOutbox::open(&path).unwrap_err();
        assert!(matches!(error, OutboxError::Corrupt { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_schema_from_a_newer_escrow_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        drop(SqliteOutbox::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE escrow_schema SET version = 99", [])
            .unwrap();
        assert_eq!(schema_version(&conn).unwrap(), Some(99));
        drop(conn);
        let error = SqliteOutbox::open(&path).unwrap_err().to_string();
        assert!(error.contains("newer escrow"), "{error}");
    }

    #[tokio::test]
    async fn an_outbox_of_the_first_schema_is_migrated_and_keeps_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "CREATE TABLE escrow_schema (version INTEGER NOT NULL); \
             INSERT INTO escrow_schema (version) VALUES (1); \
             INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, fences, \
             status, attempts, due_at, created_at) VALUES ('intent', \
             '01a24b4a-fe73-7077-ab33-28ba4abd545e', 1, 1, 'p', 'a.b', x'31', '[]', 'dead', 3, 5, 5)",
        )
        .unwrap();
        drop(conn);
        let store = SqliteOutbox::open_with(&path, OpenMode::Existing).unwrap();
        let entries = store.list(&Filter::default()).await.unwrap();
        assert_eq!(
            (
                entries.len(),
                entries[0].attempts,
                entries[0].attempts_before_retry
            ),
            (1, 3, 0)
        );
        // The counts start from what the table held.
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.dead, stats.attempts, stats.pending), (1, 3, 0));
        let conn = Connection::open(&path).unwrap();
        assert_eq!(
            schema_version(&conn).unwrap(),
            Some(MIGRATIONS.len() as i64)
        );
    }

    /// A claim's entries are found by id, or by run, never by scanning the
    /// table: without an index on them, every settlement and every read of
    /// a claim scanned it (50 ms a run with 120,000 entries stored).
    #[tokio::test]
    async fn a_claim_s_entries_are_found_by_index_not_by_scanning_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteOutbox::open(dir.path().join("o.db")).unwrap();
        let conn = store.conn.lock().unwrap();
        for query in [
            format!(
                "SELECT {ENTRY_COLUMNS} FROM escrow_outbox \
                 WHERE run_id = 'r' AND status = 'pending' AND claim_token = 't' ORDER BY ord"
            ),
            "UPDATE escrow_outbox SET lease_until = 1 WHERE id = 1 AND claim_token = 't'"
                .to_owned(),
            "UPDATE escrow_outbox SET claim_token = NULL, lease_until = NULL \
             WHERE id = 1 AND claim_token = 't'"
                .to_owned(),
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
                .unwrap()
                .query_map([], |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(
                plan.iter()
                    .all(|step| !step.starts_with("SCAN escrow_outbox")),
                "{query}: {plan:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_directory_is_named() {
        let error = SqliteOutbox::open("/nonexistent/dir/o.db")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`/nonexistent/dir` does not exist"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn entries_round_trip_with_their_fences() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteOutbox::open(dir.path().join("o.db")).unwrap();
        let run = RunId::new();
        store
            .write(&[Write::Commit {
                run_id: run,
                intents: vec![entry(run, 1), entry(run, 2)],
                claim: None,
                now_ms: 5,
                journaled: false,
                failed_compensations: Vec::new(),
            }])
            .await
            .unwrap();
        let listed = store.list(&Filter::default()).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].entry, entry(run, 1));
        assert_eq!(listed[1].idempotency_key(), format!("{run}:2"));
        assert_eq!(listed[0].status, EntryStatus::Pending);
    }
}
