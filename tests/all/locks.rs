//! Locks: all or nothing, globally ordered, released on drop and whenever a
//! run ends, fencing tokens that only grow. Every test runs against both
//! backends: the in-memory one and Redis (a real `redis-server` per test).

use std::sync::Arc;
use std::time::Duration;

use escrow_host::backends::{LockBackend, LockError, MemoryLocks, RedisLocks};
use escrow_host::limits::Limit;
use escrow_host::{Failure, Grants, Limits, Plugin, RunOptions, Status};
use escrow_tests::fixtures::redis::RedisServer;
use escrow_tests::{Recorder, all_effects, results, run_steps, scripted};
use serde_json::{Value, json};

/// A lock backend for one test, and what keeps it alive.
pub struct Locks {
    backend: Arc<dyn LockBackend>,
    redis: Option<RedisServer>,
}

impl Locks {
    async fn memory() -> Self {
        Self {
            backend: Arc::new(MemoryLocks::new()),
            redis: None,
        }
    }

    async fn redis() -> Self {
        let server = RedisServer::start();
        let backend = RedisLocks::connect(&server.url()).await.unwrap();
        Self {
            backend: Arc::new(backend),
            redis: Some(server),
        }
    }

    /// The backend as another host sees it: the same table in memory, a new
    /// connection to the same server with Redis.
    async fn other_host(&self) -> Arc<dyn LockBackend> {
        match &self.redis {
            Some(server) => Arc::new(RedisLocks::connect(&server.url()).await.unwrap()),
            None => Arc::clone(&self.backend),
        }
    }

    fn plugin(&self) -> Plugin {
        scripted().with_locks(Arc::clone(&self.backend))
    }
}

fn options() -> RunOptions {
    RunOptions::new().grants(all_effects().locks(["*"]).unwrap())
}

fn lock(keys: &[&str], name: &str) -> Value {
    json!({ "lock": keys, "as": name, "timeout_ms": 100 })
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|k| (*k).to_owned()).collect()
}

/// Whether another holder can take `key` right now.
async fn free(locks: &Locks, key: &str) -> bool {
    match locks.backend.acquire(&keys(&[key]), Duration::ZERO).await {
        Ok(lease) => {
            locks.backend.release(lease).await.unwrap();
            true
        }
        Err(LockError::Timeout) => false,
        Err(other) => panic!("{other}"),
    }
}

mod suite {
    use super::*;

    pub async fn keys_are_sorted_and_deduplicated_and_taken_together(locks: Locks) {
        let outcome = run_steps(
            &locks.plugin(),
            json!([lock(&["b", "a", "b"], "g")]),
            options(),
        )
        .await;

        assert_eq!(results(&outcome)[0]["locked"], json!(["a", "b"]));
        assert_eq!(outcome.locks[0].keys, ["a", "b"]);
    }

    pub async fn a_request_takes_all_its_keys_or_none(locks: Locks) {
        let held = locks
            .backend
            .acquire(&keys(&["b"]), Duration::ZERO)
            .await
            .unwrap();
        let outcome = run_steps(&locks.plugin(), json!([lock(&["a", "b"], "g")]), options()).await;

        assert_eq!(results(&outcome)[0]["lock_error"]["kind"], "timeout");
        assert!(
            free(&locks, "a").await,
            "`a` was not kept while `b` was waited for"
        );
        locks.backend.release(held).await.unwrap();
    }

    pub async fn asking_for_a_key_ordered_before_one_held_is_refused_at_once(locks: Locks) {
        let steps = json!([
            lock(&["m"], "m"),
            lock(&["a"], "a"),
            lock(&["m"], "again"),
            lock(&["z"], "z")
        ]);
        let outcome = run_steps(&locks.plugin(), steps, options()).await;

        let results = results(&outcome);
        assert_eq!(results[1]["lock_error"]["kind"], "would-deadlock");
        assert_eq!(
            results[2]["lock_error"]["kind"], "would-deadlock",
            "a held key cannot be taken twice"
        );
        assert_eq!(results[3]["locked"], json!(["z"]));
        assert_eq!(outcome.status(), Status::Committed);
    }

