//! What escrow costs, each figure next to a baseline measured in the same
//! run:
//!
//! - recording one intent, against a bare component host call with the same
//!   signature (`fixture-bench` loops over `enqueue`, `fixture-bench-baseline`
//!   over a host function that does nothing);
//! - one `invoke` of a no-op handler, against a bare host call with the
//!   signature of `invoke`;
//! - one `invoke` through a closed circuit breaker, against the same
//!   `invoke` without one;
//! - one uncontended lock taken and released from a guest, with the
//!   in-memory backend and with Redis, against a bare host call and a raw
//!   Redis round trip (`SET` then `DEL` from the same client);
//! - a whole run (fresh store, instantiate, call, record 2 intents, commit
//!   to an in-memory sink), against a bare instantiation from `InstancePre`
//!   in a fresh store;
//! - the same run committed durably into a SQLite outbox and into Postgres
//!   (when a Postgres server can be started), one at a time and 32 at once,
//!   against the in-memory sink and against the same rows written by a
//!   minimal batched client (one multi-row `INSERT` a group of 32 runs); and
//!   one worker delivering stored intents from each store to an in-process
//!   sink, against handing the same intents to it from memory;
//! - a fresh-instance run of the checkout (3 intents committed to an
//!   in-memory sink) in Python and in JavaScript, against the Rust checkout,
//!   with each one's instantiate/call split (when `tests/setup.sh` has
//!   installed the toolchains).
//!
//! Both sides use the same engine (pooling allocator) and the loops run in
//! the guest, so the figures are the host's cost, not the harness's.

mod baseline;
mod outbox_baseline;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use escrow_fixtures as fixtures;
use escrow_host::CallError;
use escrow_host::backends::{LockBackend, RedisLocks};
use escrow_host::breakers::{BreakerConfig, Breakers};
use escrow_host::handlers::Handlers;
use escrow_host::outbox::{Outbox, OutboxStore, PostgresOutbox, SqliteOutbox};
use escrow_host::policy::DropAll;
use escrow_host::sinks::FnSink;
use escrow_host::{Dispatch, Grants, Host, Intent, Limits, RunOptions};
use wasmtime::Store;
use wasmtime::component::InstancePre;

/// Calls per run in the per-call benchmarks: enough that instantiation is
/// under 1% of the figure.
const CALLS_PER_RUN: u64 = 20_000;

/// Locks taken and released per run in the lock benchmarks.
const LOCKS_PER_RUN: u64 = 200;

