//! Approvals, on a real SQLite file and a real Postgres server: a committed
//! run whose intents match `require_approval` waits in the outbox, held,
//! until a person approves it (its intents are delivered in order) or
//! rejects it (they never are, and its journaled compensations are
//! performed once); every decision is kept; exactly one of two racing
//! decisions wins; a run held too long expires.

use std::sync::Arc;
use std::time::Duration;

use escrow_host::clock::ManualClock;
use escrow_host::outbox::{
    EXPIRED, EXPIRY_DECIDER, EntryStatus, Filter, Outbox, OutboxError, Retry, Verdict, Worker,
};
use escrow_host::patterns::Patterns;
use escrow_host::{Delivery, Dispatch, Error, Fate, Host, RunId, RunOptions, Status};
use escrow_tests::{Recorder, fixtures, plugin, scripted};
use serde_json::json;

use crate::outbox::{Backend, Booking, book_flight, booking_handlers, script};

fn payments() -> Patterns {
    Patterns::effects(["payments.*"]).unwrap()
}

/// The checkout example's order, held when it charges.
fn held_checkout(order: u64) -> RunOptions {
    RunOptions::new()
        .grants(escrow_tests::all_effects())
        .input(serde_json::to_vec(&json!({ "id": order })).unwrap())
        .require_approval(payments())
}

/// Runs the checkout example for `order` into `outbox`, held.
async fn hold_checkout(outbox: &Outbox, recorder: &Recorder, order: u64) -> RunId {
    let outcome = plugin(fixtures::CHECKOUT)
        .with_outbox(Some(outbox.clone()))
        .with_sinks(recorder.sinks())
        .run(held_checkout(order))
        .await
        .unwrap();
    assert_eq!(outcome.status(), Status::Held);
    outcome.run_id
}

fn worker(outbox: &Outbox, recorder: &Recorder) -> Worker {
    Worker::new(
        outbox.clone(),
        recorder.sinks(),
        escrow_host::handlers::Handlers::new(),
    )
}

#[tokio::test]
async fn a_run_with_an_intent_that_needs_approval_is_held_and_nothing_is_delivered() {
    for backend in Backend::both() {
        let outbox = backend.open().await;
        let recorder = Recorder::new();

        let outcome = plugin(fixtures::CHECKOUT)
            .with_outbox(Some(outbox.clone()))
            .with_sinks(recorder.sinks())
            .run(held_checkout(42))
            .await
            .unwrap();

        assert_eq!(outcome.status(), Status::Held, "{}", backend.name());
        assert_eq!(outcome.to_json()["status"], "held");
        assert!(
            outcome
                .intents
                .iter()
                .all(|i| i.fate == Fate::Dispatched(Delivery::Held))
        );
        assert_eq!(outcome.undelivered().count(), 0);
        let held = outbox
            .store()
            .list(&Filter {
                status: Some(EntryStatus::Held),
                limit: None,
            })
            .await
            .unwrap();
        assert_eq!(held.len(), 3);
        assert_eq!(
            worker(&outbox, &recorder)
                .run_once()
                .await
                .unwrap()
                .delivered,
            0
        );
        assert!(recorder.seen().is_empty(), "{}", backend.name());
        let stats = outbox.store().stats().await.unwrap();
        assert_eq!((stats.held, stats.pending), (3, 0));
    }
}

#[tokio::test]
async fn a_run_with_no_intent_that_needs_approval_is_delivered_as_usual() {
    let backend = Backend::Sqlite(tempfile::tempdir().unwrap());
    let outbox = backend.open().await;
    let recorder = Recorder::new();
    let outcome = scripted()
        .with_outbox(Some(outbox))
        .with_sinks(recorder.sinks())
        .run(script(json!([{ "defer": "email.send", "payload": 1 }])).require_approval(payments()))
        .await
        .unwrap();
    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(recorder.effects(), ["email.send"]);
}

