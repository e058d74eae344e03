//! Immediate effects: handlers perform them while the guest waits; queries
//! pass every policy, actions only where the policy lets the effect through;
//! compensations undo actions in reverse order when the run, or the scope
//! around them, fails.

use std::sync::Arc;
use std::time::Duration;

use escrow_host::handlers::{AsyncFnHandler, FnHandler, Handlers};
use escrow_host::limits::Limit;
use escrow_host::policy::{AssertNone, Block, Commit, DropAll, Policy};
use escrow_host::{CallError, EffectError, Failure, Grants, Limits, Refusal, RunOptions, Status};
use escrow_tests::{Journal, Recorder, compensated, fates, granted, results, run_script_with};
use serde_json::{Value, json};

fn invoke(effect: &str) -> Value {
    json!({ "invoke": effect, "payload": effect })
}

/// A reversible call of `effect`, undone by `<effect>.undo` (or `undo` when
/// given), with the effect's name as both payloads.
fn reversible(effect: &str, undo: &str) -> Value {
    json!({ "invoke_reversible": effect, "payload": effect, "compensate": undo, "compensate_payload": undo })
}

/// A journal whose handlers are actions for every effect the tests name.
fn journal_of(actions: &[&str]) -> (Journal, Handlers) {
    let journal = Journal::new();
    let handlers = journal.handlers(actions, &["prices.get"]);
    (journal, handlers)
}