fn host() -> Host {
    Host::builder()
        .route("*", FnSink(|_: &Intent| Ok::<_, CallError>(())))
        .unwrap()
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn per_call(c: &mut Criterion) {
    let rt = runtime();
    let host = host();
    let mut group = c.benchmark_group("per_call");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);

    // escrow: the guest records CALLS_PER_RUN intents; policy drop, so the
    // figure is recording and settling, without delivery.
    let plugin = host.load_file(fixtures::BENCH).unwrap();
    let options = RunOptions::new()
        .grants(Grants::new().effects(["bench.*"]).unwrap())
        .policy(DropAll)
        .limits(Limits {
            max_intents: CALLS_PER_RUN as usize,
            ..Limits::default()
        })
        .input(CALLS_PER_RUN.to_string());
    group.bench_function("record_intent", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = plugin.run(options.clone()).await.unwrap();
            assert_eq!(outcome.intents.len(), CALLS_PER_RUN as usize);
        })
    });

    // escrow: the same intents committed and delivered to an in-memory
    // sink; the difference from `record_intent` is what committing costs.
    let commit_options = options.clone().policy(escrow_host::policy::Commit);
    group.bench_function("commit_intent", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = plugin.run(commit_options.clone()).await.unwrap();
            assert_eq!(outcome.dispatched().count(), CALLS_PER_RUN as usize);
        })
    });

    // escrow: the guest invokes a no-op query handler CALLS_PER_RUN times.
    let invoking = plugin.with_handlers(baseline::noop_handlers());
    let invoke_options = options.clone().input(format!("invoke:{CALLS_PER_RUN}"));
    group.bench_function("invoke", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = invoking.run(invoke_options.clone()).await.unwrap();
            assert_eq!(outcome.invocations.len(), CALLS_PER_RUN as usize);
        })
    });

    // escrow: the same invocations through a closed breaker.
    let mut breakers = Breakers::default();
    breakers.define("bench", BreakerConfig::default()).unwrap();
    let guarded = invoking.with_breakers(Arc::new(breakers));
    let breaker_options = RunOptions::new()
        .grants(
            Grants::new()
                .effects(["bench.*"])
                .unwrap()
                .breakers(["bench"])
                .unwrap(),
        )
        .limits(Limits {
            max_intents: CALLS_PER_RUN as usize,
            ..Limits::default()
        })
        .input(format!("breaker:{CALLS_PER_RUN}"));
    group.bench_function("invoke_through_breaker", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = guarded.run(breaker_options.clone()).await.unwrap();
            assert_eq!(outcome.breakers.len(), CALLS_PER_RUN as usize);
        })
    });

    // escrow: typed effects, each next to the escrow call with the same
    // JSON payload: a deferred call carrying a record of 3 fields
    // (`ledger.post`) and `enqueue`, of the payload ready and of the payload
    // serialized from the same record in the guest, as a string-effect
    // plugin makes it; an immediate call answered `1` as a u32
    // (`catalog.stock`) and `invoke`.
    let typed = baseline::typed_plugin();
    let typed_options = RunOptions::new()
        .grants(Grants::new().effects(["ledger.*", "catalog.*"]).unwrap())
        .policy(DropAll)
        .limits(Limits {
            max_intents: CALLS_PER_RUN as usize,
            ..Limits::default()
        });
    for (name, mode) in [
        ("typed_deferred", "post"),
        ("enqueue_same_payload", "enqueue"),
        ("enqueue_serialized_in_guest", "serialize"),
        ("typed_immediate", "stock"),
        ("invoke_same_payload", "invoke"),
    ] {
        let options = typed_options
            .clone()
            .input(format!("{mode}:{CALLS_PER_RUN}"));
        let typed = &typed;
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let outcome = typed.run(options.clone()).await.unwrap();
                assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            })
        });
    }

    // Baseline: the same number of calls to host functions with the same
    // signatures that do nothing; for invoke, also as an async host
    // function, which escrow's invoke is.
    let engine = host.engine();
    let rt = &rt;
    let bare = |pre: InstancePre<baseline::State>, input: String| {
        move |b: &mut criterion::Bencher<'_>| {
            let input = input.clone().into_bytes();
            b.to_async(rt)
                .iter(|| baseline::bare_run(engine, &pre, &input))
        }
    };
    let (sync_calls, async_calls) = (
        baseline::bare_calls(engine, false),
        baseline::bare_calls(engine, true),
    );
    group.bench_function(
        "bare_host_call",
        bare(sync_calls.clone(), CALLS_PER_RUN.to_string()),
    );
    group.bench_function(
        "bare_invoke_call",
        bare(sync_calls, format!("invoke:{CALLS_PER_RUN}")),
    );
    group.bench_function(
        "bare_async_invoke_call",
        bare(async_calls, format!("invoke:{CALLS_PER_RUN}")),
    );
    // Baseline: the deferred typed call to a wasmtime dynamic host function
    // that does nothing: the arguments lifted into `Val`s, as escrow's
    // typed effects receive them, and dropped.
    group.bench_function(
        "bare_typed_call",
        bare(
            baseline::bare_typed(engine),
            format!("post:{CALLS_PER_RUN}"),
        ),
    );
    group.finish();
}

fn locks(c: &mut Criterion) {
    let rt = runtime();
    let host = host();
    let mut group = c.benchmark_group("locks");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    let redis = escrow_fixtures::redis::RedisServer::start();

    let plugin = host.load_file(fixtures::BENCH).unwrap();
    let options = RunOptions::new()
        .grants(Grants::new().locks(["bench:*"]).unwrap())
        .input(format!("lock:{LOCKS_PER_RUN}"));
    let redis_locks: Arc<dyn LockBackend> =
        rt.block_on(async { Arc::new(RedisLocks::connect(&redis.url()).await.unwrap()) });
    for (name, plugin) in [
        ("memory", plugin.clone()),
        ("redis", plugin.with_locks(redis_locks)),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let outcome = plugin.run(options.clone()).await.unwrap();
                assert_eq!(outcome.locks.len(), LOCKS_PER_RUN as usize);
            })
        });
    }

    // Baseline: what one acquisition and release cost Redis itself.
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    group.bench_function("raw_redis_set_del", |b| {
        b.to_async(&rt).iter(|| {
            let mut connection = connection.clone();
            async move {
                for _ in 0..LOCKS_PER_RUN {
                    let () = redis::cmd("SET")
                        .arg("bench:raw")
                        .arg("1")
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    let _: u64 = redis::cmd("DEL")
                        .arg("bench:raw")
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                }
            }
        })
    });
    group.finish();
}

