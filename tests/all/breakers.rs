//! Circuit breakers: every transition, on a clock moved by hand, against
//! both stores (in memory, and a real `redis-server` per test).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use escrow_host::backends::{
    Admission, BreakerStore, CallResult, MemoryBreakers, RedisBreakers, Transition,
};
use escrow_host::breakers::{
    BreakerConfig, BreakerEvent, BreakerState, Breakers, EventKind, FailureRate, Forced,
};
use escrow_host::clock::{Clock, ManualClock};
use escrow_host::handlers::{AsyncFnHandler, FnHandler, Handlers};
use escrow_host::sinks::{FnSink, Sinks};
use escrow_host::{BreakerVerdict, CallError, Delivery, Fate, Grants, Intent, Plugin, RunOptions};
use escrow_tests::fixtures::redis::RedisServer;
use escrow_tests::{results, run_steps, scripted};
use serde_json::{Value, json};

const RECOVERY: Duration = Duration::from_secs(1);

/// A breaker store for one test, and what keeps it alive.
pub struct Store {
    store: Arc<dyn BreakerStore>,
    redis: Option<RedisServer>,
}

impl Store {
    async fn memory() -> Self {
        Self {
            store: Arc::new(MemoryBreakers::new()),
            redis: None,
        }
    }

    async fn redis() -> Self {
        let server = RedisServer::start();
        let store = RedisBreakers::connect(&server.url()).await.unwrap();
        Self {
            store: Arc::new(store),
            redis: Some(server),
        }
    }

    /// The store as another host sees it.
    async fn other_host(&self) -> Arc<dyn BreakerStore> {
        match &self.redis {
            Some(server) => Arc::new(RedisBreakers::connect(&server.url()).await.unwrap()),
            None => Arc::clone(&self.store),
        }
    }
}

fn config() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 3,
        recovery: RECOVERY,
        half_open_trials: 1,
        ignore: vec!["*not found*".into()],
        ..BreakerConfig::default()
    }
}

fn breakers(
    store: Arc<dyn BreakerStore>,
    clock: &ManualClock,
    config: BreakerConfig,
) -> Arc<Breakers> {
    let mut breakers = Breakers::new(store);
    breakers.define("upstream", config).unwrap();
    breakers.clock(Arc::new(clock.clone()));
    Arc::new(breakers)
}

/// `upstream.call` answers `"ok"`, fails `boom` for the payload `"fail"`
/// and `not found` for `"missing"`; `calls` counts the calls it got.
fn upstream(calls: &Arc<AtomicUsize>) -> Handlers {
    let calls = Arc::clone(calls);
    let mut handlers = Handlers::new();
    handlers
        .action(
            "upstream.call",
            FnHandler(move |payload: &[u8]| {
                calls.fetch_add(1, Ordering::SeqCst);
                match payload {
                    b"\"fail\"" => Err(CallError::from("boom")),
                    b"\"missing\"" => Err(CallError::from("record not found")),
                    _ => Ok(b"\"ok\"".to_vec()),
                }
            }),
        )
        .unwrap();
    handlers
}

fn call(payload: &str) -> Value {
    json!({ "breaker": "upstream", "invoke": "upstream.call", "payload": payload })
}

fn options() -> RunOptions {
    RunOptions::new().grants(
        Grants::new()
            .effects(["upstream.*", "ledger.*"])
            .unwrap()
            .breakers(["upstream"])
            .unwrap(),
    )
}

/// A plugin, with its breakers, clock and a counter of handler calls.
struct Rig {
    plugin: Plugin,
    breakers: Arc<Breakers>,
    clock: ManualClock,
    calls: Arc<AtomicUsize>,
}

fn rig(store: Arc<dyn BreakerStore>, config: BreakerConfig) -> Rig {
    let clock = ManualClock::new(1_000_000);
    let breakers = breakers(store, &clock, config);
    let calls = Arc::new(AtomicUsize::new(0));
    let plugin = scripted()
        .with_breakers(Arc::clone(&breakers))
        .with_handlers(upstream(&calls));
    Rig {
        plugin,
        breakers,
        clock,
        calls,
    }
}

impl Rig {
    async fn steps(&self, steps: Value) -> Vec<Value> {
        results(&run_steps(&self.plugin, steps, options()).await)
    }