    pub async fn dropping_a_guard_releases_its_keys_at_once(locks: Locks) {
        let steps = json!([lock(&["k"], "g"), { "unlock": "g" }, lock(&["a"], "after")]);
        let outcome = run_steps(&locks.plugin(), steps, options()).await;

        assert_eq!(
            results(&outcome)[2]["locked"],
            json!(["a"]),
            "after the drop, an earlier key is fine"
        );
    }

    pub async fn locks_are_released_however_the_run_ends(locks: Locks) {
        let endings = [
            json!({ "sleep_ms": 1 }),
            json!({ "fail": "err" }),
            json!("panic"),
            json!("spin"),
            // A payload above the limit: the run fails on a limit.
            json!({ "defer_size": "a.big", "bytes": 2 << 20 }),
        ];
        for ending in endings {
            let limits = Limits {
                deadline: Duration::from_millis(300),
                ..Limits::default()
            };
            let steps = json!([lock(&["k"], "g"), { "keep": "g" }, ending]);
            let outcome = run_steps(&locks.plugin(), steps, options().limits(limits)).await;

            assert!(!outcome.locks.is_empty(), "{ending}");
            assert!(
                free(&locks, "k").await,
                "{ending}: released when the run ended"
            );
        }
    }

    pub async fn kept_locks_are_held_until_the_committed_intents_were_dispatched(locks: Locks) {
        let observed = Arc::new(std::sync::Mutex::new(None));
        let (seen, backend) = (Arc::clone(&observed), Arc::clone(&locks.backend));
        let mut sinks = escrow_host::sinks::Sinks::new();
        sinks
            .route(
                "*",
                escrow_host::sinks::AsyncFnSink(move |_| {
                    let (seen, backend) = (Arc::clone(&seen), Arc::clone(&backend));
                    async move {
                        let taken = backend.acquire(&keys(&["k"]), Duration::ZERO).await;
                        *seen.lock().unwrap() = Some(taken.is_ok());
                        Ok::<_, escrow_host::CallError>(())
                    }
                }),
            )
            .unwrap();
        let steps =
            json!([lock(&["k"], "g"), { "defer": "ledger.write", "payload": 1 }, { "keep": "g" }]);
        let outcome = run_steps(&locks.plugin().with_sinks(sinks), steps, options()).await;

        assert_eq!(outcome.status(), Status::Committed);
        assert_eq!(
            *observed.lock().unwrap(),
            Some(false),
            "`k` was still held during dispatch"
        );
        assert!(free(&locks, "k").await, "and released after it");
    }

    pub async fn a_lock_not_free_in_time_times_out_and_the_run_goes_on(locks: Locks) {
        let held = locks
            .backend
            .acquire(&keys(&["k"]), Duration::ZERO)
            .await
            .unwrap();
        let steps = json!([{ "lock": ["k"], "as": "g", "timeout_ms": 50 }, { "defer": "a.after", "payload": 1 }]);
        let started = std::time::Instant::now();
        let outcome = run_steps(&locks.plugin(), steps, options()).await;

        assert_eq!(results(&outcome)[0]["lock_error"]["kind"], "timeout");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(outcome.status(), Status::Committed);
        locks.backend.release(held).await.unwrap();
    }

    pub async fn a_key_outside_the_grants_is_refused(locks: Locks) {
        let options = RunOptions::new().grants(Grants::new().locks(["account:*"]).unwrap());
        let steps = json!([
            lock(&["account:1", "user:1"], "g"),
            lock(&["account:1"], "ok")
        ]);
        let outcome = run_steps(&locks.plugin(), steps, options).await;

        let results = results(&outcome);
        assert_eq!(results[0]["lock_error"]["refusal"]["kind"], "not-granted");
        assert_eq!(results[1]["locked"], json!(["account:1"]));
    }