fn whole_run(c: &mut Criterion) {
    let rt = runtime();
    let host = host();
    let mut group = c.benchmark_group("whole_run");
    group.measurement_time(Duration::from_secs(5));

    // escrow: fresh store and instance, two intents, commit, deliver to an
    // in-memory handler.
    let plugin = host.load_file(fixtures::BENCH).unwrap();
    let options = RunOptions::new()
        .grants(Grants::new().effects(["bench.*"]).unwrap())
        .input("2");
    group.bench_function("run_two_intents_committed", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = plugin.run(options.clone()).await.unwrap();
            assert_eq!(outcome.dispatched().count(), 2);
        })
    });

    // Baseline: a fresh store and an instantiation of the same component
    // from `InstancePre`, nothing called.
    let engine = host.engine();
    let pre = baseline::escrow_linked(engine);
    group.bench_function("bare_instantiation", |b| {
        b.to_async(&rt).iter(|| async {
            let mut store = Store::new(engine, baseline::State::new());
            escrow_host::set_deadline(&mut store, Duration::from_secs(60));
            pre.instantiate_async(&mut store).await.unwrap();
        })
    });

    // Reference: a fresh instance of the baseline guest, whose `run` makes
    // the same 2 calls to host functions that do nothing. What a run costs
    // over this is escrow's own share.
    let bare_calls = baseline::bare_calls(engine, false);
    group.bench_function("bare_instantiation_and_call", |b| {
        b.to_async(&rt)
            .iter(|| baseline::bare_run(engine, &bare_calls, b"2"))
    });
    group.finish();
}

/// Runs in one iteration of the scaling benchmarks.
const SCALING_RUNS: u64 = 2_000;

/// Whole runs (2 intents committed) and bare instantiations, `SCALING_RUNS`
/// of them on one thread and split over two: how throughput scales on two
/// cores.
fn scaling(c: &mut Criterion) {
    let host = host();
    let mut group = c.benchmark_group("scaling");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    let plugin = host.load_file(fixtures::BENCH).unwrap();
    let options = RunOptions::new()
        .grants(Grants::new().effects(["bench.*"]).unwrap())
        .input("2");
    let engine = host.engine().clone();
    let pre = baseline::escrow_linked(&engine);
    for threads in [1u64, 2] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads as usize)
            .enable_all()
            .build()
            .unwrap();
        group.bench_function(format!("runs_{threads}_threads"), |b| {
            b.to_async(&rt).iter(|| {
                split_over(
                    threads,
                    (plugin.clone(), options.clone()),
                    |(plugin, options)| async move {
                        plugin.run(options).await.unwrap();
                    },
                )
            })
        });
        group.bench_function(format!("instantiations_{threads}_threads"), |b| {
            b.to_async(&rt).iter(|| {
                split_over(
                    threads,
                    (pre.clone(), engine.clone()),
                    |(pre, engine)| async move {
                        let mut store = Store::new(&engine, baseline::State::new());
                        escrow_host::set_deadline(&mut store, Duration::from_secs(60));
                        pre.instantiate_async(&mut store).await.unwrap();
                    },
                )
            })
        });
    }
    group.finish();
}

/// `SCALING_RUNS` calls of `one`, each with its own copy of `state`, made
/// by `threads` tasks taking an equal share; resolves when all are done.
fn split_over<S, Fut>(threads: u64, state: S, one: fn(S) -> Fut) -> impl Future<Output = ()>
where
    S: Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..threads)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move {
                for _ in 0..SCALING_RUNS / threads {
                    one(state.clone()).await;
                }
            })
        })
        .collect();
    async move {
        for task in tasks {
            task.await.unwrap();
        }
    }
}

/// Resident memory per run in flight: 1, 100 and 1,000 runs parked in a
/// handler, the host's resident set measured before and while they wait.
fn memory_in_flight() {
    let rt = multi_thread_runtime();
    let host = Host::builder().max_concurrent_runs(1_000).build().unwrap();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let parked = Arc::new(tokio::sync::Semaphore::new(0));
    let mut handlers = Handlers::new();
    let (held, arrived) = (Arc::clone(&release), Arc::clone(&parked));
    handlers
        .query(
            "bench.noop",
            escrow_host::handlers::AsyncFnHandler(move |_| {
                let (held, arrived) = (Arc::clone(&held), Arc::clone(&arrived));
                async move {
                    arrived.add_permits(1);
                    held.acquire().await.unwrap().forget();
                    Ok::<_, CallError>(Vec::new())
                }
            }),
        )
        .unwrap();
    let plugin = host
        .load_file(fixtures::BENCH)
        .unwrap()
        .with_handlers(handlers);
    let options = RunOptions::new()
        .grants(Grants::new().effects(["bench.*"]).unwrap())
        .input("invoke:1");
    // One run first, so that what every run shares is already resident.
    release.add_permits(1);
    rt.block_on(plugin.run(options.clone())).unwrap();
    parked.forget_permits(1);
    println!("\nresident memory per run in flight (runs parked in a handler):");
    for runs in [1u32, 100, 1_000] {
        let before = resident_bytes();
        let tasks: Vec<_> = (0..runs)
            .map(|_| {
                let (plugin, options) = (plugin.clone(), options.clone());
                rt.spawn(async move { plugin.run(options).await.unwrap() })
            })
            .collect();
        rt.block_on(async {
            parked.acquire_many(runs).await.unwrap().forget();
        });
        let during = resident_bytes();
        release.add_permits(runs as usize);
        for task in tasks {
            rt.block_on(task).unwrap();
        }
        println!(
            "  {runs:>5} runs: {:>8.1} KiB each",
            during.saturating_sub(before) as f64 / 1024.0 / f64::from(runs)
        );
    }
}