    async fn trip(&self) {
        self.steps(json!([call("fail"), call("fail"), call("fail")]))
            .await;
        assert_eq!(
            self.breakers.state("upstream").await.unwrap(),
            BreakerState::Open
        );
    }
}

fn transition(from: BreakerState, to: BreakerState) -> Transition {
    Transition { from, to }
}

mod suite {
    use super::*;

    pub async fn it_opens_after_the_threshold_of_failures_in_a_row(store: Store) {
        let rig = rig(store.store, config());
        let outcome = run_steps(
            &rig.plugin,
            json!([call("fail"), call("fail"), call("fail")]),
            options(),
        )
        .await;

        assert_eq!(outcome.breakers[1].transitions, []);
        assert_eq!(
            outcome.breakers[2].transitions,
            [transition(BreakerState::Closed, BreakerState::Open)]
        );
        assert_eq!(
            outcome.breakers[0].verdict,
            BreakerVerdict::Allowed {
                trial: false,
                counted: CallResult::Failure
            }
        );
        assert_eq!(
            rig.breakers.state("upstream").await.unwrap(),
            BreakerState::Open
        );
    }

    pub async fn an_open_breaker_fails_fast_without_calling_the_handler(store: Store) {
        let rig = rig(store.store, config());
        rig.trip().await;
        rig.clock.advance(Duration::from_millis(400));
        let outcome = run_steps(&rig.plugin, json!([call("ok")]), options()).await;

        assert_eq!(results(&outcome)[0], json!({ "circuit_open": 600 }));
        assert_eq!(
            outcome.breakers[0].verdict,
            BreakerVerdict::Rejected {
                retry_after_ms: 600
            }
        );
        assert_eq!(
            rig.calls.load(Ordering::SeqCst),
            3,
            "only the three failures reached the handler"
        );
        assert!(outcome.invocations.is_empty());
    }

    pub async fn a_success_resets_the_count_of_failures_in_a_row(store: Store) {
        let rig = rig(store.store, config());
        rig.steps(json!([
            call("fail"),
            call("fail"),
            call("ok"),
            call("fail"),
            call("fail")
        ]))
        .await;
        assert_eq!(
            rig.breakers.state("upstream").await.unwrap(),
            BreakerState::Closed
        );
    }

    pub async fn errors_matching_an_ignore_pattern_do_not_count(store: Store) {
        let rig = rig(store.store, config());
        let results = rig
            .steps(json!([
                call("missing"),
                call("missing"),
                call("missing"),
                call("missing")
            ]))
            .await;
        assert_eq!(results[3], json!({ "failed": "record not found" }));
        assert_eq!(
            rig.breakers.state("upstream").await.unwrap(),
            BreakerState::Closed
        );
    }

    pub async fn after_the_recovery_time_a_trial_goes_through_and_success_closes_it(store: Store) {
        let rig = rig(store.store, config());
        rig.trip().await;
        rig.clock.advance(RECOVERY);
        assert_eq!(
            rig.breakers.state("upstream").await.unwrap(),
            BreakerState::HalfOpen
        );
        let outcome = run_steps(&rig.plugin, json!([call("ok"), call("ok")]), options()).await;

        assert_eq!(
            outcome.breakers[0].transitions,
            [
                transition(BreakerState::Open, BreakerState::HalfOpen),
                transition(BreakerState::HalfOpen, BreakerState::Closed)
            ]
        );
        assert!(matches!(
            outcome.breakers[0].verdict,
            BreakerVerdict::Allowed { trial: true, .. }
        ));
        assert!(matches!(
            outcome.breakers[1].verdict,
            BreakerVerdict::Allowed { trial: false, .. }
        ));
        assert_eq!(
            rig.breakers.state("upstream").await.unwrap(),
            BreakerState::Closed
        );
    }

    pub async fn a_failed_trial_opens_it_again_for_another_recovery_time(store: Store) {
        let rig = rig(store.store, config());
        rig.trip().await;
        rig.clock.advance(RECOVERY);
        let outcome = run_steps(&rig.plugin, json!([call("fail"), call("ok")]), options()).await;

        assert_eq!(
            outcome.breakers[0].transitions,
            [
                transition(BreakerState::Open, BreakerState::HalfOpen),
                transition(BreakerState::HalfOpen, BreakerState::Open)
            ]
        );
        assert_eq!(results(&outcome)[1], json!({ "circuit_open": 1000 }));
    }

