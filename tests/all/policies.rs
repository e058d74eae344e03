//! Policies: `commit`, `drop`, `assert-none`, `block(patterns)` and custom
//! ones decide what happens to each intent.

use std::borrow::Cow;

use escrow_host::policy::{AssertNone, Block, Decision, DropAll, Policy};
use escrow_host::{Failure, Fate, Refusal, Status};
use escrow_tests::{Recorder, fates, granted, results, run_script};
use serde_json::json;

#[tokio::test]
async fn drop_records_every_intent_and_dispatches_none() {
    let recorder = Recorder::new();
    let steps = json!([
        { "defer": "payments.charge", "payload": 5 },
        { "defer": "email.send", "payload": "hi" },
    ]);
    let outcome = run_script(steps, granted().policy(DropAll), &recorder).await;

    assert_eq!(outcome.status(), Status::Dropped);
    assert_eq!(
        fates(&outcome),
        [("payments.charge", "dropped"), ("email.send", "dropped")]
    );
    assert_eq!(
        outcome.intents[1].payload, br#""hi""#,
        "dropped intents keep their payload for inspection"
    );
    assert_eq!(&*outcome.intents[0].rule, "policy drop");
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn drop_is_invisible_to_the_guest() {
    let steps = json!([{ "defer": "payments.charge", "payload": 5 }, "pending"]);
    let outcome = run_script(steps, granted().policy(DropAll), &Recorder::new()).await;

    let results = results(&outcome);
    assert_eq!(results[0], json!({ "seq": 1 }));
    assert_eq!(results[1][0]["effect"], "payments.charge");
}

#[tokio::test]
async fn assert_none_refuses_the_first_enqueue_and_fails_the_run_even_if_the_guest_carries_on() {
    let recorder = Recorder::new();
    // The guest ignores the refusal and makes a second request.
    let steps = json!([
        { "defer": "payments.charge", "payload": 5 },
        { "defer": "email.send", "payload": 6 },
    ]);
    let outcome = run_script(steps, granted().policy(AssertNone), &recorder).await;

    assert_eq!(outcome.status(), Status::Failed);
    assert_eq!(
        outcome.result,
        Err(Failure::Forbidden {
            effect: "payments.charge".into(),
            rule: "policy assert-none".into(),
        })
    );
    let Fate::Refused(Refusal::Forbidden(message)) = &outcome.intents[0].fate else {
        panic!(
            "expected a forbidden refusal, got {:?}",
            outcome.intents[0].fate
        );
    };
    assert!(message.contains("payments.charge"), "{message}");
    // Nothing is buffered: every request was refused on the spot.
    assert_eq!(
        fates(&outcome),
        [("payments.charge", "refused"), ("email.send", "refused")]
    );
    assert!(recorder.seen().is_empty());
}

#[tokio::test]
async fn block_keeps_matching_intents_visible_and_dispatches_only_the_others() {
    let recorder = Recorder::new();
    let steps = json!([
        { "defer": "email.send", "payload": 1 },
        { "defer": "orders.save", "payload": 2 },
        { "defer": "email.batch.send", "payload": 3 },
    ]);
    let block = Block::new(["email.*"]).unwrap();
    let outcome = run_script(steps, granted().policy(block), &recorder).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(
        fates(&outcome),
        [
            ("email.send", "blocked"),
            ("orders.save", "dispatched"),
            ("email.batch.send", "blocked")
        ]
    );
    assert_eq!(&*outcome.intents[0].rule, "block email.*");
    assert_eq!(recorder.effects(), ["orders.save"]);
}

/// Blocks large charges and drops analytics; commits the rest.
#[derive(Debug)]
struct Review;

impl Policy for Review {
    fn decide(&self, effect: &str, payload: &[u8]) -> Decision {
        let amount = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["amount"].as_u64());
        match effect {
            "payments.charge" if amount > Some(100) => {
                Decision::Block(Cow::Borrowed("charges above 100 need review"))
            }
            e if e.starts_with("analytics.") => {
                Decision::Drop(Cow::Borrowed("analytics are sampled elsewhere"))
            }
            "admin.delete" => Decision::Forbid(Cow::Borrowed("admin effects are never allowed")),
            _ => Decision::Commit,
        }
    }
}

#[tokio::test]
async fn a_custom_policy_decides_each_intent_from_its_effect_and_payload() {
    let recorder = Recorder::new();
    let steps = json!([
        { "defer": "payments.charge", "payload": { "amount": 50 } },
        { "defer": "payments.charge", "payload": { "amount": 500 } },
        { "defer": "analytics.track", "payload": {} },
    ]);
    let outcome = run_script(steps, granted().policy(Review), &recorder).await;

    assert_eq!(
        fates(&outcome),
        [
            ("payments.charge", "dispatched"),
            ("payments.charge", "blocked"),
            ("analytics.track", "dropped")
        ]
    );
    assert_eq!(&*outcome.intents[1].rule, "charges above 100 need review");
    assert_eq!(recorder.seen().len(), 1);
    assert_eq!(recorder.seen()[0].payload, br#"{"amount":50}"#);
}

#[tokio::test]
async fn a_custom_policy_that_forbids_an_effect_fails_the_run() {
    let recorder = Recorder::new();
    let steps = json!([
        { "defer": "orders.save", "payload": 1 },
        { "defer": "admin.delete", "payload": 2 },
    ]);
    let outcome = run_script(steps, granted().policy(Review), &recorder).await;

    assert_eq!(
        outcome.result,
        Err(Failure::Forbidden {
            effect: "admin.delete".into(),
            rule: "admin effects are never allowed".into(),
        })
    );
    assert_eq!(
        fates(&outcome),
        [("orders.save", "discarded"), ("admin.delete", "refused")]
    );
    assert!(recorder.seen().is_empty());
}
