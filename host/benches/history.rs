//! What `escrow serve` reads of a run history of a million runs, on SQLite
//! and on Postgres: a page of runs (newest, by status, by a rare effect, far
//! back through the cursor), one run with its entries, and the outbox's
//! stats; each next to a primary-key read of one row of the same table, in
//! the same run. The goal: each ≤ 50 ms at p95.
//!
//! ```sh
//! cargo bench -p escrow-host --bench history
//! ```
//!
//! Postgres is measured when `initdb` is installed (`tests/setup.sh`).

use std::time::{Duration, Instant};

use criterion::Criterion;
use escrow_host::RunId;
use escrow_host::outbox::{OutboxStore, PostgresOutbox, RunFilter, SqliteOutbox};

/// Runs in the history.
const RUNS: u64 = 1_000_000;

/// Samples of each read for its p95.
const SAMPLES: usize = 200;

/// When the first run started (ms since the Unix epoch); the others follow,
/// ten a millisecond.
const FIRST_MS: u64 = 1_790_000_000_000;

/// An outcome as the history keeps one: about 600 bytes of JSON.
const OUTCOME: &str = r#"{"schema":1,"status":"committed","plugin":"checkout","result":{"order":42,"intents":3},"intents":[{"seq":1,"idempotency_key":"k:1","effect":"payments.charge","payload":{"amount":1999,"order":42},"fate":"dispatched","rule":"granted by payments.charge","delivery":"delivered"},{"seq":2,"idempotency_key":"k:2","effect":"email.send","payload":{"to":"ada@example.com","subject":"Receipt for order 42"},"fate":"dispatched","rule":"granted by email.send","delivery":"delivered"}],"invocations":[],"breakers":[],"locks":[],"compensations":[],"timings_us":{"instantiate":370,"call":164,"settle":73,"dispatch":60}}"#;

/// The SQL of run `i`'s id: a UUIDv7 whose time is `FIRST_MS + i / 10`.
const SQLITE_ID: &str = "printf('%08x-%04x-7000-8000-%012x', (?2 + i / 10) >> 16, \
                         (?2 + i / 10) & 65535, i)";

fn fill_sqlite(path: &std::path::Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF")
        .unwrap();
    let status = "CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 100 = 1 THEN 'held' \
                  ELSE 'committed' END";
    conn.execute(
        &format!(
            "INSERT INTO escrow_runs (run_id, plugin, status, component_sha256, ended_at, effects, \
             outcome) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
             SELECT {SQLITE_ID}, CASE WHEN i % 2 = 0 THEN 'checkout' ELSE 'payouts' END, \
                    {status}, 'sha', ?2 + i / 10, \
                    CASE WHEN i % 1000 = 0 THEN '[\"email.send\",\"payments.refund\"]' \
                         ELSE '[\"email.send\",\"payments.charge\"]' END, ?3 FROM n"
        ),
        rusqlite::params![RUNS as i64, FIRST_MS as i64, OUTCOME],
    )
    .unwrap();
    conn.execute(
        &format!(
            "INSERT INTO escrow_run_effects (effect, run_id) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
             SELECT CASE WHEN i % 1000 = 0 THEN 'payments.refund' ELSE 'payments.charge' END, \
                    {SQLITE_ID} FROM n \
             UNION ALL \
             SELECT 'email.send', {SQLITE_ID} FROM n"
        ),
        rusqlite::params![RUNS as i64, FIRST_MS as i64],
    )
    .unwrap();
    conn.execute_batch("ANALYZE").unwrap();
}

/// As [`SQLITE_ID`], in Postgres.
const POSTGRES_ID: &str = "lpad(to_hex(($2 + i / 10) >> 16), 8, '0') || '-' || \
                           lpad(to_hex(($2 + i / 10) & 65535), 4, '0') || '-7000-8000-' || \
                           lpad(to_hex(i), 12, '0')";

async fn fill_postgres(url: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let status = "CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 100 = 1 THEN 'held' \
                  ELSE 'committed' END";
    client
        .execute(
            &format!(
                "INSERT INTO escrow_runs (run_id, plugin, status, component_sha256, ended_at, \
                 effects, outcome) \
                 SELECT {POSTGRES_ID}, CASE WHEN i % 2 = 0 THEN 'checkout' ELSE 'payouts' END, \
                        {status}, 'sha', $2 + i / 10, \
                        CASE WHEN i % 1000 = 0 THEN '[\"email.send\",\"payments.refund\"]' \
                             ELSE '[\"email.send\",\"payments.charge\"]' END, $3 \
                 FROM generate_series(1, $1::BIGINT) AS i"
            ),
            &[&(RUNS as i64), &(FIRST_MS as i64), &OUTCOME],
        )
        .await
        .unwrap();
    client
        .execute(
            &format!(
                "INSERT INTO escrow_run_effects (effect, run_id) \
                 SELECT CASE WHEN i % 1000 = 0 THEN 'payments.refund' ELSE 'payments.charge' END, \
                        {POSTGRES_ID} FROM generate_series(1, $1::BIGINT) AS i \
                 UNION ALL \
                 SELECT 'email.send', {POSTGRES_ID} FROM generate_series(1, $1::BIGINT) AS i"
            ),
            &[&(RUNS as i64), &(FIRST_MS as i64)],
        )
        .await
        .unwrap();
    // Each its own statement: VACUUM runs outside a transaction only.
    for table in ["escrow_runs", "escrow_run_effects"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .unwrap();
    }
}

