//! The outbox in Postgres, for many hosts: any number of workers on any
//! number of hosts claim runs with `FOR UPDATE SKIP LOCKED`, a lease and a
//! claim token.
//!
//! Built on `tokio-postgres`, through a small pool of connections
//! (`deadpool-postgres`) whose statements are prepared once per
//! connection. A group of writes is a handful of statements whatever its
//! size: every new entry of every run in one `INSERT` over arrays
//! (`UNNEST`), every settlement in one `UPDATE`.
//!
//! Settling, renewing or giving back claimed entries first locks them in
//! ascending id order (`LOCK_IN_ID_ORDER`, a statement of its own in the
//! same transaction). A claim taking over a run whose lease ran out
//! locks the run's first pending entry before the others (it is the head
//! it claims by); the late write-back of the worker that held the run,
//! locking in id order, asks for that entry first too (a run's entries
//! have ascending ids), so the two wait for each other in one order only
//! and never deadlock.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    Changes, Claim, Decide, Decision, ENTRY_COLUMNS, EXPIRED, EXPIRY_DECIDER, Entry, EntryKind,
    Filter, Hold, NewEntry, OpenMode, OutboxError, OutboxStore, PENDING_STATS, Prune, RequestClaim,
    RequestKey, Retry, RunFilter, RunRecord, RunSummary, Settlement, Stats, Write,
    fences_from_json, fences_json, retriable,
};
use crate::outcome::{Fate, Outcome};
use crate::run_id::RunId;

mod approval;
mod history;
mod requests;
mod statistics;
mod wake;

pub use wake::POSTGRES_NOTIFY_INTERVAL;

/// How long connecting to Postgres may take, unless the URL says otherwise.
pub const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may run before Postgres cancels it.
pub const POSTGRES_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a transaction may wait for its host between two statements
/// before Postgres ends it: a host stopped or frozen inside one holds its
/// row locks no longer than this.
pub const POSTGRES_IDLE_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one [`PostgresOutbox`] keeps: as many groups of writes, or
/// claims and reads, proceed at once.
pub const POSTGRES_POOL_SIZE: usize = 4;

/// The schema, one migration per version; `escrow_schema` records the last
/// one applied.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE escrow_outbox (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT   NOT NULL CHECK (kind IN ('intent', 'compensation')),
    run_id      TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    ord         BIGINT NOT NULL,
    plugin      TEXT   NOT NULL,
    effect      TEXT   NOT NULL,
    payload     BYTEA  NOT NULL,
    fences      TEXT   NOT NULL,
    status      TEXT   NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts    BIGINT NOT NULL DEFAULT 0,
    due_at      BIGINT NOT NULL,
    claim_token TEXT,
    lease_until BIGINT,
    last_error  TEXT,
    created_at  BIGINT NOT NULL,
    delivered_at BIGINT,
    UNIQUE (run_id, kind, seq)
);
CREATE INDEX escrow_outbox_runs ON escrow_outbox (status, run_id, ord);
CREATE INDEX escrow_outbox_due ON escrow_outbox (status, due_at);
",
    r"
ALTER TABLE escrow_outbox ADD COLUMN attempts_before_retry BIGINT NOT NULL DEFAULT 0;
CREATE INDEX escrow_outbox_ended ON escrow_outbox (status, (COALESCE(delivered_at, due_at)));
CREATE INDEX escrow_outbox_claims ON escrow_outbox (claim_token) WHERE claim_token IS NOT NULL;
",
    // Indexes over the rows their queries read (a settled entry leaves the
    // pending ones), and counts kept by statement triggers as rows of
    // changes, which no two transactions ever update (so they never wait
    // on each other) and which `stats` sums and folds.
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
    status   TEXT   NOT NULL,
    entries  BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    retrying BIGINT NOT NULL
);
INSERT INTO escrow_outbox_counts
SELECT status, COUNT(*), SUM(attempts + attempts_before_retry), COUNT(*) FILTER (WHERE attempts > 0)
FROM escrow_outbox GROUP BY status;
CREATE FUNCTION escrow_outbox_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO escrow_outbox_counts
        SELECT status, COUNT(*), SUM(attempts + attempts_before_retry),
               COUNT(*) FILTER (WHERE attempts > 0)
        FROM new_rows GROUP BY status;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO escrow_outbox_counts
        SELECT status, -COUNT(*), -SUM(attempts + attempts_before_retry),
               -COUNT(*) FILTER (WHERE attempts > 0)
        FROM old_rows GROUP BY status;
    ELSE
        INSERT INTO escrow_outbox_counts
        SELECT status, SUM(entries), SUM(attempts), SUM(retrying) FROM (
            SELECT status, 1 AS entries, attempts + attempts_before_retry AS attempts,
                   (attempts > 0)::INT AS retrying
            FROM new_rows
            UNION ALL
            SELECT status, -1, -(attempts + attempts_before_retry), -((attempts > 0)::INT)
            FROM old_rows
        ) AS change
        GROUP BY status
        HAVING SUM(entries) <> 0 OR SUM(attempts) <> 0 OR SUM(retrying) <> 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER escrow_outbox_counted_insert AFTER INSERT ON escrow_outbox
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION escrow_outbox_count();
CREATE TRIGGER escrow_outbox_counted_update AFTER UPDATE ON escrow_outbox
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION escrow_outbox_count();
CREATE TRIGGER escrow_outbox_counted_delete AFTER DELETE ON escrow_outbox
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION escrow_outbox_count();
",
    // Taking a claim writes no indexed column, so its update can stay on
    // the row's page with no new index entry (a HOT update): a claim's
    // entries are found by id, not through an index of claims. Pages are
    // filled to half, so that a page whose entries are all claimed at once
    // (they were written together) holds their new versions: at 70 %,
    // 40 % of a claim's updates were HOT, and a claim of 1,000 took 24 ms
    // instead of 13.
    r"
DROP INDEX escrow_outbox_claims;
ALTER TABLE escrow_outbox SET (fillfactor = 50);
",
    // The counts are kept by the statements that change them (`COUNT_GONE`,
    // `COUNT_CHANGED`), not by triggers: a statement trigger with
    // transition tables stored every row an `UPDATE` touched, payload
    // included, for claims and renewals too, which change no count: 3 to
    // 6 ms a statement, most of a delivery's time.
    r"
DROP TRIGGER escrow_outbox_counted_insert ON escrow_outbox;
DROP TRIGGER escrow_outbox_counted_update ON escrow_outbox;
DROP TRIGGER escrow_outbox_counted_delete ON escrow_outbox;
DROP FUNCTION escrow_outbox_count();
",
    // Runs held for approval, and the decisions about them, one row a run.
    r"
