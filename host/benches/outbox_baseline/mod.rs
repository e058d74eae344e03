//! The baselines of the outbox benchmarks: the rows escrow writes for a
//! group of runs, written by a minimal batched client into the same table.

use std::time::Duration;

/// The rows of one run of the outbox benchmarks: 2 intents.
const ROWS_PER_RUN: u64 = 2;

/// The baseline of the SQLite outbox: a minimal client writing the rows of
/// a group of runs in one transaction (one fsync), with one prepared
/// multi-row `INSERT`, into the same table.
pub struct SqliteBatch {
    conn: rusqlite::Connection,
}

impl SqliteBatch {
    /// A second connection to the outbox file at `path`, with the outbox's
    /// durability (WAL, `synchronous = FULL`).
    pub fn open(path: &std::path::Path) -> Self {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .unwrap();
        Self { conn }
    }

    /// Writes the rows of `runs` runs, pending.
    pub fn insert_runs(&mut self, runs: u64) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, \
                     fences, status, attempts, due_at, created_at) \
                     VALUES ('intent', ?1, ?2, ?2, 'bench', 'bench.effect', ?3, '[]', 'pending', \
                     0, ?4, ?4)",
                )
                .unwrap();
            for _ in 0..runs {
                let run = uuid::Uuid::new_v4().to_string();
                for seq in 0..ROWS_PER_RUN as i64 {
                    insert
                        .execute(rusqlite::params![run, seq, b"1".as_slice(), 0i64])
                        .unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
}

/// The baseline of the Postgres outbox: a minimal client writing the rows
/// of a group of runs with one prepared multi-row `INSERT` (autocommit: one
/// transaction), into the same table.
pub struct PostgresBatch {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
}

impl PostgresBatch {
    /// A connection of its own to the database at `url`.
    pub async fn connect(url: &str) -> Self {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let insert = client
            .prepare(
                "INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, \
                 fences, status, attempts, due_at, created_at) \
                 SELECT 'intent', r, s, s, 'bench', 'bench.effect', '\\x31', '[]', 'pending', \
                 0, 0, 0 FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS t(r, s)",
            )
            .await
            .unwrap();
        Self { client, insert }
    }

    /// Writes the rows of `runs` runs, pending.
    pub async fn insert_runs(&self, runs: u64) {
        let mut run_ids = Vec::new();
        let mut seqs = Vec::new();
        for _ in 0..runs {
            let run = uuid::Uuid::new_v4().to_string();
            for seq in 0..ROWS_PER_RUN as i64 {
                run_ids.push(run.clone());
                seqs.push(seq);
            }
        }
        self.client
            .execute(&self.insert, &[&run_ids, &seqs])
            .await
            .unwrap();
    }
}

/// An outbox of `rows` entries, as a busy one is after days: 1 in 100
/// pending, 1 in 1,000 dead, the rest delivered. Written by SQL, the
/// store's triggers counting them.
pub fn fill_sqlite(path: &std::path::Path, rows: u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, fences, \
         status, attempts, due_at, created_at, delivered_at) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         SELECT 'intent', 'run-' || (i / 2), i % 2, i % 2, 'bench', 'bench.effect', x'31', '[]', \
                CASE WHEN i % 100 = 0 THEN 'pending' WHEN i % 1000 = 1 THEN 'dead' \
                     ELSE 'delivered' END, \
                1, i, i, CASE WHEN i % 100 = 0 OR i % 1000 = 1 THEN NULL ELSE i END \
         FROM n",
        [rows as i64],
    )
    .unwrap();
}

/// As [`fill_sqlite`], in Postgres.
pub async fn fill_postgres(url: &str, rows: u64) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, payload, fences, \
             status, attempts, due_at, created_at, delivered_at) \
             SELECT 'intent', 'run-' || (i / 2), i % 2, i % 2, 'bench', 'bench.effect', '\\x31', \
                    '[]', CASE WHEN i % 100 = 0 THEN 'pending' WHEN i % 1000 = 1 THEN 'dead' \
                               ELSE 'delivered' END, \
                    1, i, i, CASE WHEN i % 100 = 0 OR i % 1000 = 1 THEN NULL ELSE i END \
             FROM generate_series(1, $1::BIGINT) AS i",
            &[&(rows as i64)],
        )
        .await
        .unwrap();
    client
        .batch_execute("VACUUM ANALYZE escrow_outbox")
        .await
        .unwrap();
}

/// What `stats` read before the store kept counts: every row, grouped by
/// status.
const FULL_COUNT: &str = "SELECT status, COUNT(*), SUM(attempts + attempts_before_retry), \
                          SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), MIN(created_at) \
                          FROM escrow_outbox GROUP BY status";

/// The baseline of `stats` on SQLite: the full count.
pub fn full_count_sqlite(conn: &rusqlite::Connection) -> usize {
    let mut query = conn.prepare_cached(FULL_COUNT).unwrap();
    query.query_map([], |_| Ok(())).unwrap().count()
}

/// The baseline of `stats` on Postgres: the full count.
pub async fn full_count_postgres(client: &PostgresBatch) -> usize {
    client.client.query(FULL_COUNT, &[]).await.unwrap().len()
}