/// This process's resident set, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The checkout in Rust, Python and JavaScript: a fresh instance per run,
/// three intents committed to an in-memory sink. Prints each language's
/// instantiate/call split, averaged over the measured runs.
fn languages(c: &mut Criterion) {
    use fixtures::languages::{Language, checkout};

    let rt = runtime();
    // The Python and JavaScript components take seconds to compile: keep
    // them in the tests' compile cache.
    let host = Host::builder()
        .route("*", FnSink(|_: &Intent| Ok::<_, CallError>(())))
        .unwrap()
        .cache_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasmtime-cache"))
        .build()
        .unwrap();
    let mut group = c.benchmark_group("languages");
    group.measurement_time(Duration::from_secs(5));
    let options = RunOptions::new().grants(
        Grants::new()
            .effects(["payments.charge", "orders.save", "email.send"])
            .unwrap(),
    );
    let mut plugins = vec![("rust", fixtures::CHECKOUT.into())];
    for language in Language::ALL {
        if language.installed() {
            plugins.push((language.key(), checkout(language).to_path_buf()));
        } else {
            println!("languages/{}: skipped, run tests/setup.sh", language.key());
        }
    }
    for (name, path) in plugins {
        let plugin = host.load_file(&path).unwrap();
        let split = std::sync::Mutex::new((Duration::ZERO, Duration::ZERO, 0u32));
        group.bench_function(format!("checkout_{name}"), |b| {
            b.to_async(&rt).iter(|| async {
                let outcome = plugin.run(options.clone()).await.unwrap();
                assert_eq!(outcome.dispatched().count(), 3);
                let mut split = split.lock().unwrap();
                split.0 += outcome.timings.instantiate;
                split.1 += outcome.timings.call;
                split.2 += 1;
            })
        });
        let (instantiate, call, runs) = *split.lock().unwrap();
        if runs > 0 {
            println!(
                "languages/checkout_{name}: instantiate {}, call {} (mean of {runs} runs)",
                human((instantiate / runs).as_nanos() as f64),
                human((call / runs).as_nanos() as f64),
            );
        }
    }
    group.finish();
}

/// Runs `plugin` `runs` times, `at_once` in flight: as one ends, the next
/// starts. Each must commit.
async fn in_flight(plugin: &escrow_host::Plugin, options: &RunOptions, runs: u64, at_once: u64) {
    let mut running = tokio::task::JoinSet::<escrow_host::Outcome>::new();
    for _ in 0..runs {
        if running.len() as u64 >= at_once {
            let outcome = running.join_next().await.unwrap().unwrap();
            assert_eq!(outcome.status(), escrow_host::Status::Committed);
        }
        let plugin = plugin.clone();
        let options = options.clone();
        running.spawn(async move { plugin.run(options).await.unwrap() });
    }
    while let Some(outcome) = running.join_next().await {
        assert_eq!(outcome.unwrap().status(), escrow_host::Status::Committed);
    }
}

/// Runs in flight at once in the concurrent outbox benchmarks: as one ends,
/// the next starts.
const CONCURRENT_RUNS: u64 = 32;

/// Runs committed in one iteration of the concurrent outbox benchmarks.
const RUNS_PER_ITERATION: u64 = 8 * CONCURRENT_RUNS;

/// Entries in the outbox whose stats are read.
const STATS_ROWS: u64 = 1_000_000;