ALTER TABLE escrow_outbox DROP CONSTRAINT escrow_outbox_status_check;
ALTER TABLE escrow_outbox ADD CONSTRAINT escrow_outbox_status_check
    CHECK (status IN ('pending', 'delivered', 'dead', 'held', 'rejected'));
CREATE INDEX escrow_outbox_held ON escrow_outbox (run_id, ord) WHERE status = 'held';
CREATE INDEX escrow_outbox_held_age ON escrow_outbox (created_at, run_id) WHERE status = 'held';
CREATE INDEX escrow_outbox_rejected ON escrow_outbox (due_at) WHERE status = 'rejected';
CREATE TABLE escrow_decisions (
    run_id     TEXT   PRIMARY KEY,
    plugin     TEXT   NOT NULL,
    verdict    TEXT   NOT NULL CHECK (verdict IN ('approved', 'rejected')),
    decided_by TEXT   NOT NULL,
    reason     TEXT,
    decided_at BIGINT NOT NULL,
    held_at    BIGINT NOT NULL,
    intents    TEXT   NOT NULL
);
CREATE INDEX escrow_decisions_decided ON escrow_decisions (decided_at);
",
    // The run history (`outbox/history.rs`): one row a run, and one an
    // effect it requested, for lists filtered by effect.
    r"
CREATE TABLE escrow_runs (
    run_id           TEXT   PRIMARY KEY,
    plugin           TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    component_sha256 TEXT,
    ended_at         BIGINT NOT NULL,
    effects          TEXT   NOT NULL,
    outcome          TEXT   NOT NULL
);
CREATE INDEX escrow_runs_status ON escrow_runs (status, run_id);
CREATE INDEX escrow_runs_plugin ON escrow_runs (plugin, run_id);
CREATE INDEX escrow_runs_ended ON escrow_runs (ended_at);
CREATE TABLE escrow_run_effects (
    effect TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (effect, run_id)
);
CREATE INDEX escrow_run_effects_run ON escrow_run_effects (run_id);
",
    // Idempotency keys of requests that run plugins (`outbox/requests.rs`).
    r"
CREATE TABLE escrow_requests (
    plugin       TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    input_sha256 TEXT   NOT NULL,
    status       INT,
    answer       TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (plugin, key)
);
CREATE INDEX escrow_requests_created ON escrow_requests (created_at);
",
];

/// Counts out the entries a statement deleted: the rows of its `gone`
/// (`status`, `attempts`, `attempts_before_retry`), as a statement of its
/// own in the same `WITH`.
const COUNT_GONE: &str = "\
INSERT INTO escrow_outbox_counts \
SELECT status, -COUNT(*), -SUM(attempts + attempts_before_retry), \
       -COUNT(*) FILTER (WHERE attempts > 0) \
FROM gone GROUP BY status";

/// Counts the change a statement made to entries: the rows of its
/// `changed`, each an entry as it is (`status`, `attempts` with those
/// before a retry, `retrying`) and as it was (`was_status`,
/// `was_attempts`, `was_retrying`).
const COUNT_CHANGED: &str = "\
INSERT INTO escrow_outbox_counts \
SELECT status, SUM(entries), SUM(attempts), SUM(retrying) FROM ( \
    SELECT status, 1 AS entries, attempts, retrying::INT AS retrying FROM changed \
    UNION ALL \
    SELECT was_status, -1, -was_attempts, -(was_retrying::INT) FROM changed \
) AS change \
GROUP BY status \
HAVING SUM(entries) <> 0 OR SUM(attempts) <> 0 OR SUM(retrying) <> 0";

/// The advisory lock hosts take to migrate the schema one at a time.
const MIGRATION_LOCK: i64 = 7_301_948_263;
/// The advisory lock `stats` takes to fold the counts.
const FOLD_LOCK: i64 = 7_301_948_264;

/// Folds the rows of changes into one a status and returns each status's
/// sums. Under a transaction lock, so that two folds never hide each
/// other's rows.
const FOLD_COUNTS: &str = "\
WITH gone AS (DELETE FROM escrow_outbox_counts RETURNING *), \
     sums AS (SELECT status, SUM(entries)::BIGINT AS entries, SUM(attempts)::BIGINT AS attempts, \
                     SUM(retrying)::BIGINT AS retrying FROM gone GROUP BY status), \
     kept AS (INSERT INTO escrow_outbox_counts SELECT * FROM sums) \
SELECT status, entries, attempts, retrying FROM sums";

/// Brings back the entries `which` selects (a condition on `escrow_outbox`,
/// with `$1` the time they become due), their attempts kept apart, and
/// counts the change; answers how many. Each entry is locked as it is
/// read, so the counts see what the `UPDATE` changed.
fn retried(which: &str) -> String {
    format!(
        "WITH was AS ( \
           SELECT id, status, attempts, attempts_before_retry FROM escrow_outbox \
           WHERE {which} FOR UPDATE \
         ), changed AS ( \
           UPDATE escrow_outbox o SET status = 'pending', \
             attempts_before_retry = o.attempts_before_retry + o.attempts, attempts = 0, \
             due_at = $1, claim_token = NULL, lease_until = NULL \
           FROM was WHERE o.id = was.id \
           RETURNING o.status, o.attempts + o.attempts_before_retry AS attempts, \
                     o.attempts > 0 AS retrying, was.status AS was_status, \
                     was.attempts + was.attempts_before_retry AS was_attempts, \
                     was.attempts > 0 AS was_retrying \
         ), counted AS ({COUNT_CHANGED}) \
         SELECT COUNT(*) FROM changed"
    )
}

/// An outbox in a Postgres database.
///
/// A pool of [`POSTGRES_POOL_SIZE`] connections, shared by the group
/// committer and the claims and reads of this process; a connection that
/// broke is replaced when next asked for.
///
/// A commit that makes entries due notifies workers on other hosts
/// (`NOTIFY escrow_outbox`, at most once per [`POSTGRES_NOTIFY_INTERVAL`]
/// from one process, and once more at its end for the commits it covered);
/// a waiting worker listens on a connection of its own.
#[derive(Clone)]
pub struct PostgresOutbox {
    url: String,
    pool: Pool,
    /// The pool's connection settings, for a worker's listening connection.
    config: tokio_postgres::Config,
    throttle: Arc<wake::Throttle>,
    /// When claims last looked at the planner's statistics.
    freshness: Arc<statistics::Freshness>,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("url", &redacted(&self.url))
            .finish_non_exhaustive()
    }
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The runtime that drives every Postgres connection of this process, on a
/// thread of its own, so that a connection outlives the runtime of the code
/// that opened it (a CLI command's, a test's).
fn connections() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("escrow-postgres")
            .enable_all()
            .build()
            .expect("building the Postgres connections' runtime")
    })
}