/// The baseline read: one run's outcome by its primary key.
const BY_KEY_SQLITE: &str = "SELECT outcome FROM escrow_runs WHERE run_id = ?1";
const BY_KEY_POSTGRES: &str = "SELECT outcome FROM escrow_runs WHERE run_id = $1";

/// A run in the middle of the history.
fn middle_run() -> RunId {
    let i = RUNS / 2;
    format!(
        "{:08x}-{:04x}-7000-8000-{:012x}",
        (FIRST_MS + i / 10) >> 16,
        (FIRST_MS + i / 10) & 65535,
        i
    )
    .parse()
    .unwrap()
}

/// The reads measured, by name.
fn reads() -> Vec<(&'static str, RunFilter)> {
    let page = |filter: RunFilter| RunFilter {
        limit: 50,
        ..filter
    };
    vec![
        ("newest runs", page(RunFilter::default())),
        (
            "failed runs",
            page(RunFilter {
                status: Some("failed".into()),
                ..RunFilter::default()
            }),
        ),
        (
            "runs of a rare effect",
            page(RunFilter {
                effect: Some("payments.refund".into()),
                ..RunFilter::default()
            }),
        ),
        (
            "a page far back",
            page(RunFilter {
                before: Some(middle_run()),
                ..RunFilter::default()
            }),
        ),
        (
            "runs of the last hour",
            page(RunFilter {
                since_ms: Some(FIRST_MS as i64 + (RUNS / 10) as i64 - 3_600_000),
                plugin: Some("payouts".into()),
                ..RunFilter::default()
            }),
        ),
    ]
}

/// The p95 of `SAMPLES` calls of `read`.
fn p95(rt: &tokio::runtime::Runtime, mut read: impl AsyncFnMut()) -> Duration {
    rt.block_on(read());
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            rt.block_on(read());
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[SAMPLES * 95 / 100]
}

/// Measures each read of `store`, next to `baseline`: the outcome of one
/// run read by its primary key, with the store's own driver.
fn measure(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &dyn OutboxStore,
    mut baseline: impl AsyncFnMut(),
) {
    let mut group = c.benchmark_group(format!("history_{name}"));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    let middle = middle_run();
    let mut figures = Vec::new();
    for (read, filter) in reads() {
        let found = rt.block_on(store.runs(&filter)).unwrap();
        assert!(!found.is_empty(), "{read}: nothing found");
        group.bench_function(read, |b| {
            b.to_async(rt)
                .iter(|| async { store.runs(&filter).await.unwrap() })
        });
        figures.push((
            read,
            p95(rt, async || drop(store.runs(&filter).await.unwrap())),
        ));
    }
    let one = async || {
        assert!(store.run(middle).await.unwrap().is_some());
        store.run_entries(middle).await.unwrap();
    };
    group.bench_function("one run", |b| b.to_async(rt).iter(one));
    figures.push(("one run, with its entries", p95(rt, one)));
    let stats = async || {
        store.stats().await.unwrap();
    };
    group.bench_function("stats", |b| b.to_async(rt).iter(stats));
    figures.push(("stats", p95(rt, stats)));
    group.bench_function("baseline: one row by key", |b| {
        b.iter(|| rt.block_on(baseline()))
    });
    let base = p95(rt, &mut baseline);
    group.finish();
    println!("\nhistory of {RUNS} runs, {name}: p95 of {SAMPLES} reads (goal ≤ 50 ms)");
    for (read, p95) in figures {
        println!(
            "  {read:<28} {:>8.3} ms   baseline, one row by key: {:>7.1} µs   ratio {:.0}x",
            p95.as_secs_f64() * 1e3,
            base.as_secs_f64() * 1e6,
            p95.as_secs_f64() / base.as_secs_f64()
        );
    }
}

fn history(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let sqlite = SqliteOutbox::open(&path).unwrap();
    let filled = Instant::now();
    fill_sqlite(&path);
    println!("SQLite: {RUNS} runs written in {:.1?}", filled.elapsed());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let key = middle_run().to_string();
    let by_key = async || {
        let outcome: String = conn
            .prepare_cached(BY_KEY_SQLITE)
            .unwrap()
            .query_row([&key], |r| r.get(0))
            .unwrap();
        assert!(!outcome.is_empty());
    };
    measure(c, &rt, "sqlite", &sqlite, by_key);

    let Some(server) = escrow_fixtures::postgres::PostgresServer::try_start() else {
        println!("Postgres: not measured (no initdb; run tests/setup.sh)");
        return;
    };
    let url = server.database("history");
    let postgres = rt.block_on(PostgresOutbox::connect(&url)).unwrap();
    let filled = Instant::now();
    rt.block_on(fill_postgres(&url));
    println!("Postgres: {RUNS} runs written in {:.1?}", filled.elapsed());
    let client = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    });
    let by_key = async || {
        let row = client.query_one(BY_KEY_POSTGRES, &[&key]).await.unwrap();
        assert!(!row.get::<_, String>(0).is_empty());
    };
    measure(c, &rt, "postgres", &postgres, by_key);
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    history(&mut criterion);
    criterion.final_summary();
}
