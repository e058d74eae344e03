//! The outbox in Postgres, for many hosts: any number of workers on any
//! number of hosts claim runs with `FOR UPDATE SKIP LOCKED`, a lease and a
//! claim token.
//!
//! Built on `tokio-postgres`: asynchronous, small, and without the compile
//! time of a query-checking toolkit; escrow's dozen statements need no more.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, GenericClient, NoTls, Row};

use super::{
    Claim, ENTRY_COLUMN_COUNT, ENTRY_COLUMNS, Entry, EntryKind, Filter, NewEntry, OpenMode,
    OutboxError, OutboxStore, Prune, Retry, Settlement, Stats, Write, fences_from_json,
    fences_json, retriable,
};
use crate::outcome::{Fate, Outcome};
use crate::run_id::RunId;

/// How long connecting to Postgres may take, unless the URL says otherwise.
pub const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may run before Postgres cancels it.
pub const POSTGRES_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

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
];

/// An outbox in a Postgres database.
///
/// One connection, shared by the writes (already grouped) and the claims of
/// this process; it is opened again after it breaks.
#[derive(Clone)]
pub struct PostgresOutbox {
    url: String,
    config: tokio_postgres::Config,
    client: Arc<Mutex<Option<Client>>>,
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
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| OutboxError::Open {
            what: what.clone(),
            message: e.to_string(),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POSTGRES_CONNECT_TIMEOUT);
        }
        config.options(format!(
            "-c statement_timeout={}",
            POSTGRES_STATEMENT_TIMEOUT.as_millis()
        ));
        let outbox = Self {
            url: url.to_owned(),
            config,
            client: Arc::new(Mutex::new(None)),
        };
        {
            let mut client = outbox.client.lock().await;
            let conn = outbox.open().await.map_err(|message| OutboxError::Open {
                what: what.clone(),
                message,
            })?;
            if mode == OpenMode::Existing {
                let exists: bool = conn
                    .query_one("SELECT to_regclass('escrow_outbox') IS NOT NULL", &[])
                    .await
                    .map_err(|e| OutboxError::Open {
                        what: what.clone(),
                        message: error_text(&e),
                    })?
                    .get(0);
                if !exists {
                    return Err(OutboxError::Open {
                        what,
                        message: "the database holds no escrow outbox".into(),
                    });
                }
            }
            migrate(&mut *client.insert(conn))
                .await
                .map_err(|message| OutboxError::Corrupt { what, message })?;
        }
        Ok(outbox)
    }

    /// A fresh connection, driven by a thread of its own so that it does
    /// not depend on the caller's runtime staying alive.
    async fn open(&self) -> Result<Client, String> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| error_text(&e))?;
        super::on_own_thread("escrow-postgres", async move {
            if let Err(error) = connection.await {
                tracing::warn!(error = %error_text(&error), "the Postgres connection ended");
            }
        })
        .map_err(|e| e.to_string())?;
        Ok(client)
    }

    /// Runs `f` with the connection, opening it again if it broke.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, OutboxError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            let client = self.open().await.map_err(OutboxError::Store)?;
            *guard = Some(client);
        }
        let client = guard.as_mut().expect("connected above");
        f(client)
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
        apply(tx, &write)
            .await
            .map_err(|e| OutboxError::Store(error_text(&e)))?;
        let Write::Commit { intents, .. } = write else {
            unreachable!()
        };
        Ok(intents.len())
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