/// Opens the pool's connections, each driven on [`connections`].
struct Connect;

impl deadpool_postgres::Connect for Connect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn Future<
                    Output = Result<
                        (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let config = config.clone();
        Box::pin(async move {
            let (client, connection) = config.connect(NoTls).await?;
            let driven = connections().spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(error = %error_text(&error), "the Postgres connection ended");
                }
            });
            Ok((client, driven))
        })
    }
}

/// A pool error as one line: the server's message, or what timed out.
fn pool_error(error: deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(e) => error_text(&e),
        deadpool_postgres::PoolError::Timeout(_) => format!(
            "no connection became free within {} ms",
            POSTGRES_STATEMENT_TIMEOUT.as_millis()
        ),
        other => other.to_string(),
    }
}

impl PostgresOutbox {
    /// Connects to the database at `url` (`postgres://user@host:port/db`)
    /// and migrates its schema.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Open`] when the URL is malformed or the server cannot
    /// be reached, [`OutboxError::Corrupt`] when its schema is from a newer
    /// escrow.
    pub async fn connect(url: &str) -> Result<Self, OutboxError> {
        Self::connect_with(url, OpenMode::Create).await
    }

    /// Connects to the database at `url` and migrates its schema, creating
    /// the outbox's tables only under [`OpenMode::Create`].
    ///
    /// # Errors
    ///
    /// As [`PostgresOutbox::connect`]; under [`OpenMode::Existing`], also
    /// [`OutboxError::Open`] when the database holds no outbox.
    pub async fn connect_with(url: &str, mode: OpenMode) -> Result<Self, OutboxError> {
        let what = redacted(url);
        let open = |message: String| OutboxError::Open {
            what: what.clone(),
            message,
        };
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| open(e.to_string()))?;
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(POSTGRES_CONNECT_TIMEOUT);
        config.connect_timeout(connect_timeout);
        config.options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            POSTGRES_STATEMENT_TIMEOUT.as_millis(),
            POSTGRES_IDLE_TRANSACTION_TIMEOUT.as_millis()
        ));
        let manager = Manager::from_connect(
            config.clone(),
            Connect,
            ManagerConfig {
                // A closed connection is replaced; an open one is not asked
                // a question before each use.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POSTGRES_POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(connect_timeout))
            .wait_timeout(Some(POSTGRES_STATEMENT_TIMEOUT))
            .build()
            .map_err(|e| open(e.to_string()))?;
        let outbox = Self {
            url: url.to_owned(),
            pool,
            config,
            throttle: Arc::default(),
            freshness: Arc::default(),
        };
        let mut client = outbox.pool.get().await.map_err(|e| open(pool_error(e)))?;
        if mode == OpenMode::Existing {
            let exists: bool = client
                .query_one("SELECT to_regclass('escrow_outbox') IS NOT NULL", &[])
                .await
                .map_err(|e| open(error_text(&e)))?
                .get(0);
            if !exists {
                return Err(open("the database holds no escrow outbox".into()));
            }
        }
        migrate(&mut client)
            .await
            .map_err(|message| OutboxError::Corrupt { what, message })?;
        Ok(outbox)
    }

    /// Runs `f` with a connection of the pool.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, OutboxError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| OutboxError::Store(pool_error(e)))?;
        f(&mut client)
            .await
            .map_err(|e| OutboxError::Store(error_text(&e)))
    }

    /// Stages the committed intents of `outcome` (a run made with
    /// [`Dispatch::Hold`](crate::run::Dispatch::Hold)) in `tx`, an open
    /// transaction of the embedder's on the outbox's database, and resolves
    /// the compensations the run journaled there. When `tx` commits, the
    /// intents are pending for the workers, in the same commit as the
    /// embedder's own writes; when it rolls back, nothing was staged, and the
    /// run's journaled compensations stay owed. Returns how many intents were
    /// staged.
    ///
    /// # Errors
    ///
    /// When a statement fails (the schema is missing: connect a
    /// [`PostgresOutbox`] to the database once first); `tx` should then be
    /// rolled back.
    pub async fn stage(
        tx: &tokio_postgres::Transaction<'_>,
        outcome: &Outcome,
    ) -> Result<usize, OutboxError> {
        let now_ms = super::unix_ms();
        let intents: Vec<NewEntry> = outcome
            .intents
            .iter()
            .filter(|i| i.fate == Fate::Committed)
            .map(NewEntry::intent)
            .collect();
        let staged = intents.len();
        let write = Write::Commit {
            run_id: outcome.run_id,
            intents,
            claim: None,
            now_ms,
            // The run may have journaled compensations in this database.
            journaled: true,
            failed_compensations: outcome
                .compensations
                .iter()
                .filter_map(|c| Some((c.seq, c.result.clone().err()?)))
                .collect(),
        };
        let group = Group::of(std::slice::from_ref(&write));
        for (sql, params) in group.statements() {
            tx.execute(sql, &params)
                .await
                .map_err(|e| OutboxError::Store(error_text(&e)))?;
        }
        Ok(staged)
    }
}

/// A Postgres error with its server message, which `Display` leaves out.
fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{error}: {}", db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), String> {
    let text = |e: tokio_postgres::Error| error_text(&e);
    let tx = client.transaction().await.map_err(text)?;
    // Hosts starting together migrate one at a time.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(text)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS escrow_schema (version BIGINT NOT NULL)")
        .await
        .map_err(text)?;
    let version: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM escrow_schema", &[])
        .await
        .map_err(text)?
        .get(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(format!(
            "its schema is version {version}, written by a newer escrow; this one knows up to {known}"
        ));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(migration).await.map_err(text)?;
        tx.execute("DELETE FROM escrow_schema", &[])
            .await
            .map_err(text)?;
        tx.execute(
            "INSERT INTO escrow_schema (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )
        .await
        .map_err(text)?;
    }
    tx.commit().await.map_err(text)
}