    pub async fn a_failure_rate_over_the_window_opens_it(store: Store) {
        let config = BreakerConfig {
            failure_threshold: 100,
            failure_rate: Some(FailureRate {
                ratio: 0.5,
                window: Duration::from_secs(10),
                min_calls: 4,
            }),
            ..config()
        };
        let rig = rig(store.store, config);
        let outcome = run_steps(
            &rig.plugin,
            json!([call("fail"), call("ok"), call("fail")]),
            options(),
        )
        .await;
        assert!(
            outcome.breakers.iter().all(|d| d.transitions.is_empty()),
            "fewer than min_calls"
        );

        // Calls older than the window no longer count.
        rig.clock.advance(Duration::from_secs(11));
        rig.steps(json!([call("ok"), call("ok"), call("fail")]))
            .await;
        assert_eq!(
            rig.breakers.state("upstream").await.unwrap(),
            BreakerState::Closed,
            "1 of 3 in the window"
        );
        let outcome = run_steps(&rig.plugin, json!([call("fail")]), options()).await;
        assert_eq!(
            outcome.breakers[0].transitions,
            [transition(BreakerState::Closed, BreakerState::Open)],
            "2 of 4 in the window"
        );
    }

    pub async fn half_open_lets_only_the_configured_trials_through_concurrent_runs_and_hosts(
        store: Store,
    ) {
        let other_host = store.other_host().await;
        let clock = ManualClock::new(1_000_000);
        let config = BreakerConfig {
            half_open_trials: 2,
            ..config()
        };
        let hosts = [
            breakers(store.store, &clock, config.clone()),
            breakers(other_host, &clock, config),
        ];
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = {
            let calls = Arc::clone(&calls);
            let mut handlers = upstream(&Arc::new(AtomicUsize::new(0)));
            handlers
                .action(
                    "upstream.slow",
                    AsyncFnHandler(move |_| {
                        let calls = Arc::clone(&calls);
                        async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // Long enough that every run asks while the
                            // trials still run, even on a loaded machine.
                            tokio::time::sleep(Duration::from_millis(1000)).await;
                            Ok::<_, CallError>(Vec::new())
                        }
                    }),
                )
                .unwrap();
            handlers
        };
        let plugins: Vec<Plugin> = hosts
            .iter()
            .map(|b| {
                scripted()
                    .with_breakers(Arc::clone(b))
                    .with_handlers(slow.clone())
            })
            .collect();
        run_steps(
            &plugins[0],
            json!([call("fail"), call("fail"), call("fail")]),
            options(),
        )
        .await;
        clock.advance(RECOVERY);