#[tokio::test]
async fn handler_answers_reach_the_guest_byte_for_byte() {
    let answer: Vec<u8> = vec![0, 255, 1, 128, b'{', 0xc3];
    let expected = answer.clone();
    let mut handlers = Handlers::new();
    handlers
        .query(
            "prices.get",
            FnHandler(move |_: &[u8]| Ok::<_, CallError>(answer.clone())),
        )
        .unwrap();
    let outcome = run_script_with(
        json!([invoke("prices.get")]),
        granted(),
        &Recorder::new(),
        handlers,
    )
    .await;

    assert_eq!(results(&outcome)[0], json!({ "answer": expected }));
    assert_eq!(outcome.invocations[0].result, Ok(expected));
    assert_eq!(outcome.invocations[0].payload, br#""prices.get""#);
}

#[tokio::test]
async fn a_query_is_allowed_under_every_policy() {
    let policies: [Arc<dyn Policy>; 4] = [
        Arc::new(Commit),
        Arc::new(DropAll),
        Arc::new(AssertNone),
        Arc::new(Block::new(["prices.*"]).unwrap()),
    ];
    for policy in policies {
        let (journal, handlers) = journal_of(&[]);
        let options = granted().shared_policy(Arc::clone(&policy));
        let outcome = run_script_with(
            json!([invoke("prices.get")]),
            options,
            &Recorder::new(),
            handlers,
        )
        .await;

        assert_eq!(outcome.status(), Status::Committed, "{policy:?}");
        assert_eq!(
            results(&outcome)[0]["answer"],
            json!(br#"{"done":"prices.get"}"#.to_vec()),
            "{policy:?}"
        );
        assert_eq!(journal.effects(), ["prices.get"], "{policy:?}");
    }
}

#[tokio::test]
async fn an_action_is_refused_forbidden_under_drop_and_assert_none_and_the_run_fails() {
    let policies: [Arc<dyn Policy>; 2] = [Arc::new(DropAll), Arc::new(AssertNone)];
    for policy in policies {
        let (journal, handlers) = journal_of(&["orders.create"]);
        let options = granted().shared_policy(Arc::clone(&policy));
        let outcome = run_script_with(
            json!([invoke("orders.create")]),
            options,
            &Recorder::new(),
            handlers,
        )
        .await;

        assert!(
            matches!(outcome.result, Err(Failure::Forbidden { .. })),
            "{policy:?}: {:?}",
            outcome.result
        );
        assert!(
            matches!(
                outcome.invocations[0].result,
                Err(EffectError::Refused(Refusal::Forbidden(_)))
            ),
            "{policy:?}"
        );
        assert!(
            journal.effects().is_empty(),
            "{policy:?}: the handler never ran"
        );
    }
}

#[tokio::test]
async fn an_action_whose_name_is_blocked_is_refused_and_fails_the_run() {
    let (journal, handlers) = journal_of(&["orders.create", "payments.charge"]);
    let options = granted().policy(Block::new(["payments.*"]).unwrap());
    let steps = json!([invoke("orders.create"), invoke("payments.charge")]);
    let outcome = run_script_with(steps, options, &Recorder::new(), handlers).await;

    assert_eq!(journal.effects(), ["orders.create"]);
    assert!(
        matches!(outcome.result, Err(Failure::Forbidden { ref effect, .. }) if effect == "payments.charge")
    );
}

#[tokio::test]
async fn an_immediate_effect_without_a_grant_is_refused_and_no_handler_runs() {
    let (journal, handlers) = journal_of(&["payments.charge"]);
    let options = RunOptions::new().grants(Grants::new().effects(["orders.*"]).unwrap());
    let steps = json!([
        invoke("payments.charge"),
        reversible("orders.create", "payments.refund")
    ]);
    let outcome = run_script_with(steps, options, &Recorder::new(), handlers).await;

    let results = results(&outcome);
    assert_eq!(results[0]["refused"]["kind"], "not-granted");
    assert_eq!(
        results[1]["refused"]["kind"], "not-granted",
        "the compensation needs a grant too"
    );
    assert!(journal.effects().is_empty());
    assert_eq!(
        outcome.status(),
        Status::Committed,
        "the guest handled the refusals"
    );
}

#[tokio::test]
async fn a_granted_effect_no_handler_performs_is_refused_not_granted_saying_what_to_add() {
    let (_, handlers) = journal_of(&["orders.create"]);
    let steps = json!([
        invoke("orders.unknown"),
        reversible("orders.create", "orders.unknown")
    ]);
    let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;

    let results = results(&outcome);
    assert!(results[0]["refused"]["message"].as_str().unwrap().contains(
        "`orders.unknown` is granted, but no handler performs it: give it a \
                 [handlers.\"orders.unknown\"] entry in the config"
    ));
    assert!(
        results[1]["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("compensation `orders.unknown`")
    );
    assert_eq!(outcome.invocations[0].kind, None);
}

#[tokio::test]
async fn a_caught_handler_failure_rolls_nothing_back_and_the_run_goes_on() {
    let recorder = Recorder::new();
    let (journal, handlers) = journal_of(&["payments.charge.fail", "payments.refund"]);
    let steps = json!([
        reversible("payments.charge.fail", "payments.refund"),
        { "defer": "email.notice", "payload": "insufficient funds" },
    ]);
    let outcome = run_script_with(steps, granted(), &recorder, handlers).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(
        results(&outcome)[0],
        json!({ "failed": "payments.charge.fail went wrong" })
    );
    assert_eq!(
        outcome.invocations[0].compensation.as_deref(),
        Some("payments.refund")
    );
    assert!(
        outcome.compensations.is_empty(),
        "nothing is undone when the run succeeds"
    );
    assert_eq!(journal.effects(), ["payments.charge.fail"]);
    assert_eq!(recorder.effects(), ["email.notice"]);
}

#[tokio::test]
async fn the_compensation_of_a_failed_call_still_runs_if_the_run_fails_later() {
    let (journal, handlers) = journal_of(&["payments.charge.fail", "payments.refund"]);
    let steps =
        json!([reversible("payments.charge.fail", "payments.refund"), { "fail": "gave up" }]);
    let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;

    assert_eq!(compensated(&outcome), ["payments.refund"]);
    assert_eq!(
        journal.effects(),
        ["payments.charge.fail", "payments.refund"]
    );
}

#[tokio::test]
async fn compensations_run_in_reverse_order_when_the_run_returns_err() {
    let recorder = Recorder::new();
    let (journal, handlers) = journal_of(&["a.do", "b.do", "c.do", "a.undo", "b.undo", "c.undo"]);
    let steps = json!([
        reversible("a.do", "a.undo"),
        { "defer": "email.send", "payload": 1 },
        reversible("b.do", "b.undo"),
        reversible("c.do", "c.undo"),
        { "fail": "late failure" },
    ]);
    let outcome = run_script_with(steps, granted(), &recorder, handlers).await;

    assert_eq!(
        outcome.result,
        Err(Failure::GuestError("late failure".into()))
    );
    assert_eq!(compensated(&outcome), ["c.undo", "b.undo", "a.undo"]);
    assert_eq!(
        journal.effects(),
        ["a.do", "b.do", "c.do", "c.undo", "b.undo", "a.undo"]
    );
    let undo = &outcome.compensations[2];
    assert_eq!(
        (undo.seq, &*undo.cause, &undo.payload),
        (1, "the run failed", &br#""a.undo""#.to_vec())
    );
    assert_eq!(
        fates(&outcome),
        [("email.send", "discarded")],
        "deferred intents are discarded"
    );
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn compensations_run_in_reverse_order_when_the_guest_traps() {
    let (journal, handlers) = journal_of(&["a.do", "b.do", "a.undo", "b.undo"]);
    let steps = json!([
        reversible("a.do", "a.undo"),
        reversible("b.do", "b.undo"),
        "panic"
    ]);
    let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;

    assert!(matches!(outcome.result, Err(Failure::Trap(_))));
    assert_eq!(compensated(&outcome), ["b.undo", "a.undo"]);
    assert_eq!(journal.effects(), ["a.do", "b.do", "b.undo", "a.undo"]);
}

#[tokio::test]
async fn compensations_run_in_reverse_order_when_the_deadline_stops_the_guest() {
    let (journal, handlers) = journal_of(&["a.do", "b.do", "a.undo", "b.undo"]);
    let limits = Limits {
        deadline: Duration::from_millis(150),
        ..Limits::default()
    };
    let steps = json!([
        reversible("a.do", "a.undo"),
        reversible("b.do", "b.undo"),
        "spin"
    ]);
    let outcome =
        run_script_with(steps, granted().limits(limits), &Recorder::new(), handlers).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::Deadline)));
    assert_eq!(compensated(&outcome), ["b.undo", "a.undo"]);
    assert_eq!(journal.effects(), ["a.do", "b.do", "b.undo", "a.undo"]);
}

#[tokio::test]
async fn compensations_run_in_reverse_order_when_the_run_exceeds_a_limit() {
    let (journal, handlers) = journal_of(&["a.do", "b.do", "a.undo", "b.undo"]);
    let limits = Limits {
        max_payload_bytes: 1024,
        ..Limits::default()
    };
    let steps = json!([
        reversible("a.do", "a.undo"),
        reversible("b.do", "b.undo"),
        { "defer_size": "c.big", "bytes": 2048 },
    ]);
    let outcome =
        run_script_with(steps, granted().limits(limits), &Recorder::new(), handlers).await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::PayloadSize)));
    assert_eq!(compensated(&outcome), ["b.undo", "a.undo"]);
    assert_eq!(journal.effects(), ["a.do", "b.do", "b.undo", "a.undo"]);
}