/// Inserts new entries with the status `status`, each row from the
/// arrays' same index, and counts them: never attempted.
fn insert_as(status: &str) -> String {
    format!(
        "WITH counted AS (INSERT INTO escrow_outbox_counts \
                          SELECT '{status}', cardinality($1::TEXT[]), 0, 0) \
         INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, fences, \
                                    status, attempts, due_at, claim_token, lease_until, \
                                    created_at) \
         SELECT kind, run_id, seq, ord, plugin, effect, payload, fences, '{status}', 0, due_at, \
                claim_token, lease_until, created_at \
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[], \
                     $6::TEXT[], $7::BYTEA[], $8::TEXT[], $9::BIGINT[], $10::TEXT[], \
                     $11::BIGINT[], $12::BIGINT[]) \
              AS n(kind, run_id, seq, ord, plugin, effect, payload, fences, due_at, \
                   claim_token, lease_until, created_at)"
    )
}

/// Inserts new pending entries: see [`insert_as`].
static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| insert_as("pending"));

/// Compensations that failed during their run stay owed: an attempt
/// counted, their error kept, due again.
static FAIL_COMPENSATIONS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH changed AS ( \
           UPDATE escrow_outbox o SET attempts = o.attempts + 1, last_error = f.error, \
                                      due_at = f.due_at \
           FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[]) \
                AS f(run_id, seq, error, due_at) \
           WHERE o.run_id = f.run_id AND o.kind = 'compensation' AND o.seq = f.seq \
             AND o.status = 'pending' \
           RETURNING o.status, o.attempts + o.attempts_before_retry AS attempts, \
                     o.attempts > 0 AS retrying, o.status AS was_status, \
                     o.attempts - 1 + o.attempts_before_retry AS was_attempts, \
                     o.attempts > 1 AS was_retrying \
         ) {COUNT_CHANGED}"
    )
});

/// The other compensations journaled by ended runs are forgotten.
static FORGET_COMPENSATIONS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH gone AS ( \
           DELETE FROM escrow_outbox WHERE run_id = ANY($1) AND kind = 'compensation' \
             AND status = 'pending' AND attempts = 0 \
           RETURNING status, attempts, attempts_before_retry \
         ) {COUNT_GONE}"
    )
});

/// Settles entries still held by the claim each settlement names; returns
/// the index of the write each settled row came from. The claim is compared
/// with `IS NOT DISTINCT FROM` (a settlement always names one), not `=`,
/// which the planner answers through the claims index: every row of the
/// claim for every settlement, filtered by id (31 ms instead of 8 for 512).
///
/// A claimed entry is pending (only pending entries are claimed, and every
/// change of status ends the claim), so each settled entry was pending,
/// with one attempt fewer if this one counted.
static SETTLE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH changed AS ( \
           UPDATE escrow_outbox o SET \
             status = CASE s.kind WHEN 'delivered' THEN 'delivered' WHEN 'dead' THEN 'dead' \
                                  ELSE o.status END, \
             attempts = o.attempts + s.attempted, \
             due_at = COALESCE(s.due_at, o.due_at), \
             last_error = CASE s.kind WHEN 'delivered' THEN NULL \
                                      WHEN 'release' THEN o.last_error ELSE s.error END, \
             delivered_at = CASE s.kind WHEN 'delivered' THEN s.now ELSE o.delivered_at END, \
             claim_token = NULL, lease_until = NULL \
           FROM (SELECT *, (kind IN ('delivered', 'retry', 'dead'))::INT AS attempted \
                 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::INT[], $4::TEXT[], $5::BIGINT[], \
                             $6::TEXT[], $7::BIGINT[]) \
                      AS u(id, claim_token, write, kind, due_at, error, now)) AS s \
           WHERE o.id = s.id AND o.claim_token IS NOT DISTINCT FROM s.claim_token \
           RETURNING s.write, o.status, o.attempts + o.attempts_before_retry AS attempts, \
                     o.attempts > 0 AS retrying, 'pending' AS was_status, \
                     o.attempts - s.attempted + o.attempts_before_retry AS was_attempts, \
                     o.attempts - s.attempted > 0 AS was_retrying \
         ), counted AS ({COUNT_CHANGED}) \
         SELECT write FROM changed"
    )
});

/// Extends the entries named that their claim still holds to the claim's
/// lease.
const RENEW: &str = "\
UPDATE escrow_outbox o SET lease_until = r.lease_until \
FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[]) AS r(id, claim_token, lease_until) \
WHERE o.id = r.id AND o.claim_token IS NOT DISTINCT FROM r.claim_token";

/// Locks the entries named in ascending id order (see the module's docs):
/// sent before the statements that settle or renew them.
const LOCK_IN_ID_ORDER: &str =
    "SELECT id FROM escrow_outbox WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// A group of writes as the few statements that apply it: one `INSERT` for
/// the new entries of every write, one `UPDATE` for every settlement (after
/// one `SELECT … FOR UPDATE` locking the entries settled and renewed), one
/// for every renewed claim, and for runs that journaled compensations, one
/// `UPDATE` and one `DELETE` resolving them. Each column is an array.
#[derive(Default)]
struct Group<'a> {
    // New entries.
    kinds: Vec<&'static str>,
    runs: Vec<String>,
    seqs: Vec<i64>,
    ords: Vec<i64>,
    plugins: Vec<&'a str>,
    effects: Vec<&'a str>,
    payloads: Vec<&'a [u8]>,
    fences: Vec<String>,
    due_at: Vec<i64>,
    claims: Vec<Option<&'a str>>,
    leases: Vec<Option<i64>>,
    created_at: Vec<i64>,
    // Compensations that failed during their run: run, seq, error, due.
    failed_runs: Vec<String>,
    failed_seqs: Vec<i64>,
    failed_errors: Vec<&'a str>,
    failed_due_at: Vec<i64>,
    // Runs whose unattempted compensations are forgotten.
    resolved_runs: Vec<String>,
    // Settlements: entry, claim, index of the write, kind, due, error, now.
    settled_ids: Vec<i64>,
    settled_claims: Vec<&'a str>,
    settled_writes: Vec<i32>,
    settled_kinds: Vec<&'static str>,
    settled_due_at: Vec<Option<i64>>,
    settled_errors: Vec<Option<&'a str>>,
    settled_now: Vec<i64>,
    // Every entry settled or renewed, in id order: locked in that order.
    locked_ids: Vec<i64>,
    // Claims renewed: token and lease.
    renewed_ids: Vec<i64>,
    renewed_claims: Vec<&'a str>,
    renewed_leases: Vec<i64>,
}

impl<'a> Group<'a> {
    /// The most statements a group is: one of each kind.
    const MAX_STATEMENTS: usize = 6;

