//! Limits: each exceeded limit fails the run cleanly, with nothing
//! dispatched.

use std::time::{Duration, Instant};

use escrow_host::limits::{Limit, MAX_EFFECT_NAME_BYTES};
use escrow_host::{Error, Failure, Fate, Limits, RunOptions, Status};
use escrow_tests::{Recorder, all_effects, fates, results, run_script};
use serde_json::json;

fn with(limits: Limits) -> RunOptions {
    RunOptions::new().grants(all_effects()).limits(limits)
}

#[tokio::test]
async fn requests_past_the_intent_limit_are_refused_and_the_run_fails() {
    let recorder = Recorder::new();
    let limits = Limits {
        max_intents: 3,
        ..Limits::default()
    };
    let steps: Vec<_> = (0..5)
        .map(|i| json!({ "defer": format!("e.n{i}"), "payload": i }))
        .collect();
    let outcome = run_script(json!(steps), with(limits), &recorder).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::Intents)));
    assert_eq!(
        outcome.intents.len(),
        3,
        "requests past the limit are not recorded"
    );
    assert!(outcome.intents.iter().all(|i| i.fate == Fate::Discarded));
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_payload_above_the_size_limit_is_refused_and_the_run_fails() {
    let recorder = Recorder::new();
    let limits = Limits {
        max_payload_bytes: 1024,
        ..Limits::default()
    };
    let steps = json!([
        { "defer_size": "a.small", "bytes": 1024 },
        { "defer_size": "b.large", "bytes": 1025 },
    ]);
    let outcome = run_script(steps, with(limits), &recorder).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::PayloadSize)));
    assert_eq!(
        fates(&outcome),
        [("a.small", "discarded"), ("b.large", "refused")]
    );
    assert!(
        outcome.intents[1].payload.is_empty(),
        "an oversized payload is not kept"
    );
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn payloads_above_the_total_for_the_run_are_refused_and_the_run_fails() {
    let limits = Limits {
        max_total_payload_bytes: 4096,
        ..Limits::default()
    };
    let steps = json!([
        { "defer_size": "a.one", "bytes": 2000 },
        { "defer_size": "b.two", "bytes": 2000 },
        { "defer_size": "c.three", "bytes": 2000 },
    ]);
    let outcome = run_script(steps, with(limits), &Recorder::new()).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::TotalPayload)));
    assert_eq!(fates(&outcome)[2], ("c.three", "refused"));
}

#[tokio::test]
async fn a_guest_growing_its_memory_past_the_cap_is_stopped() {
    let recorder = Recorder::new();
    let limits = Limits {
        max_memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let steps = json!([{ "defer": "a.before", "payload": 1 }, { "grow": 32 << 20 }]);
    let outcome = run_script(steps, with(limits), &recorder).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::Memory)));
    assert_eq!(fates(&outcome), [("a.before", "discarded")]);
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_guest_using_memory_within_the_cap_runs_normally() {
    let limits = Limits {
        max_memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let outcome = run_script(json!([{ "grow": 2 << 20 }]), with(limits), &Recorder::new()).await;

    assert_eq!(results(&outcome)[0], json!({ "grew": 2 << 20 }));
}

#[tokio::test]
async fn scopes_nested_deeper_than_the_limit_are_refused_and_the_run_fails() {
    let limits = Limits {
        max_scope_depth: 2,
        ..Limits::default()
    };
    let steps = json!([{ "open": "a" }, { "open": "b" }, { "open": "c" }]);
    let outcome = run_script(steps, with(limits), &Recorder::new()).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::ScopeDepth)));
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_shortly_after_the_deadline() {
    let limits = Limits {
        deadline: Duration::from_millis(100),
        ..Limits::default()
    };
    let started = Instant::now();
    let outcome = run_script(json!(["spin"]), with(limits), &Recorder::new()).await;
    let took = started.elapsed();

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::Deadline)));
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_malformed_effect_name_is_refused_invalid_and_the_run_goes_on() {
    let recorder = Recorder::new();
    let long = "a".repeat(MAX_EFFECT_NAME_BYTES + 1);
    let steps = json!([
        { "defer": "", "payload": 1 },
        { "defer": "email send", "payload": 2 },
        { "defer": long, "payload": 3 },
        { "defer": "email.send", "payload": 4 },
    ]);
    let outcome = run_script(steps, with(Limits::default()), &recorder).await;

    assert_eq!(outcome.status(), Status::Committed);
    let results = results(&outcome);
    for result in &results[..3] {
        assert_eq!(result["refused"]["kind"], "invalid", "{result}");
    }
    assert_eq!(
        outcome.intents[2].effect.len(),
        MAX_EFFECT_NAME_BYTES,
        "a long name is kept truncated"
    );
    assert_eq!(recorder.effects(), ["email.send"]);
}

#[tokio::test]
async fn a_run_cannot_be_given_more_memory_than_the_host_allows() {
    let limits = Limits {
        max_memory_bytes: usize::MAX,
        ..Limits::default()
    };
    let error = escrow_tests::scripted()
        .run(with(limits))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Limits(_)), "{error}");
}

#[tokio::test]
async fn a_deadline_of_duration_max_is_one_that_never_comes_not_a_panic() {
    let limits = Limits {
        deadline: Duration::MAX,
        compensation_budget: Duration::MAX,
        ..Limits::default()
    };
    let steps = json!([{ "defer": "e.one", "payload": 1 }]);
    let outcome = run_script(steps, with(limits), &Recorder::new()).await;

    assert_eq!(outcome.status(), Status::Committed);
}

#[tokio::test]
async fn handler_answers_count_towards_the_total_and_one_past_it_is_not_kept() {
    use escrow_host::handlers::{FnHandler, Handlers};
    let mut handlers = Handlers::new();
    handlers
        .query(
            "q.big",
            FnHandler(|_: &[u8]| Ok::<_, escrow_host::CallError>(vec![b'x'; 3000])),
        )
        .unwrap();
    let limits = Limits {
        max_total_payload_bytes: 8000,
        ..Limits::default()
    };
    let steps = json!([{ "repeat": 4, "steps": [{ "invoke": "q.big", "payload": 1 }] }]);
    let outcome =
        escrow_tests::run_script_with(steps, with(limits), &Recorder::new(), handlers).await;

    let answers: Vec<usize> = outcome
        .invocations
        .iter()
        .map(|i| i.result.as_ref().map_or(0, Vec::len))
        .collect();
    assert_eq!(answers, [3000, 3000, 0, 0], "{:?}", outcome.invocations);
    let escrow_host::EffectError::Failed(why) = outcome.invocations[2].result.as_ref().unwrap_err()
    else {
        panic!("{:?}", outcome.invocations[2].result);
    };
    assert!(why.contains("max_total_payload_bytes"), "{why}");
}