async fn migrate(client: &mut Client) -> Result<(), String> {
    let text = |e: tokio_postgres::Error| error_text(&e);
    let tx = client.transaction().await.map_err(text)?;
    // Hosts starting together migrate one at a time.
    tx.execute("SELECT pg_advisory_xact_lock(7301948263)", &[])
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

/// Inserts `entries` (all of one kind) in one statement.
async fn insert(
    client: &impl GenericClient,
    entries: &[NewEntry],
    due_at: i64,
    claim: Option<&Claim>,
    now: i64,
) -> Result<(), tokio_postgres::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let column = |f: &dyn Fn(&NewEntry) -> String| entries.iter().map(f).collect::<Vec<_>>();
    let kinds = column(&|e| e.kind.as_str().to_owned());
    let runs = column(&|e| e.run_id.to_string());
    let plugins = column(&|e| e.plugin.clone());
    let effects = column(&|e| e.effect.clone());
    let fences = column(&|e| fences_json(&e.fences));
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq as i64).collect();
    let ords: Vec<i64> = entries.iter().map(|e| e.kind.ord(e.seq)).collect();
    let payloads: Vec<&[u8]> = entries.iter().map(|e| e.payload.as_slice()).collect();
    client
        .execute(
            "INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, fences, \
             status, attempts, due_at, claim_token, lease_until, created_at) \
             SELECT k, r, s, o, p, e, b, f, 'pending', 0, $1, $2, $3, $4 \
             FROM UNNEST($5::TEXT[], $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $9::TEXT[], \
                         $10::TEXT[], $11::BYTEA[], $12::TEXT[]) AS t(k, r, s, o, p, e, b, f)",
            &[
                &due_at,
                &claim.map(|c| c.token.as_str()),
                &claim.map(|c| c.lease_until_ms),
                &now,
                &kinds,
                &runs,
                &seqs,
                &ords,
                &plugins,
                &effects,
                &payloads,
                &fences,
            ],
        )
        .await?;
    Ok(())
}

async fn resolve(
    client: &impl GenericClient,
    run: &str,
    failed: &[(u64, String)],
    due_at: i64,
) -> Result<(), tokio_postgres::Error> {
    for (seq, error) in failed {
        client
            .execute(
                "UPDATE escrow_outbox SET attempts = attempts + 1, last_error = $3, due_at = $4 \
                 WHERE run_id = $1 AND kind = 'compensation' AND seq = $2 AND status = 'pending'",
                &[&run, &(*seq as i64), error, &due_at],
            )
            .await?;
    }
    client
        .execute(
            "DELETE FROM escrow_outbox WHERE run_id = $1 AND kind = 'compensation' \
             AND status = 'pending' AND attempts = 0",
            &[&run],
        )
        .await?;
    Ok(())
}

/// Applies `settlements` for entries `claim` holds and extends the claim's
/// other entries to its lease; returns how many were still held.
async fn settle(
    client: &impl GenericClient,
    claim: &Claim,
    settlements: &[(i64, Settlement)],
    now_ms: i64,
) -> Result<u64, tokio_postgres::Error> {
    let now = now_ms;
    let token = &claim.token;
    // The common case, delivered entries, in one statement.
    let delivered: Vec<i64> = settlements
        .iter()
        .filter(|(_, s)| *s == Settlement::Delivered)
        .map(|(id, _)| *id)
        .collect();
    let mut held = client
        .execute(
            "UPDATE escrow_outbox SET status = 'delivered', attempts = attempts + 1, \
             delivered_at = $3, last_error = NULL, claim_token = NULL, lease_until = NULL \
             WHERE id = ANY($1) AND claim_token = $2",
            &[&delivered, token, &now],
        )
        .await?;
    for (id, settlement) in settlements {
        held += match settlement {
            Settlement::Delivered => 0,
            Settlement::Retry { due_at_ms, error } => {
                client
                    .execute(
                        "UPDATE escrow_outbox SET attempts = attempts + 1, due_at = $3, \
                     last_error = $4, claim_token = NULL, lease_until = NULL \
                     WHERE id = $1 AND claim_token = $2",
                        &[id, token, due_at_ms, error],
                    )
                    .await?
            }
            Settlement::Dead { error } => {
                client
                    .execute(
                        "UPDATE escrow_outbox SET status = 'dead', attempts = attempts + 1, \
                     last_error = $3, claim_token = NULL, lease_until = NULL \
                     WHERE id = $1 AND claim_token = $2",
                        &[id, token, error],
                    )
                    .await?
            }
            Settlement::Reschedule { due_at_ms, reason } => {
                client
                    .execute(
                        "UPDATE escrow_outbox SET due_at = $3, last_error = $4, \
                     claim_token = NULL, lease_until = NULL \
                     WHERE id = $1 AND claim_token = $2",
                        &[id, token, due_at_ms, reason],
                    )
                    .await?
            }
            Settlement::Release => {
                client
                    .execute(
                        "UPDATE escrow_outbox SET claim_token = NULL, lease_until = NULL \
                     WHERE id = $1 AND claim_token = $2",
                        &[id, token],
                    )
                    .await?
            }
        };
    }
    client
        .execute(
            "UPDATE escrow_outbox SET lease_until = $2 WHERE claim_token = $1",
            &[token, &claim.lease_until_ms],
        )
        .await?;
    Ok(held)
}