    fn of(batch: &'a [Write]) -> Self {
        let mut group = Self::default();
        for (index, write) in batch.iter().enumerate() {
            match write {
                Write::Commit {
                    run_id,
                    intents,
                    claim,
                    now_ms,
                    journaled,
                    failed_compensations,
                } => {
                    for entry in intents {
                        group.add_entry(entry, *now_ms, claim.as_ref(), *now_ms);
                    }
                    if *journaled {
                        group.resolve(*run_id, failed_compensations, *now_ms);
                    }
                }
                Write::Journal {
                    entry,
                    due_at_ms,
                    now_ms,
                } => group.add_entry(entry, *due_at_ms, None, *now_ms),
                Write::Resolve {
                    run_id,
                    failed,
                    due_at_ms,
                } => group.resolve(*run_id, failed, *due_at_ms),
                Write::Settle {
                    claim,
                    settlements,
                    now_ms,
                    renewed,
                } => {
                    let index = i32::try_from(index).expect("a group holds far fewer writes");
                    for (id, settlement) in settlements {
                        let (kind, due_at, error) = match settlement {
                            Settlement::Delivered => ("delivered", None, None),
                            Settlement::Retry { due_at_ms, error } => {
                                ("retry", Some(*due_at_ms), Some(error.as_str()))
                            }
                            Settlement::Dead { error } => ("dead", None, Some(error.as_str())),
                            Settlement::Reschedule { due_at_ms, reason } => {
                                ("reschedule", Some(*due_at_ms), Some(reason.as_str()))
                            }
                            Settlement::Release => ("release", None, None),
                        };
                        group.settled_ids.push(*id);
                        group.settled_claims.push(&claim.token);
                        group.settled_writes.push(index);
                        group.settled_kinds.push(kind);
                        group.settled_due_at.push(due_at);
                        group.settled_errors.push(error);
                        group.settled_now.push(*now_ms);
                    }
                    for id in renewed {
                        group.renewed_ids.push(*id);
                        group.renewed_claims.push(&claim.token);
                        group.renewed_leases.push(claim.lease_until_ms);
                    }
                }
            }
        }
        group.locked_ids = group
            .settled_ids
            .iter()
            .chain(&group.renewed_ids)
            .copied()
            .collect();
        group.locked_ids.sort_unstable();
        group.locked_ids.dedup();
        group
    }

    fn add_entry(&mut self, entry: &'a NewEntry, due_at: i64, claim: Option<&'a Claim>, now: i64) {
        self.kinds.push(entry.kind.as_str());
        self.runs.push(entry.run_id.to_string());
        self.seqs.push(entry.seq as i64);
        self.ords.push(entry.kind.ord(entry.seq));
        self.plugins.push(&entry.plugin);
        self.effects.push(&entry.effect);
        self.payloads.push(&entry.payload);
        self.fences.push(fences_json(&entry.fences));
        self.due_at.push(due_at);
        self.claims.push(claim.map(|c| c.token.as_str()));
        self.leases.push(claim.map(|c| c.lease_until_ms));
        self.created_at.push(now);
    }

    fn resolve(&mut self, run_id: RunId, failed: &'a [(u64, String)], due_at: i64) {
        let run = run_id.to_string();
        for (seq, error) in failed {
            self.failed_runs.push(run.clone());
            self.failed_seqs.push(*seq as i64);
            self.failed_errors.push(error);
            self.failed_due_at.push(due_at);
        }
        self.resolved_runs.push(run);
    }

    /// The statements to run, in order, each with its parameters: at most
    /// [`Group::MAX_STATEMENTS`].
    fn statements(&self) -> Vec<(&'static str, Vec<&(dyn ToSql + Sync)>)> {
        let mut statements: Vec<(&'static str, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
        if !self.kinds.is_empty() {
            statements.push((INSERT.as_str(), self.new_entries()));
        }
        if !self.failed_runs.is_empty() {
            statements.push((FAIL_COMPENSATIONS.as_str(), self.failed()));
        }
        if !self.resolved_runs.is_empty() {
            statements.push((FORGET_COMPENSATIONS.as_str(), vec![&self.resolved_runs]));
        }
        if !self.locked_ids.is_empty() {
            statements.push((LOCK_IN_ID_ORDER, vec![&self.locked_ids]));
        }
        if !self.settled_ids.is_empty() {
            statements.push((
                SETTLE.as_str(),
                vec![
                    &self.settled_ids,
                    &self.settled_claims,
                    &self.settled_writes,
                    &self.settled_kinds,
                    &self.settled_due_at,
                    &self.settled_errors,
                    &self.settled_now,
                ],
            ));
        }
        if !self.renewed_ids.is_empty() {
            statements.push((
                RENEW,
                vec![
                    &self.renewed_ids,
                    &self.renewed_claims,
                    &self.renewed_leases,
                ],
            ));
        }
        debug_assert!(statements.len() <= Self::MAX_STATEMENTS);
        statements
    }

    /// The parameters of [`insert_as`]: the new entries' columns.
    fn new_entries(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.kinds,
            &self.runs,
            &self.seqs,
            &self.ords,
            &self.plugins,
            &self.effects,
            &self.payloads,
            &self.fences,
            &self.due_at,
            &self.claims,
            &self.leases,
            &self.created_at,
        ]
    }

    /// The parameters of [`FAIL_COMPENSATIONS`].
    fn failed(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.failed_runs,
            &self.failed_seqs,
            &self.failed_errors,
            &self.failed_due_at,
        ]
    }

    /// Each write's answer: for a settlement, how many of its entries its
    /// claim still held (the rows `SETTLE` returned for it).
    fn answers(writes: usize, settled: &[Row]) -> Vec<u64> {
        let mut answers = vec![0; writes];
        for row in settled {
            let index = row.get::<_, i32>(0) as usize;
            if let Some(answer) = answers.get_mut(index) {
                *answer += 1;
            }
        }
        answers
    }
}

