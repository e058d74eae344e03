//! Plans: what a run would dispatch, computed without performing an action,
//! saved, checked against the component and configuration, and applied
//! exactly, once, with the plan's idempotency keys.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use escrow_host::answers::Reply;
use escrow_host::handlers::{EffectKind, FnHandler, Handlers};
use escrow_host::outbox::{Outbox, SqliteOutbox};
use escrow_host::plans::{Plan, PlanError};
use escrow_host::{CallError, Committed, Delivery, Fate, Grants, Plugin, RunOptions};
use escrow_tests::{Journal, Recorder, fixtures, plugin, scripted};
use serde_json::{Value, json};

/// The checkout example's grants, and an order.
fn checkout_options() -> RunOptions {
    RunOptions::new()
        .grants(
            Grants::new()
                .effects(["payments.charge", "orders.save", "email.send"])
                .unwrap(),
        )
        .input(br#"{"id": 42}"#)
}

fn payload(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn a_plan_holds_the_intents_commit_would_dispatch_and_dispatches_nothing() {
    let recorder = Recorder::new();
    let checkout = plugin(fixtures::CHECKOUT).with_sinks(recorder.sinks());

    let plan = checkout.plan(checkout_options()).await.unwrap();

    let effects: Vec<(u64, &str)> = plan
        .intents
        .iter()
        .map(|i| (i.seq, i.effect.as_str()))
        .collect();
    assert_eq!(
        effects,
        [
            (1, "payments.charge"),
            (2, "orders.save"),
            (3, "email.send")
        ]
    );
    assert_eq!(
        payload(&plan.intents[0].payload.0),
        json!({ "order": 42, "amount": 1999 })
    );
    assert_eq!(Some(plan.component_sha256.as_str()), checkout.sha256());
    assert_eq!(plan.input.0, br#"{"id": 42}"#);
    assert!(recorder.seen().is_empty(), "a plan dispatches nothing");
}

#[tokio::test]
async fn applying_a_plan_delivers_its_intents_once_under_the_plan_s_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::new(SqliteOutbox::open(dir.path().join("o.db")).unwrap());
    let recorder = Recorder::new();
    let checkout = plugin(fixtures::CHECKOUT)
        .with_sinks(recorder.sinks())
        .with_outbox(Some(outbox));
    let options = checkout_options();
    let plan = checkout.plan(options.clone()).await.unwrap();

    let applied = plan.apply(&checkout, &options).await.unwrap();
    assert_eq!(applied.committed, Committed::Now);
    assert!(
        applied
            .intents
            .iter()
            .all(|i| i.fate == Fate::Dispatched(Delivery::Delivered))
    );
    let keys: Vec<String> = recorder
        .seen()
        .iter()
        .map(|d| d.idempotency_key.clone())
        .collect();
    let id = plan.id;
    assert_eq!(
        keys,
        [format!("{id}:1"), format!("{id}:2"), format!("{id}:3")]
    );

    let again = plan.apply(&checkout, &options).await.unwrap();
    assert_eq!(again.committed, Committed::Already);
    assert_eq!(
        recorder.seen().len(),
        3,
        "the second apply delivered nothing"
    );
}

#[tokio::test]
async fn a_plan_made_with_another_component_is_refused_naming_both() {
    let recorder = Recorder::new();
    let options = checkout_options();
    let plan = plugin(fixtures::CHECKOUT)
        .plan(options.clone())
        .await
        .unwrap();
    let next = plugin(fixtures::CHECKOUT_NEXT).with_sinks(recorder.sinks());

    let error = plan.apply(&next, &options).await.unwrap_err();

    let (planned, now) = (&plan.component_sha256[..12], &next.sha256().unwrap()[..12]);
    assert_eq!(
        error.to_string(),
        format!("the plugin changed: sha256 {planned}… → {now}…")
    );
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn a_plan_made_under_other_grants_or_another_policy_is_refused_naming_what_changed() {
    let checkout = plugin(fixtures::CHECKOUT);
    let options = checkout_options();
    let plan = checkout.plan(options.clone()).await.unwrap();

    let wider = options
        .clone()
        .grants(Grants::new().effects(["*"]).unwrap());
    let error = plan.apply(&checkout, &wider).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "the configuration changed since the plan was made: its grants"
    );

    let dropping = options.policy(escrow_host::policy::DropAll);
    assert!(matches!(
        plan.check(&checkout, &dropping, SystemTime::now()),
        Err(PlanError::ConfigChanged(parts)) if parts == ["policy"]
    ));
}

#[tokio::test]
async fn an_expired_plan_is_refused() {
    let checkout = plugin(fixtures::CHECKOUT);
    let options = checkout_options();
    let plan = checkout
        .plan(options.clone())
        .await
        .unwrap()
        .expires_in(Duration::from_secs(60));

    assert!(plan.check(&checkout, &options, SystemTime::now()).is_ok());
    let later = plan.expires_at + Duration::from_secs(1);
    let error = plan.check(&checkout, &options, later).unwrap_err();
    assert!(
        error.to_string().starts_with("the plan expired at 20"),
        "{error}"
    );
}

#[tokio::test]
async fn a_plan_reads_back_from_its_file_as_it_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    let plan = plugin(fixtures::CHECKOUT)
        .plan(checkout_options())
        .await
        .unwrap();

    plan.write(&path).unwrap();

    let read = Plan::read(&path).unwrap();
    // Times are kept to the second.
    assert_eq!(read.id, plan.id);
    assert_eq!(read.intents, plan.intents);
    assert_eq!(read.answers, plan.answers);
    assert_eq!(read.config, plan.config);
}

#[tokio::test]
async fn a_truncated_edited_or_newer_plan_file_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    plugin(fixtures::CHECKOUT)
        .plan(checkout_options())
        .await
        .unwrap()
        .write(&path)
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let bad = dir.path().join("bad.json");
    let cases = [
        (text[..text.len() / 2].to_owned(), "is not a plan"),
        (
            text.replace("1999", "2099"),
            "was changed after it was written",
        ),
        (
            text.replace("\"version\": 1", "\"version\": 2"),
            "is plan format version 2",
        ),
        (
            text.replace("escrow-plan", "escrow-recording"),
            "its format is `escrow-recording`",
        ),
    ];
    for (content, expected) in cases {
        std::fs::write(&bad, content).unwrap();
        let error = Plan::read(&bad).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }
}