#[tokio::test]
async fn an_approved_run_is_delivered_in_order_and_its_decision_is_kept() {
    for backend in Backend::both() {
        let outbox = backend.open().await;
        let recorder = Recorder::new();
        let run_id = hold_checkout(&outbox, &recorder, 42).await;

        let decision = outbox
            .approve(run_id, "ana", Some("the customer called"))
            .await
            .unwrap();
        worker(&outbox, &recorder).run_once().await.unwrap();

        assert_eq!(
            recorder.effects(),
            ["payments.charge", "orders.save", "email.send"],
            "{}",
            backend.name()
        );
        let kept = outbox.decisions(10).await.unwrap();
        assert_eq!(kept, std::slice::from_ref(&decision));
        assert_eq!(decision.verdict, Verdict::Approved);
        assert_eq!(decision.by, "ana");
        assert_eq!(decision.reason.as_deref(), Some("the customer called"));
        assert_eq!(decision.plugin, "checkout");
        assert_eq!(decision.intents.len(), 3);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&decision.intents[0].payload.0).unwrap(),
            json!({ "order": 42, "amount": 1999 })
        );
        let stats = outbox.store().stats().await.unwrap();
        assert_eq!(
            (stats.held, stats.delivered, stats.decisions.approved),
            (0, 3, 1)
        );
    }
}

#[tokio::test]
async fn a_rejected_run_is_never_delivered_and_its_compensations_are_performed_once() {
    for backend in Backend::both() {
        let outbox = backend.open().await;
        let booking = Booking::default();
        let recorder = Recorder::new();
        let outcome = scripted()
            .with_outbox(Some(outbox.clone()))
            .with_handlers(booking_handlers(&booking))
            .with_sinks(recorder.sinks())
            .run(
                script(json!([
                    book_flight(),
                    { "defer": "payments.charge", "payload": { "amount": 1 } },
                ]))
                .require_approval(payments()),
            )
            .await
            .unwrap();
        assert_eq!(outcome.status(), Status::Held, "{}", backend.name());

        let decision = outbox
            .reject(outcome.run_id, "bob", Some("fraud"))
            .await
            .unwrap();
        let worker = Worker::new(outbox.clone(), recorder.sinks(), booking_handlers(&booking));
        worker.run_once().await.unwrap();
        worker.run_once().await.unwrap();

        assert_eq!(decision.verdict, Verdict::Rejected);
        assert!(recorder.seen().is_empty(), "{}", backend.name());
        let run = outcome.run_id;
        assert_eq!(
            *booking.calls.lock().unwrap(),
            [
                format!("flight.book {run}:1"),
                format!("flight.cancel {run}:1:compensate")
            ],
            "{}",
            backend.name()
        );
        let stats = outbox.store().stats().await.unwrap();
        assert_eq!((stats.rejected, stats.held, stats.pending), (1, 0, 0));
        assert_eq!(stats.decisions.rejected, 1);
    }
}