/// Intents a worker delivers in one iteration of the delivery benchmark: a
/// backlog of ten claims, so that the figure is the worker's steady rate
/// (each claim's write-backs overlap the next claim), not the latency of
/// one claim and its last write-back.
const DELIVERED_PER_ITERATION: u64 = 10_000;

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Committed runs of 2 intents into a SQLite outbox and into Postgres, one
/// at a time and 32 at once (group commit), next to the same rows written
/// by a minimal batched client; and one worker delivering stored intents
/// from each store to an in-process sink, next to the same work from
/// memory.
fn outbox(c: &mut Criterion) {
    let rt = multi_thread_runtime();
    let host = host();
    let mut group = c.benchmark_group("outbox");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    let plugin = host.load_file(fixtures::BENCH).unwrap();
    let options = RunOptions::new()
        .grants(Grants::new().effects(["bench.*"]).unwrap())
        .input("2")
        .dispatch(Dispatch::Later);
    let dir = tempfile::tempdir().unwrap();
    let postgres = escrow_fixtures::postgres::PostgresServer::try_start();
    let sqlite_path = dir.path().join("bench.db");
    let mut stores = vec![(
        "sqlite",
        Outbox::new(SqliteOutbox::open(&sqlite_path).unwrap()),
    )];
    if let Some(server) = &postgres {
        let store = rt.block_on(PostgresOutbox::connect(&server.url())).unwrap();
        stores.push(("postgres", Outbox::new(store)));
    }
    for (name, outbox) in &stores {
        let plugin = plugin.with_outbox(Some(outbox.clone()));
        group.bench_function(format!("commit_{name}_1"), |b| {
            b.to_async(&rt).iter(|| async {
                let outcome = plugin.run(options.clone()).await.unwrap();
                assert_eq!(outcome.status(), escrow_host::Status::Committed);
            })
        });
        for (bench, dispatch) in [
            ("commit", Dispatch::Later),
            ("commit_and_deliver", Dispatch::Now),
        ] {
            let options = options.clone().dispatch(dispatch);
            let before = outbox.group_commits();
            group.bench_function(format!("{bench}_{name}_{CONCURRENT_RUNS}"), |b| {
                b.to_async(&rt)
                    .iter(|| in_flight(&plugin, &options, RUNS_PER_ITERATION, CONCURRENT_RUNS))
            });
            let after = outbox.group_commits();
            println!(
                "outbox/{bench}_{name}: {} writes in {} transactions while {CONCURRENT_RUNS} ran at once",
                after.writes - before.writes,
                after.transactions - before.transactions
            );
        }
    }
    // Baselines: the rows of 32 runs written by a minimal client, in one
    // multi-row INSERT (one transaction) a group.
    let mut sqlite = outbox_baseline::SqliteBatch::open(&sqlite_path);
    group.bench_function(format!("batched_insert_sqlite_{CONCURRENT_RUNS}"), |b| {
        b.iter(|| sqlite.insert_runs(CONCURRENT_RUNS))
    });
    if let Some(server) = &postgres {
        let client = rt.block_on(outbox_baseline::PostgresBatch::connect(&server.url()));
        group.bench_function(format!("batched_insert_postgres_{CONCURRENT_RUNS}"), |b| {
            b.to_async(&rt).iter(|| client.insert_runs(CONCURRENT_RUNS))
        });
    }

    // Stats of an outbox of a million entries, next to counting them.
    let stats_dir = tempfile::tempdir().unwrap();
    let stats_path = stats_dir.path().join("stats.db");
    let sqlite_stats = SqliteOutbox::open(&stats_path).unwrap();
    outbox_baseline::fill_sqlite(&stats_path, STATS_ROWS);
    group.bench_function("stats_sqlite_1m", |b| {
        b.to_async(&rt)
            .iter(|| async { sqlite_stats.stats().await.unwrap() })
    });
    let conn = rusqlite::Connection::open(&stats_path).unwrap();
    group.bench_function("full_count_sqlite_1m", |b| {
        b.iter(|| outbox_baseline::full_count_sqlite(&conn))
    });
    if let Some(server) = &postgres {
        let url = server.database("stats");
        let store = rt.block_on(PostgresOutbox::connect(&url)).unwrap();
        rt.block_on(outbox_baseline::fill_postgres(&url, STATS_ROWS));
        group.bench_function("stats_postgres_1m", |b| {
            b.to_async(&rt)
                .iter(|| async { store.stats().await.unwrap() })
        });
        let client = rt.block_on(outbox_baseline::PostgresBatch::connect(&url));
        group.bench_function("full_count_postgres_1m", |b| {
            b.to_async(&rt)
                .iter(|| outbox_baseline::full_count_postgres(&client))
        });
    }

    // One worker delivering stored intents to an in-process sink.
    let delivery_dir = tempfile::tempdir().unwrap();
    let mut delivery_stores = vec![(
        "sqlite",
        Outbox::new(SqliteOutbox::open(delivery_dir.path().join("d.db")).unwrap()),
    )];
    if let Some(server) = &postgres {
        let store = rt
            .block_on(PostgresOutbox::connect(&server.database("delivery")))
            .unwrap();
        delivery_stores.push(("postgres", Outbox::new(store)));
    }
    for (name, store) in &delivery_stores {
        let filler = plugin.with_outbox(Some(store.clone()));
        let worker = host.worker_for(store.clone());
        group.bench_function(format!("deliver_{name}"), |b| {
            b.to_async(&rt).iter_custom(|iterations| {
                let filler = filler.clone();
                let worker = worker.clone();
                let options = options.clone();
                async move {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iterations {
                        in_flight(
                            &filler,
                            &options,
                            DELIVERED_PER_ITERATION / 2,
                            CONCURRENT_RUNS,
                        )
                        .await;
                        let started = std::time::Instant::now();
                        let report = worker.run_once().await.unwrap();
                        spent += started.elapsed();
                        assert_eq!(report.delivered, DELIVERED_PER_ITERATION);
                    }
                    spent
                }
            })
        });
    }
    // Baseline: the same intents handed to the same sink from memory.
    let intents: Vec<Intent> = rt.block_on(async {
        let outcome = plugin
            .run(
                RunOptions::new()
                    .grants(Grants::new().effects(["bench.*"]).unwrap())
                    .input(DELIVERED_PER_ITERATION.to_string())
                    .limits(Limits {
                        max_intents: DELIVERED_PER_ITERATION as usize,
                        ..Limits::default()
                    })
                    .dispatch(Dispatch::Hold),
            )
            .await
            .unwrap();
        outcome.intents
    });
    group.bench_function("deliver_from_memory", |b| {
        b.to_async(&rt).iter(|| {
            let mut intents = intents.clone();
            let host = host.clone();
            async move {
                host.dispatch(&mut intents).await;
            }
        })
    });
    group.finish();
    drop(postgres);
}