    pub async fn holding_more_keys_than_the_limit_is_refused_and_fails_the_run(locks: Locks) {
        let limits = Limits {
            max_locks: 2,
            ..Limits::default()
        };
        let steps = json!([lock(&["a", "b"], "ab"), lock(&["c"], "c")]);
        let outcome = run_steps(&locks.plugin(), steps, options().limits(limits)).await;

        assert_eq!(outcome.result, Err(Failure::Limit(Limit::Locks)));
        assert!(free(&locks, "a").await);
    }

    pub async fn fencing_tokens_grow_with_every_acquisition_across_hosts(locks: Locks) {
        let other = locks.scripted_on(locks.other_host().await);
        let mut tokens = Vec::new();
        for plugin in [locks.plugin(), other.clone(), locks.plugin(), other] {
            let outcome = run_steps(&plugin, json!([lock(&["k"], "g")]), options()).await;
            tokens.push(outcome.locks[0].token().unwrap());
        }
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    }

    pub async fn intents_carry_the_fences_of_the_locks_held_when_recorded(locks: Locks) {
        let steps = json!([
            lock(&["k"], "g"),
            { "defer": "a.locked", "payload": 1 },
            { "unlock": "g" },
            { "defer": "b.unlocked", "payload": 2 },
            // Locks taken and released with nothing recorded in between
            // leave no trace in later fences.
            lock(&["m"], "h"),
            { "unlock": "h" },
            lock(&["n"], "i"),
            { "defer": "c.relocked", "payload": 3 },
        ]);
        let outcome = run_steps(&locks.plugin(), steps, options()).await;

        let token = outcome.locks[0].token().unwrap();
        assert_eq!(outcome.intents[0].fences.len(), 1);
        assert_eq!(
            (
                outcome.intents[0].fences[0].key.as_str(),
                outcome.intents[0].fences[0].token
            ),
            ("k", token)
        );
        assert!(outcome.intents[1].fences.is_empty());
        let relocked = outcome.locks[2].token().unwrap();
        let fences: Vec<_> = outcome.intents[2]
            .fences
            .iter()
            .map(|f| (f.key.as_str(), f.token))
            .collect();
        assert_eq!(fences, [("n", relocked)]);
    }

    pub async fn two_hosts_exclude_each_other(locks: Locks) {
        let other = locks.scripted_on(locks.other_host().await);
        let holder = {
            let plugin = locks.plugin();
            tokio::spawn(async move {
                run_steps(
                    &plugin,
                    json!([lock(&["k"], "g"), { "sleep_ms": 1500 }]),
                    options(),
                )
                .await
            })
        };
        // Ample time for the holder to take the key, even on a loaded machine.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let blocked = run_steps(
            &other,
            json!([{ "lock": ["k"], "as": "g", "timeout_ms": 50 }]),
            options(),
        )
        .await;
        assert_eq!(results(&blocked)[0]["lock_error"]["kind"], "timeout");

        holder.await.unwrap();
        let after = run_steps(&other, json!([lock(&["k"], "g")]), options()).await;
        assert_eq!(results(&after)[0]["locked"], json!(["k"]));
    }

    pub async fn concurrent_transfers_in_both_directions_finish_without_deadlock_and_keep_the_total(
        locks: Locks,
    ) {
        let bank = escrow_tests::Bank::new(&[("a", 1000), ("b", 1000), ("c", 1000)]);
        let transfer = escrow_tests::plugin(escrow_tests::fixtures::TRANSFER)
            .with_locks(Arc::clone(&locks.backend))
            .with_handlers(bank.handlers())
            .with_sinks(Recorder::new().sinks());
        let pairs = [
            ("a", "b"),
            ("b", "a"),
            ("b", "c"),
            ("c", "b"),
            ("c", "a"),
            ("a", "c"),
        ];
        let runs: Vec<_> = (0..48)
            .map(|i| {
                let (from, to) = pairs[i % pairs.len()];
                let transfer = transfer.clone();
                let input = json!({ "from": from, "to": to, "amount": 1 + i % 5 }).to_string();
                let options = RunOptions::new()
                    .grants(
                        Grants::new()
                            .effects(["accounts.*", "ledger.*"])
                            .unwrap()
                            .locks(["account:*"])
                            .unwrap(),
                    )
                    .input(input);
                tokio::spawn(async move { transfer.run(options).await.unwrap() })
            })
            .collect();
        for run in runs {
            let outcome = run.await.unwrap();
            assert_eq!(outcome.status(), Status::Committed, "{:?}", outcome.result);
        }
        assert_eq!(bank.total(), 3000, "no money was created or lost");
        assert!(bank.balances().values().all(|b| *b >= 0));
    }
}