        let slow_call = json!([{ "breaker": "upstream", "invoke": "upstream.slow", "payload": 1 }]);
        let runs: Vec<_> = (0..8)
            .map(|i| {
                let plugin = plugins[i % 2].clone();
                let steps = slow_call.clone();
                tokio::spawn(async move {
                    results(&run_steps(&plugin, steps, options()).await)[0].clone()
                })
            })
            .collect();
        let mut answered = 0;
        for run in runs {
            match run.await.unwrap() {
                r if r.get("answer").is_some() => answered += 1,
                r => assert_eq!(r, json!({ "circuit_open": 0 })),
            }
        }
        assert_eq!(answered, 2, "exactly the configured trials");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            hosts[1].state("upstream").await.unwrap(),
            BreakerState::Closed
        );
    }

    pub async fn state_is_shared_by_the_runs_of_a_host_and_by_hosts_on_one_store(store: Store) {
        let other = store.other_host().await;
        let rig = rig(store.store, config());
        rig.trip().await;
        let second_host = breakers(other, &rig.clock, config());
        let plugin = scripted().with_breakers(Arc::clone(&second_host));
        let results =
            results(&run_steps(&plugin, json!([{ "breaker_state": "upstream" }]), options()).await);
        assert_eq!(results[0], "open");
    }

    pub async fn every_state_change_and_rejection_is_an_event_in_order(store: Store) {
        let rig = rig(store.store, config());
        let mut events = rig.breakers.subscribe();
        rig.trip().await;
        rig.steps(json!([call("ok")])).await;
        rig.clock.advance(RECOVERY);
        rig.steps(json!([call("ok")])).await;

        let mut kinds = Vec::new();
        while let Ok(BreakerEvent { breaker, kind, .. }) = events.try_recv() {
            assert_eq!(breaker, "upstream");
            kinds.push(kind);
        }
        assert_eq!(
            kinds,
            [
                EventKind::StateChanged {
                    from: BreakerState::Closed,
                    to: BreakerState::Open
                },
                EventKind::Rejected {
                    retry_after_ms: 1000
                },
                EventKind::StateChanged {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen
                },
                EventKind::StateChanged {
                    from: BreakerState::HalfOpen,
                    to: BreakerState::Closed
                },
            ]
        );
    }

    pub async fn a_breaker_not_granted_or_not_defined_is_refused(store: Store) {
        let rig = rig(store.store, config());
        let ungranted = RunOptions::new().grants(Grants::new().effects(["*"]).unwrap());
        let outcome = run_steps(
            &rig.plugin,
            json!([call("ok"), { "breaker_state": "nope" }]),
            ungranted,
        )
        .await;
        assert_eq!(results(&outcome)[0]["refused"]["kind"], "not-granted");

        let granted = RunOptions::new().grants(Grants::new().breakers(["*"]).unwrap());
        let outcome = run_steps(&rig.plugin, json!([{ "breaker_state": "nope" }]), granted).await;
        let refused = &results(&outcome)[0]["refused"];
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("no breaker `nope` is defined"),
            "{refused}"
        );
        assert_eq!(rig.calls.load(Ordering::SeqCst), 0);
    }

    pub async fn a_trial_that_never_reports_counts_as_failed_after_its_lease(store: Store) {
        let rig = rig(Arc::clone(&store.store), config());
        rig.trip().await;
        rig.clock.advance(RECOVERY);
        // Another host lets a trial through, and dies before it reports.
        let dead_host = store.other_host().await;
        let admitted = dead_host
            .admit("upstream", &config(), rig.clock.now_ms())
            .await
            .unwrap();
        assert!(matches!(admitted, Admission::Allowed { trial: true, .. }));
        let mut events = rig.breakers.subscribe();
        assert_eq!(
            rig.steps(json!([call("ok")])).await[0],
            json!({ "circuit_open": 0 })
        );

        rig.clock.advance(config().trial_lease);
        let results = rig.steps(json!([call("ok")])).await;
        assert_eq!(
            results[0],
            json!({ "circuit_open": RECOVERY.as_millis() as u64 }),
            "the lapsed trial failed: open again for a recovery time"
        );
        let kinds: Vec<EventKind> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&EventKind::TrialLapsed), "{kinds:?}");
        assert!(kinds.contains(&EventKind::StateChanged {
            from: BreakerState::HalfOpen,
            to: BreakerState::Open
        }));

        rig.clock.advance(RECOVERY);
        rig.steps(json!([call("ok")])).await;
        assert_eq!(
            rig.breakers.state("upstream").await.unwrap(),
            BreakerState::Closed,
            "a later trial closes it"
        );
    }

    pub async fn a_run_dropped_during_its_trial_reports_the_trial_failed(store: Store) {
        let clock = ManualClock::new(1_000_000);
        let breakers = breakers(store.store, &clock, config());
        let mut handlers = Handlers::new();
        handlers
            .action(
                "upstream.call",
                AsyncFnHandler(|payload: Vec<u8>| async move {
                    if payload == b"\"fail\"" {
                        return Err(CallError::from("boom"));
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, CallError>(b"\"ok\"".to_vec())
                }),
            )
            .unwrap();
        let plugin = scripted()
            .with_breakers(Arc::clone(&breakers))
            .with_handlers(handlers);
        run_steps(
            &plugin,
            json!([call("fail"), call("fail"), call("fail")]),
            options(),
        )
        .await;
        clock.advance(RECOVERY);
        let input = serde_json::to_vec(&json!({ "steps": [call("slow")] })).unwrap();
        let dropped = tokio::time::timeout(
            Duration::from_millis(200),
            plugin.run(options().input(input)),
        )
        .await;
        assert!(dropped.is_err(), "the embedder gave up on the run");
        let waited = std::time::Instant::now();
        while breakers.state("upstream").await.unwrap() != BreakerState::Open {
            assert!(
                waited.elapsed() < Duration::from_secs(5),
                "the dropped trial was never reported"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn an_operator_isolates_a_breaker_until_it_is_reset(store: Store) {
        let rig = rig(store.store, config());
        let mut events = rig.breakers.subscribe();
        rig.breakers.force("upstream", Forced::Open).await.unwrap();
        rig.clock.advance(RECOVERY * 100);
        assert!(
            rig.steps(json!([call("ok")])).await[0]["circuit_open"].is_u64(),
            "isolated: no trial after the recovery time"
        );
        assert_eq!(rig.calls.load(Ordering::SeqCst), 0);

        rig.breakers
            .force("upstream", Forced::Closed)
            .await
            .unwrap();
        assert_eq!(
            rig.steps(json!([call("ok")])).await[0]["answer"],
            json!(b"\"ok\"".to_vec())
        );
        let kinds: Vec<EventKind> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| e.kind)
            .collect();
        assert!(
            kinds.contains(&EventKind::Forced(BreakerState::Open)),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&EventKind::Forced(BreakerState::Closed)),
            "{kinds:?}"
        );
    }

    pub async fn a_sink_behind_an_open_breaker_is_not_attempted(store: Store) {
        let clock = ManualClock::new(1_000_000);
        let breakers = breakers(store.store, &clock, config());
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&attempts);
        let mut sinks = Sinks::new();
        sinks
            .route_through(
                "ledger.*",
                FnSink(move |_: &Intent| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(CallError::from("the ledger is down"))
                }),
                Arc::clone(&breakers),
                "upstream",
            )
            .unwrap();
        let steps: Vec<Value> = (0..5)
            .map(|i| json!({ "defer": "ledger.write", "payload": i }))
            .collect();
        let outcome = run_steps(&scripted().with_sinks(sinks), json!(steps), options()).await;

        let deliveries: Vec<&Fate> = outcome.intents.iter().map(|i| &i.fate).collect();
        assert!(matches!(
            deliveries[2],
            Fate::Dispatched(Delivery::Failed(_))
        ));
        assert!(
            matches!(deliveries[3], Fate::Dispatched(Delivery::NotAttempted(why)) if why.contains("breaker `upstream` is open")),
            "{deliveries:?}"
        );
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            3,
            "not attempted once the breaker opened"
        );
        assert_eq!(outcome.undelivered().count(), 5);
    }
}