/// Claims the first `$2` runs whose next entry is due at `$1` and not
/// held, each head row locked (others' locked heads skipped), and of their
/// pending entries the first `$5` in delivery order, under token `$3` and
/// lease `$4`. Each returned row ends with its place in delivery order.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH heads AS ( \
           SELECT h.run_id, h.due_at, h.id FROM escrow_outbox h \
           WHERE h.status = 'pending' AND h.due_at <= $1 \
             AND (h.lease_until IS NULL OR h.lease_until < $1) \
             AND NOT EXISTS (SELECT 1 FROM escrow_outbox p \
                             WHERE p.run_id = h.run_id AND p.status = 'pending' \
                               AND p.ord < h.ord) \
           ORDER BY h.due_at, h.id LIMIT $2 \
           FOR UPDATE SKIP LOCKED \
         ), taken AS ( \
           SELECT e.id AS entry, \
                  row_number() OVER (ORDER BY heads.due_at, heads.id, e.ord) AS place \
           FROM heads JOIN escrow_outbox e ON e.run_id = heads.run_id AND e.status = 'pending' \
         ) \
         UPDATE escrow_outbox SET claim_token = $3, lease_until = $4 \
         FROM taken \
         WHERE escrow_outbox.id = taken.entry AND taken.place <= $5 \
           AND escrow_outbox.status = 'pending' \
         RETURNING {ENTRY_COLUMNS}, taken.place"
    )
});

fn entry_from_row(row: &Row) -> Result<Entry, OutboxError> {
    let run_id: String = row.get(2);
    Ok(Entry {
        id: row.get(0),
        entry: NewEntry {
            kind: EntryKind::parse(row.get(1))?,
            run_id: run_id
                .parse()
                .map_err(|e: uuid::Error| OutboxError::Store(e.to_string()))?,
            seq: row.get::<_, i64>(3) as u64,
            plugin: row.get(4),
            effect: row.get(5),
            payload: row.get(6),
            fences: fences_from_json(row.get(7)),
        },
        status: row.get::<_, &str>(8).parse()?,
        attempts: row.get::<_, i64>(9) as u32,
        due_at_ms: row.get(10),
        last_error: row.get(11),
        created_at_ms: row.get(12),
        attempts_before_retry: row.get::<_, i64>(13) as u32,
    })
}

fn entries(rows: &[Row]) -> Result<Vec<Entry>, OutboxError> {
    rows.iter().map(entry_from_row).collect()
}

impl PostgresOutbox {
    /// Analyzes the outbox when `look` says so, or says to compare and the
    /// statistics are stale (`statistics.rs`); a failure only costs the
    /// next claims their speed.
    async fn refresh_statistics(&self, look: statistics::Look) {
        if look == statistics::Look::Skip {
            return;
        }
        let analyzed = self
            .with(async |client| {
                if look == statistics::Look::Compare {
                    let row = client
                        .query_one(
                            statistics::PENDING_AND_BELIEVED,
                            &[&statistics::PENDING_COUNTED],
                        )
                        .await?;
                    if !statistics::stale(row.get(0), row.get(1), row.get(2)) {
                        return Ok(false);
                    }
                }
                client.batch_execute(statistics::ANALYZE).await?;
                Ok(true)
            })
            .await;
        match analyzed {
            Ok(true) => tracing::debug!("analyzed the outbox for the claims' plans"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "analyzing the outbox failed"),
        }
    }
}

#[async_trait::async_trait]
impl OutboxStore for PostgresOutbox {
    async fn write(&self, batch: &[Write]) -> Result<Vec<u64>, OutboxError> {
        let group = Group::of(batch);
        let statements = group.statements();
        let answers = self
            .with(async |client| {
                let mut prepared = Vec::with_capacity(statements.len());
                for (sql, _) in &statements {
                    prepared.push(client.prepare_cached(sql).await?);
                }
                // `BEGIN`, the statements and `COMMIT` are sent at once and
                // answered in order: one round trip. Polled in order (`biased`),
                // each is sent before the next. If one fails, the transaction
                // is aborted and `COMMIT` rolls it back.
                let client: &tokio_postgres::Client = client;
                let run = |i: usize| {
                    let statement = prepared.get(i).zip(statements.get(i));
                    async move {
                        match statement {
                            Some((statement, (_, params))) => client.query(statement, params).await,
                            None => Ok(Vec::new()),
                        }
                    }
                };
                let (_, first, second, third, fourth, fifth, sixth, ()) = tokio::try_join!(
                    biased;
                    client.batch_execute("BEGIN"),
                    run(0),
                    run(1),
                    run(2),
                    run(3),
                    run(4),
                    run(5),
                    client.batch_execute("COMMIT"),
                )?;
                let settled = [first, second, third, fourth, fifth, sixth]
                    .into_iter()
                    .zip(&statements)
                    .find(|(_, (sql, _))| *sql == SETTLE.as_str())
                    .map(|(rows, _)| rows)
                    .unwrap_or_default();
                Ok(Group::answers(batch.len(), &settled))
            })
            .await?;
        if batch.iter().any(Write::wakes_workers) {
            self.throttle.notify(&self.pool);
        }
        Ok(answers)
    }

    async fn changes(&self) -> Option<Box<dyn Changes>> {
        Some(Box::new(wake::Listener::start(self.config.clone())))
    }

    /// Half the pool: claims and reads always find a connection free.
    fn concurrent_writes(&self) -> usize {
        POSTGRES_POOL_SIZE / 2
    }

    async fn claim(
        &self,
        claim: &Claim,
        now_ms: i64,
        max_runs: u32,
        max_entries: u32,
    ) -> Result<Vec<Entry>, OutboxError> {
        self.refresh_statistics(self.freshness.before_claim()).await;
        let started = std::time::Instant::now();
        let claimed = self
            .with(async |client| {
                let statement = client.prepare_cached(&CLAIM).await?;
                client
                    .query(
                        &statement,
                        &[
                            &now_ms,
                            &i64::from(max_runs),
                            &claim.token,
                            &claim.lease_until_ms,
                            &i64::from(max_entries),
                        ],
                    )
                    .await
            })
            .await;
        if claimed.is_err() || started.elapsed() >= statistics::SLOW_CLAIM {
            self.refresh_statistics(self.freshness.after_slow_claim())
                .await;
        }
        let mut rows = claimed?;
        rows.sort_by_key(|r| r.get::<_, i64>(super::ENTRY_COLUMN_COUNT));
        entries(&rows)
    }