#[tokio::test]
async fn an_approved_run_forgets_the_compensations_it_journaled() {
    let backend = Backend::Sqlite(tempfile::tempdir().unwrap());
    let outbox = backend.open().await;
    let booking = Booking::default();
    let recorder = Recorder::new();
    let outcome = scripted()
        .with_outbox(Some(outbox.clone()))
        .with_handlers(booking_handlers(&booking))
        .with_sinks(recorder.sinks())
        .run(
            script(json!([book_flight(), { "defer": "payments.charge", "payload": 1 }]))
                .require_approval(payments()),
        )
        .await
        .unwrap();

    outbox.approve(outcome.run_id, "ana", None).await.unwrap();
    Worker::new(outbox.clone(), recorder.sinks(), booking_handlers(&booking))
        .run_once()
        .await
        .unwrap();

    assert_eq!(recorder.effects(), ["payments.charge"]);
    assert_eq!(booking.calls.lock().unwrap().len(), 1, "a compensation ran");
    assert_eq!(outbox.store().stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn of_an_approval_racing_a_rejection_from_two_processes_exactly_one_wins() {
    for backend in Backend::both() {
        for round in 0..5 {
            let outbox = backend.open().await;
            let recorder = Recorder::new();
            let run_id = hold_checkout(&outbox, &recorder, round).await;
            // Two connections to the store, as two processes would have.
            let (first, second) = (backend.open().await, backend.open().await);

            let (approved, rejected) = tokio::join!(
                first.approve(run_id, "ana", None),
                second.reject(run_id, "bob", None)
            );

            let (won, lost) = match (approved, rejected) {
                (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
                other => panic!("{}: not exactly one: {other:?}", backend.name()),
            };
            let OutboxError::AlreadyDecided { verdict, by, .. } = &lost else {
                panic!("{}: {lost}", backend.name());
            };
            assert_eq!((*verdict, by.as_str()), (won.verdict, won.by.as_str()));
            assert!(!lost.to_string().contains('\n'));
            let kept = outbox.decisions(10).await.unwrap();
            let of_run: Vec<_> = kept.into_iter().filter(|d| d.run_id == run_id).collect();
            assert_eq!(of_run, [won]);
        }
    }
}

#[tokio::test]
async fn two_approvals_from_two_processes_keep_one_decision() {
    for backend in Backend::both() {
        let outbox = backend.open().await;
        let recorder = Recorder::new();
        let run_id = hold_checkout(&outbox, &recorder, 7).await;
        let (first, second) = (backend.open().await, backend.open().await);

        let (a, b) = tokio::join!(
            first.approve(run_id, "ana", None),
            second.approve(run_id, "bob", None)
        );

        assert_eq!(
            [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
            1,
            "{}",
            backend.name()
        );
        worker(&outbox, &recorder).run_once().await.unwrap();
        assert_eq!(recorder.seen().len(), 3, "delivered once");
    }
}

#[tokio::test]
async fn deciding_a_run_that_is_not_held_or_was_decided_changes_nothing() {
    for backend in Backend::both() {
        let outbox = backend.open().await;
        let recorder = Recorder::new();
        let stranger = RunId::new();
        let error = outbox.approve(stranger, "ana", None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("run {stranger} is not held for approval: nothing was changed")
        );

        let run_id = hold_checkout(&outbox, &recorder, 1).await;
        outbox.reject(run_id, "bob", Some("no")).await.unwrap();
        let before = outbox.store().stats().await.unwrap();
        let error = outbox.approve(run_id, "ana", None).await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("run {run_id} was already rejected by bob at ")),
            "{error}"
        );
        assert_eq!(outbox.store().stats().await.unwrap(), before);
        assert_eq!(outbox.decisions(10).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_held_entry_cannot_be_retried_around_its_approval() {
    let backend = Backend::Sqlite(tempfile::tempdir().unwrap());
    let outbox = backend.open().await;
    let run_id = hold_checkout(&outbox, &Recorder::new(), 1).await;
    let held = outbox.store().list(&Filter::default()).await.unwrap();
    assert!(held.iter().all(|e| e.entry.run_id == run_id));

    let error = outbox
        .store()
        .retry(&Retry::Ids(vec![held[0].id]), outbox.now_ms())
        .await
        .unwrap_err();

    assert!(
        error.to_string().contains("approve the run instead"),
        "{error}"
    );
}

#[tokio::test]
async fn a_run_held_past_its_expiry_is_rejected_as_expired_by_a_worker() {
    for backend in Backend::both() {
        let clock = ManualClock::new(1_000_000);
        let outbox = backend
            .open()
            .await
            .clock(Arc::new(clock.clone()))
            .approval_expiry(Duration::from_secs(3600));
        let recorder = Recorder::new();
        let run_id = hold_checkout(&outbox, &recorder, 3).await;

        worker(&outbox, &recorder).run_once().await.unwrap();
        assert!(
            outbox.decisions(10).await.unwrap().is_empty(),
            "expired early"
        );

        clock.advance(Duration::from_secs(3601));
        worker(&outbox, &recorder).run_once().await.unwrap();

        let decisions = outbox.decisions(10).await.unwrap();
        assert_eq!(decisions.len(), 1, "{}", backend.name());
        assert_eq!(decisions[0].run_id, run_id);
        assert_eq!(decisions[0].verdict, Verdict::Rejected);
        assert_eq!(decisions[0].by, EXPIRY_DECIDER);
        assert_eq!(decisions[0].reason.as_deref(), Some(EXPIRED));
        assert!(recorder.seen().is_empty());
        assert_eq!(outbox.store().stats().await.unwrap().decisions.expired, 1);
    }
}

#[tokio::test]
async fn approval_without_an_outbox_or_for_intents_left_to_the_embedder_is_refused() {
    let error = Host::builder()
        .require_approval(payments())
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Approval(_)), "{error}");

    let error = plugin(fixtures::CHECKOUT)
        .run(held_checkout(1))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("this plugin has none"),
        "{error}"
    );

    let backend = Backend::Sqlite(tempfile::tempdir().unwrap());
    let error = plugin(fixtures::CHECKOUT)
        .with_outbox(Some(backend.open().await))
        .run(held_checkout(1).dispatch(Dispatch::Hold))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Dispatch::Hold"), "{error}");
}
