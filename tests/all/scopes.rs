//! Nested scopes: commit merges into the enclosing scope, rollback (or an
//! unfinished end) discards, and a scope can narrow the policy, never widen.

use escrow_host::policy::{Block, DropAll};
use escrow_host::{Failure, Fate, Refusal, Status};
use escrow_tests::{Recorder, fates, granted, results, run_script};
use serde_json::json;

fn defer(effect: &str) -> serde_json::Value {
    json!({ "defer": effect, "payload": effect })
}

#[tokio::test]
async fn a_committed_nested_scope_merges_its_intents_into_the_run_in_order() {
    let recorder = Recorder::new();
    let steps = json!([
        defer("a.before"),
        { "scope": "inherit", "end": "commit", "steps": [defer("b.inside"), defer("c.inside")] },
        defer("d.after"),
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(
        recorder.effects(),
        ["a.before", "b.inside", "c.inside", "d.after"]
    );
}

#[tokio::test]
async fn a_committed_nested_scope_dispatches_nothing_when_the_run_then_fails() {
    let recorder = Recorder::new();
    let steps = json!([
        { "scope": "inherit", "end": "commit", "steps": [defer("b.inside")] },
        { "fail": "later" },
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Failed);
    assert_eq!(fates(&outcome), [("b.inside", "discarded")]);
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_rolled_back_scope_discards_its_intents_and_the_run_goes_on() {
    let recorder = Recorder::new();
    let steps = json!([
        defer("a.before"),
        { "scope": "inherit", "end": "rollback", "steps": [defer("b.inside")] },
        defer("c.after"),
        "pending",
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(
        fates(&outcome),
        [
            ("a.before", "dispatched"),
            ("b.inside", "discarded"),
            ("c.after", "dispatched")
        ]
    );
    assert_eq!(&*outcome.intents[1].rule, "scope 1 rolled back");
    assert_eq!(recorder.effects(), ["a.before", "c.after"]);
    let pending = &results(&outcome)[3];
    assert_eq!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["effect"].clone())
            .collect::<Vec<_>>(),
        ["a.before", "c.after"],
        "pending omits what a rollback discarded"
    );
}

#[tokio::test]
async fn dropping_a_scope_unfinished_rolls_it_back() {
    let recorder = Recorder::new();
    let steps = json!([{ "scope": "inherit", "end": "drop", "steps": [defer("b.inside")] }, defer("c.after")]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(
        fates(&outcome),
        [("b.inside", "discarded"), ("c.after", "dispatched")]
    );
    assert_eq!(
        &*outcome.intents[0].rule,
        "scope 1 was dropped without commit or rollback"
    );
}

#[tokio::test]
async fn a_scope_still_open_when_the_run_ends_is_rolled_back() {
    let recorder = Recorder::new();
    let steps = json!([defer("a.before"), { "scope": "inherit", "end": "leak", "steps": [defer("b.inside")] }]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(
        fates(&outcome),
        [("a.before", "dispatched"), ("b.inside", "discarded")]
    );
    assert_eq!(
        &*outcome.intents[1].rule,
        "scope 1 was still open when the run ended"
    );
}

#[tokio::test]
async fn ending_an_outer_scope_first_rolls_back_the_inner_scope_still_open() {
    let recorder = Recorder::new();
    let steps = json!([
        { "open": "outer" },
        defer("a.outer"),
        { "open": "inner" },
        defer("b.inner"),
        { "commit": "outer" },
        // The inner scope already ended with the outer one: committing it now
        // changes nothing.
        { "commit": "inner" },
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(
        fates(&outcome),
        [("a.outer", "dispatched"), ("b.inner", "discarded")]
    );
    assert_eq!(
        &*outcome.intents[1].rule,
        "scope 2 was still open when scope 1 ended"
    );
}

#[tokio::test]
async fn scopes_nest_and_an_inner_rollback_keeps_the_outer_scope_intents() {
    let recorder = Recorder::new();
    let steps = json!([
        { "scope": "inherit", "end": "commit", "steps": [
            defer("a.outer"),
            { "scope": "inherit", "end": "rollback", "steps": [defer("b.inner")] },
            defer("c.outer"),
        ]},
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(recorder.effects(), ["a.outer", "c.outer"]);
    assert_eq!(&*outcome.intents[1].rule, "scope 2 rolled back");
}

#[tokio::test]
async fn a_drop_scope_keeps_its_intents_from_dispatch_while_the_rest_commit() {
    let recorder = Recorder::new();
    let steps = json!([
        defer("a.before"),
        { "scope": "drop", "end": "commit", "steps": [defer("b.simulated")] },
        defer("c.after"),
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(
        fates(&outcome),
        [
            ("a.before", "dispatched"),
            ("b.simulated", "dropped"),
            ("c.after", "dispatched")
        ]
    );
    assert_eq!(&*outcome.intents[1].rule, "scope 1 policy drop");
    assert_eq!(recorder.effects(), ["a.before", "c.after"]);
}

#[tokio::test]
async fn an_assert_none_scope_refuses_effects_inside_it_and_fails_the_run() {
    let recorder = Recorder::new();
    let steps = json!([
        defer("a.before"),
        { "scope": "assert-none", "end": "commit", "steps": [defer("b.impure")] },
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(
        outcome.result,
        Err(Failure::Forbidden {
            effect: "b.impure".into(),
            rule: "scope 1 policy assert-none".into(),
        })
    );
    assert!(matches!(
        outcome.intents[1].fate,
        Fate::Refused(Refusal::Forbidden(_))
    ));
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_block_scope_blocks_matching_effects_only_inside_it() {
    let recorder = Recorder::new();
    let steps = json!([
        { "scope": { "block": ["email.*"] }, "end": "commit", "steps": [defer("email.inside"), defer("orders.inside")] },
        defer("email.outside"),
    ]);
    let outcome = run_script(steps, granted(), &recorder).await;

    assert_eq!(
        fates(&outcome),
        [
            ("email.inside", "blocked"),
            ("orders.inside", "dispatched"),
            ("email.outside", "dispatched")
        ]
    );
    assert_eq!(&*outcome.intents[0].rule, "scope 1 block email.*");
}

#[tokio::test]
async fn a_nested_scope_cannot_widen_a_drop_policy() {
    let recorder = Recorder::new();
    let steps = json!([{ "scope": "inherit", "end": "commit", "steps": [defer("a.inside")] }]);
    let outcome = run_script(steps, granted().policy(DropAll), &recorder).await;

    assert_eq!(fates(&outcome), [("a.inside", "dropped")]);
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_nested_scope_narrows_a_block_policy_and_both_blocks_apply() {
    let recorder = Recorder::new();
    let steps = json!([
        { "scope": { "block": ["sms.*"] }, "end": "commit", "steps": [defer("email.send"), defer("sms.send"), defer("orders.save")] },
    ]);
    let outcome = run_script(
        steps,
        granted().policy(Block::new(["email.*"]).unwrap()),
        &recorder,
    )
    .await;

    assert_eq!(
        fates(&outcome),
        [
            ("email.send", "blocked"),
            ("sms.send", "blocked"),
            ("orders.save", "dispatched")
        ]
    );
    assert_eq!(
        &*outcome.intents[0].rule, "block email.*",
        "the outermost rule decides"
    );
    assert_eq!(recorder.effects(), ["orders.save"]);
}

#[tokio::test]
async fn a_malformed_block_pattern_is_refused_invalid_and_the_run_goes_on() {
    let steps =
        json!([{ "open": "bad", "policy": { "block": ["email.{a,b}"] } }, defer("a.after")]);
    let outcome = run_script(steps, granted(), &Recorder::new()).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(results(&outcome)[0]["refused"]["kind"], "invalid");
}
