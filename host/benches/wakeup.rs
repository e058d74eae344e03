//! Wake-up latency: from a run's commit to its delivery by a worker in
//! another process, with runs committed at [`RATE`] per second, for the
//! SQLite outbox and for Postgres (when a server can be started).
//!
//! The baseline, measured in the same sitting: the same timestamps handed to
//! the same kind of child process over a pipe, which is as fast as a wake-up
//! across processes can be.
//!
//! The bench runs itself as the worker: with `ESCROW_WAKEUP_WORKER` set to a
//! store URL (or `pipe`), it delivers until it has seen `ESCROW_WAKEUP_RUNS`
//! runs and prints one line per run: its id and when it was delivered (µs
//! since the Unix epoch). Latencies are latencies of a distribution, not of
//! a loop, so the bench reports percentiles rather than criterion's means.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use escrow_fixtures::postgres::PostgresServer;
use escrow_host::handlers::Handlers;
use escrow_host::outbox::{
    EntryKind, NewEntry, Outbox, PostgresOutbox, SqliteOutbox, Worker, Write,
};
use escrow_host::sinks::{FnSink, Sinks};
use escrow_host::{CallError, Intent, RunId};

/// Runs committed per second.
const RATE: u64 = 1_000;
/// Runs measured per store.
const RUNS: u64 = 5_000;
/// Intents per run.
const INTENTS: u64 = 2;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn main() {
    if let Ok(store) = std::env::var("ESCROW_WAKEUP_WORKER") {
        let runs = std::env::var("ESCROW_WAKEUP_RUNS")
            .unwrap()
            .parse()
            .unwrap();
        return worker(&store, runs);
    }
    // `cargo bench` passes `--bench`; a filter that is not ours skips this.
    if let Some(filter) = std::env::args().skip(1).find(|a| !a.starts_with('-'))
        && !"wakeup".contains(&filter)
    {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "wake-up from commit to delivery, worker in another process, {RATE} runs/s \
         ({INTENTS} intents each), {RUNS} runs; load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let pipe = runtime.block_on(measure_pipe());
    print("pipe to a child process (baseline)", &pipe);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("wakeup.db");
    let sqlite = sqlite.to_str().unwrap().to_owned();
    let outbox = Outbox::new(SqliteOutbox::open(&sqlite).unwrap());
    print(
        "SQLite outbox",
        &runtime.block_on(measure(&outbox, &sqlite)),
    );
    match PostgresServer::try_start() {
        Some(server) => {
            let url = server.url();
            let outbox = runtime
                .block_on(async { Outbox::new(PostgresOutbox::connect(&url).await.unwrap()) });
            print("Postgres outbox", &runtime.block_on(measure(&outbox, &url)));
        }
        None => println!("  Postgres: not installed, skipped"),
    }
}

fn print(name: &str, latencies_us: &[u64]) {
    let mut sorted = latencies_us.to_vec();
    sorted.sort_unstable();
    let at = |p: f64| {
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i] as f64 / 1000.0
    };
    println!(
        "  {name:<36} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   ({} runs)",
        at(0.50),
        at(0.99),
        at(1.0),
        sorted.len()
    );
}

/// Starts this bench as a worker on `store` and returns it with its
/// stdin (for `pipe`) and its stdout.
fn child(store: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env("ESCROW_WAKEUP_WORKER", store)
        .env("ESCROW_WAKEUP_RUNS", RUNS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the child's `run delivered_us` lines until it exits.
fn deliveries(child: &mut std::process::Child) -> std::thread::JoinHandle<HashMap<String, u64>> {
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let (run, at) = line.split_once(' ')?;
                Some((run.to_owned(), at.parse().ok()?))
            })
            .collect()
    })
}