/// Applies one write; returns how many entries a settlement found still
/// held by its claim (0 for other writes).
async fn apply(client: &impl GenericClient, write: &Write) -> Result<u64, tokio_postgres::Error> {
    match write {
        Write::Commit {
            run_id,
            intents,
            claim,
            now_ms,
            journaled,
            failed_compensations,
        } => {
            insert(client, intents, *now_ms, claim.as_ref(), *now_ms).await?;
            if *journaled {
                resolve(client, &run_id.to_string(), failed_compensations, *now_ms).await?;
            }
            Ok(0)
        }
        Write::Settle {
            claim,
            settlements,
            now_ms,
        } => settle(client, claim, settlements, *now_ms).await,
        Write::Journal {
            entry,
            due_at_ms,
            now_ms,
        } => insert(
            client,
            std::slice::from_ref(entry),
            *due_at_ms,
            None,
            *now_ms,
        )
        .await
        .map(|()| 0),
        Write::Resolve {
            run_id,
            failed,
            due_at_ms,
        } => resolve(client, &run_id.to_string(), failed, *due_at_ms)
            .await
            .map(|()| 0),
    }
}

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

#[async_trait::async_trait]
impl OutboxStore for PostgresOutbox {
    async fn write(&self, batch: &[Write]) -> Result<Vec<u64>, OutboxError> {
        self.with(async |client| {
            let tx = client.transaction().await?;
            let mut answers = Vec::with_capacity(batch.len());
            for write in batch {
                answers.push(apply(&tx, write).await?);
            }
            tx.commit().await?;
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
        let rows = self
            .with(async |client| {
                let tx = client.transaction().await?;
                let heads = tx
                    .query(
                        "SELECT h.run_id FROM escrow_outbox h \
                         WHERE h.status = 'pending' AND h.due_at <= $1 \
                           AND (h.lease_until IS NULL OR h.lease_until < $1) \
                           AND NOT EXISTS (SELECT 1 FROM escrow_outbox p \
                                           WHERE p.run_id = h.run_id AND p.status = 'pending' \
                                             AND p.ord < h.ord) \
                         ORDER BY h.due_at, h.id LIMIT $2 \
                         FOR UPDATE SKIP LOCKED",
                        &[&now_ms, &i64::from(max_runs)],
                    )
                    .await?;
                let mut claimed = Vec::new();
                let mut left = i64::from(max_entries);
                for head in heads {
                    if left <= 0 {
                        break;
                    }
                    let run: String = head.get(0);
                    let mut rows = tx
                        .query(
                            &format!(
                                "UPDATE escrow_outbox SET claim_token = $1, lease_until = $2 \
                                 WHERE id IN (SELECT id FROM escrow_outbox WHERE run_id = $3 \
                                              AND status = 'pending' ORDER BY ord LIMIT $4 \
                                              FOR UPDATE SKIP LOCKED) \
                                 RETURNING {ENTRY_COLUMNS}, ord"
                            ),
                            &[&claim.token, &claim.lease_until_ms, &run, &left],
                        )
                        .await?;
                    rows.sort_by_key(|r| r.get::<_, i64>(ENTRY_COLUMN_COUNT));
                    left -= rows.len() as i64;
                    claimed.extend(rows);
                }
                tx.commit().await?;
                Ok(claimed)
            })
            .await?;
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

    async fn claimed(&self, claim: &Claim) -> Result<Vec<Entry>, OutboxError> {
        let rows = self
            .with(async |client| {
                client
                    .query(
                        &format!(
                            "SELECT {ENTRY_COLUMNS} FROM escrow_outbox WHERE claim_token = $1 \
                             ORDER BY run_id, ord"
                        ),
                        &[&claim.token],
                    )
                    .await
            })
            .await?;
        entries(&rows)
    }

    async fn release(&self, claim: &Claim) -> Result<(), OutboxError> {
        self.with(async |client| {
            client
                .execute(
                    "UPDATE escrow_outbox SET claim_token = NULL, lease_until = NULL \
                     WHERE claim_token = $1",
                    &[&claim.token],
                )
                .await
                .map(drop)
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
        let rows = self
            .with(async |client| {
                client
                    .query(
                        "SELECT status, COUNT(*)::BIGINT, SUM(attempts + attempts_before_retry)::BIGINT, \
                         SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END)::BIGINT, MIN(created_at) \
                         FROM escrow_outbox GROUP BY status",
                        &[],
                    )
                    .await
            })
            .await?;
        let mut stats = Stats::default();
        for row in rows {
            stats.add(
                row.get(0),
                row.get::<_, i64>(1) as u64,
                row.get::<_, Option<i64>>(2).unwrap_or(0) as u64,
                row.get::<_, Option<i64>>(3).unwrap_or(0) as u64,
                row.get(4),
            );
        }
        let claimed = self
            .with(async |client| {
                client
                    .query_one(
                        "SELECT COUNT(*)::BIGINT, MAX(lease_until) FROM escrow_outbox \
                         WHERE status = 'pending' AND claim_token IS NOT NULL",
                        &[],
                    )
                    .await
            })
            .await?;
        stats.claimed = claimed.get::<_, i64>(0) as u64;
        stats.claimed_until_ms = claimed.get(1);
        Ok(stats)
    }

    async fn retry(&self, which: &Retry, now_ms: i64) -> Result<u64, OutboxError> {
        self.with(async |client| {
            let set = "UPDATE escrow_outbox SET status = 'pending', \
                       attempts_before_retry = attempts_before_retry + attempts, attempts = 0, \
                       due_at = $1, claim_token = NULL, lease_until = NULL";
            let tx = client.transaction().await?;
            let changed = match which {
                Retry::Dead => {
                    tx.execute(&format!("{set} WHERE status = 'dead'"), &[&now_ms])
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
                    tx.execute(&format!("{set} WHERE id = ANY($2)"), &[&now_ms, &ids])
                        .await?
                }
            };
            tx.commit().await?;
            Ok(Ok(changed))
        })
        .await?
    }

    async fn prune(
        &self,
        which: Prune,
        ended_before_ms: i64,
        limit: u32,
    ) -> Result<u64, OutboxError> {
        let statuses: Vec<&str> = which.statuses().to_vec();
        self.with(async |client| {
            // Rows another transaction holds are skipped, not waited for.
            client
                .execute(
                    "DELETE FROM escrow_outbox WHERE id IN (SELECT id FROM escrow_outbox \
                     WHERE status = ANY($1) AND COALESCE(delivered_at, due_at) < $2 \
                     LIMIT $3 FOR UPDATE SKIP LOCKED)",
                    &[&statuses, &ended_before_ms, &i64::from(limit)],
                )
                .await
        })
        .await
    }

    async fn expedite(&self, now_ms: i64) -> Result<u64, OutboxError> {
        self.with(async |client| {
            client
                .execute(
                    "UPDATE escrow_outbox SET due_at = $1 WHERE status = 'pending' AND due_at > $1",
                    &[&now_ms],
                )
                .await
        })
        .await
    }
}