    async fn committed(&self, run_id: RunId) -> Result<bool, OutboxError> {
        let run = run_id.to_string();
        self.with(async |client| {
            let row = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM escrow_outbox WHERE run_id = $1 \
                     AND kind = 'intent')",
                    &[&run],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    async fn claimed(&self, claim: &Claim, run_id: RunId) -> Result<Vec<Entry>, OutboxError> {
        let run = run_id.to_string();
        let rows = self
            .with(async |client| {
                client
                    .query(
                        &format!(
                            "SELECT {ENTRY_COLUMNS} FROM escrow_outbox \
                             WHERE run_id = $2 AND status = 'pending' AND claim_token = $1 \
                             ORDER BY ord"
                        ),
                        &[&claim.token, &run],
                    )
                    .await
            })
            .await?;
        entries(&rows)
    }

    async fn release(&self, claim: &Claim, ids: &[i64]) -> Result<(), OutboxError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        self.with(async |client| {
            let tx = client.transaction().await?;
            tx.execute(LOCK_IN_ID_ORDER, &[&ids]).await?;
            tx.execute(
                "UPDATE escrow_outbox SET claim_token = NULL, lease_until = NULL \
                 WHERE id = ANY($2) AND claim_token IS NOT DISTINCT FROM $1",
                &[&claim.token, &ids],
            )
            .await?;
            tx.commit().await
        })
        .await
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Entry>, OutboxError> {
        let status = filter.status.map(|s| s.as_str());
        let limit = i64::from(filter.limit.unwrap_or(100));
        let rows = self
            .with(async |client| {
                client
                    .query(
                        &format!(
                            "SELECT {ENTRY_COLUMNS} FROM escrow_outbox \
                             WHERE ($1::TEXT IS NULL OR status = $1) ORDER BY id LIMIT $2"
                        ),
                        &[&status, &limit],
                    )
                    .await
            })
            .await?;
        entries(&rows)
    }

    async fn stats(&self) -> Result<Stats, OutboxError> {
        let (counts, pending, decisions) = self
            .with(async |client| {
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FOLD_LOCK])
                    .await?;
                let counts = tx.query(FOLD_COUNTS, &[]).await?;
                let pending = tx.query_one(PENDING_STATS, &[]).await?;
                let decisions = tx
                    .query(approval::DECISION_COUNTS, &[&EXPIRED, &EXPIRY_DECIDER])
                    .await?;
                tx.commit().await?;
                Ok((counts, pending, decisions))
            })
            .await?;
        let mut stats = Stats::default();
        for row in counts {
            stats.add(
                row.get(0),
                row.get::<_, i64>(1) as u64,
                row.get::<_, i64>(2) as u64,
                row.get::<_, i64>(3) as u64,
            );
        }
        stats.oldest_pending_ms = pending.get(0);
        stats.claimed = pending.get::<_, i64>(1) as u64;
        stats.claimed_until_ms = pending.get(2);
        for row in decisions {
            let count = row.get::<_, i64>(1) as u64;
            match row.get::<_, &str>(0) {
                "approved" => stats.decisions.approved = count,
                _ => {
                    stats.decisions.rejected = count;
                    stats.decisions.expired = row.get::<_, i64>(2) as u64;
                }
            }
        }
        Ok(stats)
    }