#[tokio::test]
async fn nothing_is_compensated_when_the_run_succeeds_and_deferred_intents_dispatch() {
    let recorder = Recorder::new();
    let (journal, handlers) = journal_of(&["a.do", "a.undo"]);
    let steps = json!([reversible("a.do", "a.undo"), { "defer": "email.send", "payload": 1 }]);
    let outcome = run_script_with(steps, granted(), &recorder, handlers).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert!(outcome.compensations.is_empty());
    assert_eq!(journal.effects(), ["a.do"]);
    assert_eq!(recorder.effects(), ["email.send"]);
}

#[tokio::test]
async fn a_nested_scope_rollback_runs_only_its_own_compensations_and_the_run_goes_on() {
    let (journal, handlers) = journal_of(&[
        "a.do", "b.do", "c.do", "d.do", "a.undo", "b.undo", "c.undo", "d.undo",
    ]);
    let steps = json!([
        reversible("a.do", "a.undo"),
        { "scope": "inherit", "end": "rollback", "steps": [reversible("b.do", "b.undo"), reversible("c.do", "c.undo")] },
        reversible("d.do", "d.undo"),
    ]);
    let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(compensated(&outcome), ["c.undo", "b.undo"]);
    assert!(
        outcome
            .compensations
            .iter()
            .all(|c| &*c.cause == "scope 1 rolled back")
    );
    assert_eq!(
        journal.effects(),
        ["a.do", "b.do", "c.do", "c.undo", "b.undo", "d.do"]
    );
}

#[tokio::test]
async fn a_committed_nested_scope_hands_its_compensations_to_the_run_when_it_fails_later() {
    let (journal, handlers) = journal_of(&["a.do", "b.do", "c.do", "a.undo", "b.undo", "c.undo"]);
    let steps = json!([
        reversible("a.do", "a.undo"),
        { "scope": "inherit", "end": "commit", "steps": [reversible("b.do", "b.undo")] },
        reversible("c.do", "c.undo"),
        { "fail": "later" },
    ]);
    let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;

    assert_eq!(compensated(&outcome), ["c.undo", "b.undo", "a.undo"]);
    assert_eq!(
        journal.effects(),
        ["a.do", "b.do", "c.do", "c.undo", "b.undo", "a.undo"]
    );
}