macro_rules! on_each_store {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::suite::$test(super::Store::memory().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::suite::$test(super::Store::redis().await).await;
                }
            )*
        }
    };
}

on_each_store!(
    it_opens_after_the_threshold_of_failures_in_a_row,
    an_open_breaker_fails_fast_without_calling_the_handler,
    a_success_resets_the_count_of_failures_in_a_row,
    errors_matching_an_ignore_pattern_do_not_count,
    after_the_recovery_time_a_trial_goes_through_and_success_closes_it,
    a_failed_trial_opens_it_again_for_another_recovery_time,
    a_failure_rate_over_the_window_opens_it,
    half_open_lets_only_the_configured_trials_through_concurrent_runs_and_hosts,
    state_is_shared_by_the_runs_of_a_host_and_by_hosts_on_one_store,
    every_state_change_and_rejection_is_an_event_in_order,
    a_breaker_not_granted_or_not_defined_is_refused,
    a_sink_behind_an_open_breaker_is_not_attempted,
    a_trial_that_never_reports_counts_as_failed_after_its_lease,
    a_run_dropped_during_its_trial_reports_the_trial_failed,
    an_operator_isolates_a_breaker_until_it_is_reset,
);

#[tokio::test]
async fn an_unreachable_redis_lets_calls_through_and_says_so() {
    let server = RedisServer::start();
    let store = RedisBreakers::connect(&server.url()).await.unwrap();
    drop(server);
    let rig = rig(Arc::new(store), config());
    let mut events = rig.breakers.subscribe();
    let results = rig.steps(json!([call("ok")])).await;

    assert_eq!(
        results[0]["answer"],
        json!(b"\"ok\"".to_vec()),
        "fail open: the call went through"
    );
    assert!(matches!(
        events.try_recv().unwrap().kind,
        EventKind::StoreUnavailable(_)
    ));
}