/// A query `prices.get` answering `answer`, and an action
/// `payments.charge` calling `journal`.
fn shop(answer: &'static str, journal: &Journal) -> Plugin {
    let mut handlers: Handlers = journal.handlers(&["payments.charge"], &[]);
    handlers
        .query(
            "prices.get",
            FnHandler(move |_: &[u8]| Ok::<_, CallError>(answer.as_bytes().to_vec())),
        )
        .unwrap();
    scripted().with_handlers(handlers)
}

fn steps(steps: Value) -> RunOptions {
    RunOptions::new()
        .grants(Grants::new().effects(["*"]).unwrap())
        .input(serde_json::to_vec(&json!({ "steps": steps })).unwrap())
}

#[tokio::test]
async fn an_action_asked_during_a_plan_fails_it_and_is_not_performed() {
    let journal = Journal::new();
    let plugin = shop("1999", &journal);

    let error = plugin
        .plan(steps(json!([
            { "defer": "orders.save", "payload": { "order": 7 } },
            { "invoke": "payments.charge", "payload": { "amount": 1999 } },
        ])))
        .await
        .unwrap_err();

    assert!(
        matches!(&error, PlanError::Action(effect) if effect == "payments.charge"),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "the plugin asked for the action `payments.charge`; a plan performs no action, and none was"
    );
    assert!(journal.effects().is_empty(), "the action was performed");
}