#[tokio::test]
async fn a_failing_compensation_does_not_stop_the_others_and_is_reported() {
    let (journal, handlers) =
        journal_of(&["a.do", "b.do", "c.do", "a.undo", "b.undo.fail", "c.undo"]);
    let steps = json!([
        reversible("a.do", "a.undo"),
        reversible("b.do", "b.undo.fail"),
        reversible("c.do", "c.undo"),
        { "fail": "late failure" },
    ]);
    let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;

    assert_eq!(compensated(&outcome), ["c.undo", "b.undo.fail", "a.undo"]);
    assert!(outcome.compensations[0].result.is_ok());
    assert_eq!(
        outcome.compensations[1].result,
        Err("b.undo.fail went wrong".into())
    );
    assert!(outcome.compensations[2].result.is_ok());
    assert!(outcome.rollback_incomplete());
    assert_eq!(journal.effects().last().map(String::as_str), Some("a.undo"));
}

#[tokio::test]
async fn a_refused_reversible_call_registers_no_compensation() {
    let (journal, handlers) = journal_of(&["a.do", "a.undo"]);
    let options = RunOptions::new().grants(Grants::new().effects(["a.undo"]).unwrap());
    let steps = json!([reversible("a.do", "a.undo"), { "fail": "later" }]);
    let outcome = run_script_with(steps, options, &Recorder::new(), handlers).await;

    assert_eq!(outcome.invocations[0].compensation, None);
    assert!(outcome.compensations.is_empty());
    assert!(journal.effects().is_empty());
}

#[tokio::test]
async fn requests_share_one_sequence_so_the_order_of_events_is_visible() {
    let (_, handlers) = journal_of(&["b.do"]);
    let steps = json!([
        { "defer": "a.first", "payload": 1 },
        invoke("b.do"),
        { "defer": "c.third", "payload": 3 },
    ]);
    let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;

    let intents: Vec<u64> = outcome.intents.iter().map(|i| i.seq).collect();
    assert_eq!(intents, [1, 3]);
    assert_eq!(outcome.invocations[0].seq, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runs_keep_their_compensation_stacks_apart() {
    let runs = (0..8).map(|run| {
        tokio::spawn(async move {
            let names: Vec<String> = ["a.do", "b.do", "a.undo", "b.undo"]
                .iter()
                .map(|e| format!("run{run}.{e}"))
                .collect();
            let journal = Journal::new();
            let handlers =
                journal.handlers(&names.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
            let steps = json!([
                reversible(&names[0], &names[2]),
                { "sleep_ms": 20 },
                reversible(&names[1], &names[3]),
                { "fail": "later" },
            ]);
            let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;
            (names, outcome)
        })
    });
    for run in runs {
        let (names, outcome) = run.await.unwrap();
        assert_eq!(
            compensated(&outcome),
            [names[3].as_str(), names[2].as_str()]
        );
    }
}

#[tokio::test]
async fn a_handler_still_running_at_the_deadline_stops_the_run_and_its_undo_runs() {
    let journal = Journal::new();
    let mut handlers = journal.handlers(&["slow.undo"], &[]);
    handlers
        .action(
            "slow.do",
            AsyncFnHandler(|_: Vec<u8>| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, CallError>(Vec::new())
            }),
        )
        .unwrap();
    let limits = Limits {
        deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    let started = std::time::Instant::now();
    let outcome = run_script_with(
        json!([reversible("slow.do", "slow.undo")]),
        granted().limits(limits),
        &Recorder::new(),
        handlers,
    )
    .await;

    assert_eq!(outcome.result, Err(Failure::Limit(Limit::Deadline)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(compensated(&outcome), ["slow.undo"]);
}

#[tokio::test]
async fn a_handler_slower_than_its_timeout_is_reported_as_failed() {
    let mut handlers = Handlers::new();
    handlers
        .query(
            "slow.get",
            AsyncFnHandler(|_: Vec<u8>| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, CallError>(Vec::new())
            }),
        )
        .unwrap();
    handlers.timeout(Duration::from_millis(50));
    let outcome = run_script_with(
        json!([invoke("slow.get")]),
        granted(),
        &Recorder::new(),
        handlers,
    )
    .await;

    let failed = results(&outcome)[0]["failed"].as_str().unwrap().to_owned();
    assert!(failed.contains("did not answer"), "{failed}");
    assert_eq!(outcome.status(), Status::Committed);
}

#[tokio::test]
async fn inside_an_assert_none_scope_a_query_runs_and_an_action_fails_the_run() {
    let (journal, handlers) = journal_of(&["orders.create"]);
    let steps = json!([
        { "scope": "assert-none", "end": "commit", "steps": [invoke("prices.get"), invoke("orders.create")] },
    ]);
    let outcome = run_script_with(steps, granted(), &Recorder::new(), handlers).await;

    assert_eq!(journal.effects(), ["prices.get"]);
    assert!(matches!(
        outcome.result,
        Err(Failure::Forbidden { ref effect, ref rule }) if effect == "orders.create" && rule == "scope 1 policy assert-none"
    ));
}