/// Commits [`RUNS`] runs at [`RATE`] per second while a worker in another
/// process delivers them; returns each run's latency in µs.
async fn measure(outbox: &Outbox, store: &str) -> Vec<u64> {
    let mut worker = child(store);
    let delivered = deliveries(&mut worker);
    // The worker has connected, drained the empty outbox and waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut writes = tokio::task::JoinSet::new();
    for _ in 0..RUNS {
        ticks.tick().await;
        let outbox = outbox.clone();
        let committed = Arc::clone(&committed);
        writes.spawn(async move {
            let run_id = RunId::new();
            let intents = (1..=INTENTS)
                .map(|seq| NewEntry {
                    kind: EntryKind::Intent,
                    run_id,
                    seq,
                    plugin: "wakeup".into(),
                    effect: "bench.wakeup".into(),
                    payload: b"{}".to_vec(),
                    fences: Vec::new(),
                })
                .collect();
            outbox
                .write(Write::Commit {
                    run_id,
                    intents,
                    claim: None,
                    now_ms: outbox.now_ms(),
                    journaled: false,
                    failed_compensations: Vec::new(),
                })
                .await
                .unwrap();
            committed
                .lock()
                .unwrap()
                .insert(run_id.to_string(), now_us());
        });
    }
    writes.join_all().await;
    let delivered = tokio::task::spawn_blocking(move || {
        let delivered = delivered.join().unwrap();
        worker.wait().unwrap();
        delivered
    })
    .await
    .unwrap();
    let committed = committed.lock().unwrap();
    assert_eq!(delivered.len() as u64, RUNS, "every run delivered");
    committed
        .iter()
        .map(|(run, at)| delivered[run].saturating_sub(*at))
        .collect()
}

/// The baseline: timestamps written to a child's stdin at the same rate.
async fn measure_pipe() -> Vec<u64> {
    let mut reader = child("pipe");
    let delivered = deliveries(&mut reader);
    let mut stdin = reader.stdin.take().unwrap();
    let mut sent = HashMap::new();
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for run in 0..RUNS {
        ticks.tick().await;
        sent.insert(run.to_string(), now_us());
        writeln!(stdin, "{run}").unwrap();
        stdin.flush().unwrap();
    }
    drop(stdin);
    let delivered = tokio::task::spawn_blocking(move || {
        let delivered = delivered.join().unwrap();
        reader.wait().unwrap();
        delivered
    })
    .await
    .unwrap();
    sent.iter()
        .map(|(run, at)| delivered[run].saturating_sub(*at))
        .collect()
}

/// The child: delivers from `store` (or reads `pipe`) until it has seen
/// `runs` runs, printing each run's id and when its last intent arrived.
fn worker(store: &str, runs: u64) {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    if store == "pipe" {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let at = now_us();
            writeln!(out.lock().unwrap(), "{line} {at}").unwrap();
        }
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let outbox = if store.starts_with("postgres://") {
            Outbox::new(PostgresOutbox::connect(store).await.unwrap())
        } else {
            Outbox::new(SqliteOutbox::open(store).unwrap())
        };
        let (done, finished) = tokio::sync::oneshot::channel();
        let done = Mutex::new(Some(done));
        let seen = Mutex::new(0_u64);
        let mut sinks = Sinks::new();
        let printed = Arc::clone(&out);
        sinks
            .route(
                "*",
                FnSink(move |intent: &Intent| {
                    if intent.seq == INTENTS {
                        let at = now_us();
                        writeln!(printed.lock().unwrap(), "{} {at}", intent.run_id).unwrap();
                        let mut seen = seen.lock().unwrap();
                        *seen += 1;
                        if *seen == runs
                            && let Some(done) = done.lock().unwrap().take()
                        {
                            let _ = done.send(());
                        }
                    }
                    Ok::<_, CallError>(())
                }),
            )
            .unwrap();
        let worker = Worker::new(outbox, sinks, Handlers::new()).spawn();
        let _ = finished.await;
        worker.stop().await.unwrap();
    });
    out.lock().unwrap().flush().unwrap();
}
