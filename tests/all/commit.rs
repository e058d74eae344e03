//! A run commits only if the export returned `ok` and nothing trapped;
//! committed intents are dispatched in order, after the guest has stopped.

use std::time::{Duration, Instant};

use escrow_host::limits::Limit;
use escrow_host::{Failure, Fate, Limits, Status};
use escrow_tests::{Recorder, delivered, fates, granted, results, run_script};
use serde_json::json;

#[tokio::test]
async fn a_run_that_returns_ok_dispatches_its_intents_in_enqueue_order() {
    let recorder = Recorder::new();
    let steps = json!([
        { "defer": "payments.charge", "payload": { "amount": 5 } },
        { "defer": "orders.save", "payload": { "id": 1 } },
        { "defer": "email.send", "payload": "receipt" },
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert!(outcome.intents.iter().all(delivered));
    assert_eq!(
        recorder.effects(),
        ["payments.charge", "orders.save", "email.send"]
    );
    let seqs: Vec<u64> = recorder.seen().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(recorder.seen()[0].payload, br#"{"amount":5}"#);
}

#[tokio::test]
async fn many_intents_are_dispatched_in_exactly_the_order_they_were_recorded() {
    let recorder = Recorder::new();
    let steps = json!([{ "repeat": 50, "steps": [
        { "defer": "a.first", "payload": 1 },
        { "defer": "b.second", "payload": 2 },
    ]}]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Committed);
    let seen = recorder.seen();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
        "sequence numbers are consecutive"
    );
    assert!(seen.iter().step_by(2).all(|d| d.effect == "a.first"));
}

#[tokio::test]
async fn a_run_that_returns_err_discards_every_intent_and_dispatches_nothing() {
    let recorder = Recorder::new();
    let steps = json!([
        { "defer": "payments.charge", "payload": 5 },
        { "fail": "the orders table is read-only" },
        { "defer": "email.send", "payload": "never recorded" },
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Failed);
    assert_eq!(
        outcome.result,
        Err(Failure::GuestError("the orders table is read-only".into()))
    );
    assert_eq!(fates(&outcome), [("payments.charge", "discarded")]);
    assert_eq!(&*outcome.intents[0].rule, "the run failed");
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_run_that_panics_discards_every_intent_and_keeps_the_panic_message() {
    let recorder = Recorder::new();
    let steps = json!([{ "defer": "payments.charge", "payload": 5 }, "panic"]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Failed);
    assert!(
        matches!(outcome.result, Err(Failure::Trap(_))),
        "{:?}",
        outcome.result
    );
    assert_eq!(fates(&outcome), [("payments.charge", "discarded")]);
    let stderr = String::from_utf8_lossy(&outcome.guest_stderr);
    assert!(stderr.contains("the script asked for a panic"), "{stderr}");
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_run_that_traps_discards_every_intent() {
    let recorder = Recorder::new();
    let steps = json!([{ "defer": "payments.charge", "payload": 5 }, "unreachable"]);
    let outcome = run_script(steps, granted(), &recorder).await;

    let Err(Failure::Trap(trap)) = &outcome.result else {
        panic!("expected a trap, got {:?}", outcome.result);
    };
    assert!(trap.contains("unreachable"), "{trap}");
    assert_eq!(outcome.intents[0].fate, Fate::Discarded);
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_guest_that_exits_fails_the_run_even_with_status_zero() {
    let recorder = Recorder::new();
    let steps = json!([{ "defer": "payments.charge", "payload": 5 }, { "exit": 0 }]);
    let outcome = run_script(steps, granted(), &recorder).await;

    let Err(Failure::Trap(why)) = &outcome.result else {
        panic!(
            "expected the exit to fail the run, got {:?}",
            outcome.result
        );
    };
    assert!(why.contains("exit status 0"), "{why}");
    assert_eq!(outcome.intents[0].fate, Fate::Discarded);
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_run_stopped_at_its_deadline_discards_every_intent() {
    let recorder = Recorder::new();
    let limits = Limits {
        deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    let steps = json!([{ "defer": "payments.charge", "payload": 5 }, "spin"]);
    let started = Instant::now();
    let outcome = run_script(steps, granted().limits(limits), &recorder).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::Deadline)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped promptly: {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(outcome.intents[0].fate, Fate::Discarded);
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn intents_are_dispatched_only_after_the_guest_has_returned() {
    let recorder = Recorder::new();
    // The guest records, then keeps running for 150 ms: a delivery earlier
    // than that would have happened while the guest still ran.
    let steps = json!([{ "defer": "orders.save", "payload": 1 }, { "sleep_ms": 150 }]);
    let started = Instant::now();
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Committed);
    let delivered_after = recorder.seen()[0].at.duration_since(started);
    assert!(
        delivered_after >= Duration::from_millis(150),
        "delivered after {delivered_after:?}"
    );
}

#[tokio::test]
async fn pending_lists_what_the_run_has_recorded_so_far() {
    let steps = json!([
        "pending",
        { "defer": "orders.save", "payload": { "id": 1 } },
        { "defer": "email.send", "payload": "hi" },
        "pending",
    ]);
    let outcome = run_script(steps, granted(), &Recorder::new()).await;

    let results = results(&outcome);
    assert_eq!(results[0], json!([]));
    assert_eq!(
        results[3],
        json!([
            { "seq": 1, "effect": "orders.save", "payload": "{\"id\":1}" },
            { "seq": 2, "effect": "email.send", "payload": "\"hi\"" },
        ])
    );
}

/// The README's embedding, against the README's own example: everything it
/// requests is granted, and the run commits.
#[tokio::test]
async fn the_readme_embedding_commits_the_checkout_example() {
    let recorder = Recorder::new();
    let plugin =
        escrow_tests::plugin(escrow_tests::fixtures::CHECKOUT).with_sinks(recorder.sinks());
    let outcome = plugin
        .run(
            escrow_host::RunOptions::new()
                .input(br#"{"id": 7, "email": "ada@example.com"}"#.to_vec())
                .grants(
                    escrow_host::Grants::new()
                        .effects(["payments.charge", "orders.save", "email.send"])
                        .unwrap(),
                )
                .policy(escrow_host::policy::Commit),
        )
        .await
        .unwrap();
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(
        recorder.effects(),
        ["payments.charge", "orders.save", "email.send"]
    );
}