#[tokio::test]
async fn a_plan_performs_queries_and_keeps_their_answers_in_order() {
    let journal = Journal::new();
    let plugin = shop(r#"{"cents": 1999}"#, &journal);

    let plan = plugin
        .plan(steps(json!([
            { "defer_answer": "payments.charge", "invoke": "prices.get", "payload": "book" },
        ])))
        .await
        .unwrap();

    assert_eq!(plan.answers.calls.len(), 1);
    assert_eq!(plan.answers.calls[0].effect, "prices.get");
    assert_eq!(
        plan.answers.calls[0].reply,
        Reply::Answer(br#"{"cents": 1999}"#.to_vec().into())
    );
    assert_eq!(
        payload(&plan.intents[0].payload.0),
        json!({ "cents": 1999 })
    );
}

#[tokio::test]
async fn verify_runs_the_plugin_again_on_the_plan_s_answers_whatever_the_world_says_now() {
    let journal = Journal::new();
    let script = json!([
        { "defer_answer": "payments.charge", "invoke": "prices.get", "payload": "book" },
    ]);
    let plan = shop("1999", &journal)
        .plan(steps(script.clone()))
        .await
        .unwrap();
    // The price changed since: verify does not ask.
    let now = shop("2099", &journal);
    let options = steps(script);

    plan.verify(&now, options.clone()).await.unwrap();

    // Refresh asks, and refuses with the difference.
    let error = plan.refresh(&now, options).await.unwrap_err();
    let PlanError::Differs(differences) = &error else {
        panic!("{error}");
    };
    assert_eq!(
        differences
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["~ payments.charge #2: 1999 → 2099"]
    );
}

#[tokio::test]
async fn verify_refuses_a_plugin_whose_intents_differ_on_the_same_answers() {
    let script = json!([{ "defer_clock": "audit.tick" }]);
    let plugin = scripted();
    let plan = plugin.plan(steps(script.clone())).await.unwrap();

    let error = plan.verify(&plugin, steps(script)).await.unwrap_err();

    let PlanError::Differs(differences) = &error else {
        panic!("{error}");
    };
    assert!(
        differences[0]
            .to_string()
            .starts_with("~ audit.tick #1: nanos "),
        "{}",
        differences[0]
    );
}

#[tokio::test]
async fn a_plan_applied_where_runs_need_approval_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::new(SqliteOutbox::open(dir.path().join("o.db")).unwrap());
    let recorder = Recorder::new();
    let checkout = plugin(fixtures::CHECKOUT)
        .with_sinks(recorder.sinks())
        .with_outbox(Some(outbox.clone()));
    let options = checkout_options()
        .require_approval(escrow_host::patterns::Patterns::effects(["payments.*"]).unwrap());
    let plan = checkout.plan(options.clone()).await.unwrap();

    let applied = plan.apply(&checkout, &options).await.unwrap();

    assert!(
        applied
            .intents
            .iter()
            .all(|i| i.fate == Fate::Dispatched(Delivery::Held))
    );
    assert!(recorder.seen().is_empty());
    let decision = outbox.approve(plan.id, "ana", None).await.unwrap();
    assert_eq!(decision.intents.len(), 3);
}

#[tokio::test]
async fn a_plugin_linked_from_a_compiled_component_cannot_be_planned() {
    let component = plugin(fixtures::CHECKOUT).component().clone();
    let linked = escrow_tests::host().link(component).unwrap();
    let error = linked.plan(checkout_options()).await.unwrap_err();
    assert!(matches!(error, PlanError::NoComponentDigest), "{error}");
}

/// The handlers the test plugins are given are the shared `Arc` the plan
/// digests: a query registered as an action changes the digest.
#[tokio::test]
async fn a_handler_of_another_kind_changes_the_configuration() {
    let journal = Journal::new();
    let plugin = shop("1", &journal);
    let options = steps(json!([]));
    let plan = plugin.plan(options.clone()).await.unwrap();
    let mut handlers = Handlers::new();
    handlers
        .register("prices.get", EffectKind::Action, Arc::new(journal.clone()))
        .unwrap();
    let changed = plugin.with_handlers(handlers);
    assert!(matches!(
        plan.check(&changed, &options, SystemTime::now()),
        Err(PlanError::ConfigChanged(parts)) if parts == ["handlers"]
    ));
}
