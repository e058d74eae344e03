//! Redis faults never stall a run: with Redis refusing connections or
//! frozen (SIGSTOP), breaker calls fail open and lock requests are
//! `unavailable` within the store timeout, and the store heals once Redis
//! answers again; fencing tokens keep increasing across a Redis restart that
//! lost its data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use escrow_host::backends::{LockBackend, RedisBreakers, RedisLocks};
use escrow_host::{Grants, RunOptions, Status};
use escrow_tests::fixtures::redis::RedisServer;
use escrow_tests::{results, run_steps};
use serde_json::json;

/// The upstream plugin with its breaker state and its locks in `redis`.
async fn plugin_on(redis: &str) -> escrow_host::Plugin {
    let breakers = RedisBreakers::connect(redis).await.unwrap();
    let locks = RedisLocks::connect(redis).await.unwrap();
    escrow_tests::upstream_plugin(Arc::new(breakers)).with_locks(Arc::new(locks))
}

fn options() -> RunOptions {
    RunOptions::new().grants(
        Grants::new()
            .effects(["upstream.*", "a.*"])
            .unwrap()
            .breakers(["upstream"])
            .unwrap()
            .locks(["*"])
            .unwrap(),
    )
}

fn call() -> serde_json::Value {
    json!({ "breaker": "upstream", "invoke": "upstream.call", "payload": 1 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_refusing_connections_breaker_calls_fail_open_at_once() {
    let mut server = RedisServer::start();
    let plugin = plugin_on(&server.url()).await;
    server.kill();
    let started = Instant::now();
    let outcome = run_steps(&plugin, json!([call(), call(), call()]), options()).await;
    let took = started.elapsed();

    assert_eq!(outcome.status(), Status::Committed);
    assert!(
        results(&outcome).iter().all(|r| r["answer"].is_array()),
        "fail open"
    );
    assert!(
        took < Duration::from_millis(1_500),
        "three calls took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_frozen_breaker_calls_fail_open_within_the_store_timeout_and_the_store_heals() {
    let server = RedisServer::start();
    let plugin = plugin_on(&server.url()).await;
    // Connected while Redis answers.
    run_steps(&plugin, json!([call()]), options()).await;
    server.pause();
    let started = Instant::now();
    let outcome = run_steps(&plugin, json!([call(), call(), call()]), options()).await;
    let took = started.elapsed();
    assert_eq!(outcome.status(), Status::Committed);
    assert!(
        took < Duration::from_millis(1_500),
        "three calls took {took:?}"
    );

    server.resume();
    let waited = Instant::now();
    loop {
        let outcome = run_steps(&plugin, json!([{ "breaker_state": "upstream" }]), options()).await;
        if outcome.status() == Status::Committed && results(&outcome)[0] == "closed" {
            let store_read = Instant::now();
            run_steps(&plugin, json!([call()]), options()).await;
            assert!(store_read.elapsed() < Duration::from_millis(500));
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the store never healed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_frozen_a_lock_request_is_unavailable_within_the_store_timeout() {
    let server = RedisServer::start();
    let plugin = plugin_on(&server.url()).await;
    run_steps(
        &plugin,
        json!([{ "lock": ["k"], "as": "k", "timeout_ms": 0 }]),
        options(),
    )
    .await;
    server.pause();
    let started = Instant::now();
    let outcome = run_steps(
        &plugin,
        json!([{ "lock": ["k"], "as": "k", "timeout_ms": 5_000 }]),
        options(),
    )
    .await;
    let took = started.elapsed();

    assert_eq!(results(&outcome)[0]["lock_error"]["kind"], "unavailable");
    assert!(
        took < Duration::from_millis(1_500),
        "the request took {took:?}"
    );
    server.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_after_a_redis_restart_that_lost_its_data() {
    let mut server = RedisServer::start();
    let locks = RedisLocks::connect(&server.url()).await.unwrap();
    let keys = vec!["account:7".to_owned()];
    let stale = locks.acquire(&keys, Duration::ZERO).await.unwrap();
    server.restart();
    // The new Redis knows nothing: neither the lock nor the counter.
    let fresh = RedisLocks::connect(&server.url()).await.unwrap();
    let current = fresh.acquire(&keys, Duration::from_secs(2)).await.unwrap();
    assert!(
        current.token > stale.token,
        "{} after {}",
        current.token,
        stale.token
    );
    drop(stale);
    fresh.release(current).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_takes_no_lock_and_opens_no_breaker_runs_while_redis_is_down() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let plugin = plugin_on(&url).await;
    let started = Instant::now();
    let outcome = run_steps(
        &plugin,
        json!([{ "defer": "a.b", "payload": 1 }]),
        options(),
    )
    .await;
    assert_eq!(outcome.status(), Status::Committed);
    assert!(started.elapsed() < Duration::from_millis(500));
}