/// The figure criterion prints for one benchmark of this run (its slope
/// estimate, or the mean where there is none), in nanoseconds, read from
/// criterion's report on disk.
fn mean_ns(group: &str, bench: &str) -> Option<f64> {
    let path = target_dir()
        .join("criterion")
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| estimates["mean"]["point_estimate"].as_f64())
}

/// Where cargo builds: criterion's reports and the seeds' environment live
/// there.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        Into::into,
    )
}

/// One line of the summary: a figure of ours and its baseline, each named
/// by criterion group and benchmark, and divided by the calls it made.
struct Row {
    name: &'static str,
    ours: (&'static str, &'static str, u64),
    baseline_name: &'static str,
    baseline: (&'static str, &'static str, u64),
}

fn summary() {
    let rows = [
        Row {
            name: "record one intent",
            ours: ("per_call", "record_intent", CALLS_PER_RUN),
            baseline_name: "bare host call",
            baseline: ("per_call", "bare_host_call", CALLS_PER_RUN),
        },
        Row {
            name: "invoke a no-op handler",
            ours: ("per_call", "invoke", CALLS_PER_RUN),
            baseline_name: "bare host call",
            baseline: ("per_call", "bare_invoke_call", CALLS_PER_RUN),
        },
        Row {
            name: "invoke a no-op handler",
            ours: ("per_call", "invoke", CALLS_PER_RUN),
            baseline_name: "bare async host call",
            baseline: ("per_call", "bare_async_invoke_call", CALLS_PER_RUN),
        },
        Row {
            name: "deferred typed call, record of 3 fields",
            ours: ("per_call", "typed_deferred", CALLS_PER_RUN),
            baseline_name: "enqueue, same JSON",
            baseline: ("per_call", "enqueue_same_payload", CALLS_PER_RUN),
        },
        Row {
            name: "deferred typed call, record of 3 fields",
            ours: ("per_call", "typed_deferred", CALLS_PER_RUN),
            baseline_name: "enqueue, JSON made in guest",
            baseline: ("per_call", "enqueue_serialized_in_guest", CALLS_PER_RUN),
        },
        Row {
            name: "deferred typed call, record of 3 fields",
            ours: ("per_call", "typed_deferred", CALLS_PER_RUN),
            baseline_name: "bare dynamic host call",
            baseline: ("per_call", "bare_typed_call", CALLS_PER_RUN),
        },
        Row {
            name: "immediate typed call, u32 answer",
            ours: ("per_call", "typed_immediate", CALLS_PER_RUN),
            baseline_name: "invoke, same JSON",
            baseline: ("per_call", "invoke_same_payload", CALLS_PER_RUN),
        },
        Row {
            name: "invoke through a closed breaker",
            ours: ("per_call", "invoke_through_breaker", CALLS_PER_RUN),
            baseline_name: "invoke without one",
            baseline: ("per_call", "invoke", CALLS_PER_RUN),
        },
        Row {
            name: "lock + release, memory",
            ours: ("locks", "memory", LOCKS_PER_RUN),
            baseline_name: "bare host call",
            baseline: ("per_call", "bare_host_call", CALLS_PER_RUN),
        },
        Row {
            name: "lock + release, Redis",
            ours: ("locks", "redis", LOCKS_PER_RUN),
            baseline_name: "raw Redis SET + DEL",
            baseline: ("locks", "raw_redis_set_del", LOCKS_PER_RUN),
        },
        Row {
            name: "whole run, 2 intents committed",
            ours: ("whole_run", "run_two_intents_committed", 1),
            baseline_name: "bare instantiation",
            baseline: ("whole_run", "bare_instantiation", 1),
        },
        Row {
            name: "whole run, 2 intents committed",
            ours: ("whole_run", "run_two_intents_committed", 1),
            baseline_name: "bare inst. + 2 calls",
            baseline: ("whole_run", "bare_instantiation_and_call", 1),
        },
        Row {
            name: "checkout in Python",
            ours: ("languages", "checkout_python", 1),
            baseline_name: "checkout in Rust",
            baseline: ("languages", "checkout_rust", 1),
        },
        Row {
            name: "checkout in JavaScript",
            ours: ("languages", "checkout_javascript", 1),
            baseline_name: "checkout in Rust",
            baseline: ("languages", "checkout_rust", 1),
        },
        Row {
            name: "run into SQLite, 1 at a time",
            ours: ("outbox", "commit_sqlite_1", 1),
            baseline_name: "in-memory sink",
            baseline: ("whole_run", "run_two_intents_committed", 1),
        },
        Row {
            name: "run into SQLite, 32 in flight",
            ours: ("outbox", "commit_sqlite_32", RUNS_PER_ITERATION),
            baseline_name: "batched INSERT of 32",
            baseline: ("outbox", "batched_insert_sqlite_32", CONCURRENT_RUNS),
        },
        Row {
            name: "run into SQLite and delivered by its host, 32 in flight",
            ours: ("outbox", "commit_and_deliver_sqlite_32", RUNS_PER_ITERATION),
            baseline_name: "committed for a worker",
            baseline: ("outbox", "commit_sqlite_32", RUNS_PER_ITERATION),
        },
        Row {
            name: "run into Postgres, 1 at a time",
            ours: ("outbox", "commit_postgres_1", 1),
            baseline_name: "in-memory sink",
            baseline: ("whole_run", "run_two_intents_committed", 1),
        },
        Row {
            name: "run into Postgres, 32 in flight",
            ours: ("outbox", "commit_postgres_32", RUNS_PER_ITERATION),
            baseline_name: "batched INSERT of 32",
            baseline: ("outbox", "batched_insert_postgres_32", CONCURRENT_RUNS),
        },
        Row {
            name: "run into Postgres and delivered by its host, 32 in flight",
            ours: (
                "outbox",
                "commit_and_deliver_postgres_32",
                RUNS_PER_ITERATION,
            ),
            baseline_name: "committed for a worker",
            baseline: ("outbox", "commit_postgres_32", RUNS_PER_ITERATION),
        },
        Row {
            name: "stats of 1M entries, SQLite",
            ours: ("outbox", "stats_sqlite_1m", 1),
            baseline_name: "counting every row",
            baseline: ("outbox", "full_count_sqlite_1m", 1),
        },
        Row {
            name: "stats of 1M entries, Postgres",
            ours: ("outbox", "stats_postgres_1m", 1),
            baseline_name: "counting every row",
            baseline: ("outbox", "full_count_postgres_1m", 1),
        },
        Row {
            name: "worker delivers one intent (SQLite)",
            ours: ("outbox", "deliver_sqlite", DELIVERED_PER_ITERATION),
            baseline_name: "from memory",
            baseline: ("outbox", "deliver_from_memory", DELIVERED_PER_ITERATION),
        },
        Row {
            name: "worker delivers one intent (Postgres)",
            ours: ("outbox", "deliver_postgres", DELIVERED_PER_ITERATION),
            baseline_name: "from memory",
            baseline: ("outbox", "deliver_from_memory", DELIVERED_PER_ITERATION),
        },
    ];
    println!("\nescrow, each figure next to its baseline from this run:");
    for row in rows {
        let figure = |(group, bench, calls): (&str, &str, u64)| {
            mean_ns(group, bench).map(|ns| ns / calls as f64)
        };
        match (figure(row.ours), figure(row.baseline)) {
            (Some(ours), Some(base)) => println!(
                "  {:<32} {:>10} ({:>8.0}/s)   {:<20} {:>10}   ratio {:.2}x",
                row.name,
                human(ours),
                1e9 / ours,
                row.baseline_name,
                human(base),
                ours / base
            ),
            _ => println!("  {:<32} (not measured in this run)", row.name),
        }
    }
    derived();
}