impl Locks {
    fn scripted_on(&self, backend: Arc<dyn LockBackend>) -> Plugin {
        scripted().with_locks(backend)
    }
}

macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::suite::$test(super::Locks::memory().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::suite::$test(super::Locks::redis().await).await;
                }
            )*
        }
    };
}

on_each_backend!(
    keys_are_sorted_and_deduplicated_and_taken_together,
    a_request_takes_all_its_keys_or_none,
    asking_for_a_key_ordered_before_one_held_is_refused_at_once,
    dropping_a_guard_releases_its_keys_at_once,
    locks_are_released_however_the_run_ends,
    kept_locks_are_held_until_the_committed_intents_were_dispatched,
    a_lock_not_free_in_time_times_out_and_the_run_goes_on,
    a_key_outside_the_grants_is_refused,
    holding_more_keys_than_the_limit_is_refused_and_fails_the_run,
    fencing_tokens_grow_with_every_acquisition_across_hosts,
    intents_carry_the_fences_of_the_locks_held_when_recorded,
    two_hosts_exclude_each_other,
    concurrent_transfers_in_both_directions_finish_without_deadlock_and_keep_the_total,
);

mod redis_leases {
    use super::*;

    #[tokio::test]
    async fn a_dead_holders_lease_expires_and_another_host_proceeds() {
        let server = RedisServer::start();
        let dead = RedisLocks::connect(&server.url())
            .await
            .unwrap()
            .lease(Duration::from_millis(300));
        let alive = RedisLocks::connect(&server.url()).await.unwrap();
        // Dropped without release: its renewals stop, as when a host dies.
        drop(dead.acquire(&keys(&["k"]), Duration::ZERO).await.unwrap());

        assert_eq!(
            alive
                .acquire(&keys(&["k"]), Duration::ZERO)
                .await
                .unwrap_err(),
            LockError::Timeout
        );
        let started = std::time::Instant::now();
        let lease = alive
            .acquire(&keys(&["k"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        alive.release(lease).await.unwrap();
    }

    #[tokio::test]
    async fn a_held_lease_is_renewed_past_its_lifetime() {
        let server = RedisServer::start();
        let holder = RedisLocks::connect(&server.url())
            .await
            .unwrap()
            .lease(Duration::from_millis(1000));
        let other = RedisLocks::connect(&server.url()).await.unwrap();
        let lease = holder.acquire(&keys(&["k"]), Duration::ZERO).await.unwrap();

        // Two and a half lease lifetimes: still held only because it is renewed.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            other
                .acquire(&keys(&["k"]), Duration::ZERO)
                .await
                .unwrap_err(),
            LockError::Timeout
        );
        holder.release(lease).await.unwrap();
        assert!(other.acquire(&keys(&["k"]), Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_reported_unavailable() {
        let server = RedisServer::start();
        let url = server.url();
        let locks = RedisLocks::connect(&url).await.unwrap();
        drop(server);
        let error = locks
            .acquire(&keys(&["k"]), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(error, LockError::Unavailable(_)), "{error:?}");
    }
}
