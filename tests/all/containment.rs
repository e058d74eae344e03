//! Hostile guests can only crash themselves: a guest blocked in a host call
//! is stopped at its deadline, compensations have a budget of their own, and
//! what the host keeps of every request is bounded, in allocated bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use escrow_fuzz_program::{Call, Finish, Name, Payload, Policy as FuzzPolicy, encode};
use escrow_host::backends::{LockBackend, MemoryBreakers, RedisLocks};
use escrow_host::handlers::{AsyncFnHandler, FnHandler, Handlers};
use escrow_host::limits::{
    DEFAULT_MAX_LOCK_ACQUISITIONS, Limit, MAX_EFFECT_NAME_BYTES, MAX_FAILURE_TEXT_BYTES,
    MAX_GUEST_STDERR_BYTES, MAX_LOCK_KEY_BYTES,
};
use escrow_host::{BreakerVerdict, CallError, Failure, Grants, Host, Limits, Refusal, RunOptions};
use escrow_tests::fixtures::redis::RedisServer;
use escrow_tests::{all_effects, counting, fixtures, run_steps, scripted};

use crate::fuzz::{Setting, World};
use serde_json::json;

fn lock_grants() -> Grants {
    all_effects().locks(["*"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_asleep_in_wasi_is_stopped_at_its_deadline_and_frees_its_slot_and_locks() {
    // One slot: the next run on this host can only start once the sleeper
    // gave it back; the lock lives in Redis, where another host waits for it.
    let redis = RedisServer::start();
    let host = Host::builder().max_concurrent_runs(1).build().unwrap();
    let locks: Arc<dyn LockBackend> = Arc::new(RedisLocks::connect(&redis.url()).await.unwrap());
    let sleeper = host
        .load_file(fixtures::SCRIPTED)
        .unwrap()
        .with_locks(Arc::clone(&locks));
    let other_host: Arc<dyn LockBackend> =
        Arc::new(RedisLocks::connect(&redis.url()).await.unwrap());
    let plugin = scripted().with_locks(other_host);
    let same_host = sleeper.clone();
    let started = Instant::now();
    let asleep = tokio::spawn(async move {
        let steps = json!([
            { "lock": ["vault"], "as": "v", "timeout_ms": 100 },
            { "keep": "v" },
            { "wasi_sleep_ms": 30_000 },
        ]);
        let options = RunOptions::new().grants(lock_grants()).limits(Limits {
            deadline: Duration::from_millis(300),
            ..Limits::default()
        });
        let outcome = run_steps(&sleeper, steps, options).await;
        (outcome, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = run_steps(
        &plugin,
        json!([{ "lock": ["vault"], "as": "v", "timeout_ms": 5_000 }]),
        RunOptions::new().grants(lock_grants()),
    )
    .await;
    let (outcome, took) = asleep.await.unwrap();
    let next = Instant::now();
    run_steps(&same_host, json!([]), RunOptions::new()).await;
    assert!(
        next.elapsed() < Duration::from_millis(500),
        "the slot was given back"
    );

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::Deadline)));
    assert!(took < Duration::from_secs(1), "the sleeper ran {took:?}");
    assert!(
        waiting.locks[0].token().is_some(),
        "the lock was free once the sleeper was stopped: {:?}",
        waiting.locks
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_failed_runs_compensations_share_a_budget_of_their_own() {
    let mut handlers = Handlers::new();
    handlers
        .action(
            "trip.book",
            FnHandler(|_: &[u8]| Ok::<_, CallError>(b"{}".to_vec())),
        )
        .unwrap()
        .action(
            "trip.cancel",
            AsyncFnHandler(|_: Vec<u8>| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<_, CallError>(b"{}".to_vec())
            }),
        )
        .unwrap();
    let book = json!({ "invoke_reversible": "trip.book", "payload": 1,
                       "compensate": "trip.cancel", "compensate_payload": 1 });
    let steps = json!([book, book, book, book, { "fail": "no" }]);
    let options = RunOptions::new().grants(all_effects()).limits(Limits {
        compensation_budget: Duration::from_millis(1_000),
        ..Limits::default()
    });
    let started = Instant::now();
    let outcome = run_steps(&scripted().with_handlers(handlers), steps, options).await;
    let took = started.elapsed();

    assert!(
        took < Duration::from_millis(1_800),
        "compensations took {took:?}"
    );
    let results: Vec<bool> = outcome
        .compensations
        .iter()
        .map(|c| c.result.is_ok())
        .collect();
    assert_eq!(
        results,
        [true, true, false, false],
        "{:?}",
        outcome.compensations
    );
    assert!(
        outcome.compensations[3]
            .result
            .as_ref()
            .unwrap_err()
            .contains("time for compensations ran out"),
        "{:?}",
        outcome.compensations[3]
    );
}

#[tokio::test]
async fn a_million_lock_requests_keep_at_most_the_limit_in_the_outcome_and_fail_the_run() {
    let steps = json!([{ "repeat": 1_000_000, "steps": [
        { "lock": ["k"], "as": "k", "timeout_ms": 0 },
        { "unlock": "k" },
    ] }]);
    let options = RunOptions::new().grants(lock_grants()).limits(Limits {
        deadline: Duration::from_secs(60),
        ..Limits::default()
    });
    let outcome = run_steps(&scripted(), steps, options).await;

    assert_eq!(
        outcome.result,
        Err(Failure::Limit(Limit::LockAcquisitions)),
        "{:?}",
        outcome.result
    );
    assert_eq!(outcome.locks.len(), DEFAULT_MAX_LOCK_ACQUISITIONS);
}

fn upstream_plugin() -> escrow_host::Plugin {
    escrow_tests::upstream_plugin(Arc::new(MemoryBreakers::new()))
}

fn breaker_grants() -> Grants {
    all_effects().breakers(["upstream"]).unwrap()
}

#[tokio::test]
async fn a_million_breaker_calls_count_as_requests_and_keep_at_most_the_limit() {
    let steps = json!([{ "repeat": 1_000_000, "steps": [
        { "breaker": "upstream", "invoke": "upstream.call", "payload": 1 },
    ] }]);
    let options = RunOptions::new().grants(breaker_grants()).limits(Limits {
        deadline: Duration::from_secs(60),
        ..Limits::default()
    });
    let outcome = run_steps(&upstream_plugin(), steps, options).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::Intents)));
    assert_eq!(outcome.breakers.len(), Limits::default().max_intents);
    assert_eq!(outcome.invocations.len(), Limits::default().max_intents);
}

#[tokio::test]
async fn a_breaker_call_with_a_huge_effect_name_is_refused_and_kept_short() {
    let name = "x".repeat(1 << 20);
    let steps = json!([{ "repeat": 50, "steps": [
        { "breaker": "upstream", "invoke": name, "payload": 1 },
    ] }]);
    let outcome = run_steps(
        &upstream_plugin(),
        steps,
        RunOptions::new().grants(breaker_grants()),
    )
    .await;

    assert_eq!(outcome.breakers.len(), 50);
    for decision in &outcome.breakers {
        assert!(decision.effect.len() <= MAX_EFFECT_NAME_BYTES);
        assert!(matches!(
            decision.verdict,
            BreakerVerdict::Refused(Refusal::Invalid(_))
        ));
    }
    assert!(
        outcome.invocations.is_empty(),
        "the handler was never asked"
    );
}

#[tokio::test]
async fn refused_lock_requests_and_breaker_opens_are_in_the_outcome() {
    let steps = json!([
        { "lock": ["vault:1"], "as": "v", "timeout_ms": 0 },
        { "breaker_state": "nope" },
    ]);
    let options = RunOptions::new().grants(Grants::new().locks(["account:*"]).unwrap());
    let outcome = run_steps(&upstream_plugin(), steps, options).await;

    assert_eq!(outcome.locks.len(), 1);
    assert_eq!(outcome.locks[0].keys, ["vault:1"]);
    let why = outcome.locks[0].result.as_ref().unwrap_err();
    assert!(why.contains("not-granted"), "{why}");
    assert_eq!(outcome.breakers.len(), 1);
    assert_eq!(&*outcome.breakers[0].breaker, "nope");
    assert!(matches!(
        &outcome.breakers[0].verdict,
        BreakerVerdict::Refused(Refusal::NotGranted(_))
    ));
}

/// A name of 32 MiB, and one of 8 bytes: a refused request keeps no more
/// of the first than of the second.
const HUGE_NAME: u32 = 32 << 20;
const SHORT_NAME: u32 = 8;

/// The most more a run with 32 MiB names may keep than the same run with
/// 8-byte names: the bound, for 1,000 requests.
const KEPT_MORE_AT_MOST: isize = 1 << 20;

/// What a run of the fuzzing guest keeps: the bytes this thread allocated
/// during it and still holds while the outcome is alive, and the most it
/// held at once beyond what it held before.
struct Kept {
    kept: isize,
    peak: isize,
    outcome: escrow_host::Outcome,
}

async fn kept_by(calls: &[Call]) -> Kept {
    let world = World::new();
    let options = Setting::PLAIN
        .options()
        .input(encode(calls))
        .limits(Limits {
            deadline: Duration::from_secs(120),
            ..Limits::default()
        });
    // A first run sets up what a thread sets up once.
    world.plugin.run(Setting::PLAIN.options()).await.unwrap();
    let before = counting::held();
    counting::reset_peak();
    let outcome = world.plugin.run(options).await.unwrap();
    Kept {
        kept: counting::held() - before,
        peak: counting::peak() - before,
        outcome,
    }
}

/// Runs the program `calls` makes of a name of `HUGE_NAME` bytes and of
/// `SHORT_NAME` bytes, and checks that the first keeps at most
/// `KEPT_MORE_AT_MOST` more, and never held more than a few copies of the
/// name at once.
async fn assert_huge_names_keep_what_short_ones_do(calls: impl Fn(Name) -> Vec<Call>) -> Kept {
    let short = kept_by(&calls(Name::Huge(SHORT_NAME))).await;
    let huge = kept_by(&calls(Name::Huge(HUGE_NAME))).await;
    eprintln!(
        "kept after the run: {} bytes with 32 MiB names, {} with 8-byte names; peak {} bytes",
        huge.kept, short.kept, huge.peak
    );
    assert!(
        huge.kept - short.kept < KEPT_MORE_AT_MOST,
        "with 32 MiB names the run keeps {} bytes, with 8-byte names {}",
        huge.kept,
        short.kept
    );
    assert!(
        huge.peak < 4 * HUGE_NAME as isize,
        "the run held {} bytes at once",
        huge.peak
    );
    huge
}

fn thousand(call: Call) -> Vec<Call> {
    vec![Call::Repeat(1_000, Box::new(call))]
}

#[tokio::test]
async fn a_thousand_refused_enqueues_with_32_mib_names_keep_what_8_byte_names_do() {
    let huge = assert_huge_names_keep_what_short_ones_do(|name| {
        thousand(Call::Enqueue(name, Payload::Empty))
    })
    .await;
    assert_eq!(huge.outcome.intents.len(), 1_000);
    assert!(
        huge.outcome
            .intents
            .iter()
            .all(|i| i.effect.len() <= MAX_EFFECT_NAME_BYTES)
    );
}

#[tokio::test]
async fn a_thousand_refused_invocations_with_32_mib_names_keep_what_8_byte_names_do() {
    let huge = assert_huge_names_keep_what_short_ones_do(|name| {
        thousand(Call::Invoke(name, Payload::Empty))
    })
    .await;
    assert_eq!(huge.outcome.invocations.len(), 1_000);
}

#[tokio::test]
async fn a_thousand_refused_compensations_with_32_mib_names_keep_what_8_byte_names_do() {
    let huge = assert_huge_names_keep_what_short_ones_do(|name| {
        thousand(Call::InvokeReversible {
            effect: Name::Index(5),
            payload: Payload::Empty,
            compensate: name,
            compensate_payload: Payload::Empty,
        })
    })
    .await;
    assert!(
        huge.outcome.compensations.is_empty(),
        "no action was performed"
    );
}

#[tokio::test]
async fn a_thousand_refused_breaker_opens_with_32_mib_names_keep_what_8_byte_names_do() {
    let huge =
        assert_huge_names_keep_what_short_ones_do(|name| thousand(Call::OpenBreaker(name))).await;
    assert_eq!(huge.outcome.breakers.len(), 1_000);
    assert!(
        huge.outcome
            .breakers
            .iter()
            .all(|b| b.breaker.len() <= MAX_EFFECT_NAME_BYTES)
    );
}

#[tokio::test]
async fn a_thousand_breaker_calls_with_32_mib_effect_names_keep_what_8_byte_names_do() {
    let huge = assert_huge_names_keep_what_short_ones_do(|name| {
        let mut calls = vec![Call::OpenBreaker(Name::Index(0))];
        calls.extend(thousand(Call::BreakerInvoke(0, name, Payload::Empty)));
        calls
    })
    .await;
    assert_eq!(huge.outcome.breakers.len(), 1_000);
}

#[tokio::test]
async fn a_thousand_refused_lock_requests_with_32_mib_keys_keep_what_8_byte_keys_do() {
    let huge =
        assert_huge_names_keep_what_short_ones_do(|name| thousand(Call::Acquire(vec![name], 0)))
            .await;
    assert_eq!(huge.outcome.locks.len(), 1_000);
    assert!(
        huge.outcome
            .locks
            .iter()
            .all(|l| l.keys[0].len() <= MAX_LOCK_KEY_BYTES)
    );
}

#[tokio::test]
async fn a_thousand_block_scopes_with_32_mib_patterns_keep_what_8_byte_patterns_do() {
    assert_huge_names_keep_what_short_ones_do(|name| {
        thousand(Call::OpenScope(FuzzPolicy::Block(vec![name])))
    })
    .await;
}

#[tokio::test]
async fn a_24_mib_error_from_the_guest_is_kept_in_64_kib() {
    // 24 MiB, not 32: the guest SDK copies an error's text once, and the
    // guest must hold both copies within its 64 MiB.
    const ERROR: u32 = 24 << 20;
    let short = kept_by(&[Call::Finish(Finish::Err(SHORT_NAME))]).await;
    let huge = kept_by(&[Call::Finish(Finish::Err(ERROR))]).await;
    assert!(
        huge.kept - short.kept < KEPT_MORE_AT_MOST,
        "{} kept",
        huge.kept
    );
    let Err(Failure::GuestError(text)) = &huge.outcome.result else {
        panic!("{:?}", huge.outcome.result);
    };
    assert!(text.len() <= MAX_FAILURE_TEXT_BYTES);
    assert!(
        text.ends_with(&format!("({ERROR} bytes in all)")),
        "{}",
        &text[text.len() - 40..]
    );
}

#[tokio::test]
async fn a_guest_writing_36_mb_to_stderr_is_kept_in_64_kib() {
    let huge = assert_huge_names_keep_what_short_ones_do(|name| {
        let bytes = if name == Name::Huge(HUGE_NAME) {
            60_000
        } else {
            8
        };
        vec![Call::Repeat(600, Box::new(Call::Stderr(bytes)))]
    })
    .await;
    assert_eq!(huge.outcome.guest_stderr.len(), MAX_GUEST_STDERR_BYTES);
}

#[tokio::test]
async fn a_thousand_refused_lock_requests_of_255_keys_keep_what_requests_of_16_keys_do() {
    // Found by the fuzzer: the keys of a refused request were recorded in
    // the guest's own list, whose allocation held every key it sent.
    let keys = |n| Call::Acquire(vec![Name::Index(4); n], 0);
    let many = kept_by(&thousand(keys(255))).await;
    let few = kept_by(&thousand(keys(16))).await;
    assert!(
        many.kept - few.kept < KEPT_MORE_AT_MOST,
        "255 keys a request keep {} bytes, 16 keys {}",
        many.kept,
        few.kept
    );
    assert!(
        many.outcome
            .locks
            .iter()
            .all(|l| l.keys.len() <= Limits::default().max_locks)
    );
}