/// The figures that are not a ratio to a baseline: what committing adds to
/// an intent, and how throughput scales from one thread to two.
fn derived() {
    let per = |group: &str, bench: &str, n: u64| mean_ns(group, bench).map(|ns| ns / n as f64);
    if let (Some(commit), Some(drop)) = (
        per("per_call", "commit_intent", CALLS_PER_RUN),
        per("per_call", "record_intent", CALLS_PER_RUN),
    ) {
        println!(
            "  {:<32} {:>10}   (committed and delivered {}, dropped {})",
            "commit + deliver, over drop",
            human(commit - drop),
            human(commit),
            human(drop)
        );
    }
    for (name, bench) in [("runs", "runs"), ("bare instantiations", "instantiations")] {
        if let (Some(one), Some(two)) = (
            per("scaling", &format!("{bench}_1_threads"), SCALING_RUNS),
            per("scaling", &format!("{bench}_2_threads"), SCALING_RUNS),
        ) {
            println!(
                "  {:<32} {:>10.0}/s on 1 thread, {:.0}/s on 2: {:.2}x",
                format!("{name}, 2 threads vs 1"),
                1e9 / one,
                1e9 / two,
                one / two
            );
        }
    }
}

/// The seed libraries (airlock, purgatory) on the jobs escrow did above,
/// timed by `seeds.py` in a virtual environment made once under the target
/// directory from `requirements.txt`.
fn seeds() {
    let timed = match time_seeds() {
        Ok(timed) => timed,
        Err(error) => {
            println!("\nseed libraries not timed: {error}");
            return;
        }
    };
    let value = |name: &str| {
        timed
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let get = |name: &str| value(name)?.parse::<f64>().ok();
    println!(
        "\nthe seed libraries (CPython {}, unsandboxed) on the same jobs, this sitting:",
        value("python").unwrap_or("?")
    );
    if let (Some(scope), Some(run)) = (
        get("airlock_scope_two_intents"),
        mean_ns("whole_run", "run_two_intents_committed"),
    ) {
        println!(
            "  {:<32} {:>10}   airlock scope        {:>10}   ratio {:.2}x",
            "whole run, 2 intents committed",
            human(run),
            human(scope),
            run / scope
        );
    }
    let per = |bench: &str| mean_ns("per_call", bench).map(|ns| ns / CALLS_PER_RUN as f64);
    if let (Some(through), Some(bare), Some(guarded), Some(invoke)) = (
        get("purgatory_breaker_call"),
        get("purgatory_bare_call"),
        per("invoke_through_breaker"),
        per("invoke"),
    ) {
        println!(
            "  {:<32} {:>10}   purgatory adds       {:>10}   ratio {:.2}x",
            "a closed breaker adds",
            human(guarded - invoke),
            human(through - bare),
            (guarded - invoke) / (through - bare)
        );
    }
}

/// Runs `seeds.py`; each line it prints is `name value`.
fn time_seeds() -> Result<Vec<(String, String)>, String> {
    let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    let venv = target_dir().join("bench-seeds");
    let python = venv.join("bin/python");
    let requirements =
        std::fs::read_to_string(benches.join("requirements.txt")).map_err(|e| e.to_string())?;
    let stamp = venv.join("requirements.txt");
    let run = |command: &mut std::process::Command| -> Result<String, String> {
        let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{command:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(requirements.as_str()) {
        run(std::process::Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv))?;
        run(std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(benches.join("requirements.txt")))?;
        std::fs::write(&stamp, &requirements).map_err(|e| e.to_string())?;
    }
    let printed = run(std::process::Command::new(&python).arg(benches.join("seeds.py")))?;
    Ok(printed
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect())
}

fn human(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    per_call(&mut criterion);
    locks(&mut criterion);
    whole_run(&mut criterion);
    scaling(&mut criterion);
    languages(&mut criterion);
    outbox(&mut criterion);
    criterion.final_summary();
    summary();
    seeds();
    memory_in_flight();
}