    async fn hold(&self, hold: &Hold) -> Result<(), OutboxError> {
        let mut group = Group::default();
        for intent in &hold.intents {
            group.add_entry(intent, hold.now_ms, None, hold.now_ms);
        }
        if hold.journaled {
            group.resolve(hold.run_id, &hold.failed_compensations, hold.now_ms);
        }
        let held = approval::INSERT_HELD.as_str();
        self.with(async |client| {
            let tx = client.transaction().await?;
            tx.execute(held, &group.new_entries()).await?;
            if !group.failed_runs.is_empty() {
                tx.execute(FAIL_COMPENSATIONS.as_str(), &group.failed())
                    .await?;
            }
            if hold.journaled {
                tx.execute(
                    approval::HOLD_COMPENSATIONS.as_str(),
                    &[&hold.run_id.to_string()],
                )
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn decide(&self, decide: &Decide) -> Result<Decision, OutboxError> {
        let decided = self
            .with(async |client| approval::decide(client, decide).await)
            .await??;
        self.throttle.notify(&self.pool);
        Ok(decided)
    }

    async fn decisions(&self, limit: u32) -> Result<Vec<Decision>, OutboxError> {
        let rows = self
            .with(async |client| {
                client
                    .query(approval::DECISIONS, &[&i64::from(limit)])
                    .await
            })
            .await?;
        rows.iter().map(approval::decision_from_row).collect()
    }

    async fn held_runs(&self, held_before_ms: i64, limit: u32) -> Result<Vec<RunId>, OutboxError> {
        let rows = self
            .with(async |client| {
                client
                    .query(
                        "SELECT run_id FROM escrow_outbox WHERE status = 'held' \
                         AND created_at < $1 GROUP BY run_id ORDER BY MIN(created_at) LIMIT $2",
                        &[&held_before_ms, &i64::from(limit)],
                    )
                    .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                row.get::<_, &str>(0)
                    .parse()
                    .map_err(|e: uuid::Error| OutboxError::Store(e.to_string()))
            })
            .collect()
    }

    async fn record_runs(&self, runs: &[RunRecord]) -> Result<(), OutboxError> {
        let columns = history::Columns::of(runs);
        self.with(async |client| {
            let tx = client.transaction().await?;
            tx.execute(history::RECORD_RUNS, &columns.runs()).await?;
            tx.execute(history::RECORD_EFFECTS, &columns.effects())
                .await?;
            tx.commit().await
        })
        .await
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, OutboxError> {
        let (sql, values) = history::list(filter);
        let rows = self
            .with(async |client| {
                let params: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
                client.query(&sql, &params).await
            })
            .await?;
        rows.iter().map(history::summary).collect()
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>, OutboxError> {
        let row = self
            .with(async |client| client.query_opt(history::ONE, &[&run_id.to_string()]).await)
            .await?;
        Ok(row.map(|row| history::record(run_id, &row)))
    }

    async fn run_entries(&self, run_id: RunId) -> Result<Vec<Entry>, OutboxError> {
        let sql = history::run_entries_sql();
        let rows = self
            .with(async |client| client.query(&sql, &[&run_id.to_string()]).await)
            .await?;
        entries(&rows)
    }

    async fn run_counts(&self, since_ms: i64) -> Result<Vec<(String, u64)>, OutboxError> {
        let since = crate::outbox::first_run_id_at(since_ms).to_string();
        let rows = self
            .with(async |client| {
                client
                    .query(
                        "SELECT status, COUNT(*) FROM escrow_runs WHERE run_id >= $1 \
                         GROUP BY status ORDER BY status",
                        &[&since],
                    )
                    .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn prune_runs(&self, ended_before_ms: i64, limit: u32) -> Result<u64, OutboxError> {
        let row = self
            .with(async |client| {
                client
                    .query_one(history::PRUNE, &[&ended_before_ms, &i64::from(limit)])
                    .await
            })
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn claim_request(
        &self,
        key: &RequestKey,
        now_ms: i64,
        stale_before_ms: i64,
    ) -> Result<RequestClaim, OutboxError> {
        self.with(async |client| requests::claim(client, key, now_ms, stale_before_ms).await)
            .await
    }

    async fn answer_request(
        &self,
        key: &RequestKey,
        status: u16,
        answer: &str,
    ) -> Result<(), OutboxError> {
        let status = i32::from(status);
        self.with(async |client| {
            client
                .execute(requests::ANSWER, &[&key.plugin, &key.key, &status, &answer])
                .await
        })
        .await
        .map(drop)
    }

    async fn release_request(&self, key: &RequestKey) -> Result<(), OutboxError> {
        self.with(async |client| {
            client
                .execute(requests::RELEASE, &[&key.plugin, &key.key])
                .await
        })
        .await
        .map(drop)
    }

    async fn retry(&self, which: &Retry, now_ms: i64) -> Result<u64, OutboxError> {
        let changed = self
            .with(async |client| {
                let tx = client.transaction().await?;
                let changed = match which {
                    Retry::Dead(filter) => {
                        let which = "status = 'dead' AND ($2::TEXT IS NULL OR plugin = $2) \
                                     AND ($3::TEXT IS NULL OR effect = $3)";
                        tx.query_one(&retried(which), &[&now_ms, &filter.plugin, &filter.effect])
                            .await?
                    }
                    Retry::Ids(ids) => {
                        // The rows locked while they are checked and changed.
                        let rows = tx
                        .query(
                            "SELECT id, status FROM escrow_outbox WHERE id = ANY($1) FOR UPDATE",
                            &[ids],
                        )
                        .await?;
                        let found = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                        let ids = match retriable(ids, &found) {
                            Ok(ids) => ids,
                            Err(refused) => return Ok(Err(refused)),
                        };
                        tx.query_one(&retried("id = ANY($2)"), &[&now_ms, &ids])
                            .await?
                    }
                };
                tx.commit().await?;
                Ok(Ok(changed.get::<_, i64>(0) as u64))
            })
            .await??;
        if changed > 0 {
            self.throttle.notify(&self.pool);
        }
        Ok(changed)
    }

    async fn prune(
        &self,
        which: Prune,
        ended_before_ms: i64,
        limit: u32,
    ) -> Result<u64, OutboxError> {
        self.with(async |client| {
            let mut deleted = 0;
            for (status, ended) in which.statuses() {
                let left = i64::from(limit) - deleted as i64;
                if left <= 0 {
                    break;
                }
                // The status written out, so that its partial index serves;
                // rows another transaction holds are skipped, not waited for.
                let statement = client
                    .prepare_cached(&format!(
                        "WITH gone AS ( \
                           DELETE FROM escrow_outbox WHERE id IN ( \
                             SELECT id FROM escrow_outbox \
                             WHERE status = '{status}' AND {ended} < $1 LIMIT $2 \
                             FOR UPDATE SKIP LOCKED) \
                           RETURNING status, attempts, attempts_before_retry \
                         ), counted AS ({COUNT_GONE}) \
                         SELECT COUNT(*) FROM gone"
                    ))
                    .await?;
                let gone = client
                    .query_one(&statement, &[&ended_before_ms, &left])
                    .await?;
                deleted += gone.get::<_, i64>(0) as u64;
            }
            Ok(deleted)
        })
        .await
    }

    async fn expedite(&self, now_ms: i64) -> Result<u64, OutboxError> {
        let moved = self
            .with(async |client| {
                client
                    .execute(
                        "UPDATE escrow_outbox SET due_at = $1 WHERE status = 'pending' AND due_at > $1",
                        &[&now_ms],
                    )
                    .await
            })
            .await?;
        if moved > 0 {
            self.throttle.notify(&self.pool);
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host stopped inside a transaction holds its row locks no longer
    /// than the idle-transaction timeout, and no statement runs longer than
    /// the statement timeout: every connection of the pool carries both.
    #[tokio::test]
    async fn every_connection_of_the_pool_carries_the_idle_transaction_and_statement_timeouts() {
        let server = escrow_fixtures::postgres::PostgresServer::start();
        let outbox = PostgresOutbox::connect(&server.url()).await.unwrap();
        // More reads at once than the pool has connections: each is asked.
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..2 * POSTGRES_POOL_SIZE {
            let outbox = outbox.clone();
            reads.spawn(async move {
                outbox
                    .with(async |client| {
                        client
                            .query_one(
                                "SELECT current_setting('idle_in_transaction_session_timeout'), \
                                        current_setting('statement_timeout'), \
                                        pg_sleep(0.05)::text",
                                &[],
                            )
                            .await
                    })
                    .await
            });
        }
        for settings in reads.join_all().await {
            let settings = settings.unwrap();
            let (idle, statement): (String, String) = (settings.get(0), settings.get(1));
            assert_eq!(
                idle,
                format!("{}s", POSTGRES_IDLE_TRANSACTION_TIMEOUT.as_secs())
            );
            assert_eq!(
                statement,
                format!("{}s", POSTGRES_STATEMENT_TIMEOUT.as_secs())
            );
        }
    }

    #[tokio::test]
    async fn an_outbox_of_the_second_schema_is_migrated_and_its_counts_start_from_its_entries() {
        let server = escrow_fixtures::postgres::PostgresServer::start();
        let (client, connection) = tokio_postgres::connect(&server.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        for migration in &MIGRATIONS[..2] {
            client.batch_execute(migration).await.unwrap();
        }
        client
            .batch_execute(
                "CREATE TABLE escrow_schema (version BIGINT NOT NULL); \
                 INSERT INTO escrow_schema (version) VALUES (2); \
                 INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, \
                 fences, status, attempts, attempts_before_retry, due_at, created_at) VALUES \
                 ('intent', '01a24b4a-fe73-7077-ab33-28ba4abd545e', 1, 1, 'p', 'a.b', '\\x31', \
                  '[]', 'dead', 3, 2, 5, 5), \
                 ('intent', '01a24b4a-fe73-7077-ab33-28ba4abd545e', 2, 2, 'p', 'a.b', '\\x31', \
                  '[]', 'pending', 1, 0, 5, 7)",
            )
            .await
            .unwrap();
        let store = PostgresOutbox::connect_with(&server.url(), OpenMode::Existing)
            .await
            .unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!(
            (
                stats.dead,
                stats.pending,
                stats.retrying,
                stats.attempts,
                stats.oldest_pending_ms
            ),
            (1, 1, 1, 3 + 2 + 1, Some(7))
        );
        let version: i64 = client
            .query_one("SELECT MAX(version) FROM escrow_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
