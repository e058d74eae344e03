//! Sinks: committed intents are delivered in order; a sink failing on one
//! intent loses none of the others, and every delivery result is reported.

use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use escrow_host::CallError;
use escrow_host::sinks::{AsyncFnSink, FnSink, JsonLines, Sinks};
use escrow_host::{Delivery, Fate, Intent, RunOptions, Status};
use escrow_tests::{Recorder, all_effects, delivered, scripted};
use serde_json::json;

fn script(steps: serde_json::Value) -> RunOptions {
    RunOptions::new()
        .grants(all_effects())
        .input(serde_json::to_vec(&json!({ "steps": steps })).unwrap())
}

#[tokio::test]
async fn a_sink_failing_on_one_intent_does_not_stop_the_others() {
    let recorder = Recorder::new();
    let steps = json!([
        { "defer": "a.first", "payload": 1 },
        { "defer": "b.fail", "payload": 2 },
        { "defer": "c.third", "payload": 3 },
    ]);
    let outcome = scripted()
        .with_sinks(recorder.sinks())
        .run(script(steps))
        .await
        .unwrap();

    assert_eq!(
        outcome.status(),
        Status::Committed,
        "the run itself succeeded"
    );
    assert_eq!(recorder.effects(), ["a.first", "c.third"]);
    assert!(delivered(&outcome.intents[0]) && delivered(&outcome.intents[2]));
    assert_eq!(
        outcome.intents[1].fate,
        Fate::Dispatched(Delivery::Failed("b.fail is down".into()))
    );
    assert_eq!(outcome.undelivered().count(), 1);
}

#[tokio::test]
async fn an_intent_no_route_matches_is_reported_without_a_sink() {
    let recorder = Recorder::new();
    let mut sinks = Sinks::new();
    sinks.route("email.*", recorder.clone()).unwrap();
    let steps =
        json!([{ "defer": "email.send", "payload": 1 }, { "defer": "orders.save", "payload": 2 }]);
    let outcome = scripted()
        .with_sinks(sinks)
        .run(script(steps))
        .await
        .unwrap();

    assert!(delivered(&outcome.intents[0]));
    assert_eq!(outcome.intents[1].fate, Fate::Dispatched(Delivery::NoSink));
}

#[tokio::test]
async fn routes_are_tried_in_order_and_the_first_match_takes_the_intent() {
    let specific = Recorder::new();
    let rest = Recorder::new();
    let mut sinks = Sinks::new();
    sinks.route("email.urgent", specific.clone()).unwrap();
    sinks.route("*", rest.clone()).unwrap();
    let steps = json!([{ "defer": "email.urgent", "payload": 1 }, { "defer": "email.digest", "payload": 2 }]);
    scripted()
        .with_sinks(sinks)
        .run(script(steps))
        .await
        .unwrap();

    assert_eq!(specific.effects(), ["email.urgent"]);
    assert_eq!(rest.effects(), ["email.digest"]);
}

#[tokio::test]
async fn sync_and_async_handlers_receive_the_committed_payload_byte_for_byte() {
    let sync_seen = Arc::new(Mutex::new(Vec::new()));
    let async_seen = Arc::new(Mutex::new(Vec::new()));
    let mut sinks = Sinks::new();
    let seen = Arc::clone(&sync_seen);
    sinks
        .route(
            "sync.*",
            FnSink(move |intent: &Intent| {
                seen.lock().unwrap().push(intent.payload.clone());
                Ok::<_, CallError>(())
            }),
        )
        .unwrap();
    let seen = Arc::clone(&async_seen);
    sinks
        .route(
            "async.*",
            AsyncFnSink(move |intent: Intent| {
                let seen = Arc::clone(&seen);
                async move {
                    tokio::task::yield_now().await;
                    seen.lock().unwrap().push(intent.payload);
                    Ok::<_, CallError>(())
                }
            }),
        )
        .unwrap();
    let steps = json!([
        { "defer": "sync.a", "payload": { "text": "é\u{1F600}" } },
        { "defer": "async.b", "payload": [1, 2, 3] },
    ]);
    let outcome = scripted()
        .with_sinks(sinks)
        .run(script(steps))
        .await
        .unwrap();

    assert!(outcome.intents.iter().all(delivered));
    assert_eq!(
        *sync_seen.lock().unwrap(),
        [r#"{"text":"é😀"}"#.as_bytes().to_vec()]
    );
    assert_eq!(*async_seen.lock().unwrap(), [b"[1,2,3]".to_vec()]);
}

#[tokio::test]
async fn a_sink_that_does_not_answer_is_cut_off_by_the_delivery_timeout() {
    let mut sinks = Sinks::new();
    sinks
        .route(
            "*",
            AsyncFnSink(|_: Intent| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, CallError>(())
            }),
        )
        .unwrap();
    sinks.timeout(Duration::from_millis(50));
    let steps = json!([{ "defer": "slow.one", "payload": 1 }]);
    let outcome = scripted()
        .with_sinks(sinks)
        .run(script(steps))
        .await
        .unwrap();

    let Fate::Dispatched(Delivery::Failed(error)) = &outcome.intents[0].fate else {
        panic!("{:?}", outcome.intents[0].fate);
    };
    assert!(error.contains("did not answer"), "{error}");
}

#[tokio::test]
async fn the_json_lines_sink_appends_one_line_per_committed_intent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("intents.jsonl");
    std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
    let mut sinks = Sinks::new();
    sinks
        .route("*", JsonLines::append_to(&path).unwrap())
        .unwrap();
    let steps = json!([
        { "defer": "orders.save", "payload": { "id": 7 } },
        { "defer_size": "blob.put", "bytes": 3 },
    ]);
    let outcome = scripted()
        .with_sinks(sinks)
        .run(script(steps))
        .await
        .unwrap();
    assert!(outcome.intents.iter().all(delivered));

    let lines: Vec<serde_json::Value> =
        std::io::BufReader::new(std::fs::File::open(&path).unwrap())
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
    let run_id = outcome.run_id.to_string();
    let ts = lines[1]["ts"].as_str().unwrap().to_owned();
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-11-30T21:10:19.297Z".len(),
        "{ts}"
    );
    assert_eq!(
        lines,
        [
            json!({ "earlier": true }),
            json!({ "seq": 1, "effect": "orders.save", "payload": { "id": 7 },
                    "idempotency_key": format!("{run_id}:1"), "run_id": run_id,
                    "plugin": "fixture_scripted", "ts": ts }),
            json!({ "seq": 2, "effect": "blob.put", "payload_base64": "AAAA",
                    "idempotency_key": format!("{run_id}:2"), "run_id": run_id,
                    "plugin": "fixture_scripted", "ts": lines[2]["ts"] }),
        ]
    );
}
