//! Recordings and replays: a run recorded with `RunOptions::record`, run
//! again against a plugin version with every immediate effect, lock and
//! breaker answered from the recording, and the differences it would make.

use std::sync::Arc;

use escrow_host::answers::LockReply;
use escrow_host::backends::MemoryBreakers;
use escrow_host::breakers::{BreakerConfig, Breakers, Forced};
use escrow_host::handlers::FnHandler;
use escrow_host::plans::Verdict;
use escrow_host::recording::Recording;
use escrow_host::{CallError, Grants, Plugin, RunOptions};
use escrow_tests::{Journal, Recorder, fixtures, plugin, scripted};
use serde_json::{Value, json};

fn checkout_options() -> RunOptions {
    RunOptions::new().grants(
        Grants::new()
            .effects(["payments.charge", "orders.save", "email.send"])
            .unwrap(),
    )
}

/// Records `runs` checkout runs (orders 1 to `runs`, with amounts 1000 +
/// the order) into a fresh directory.
async fn record_checkouts(runs: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let checkout = plugin(fixtures::CHECKOUT).with_sinks(Recorder::new().sinks());
    for order in 1..=runs {
        let input = json!({ "id": order, "amount": 1000 + order });
        checkout
            .run_json(&input, checkout_options().record(dir.path()))
            .await
            .unwrap();
    }
    dir
}

#[tokio::test]
async fn each_recorded_run_is_a_file_holding_its_input_intents_and_result() {
    let dir = record_checkouts(2).await;

    let recordings = Recording::read_dir(dir.path()).unwrap();

    assert_eq!(recordings.len(), 2);
    let first = &recordings[0];
    assert!(dir.path().join(format!("{}.json", first.run_id)).exists());
    assert_eq!(
        first.component_sha256.as_deref(),
        plugin(fixtures::CHECKOUT).sha256()
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&first.input.0).unwrap(),
        json!({ "id": 1, "amount": 1001 })
    );
    let effects: Vec<(&str, &str)> = first
        .intents
        .iter()
        .map(|i| (i.effect.as_str(), i.fate.as_str()))
        .collect();
    assert_eq!(
        effects,
        [
            ("payments.charge", "committed"),
            ("orders.save", "committed"),
            ("email.send", "committed")
        ]
    );
}

#[tokio::test]
async fn twenty_checkouts_replayed_against_the_same_component_are_identical() {
    let dir = record_checkouts(20).await;
    let recordings = Recording::read_dir(dir.path()).unwrap();

    let report = plugin(fixtures::CHECKOUT)
        .replay(&recordings, checkout_options())
        .await
        .unwrap();

    assert_eq!(
        report.to_string(),
        "20 runs: 20 identical, 0 differ, 0 diverged"
    );
    assert!(report.all_identical());
}

#[tokio::test]
async fn checkouts_replayed_against_a_changed_component_show_the_fields_that_changed() {
    let dir = record_checkouts(20).await;
    let recordings = Recording::read_dir(dir.path()).unwrap();
    let recorder = Recorder::new();
    let next = plugin(fixtures::CHECKOUT_NEXT).with_sinks(recorder.sinks());

    let report = next.replay(&recordings, checkout_options()).await.unwrap();

    assert_eq!(
        report.to_string(),
        "20 runs: 0 identical, 20 differ, 0 diverged"
    );
    let Verdict::Differs { differences } = &report.runs[6].verdict else {
        panic!("{:?}", report.runs[6]);
    };
    let lines: Vec<String> = differences.iter().map(ToString::to_string).collect();
    assert_eq!(lines, ["~ payments.charge #1: amount 1007 → 1107"]);
    assert!(recorder.seen().is_empty(), "a replay dispatches nothing");
}

/// The scripted fixture with a query `prices.get` answering `price`, an
/// action `payments.charge` and a query `upstream.call` (behind the
/// breaker `upstream`) writing to `journal`; and its breakers.
fn shop(price: &'static str, journal: &Journal) -> (Plugin, Arc<Breakers>) {
    let mut handlers = journal.handlers(&["payments.charge"], &["upstream.call"]);
    handlers
        .query(
            "prices.get",
            FnHandler(move |_: &[u8]| Ok::<_, CallError>(price.as_bytes().to_vec())),
        )
        .unwrap();
    let mut breakers = Breakers::new(Arc::new(MemoryBreakers::new()));
    breakers
        .define("upstream", BreakerConfig::default())
        .unwrap();
    let breakers = Arc::new(breakers);
    let plugin = scripted()
        .with_handlers(handlers)
        .with_breakers(Arc::clone(&breakers));
    (plugin, breakers)
}

fn steps(steps: Value) -> RunOptions {
    RunOptions::new()
        .grants(
            Grants::new()
                .effects(["*"])
                .unwrap()
                .locks(["*"])
                .unwrap()
                .breakers(["*"])
                .unwrap(),
        )
        .input(serde_json::to_vec(&json!({ "steps": steps })).unwrap())
}

/// Records one run of `plugin` with `script` and returns its recording.
async fn record(plugin: &Plugin, script: Value) -> Recording {
    let dir = tempfile::tempdir().unwrap();
    plugin.run(steps(script).record(dir.path())).await.unwrap();
    Recording::read_dir(dir.path()).unwrap().remove(0)
}

#[tokio::test]
async fn a_replay_answers_immediate_effects_from_the_recording_and_calls_no_handler() {
    let journal = Journal::new();
    let script = json!([
        { "defer_answer": "payments.charge", "invoke": "prices.get", "payload": "book" },
        { "invoke": "payments.charge", "payload": { "amount": 1 } },
    ]);
    let recording = record(&shop("1999", &journal).0, script).await;
    assert_eq!(journal.effects(), ["payments.charge"]);

    // The price changed since; the replay is told the recorded one.
    let (now, _) = shop("2099", &journal);
    let report = now.replay(&[recording], steps(json!([]))).await.unwrap();

    assert!(report.all_identical(), "{report:?}");
    assert_eq!(
        journal.effects(),
        ["payments.charge"],
        "a handler was called"
    );
}

#[tokio::test]
async fn locks_and_breakers_are_answered_from_the_recording() {
    let journal = Journal::new();
    let script = json!([
        { "lock": ["account:1"], "timeout_ms": 100, "as": "a" },
        { "breaker": "upstream", "invoke": "upstream.call", "payload": {} },
    ]);
    let (shop, breakers) = shop("1", &journal);
    let recording = record(&shop, script).await;
    assert!(matches!(
        recording.answers.locks[0].reply,
        LockReply::Token(_)
    ));
    assert_eq!(journal.effects(), ["upstream.call"]);

    // Now the breaker is open and another holder has the lock: the replay
    // is told what the recorded run was told, and asks neither.
    breakers.force("upstream", Forced::Open).await.unwrap();
    let held = shop
        .host()
        .locks()
        .try_acquire_now(vec!["account:1".into()])
        .unwrap();
    let report = shop
        .replay(std::slice::from_ref(&recording), steps(json!([])))
        .await
        .unwrap();

    assert!(report.all_identical(), "{report:?}");
    assert_eq!(journal.effects(), ["upstream.call"], "a handler was called");
    shop.host().locks().release(held).await.unwrap();
}

#[tokio::test]
async fn a_run_that_asks_what_its_recording_lacks_diverged_at_that_call() {
    let journal = Journal::new();
    let (shop, _) = shop("1", &journal);
    let mut recording = record(
        &shop,
        json!([
            { "invoke": "prices.get", "payload": "a" },
            { "invoke": "prices.get", "payload": "b" },
        ]),
    )
    .await;
    // The recording has a charge where the plugin asks a price.
    recording.answers.calls[1].effect = "payments.charge".into();

    let report = shop.replay(&[recording], steps(json!([]))).await.unwrap();

    assert_eq!(
        report.to_string(),
        "1 run: 0 identical, 0 differ, 1 diverged"
    );
    assert_eq!(
        report.runs[0].verdict,
        Verdict::Diverged {
            why: "diverged at call #2: asked prices.get, the recording has payments.charge".into()
        }
    );
}

#[tokio::test]
async fn a_changed_immediate_payload_is_shown_field_by_field() {
    let journal = Journal::new();
    let (shop, _) = shop("1", &journal);
    let mut recording = record(
        &shop,
        json!([{ "invoke": "prices.get", "payload": { "sku": "book" } }]),
    )
    .await;
    recording.answers.calls[0].payload = br#"{"sku":"pen"}"#.to_vec().into();

    let report = shop.replay(&[recording], steps(json!([]))).await.unwrap();

    let Verdict::Differs { differences } = &report.runs[0].verdict else {
        panic!("{report:?}");
    };
    assert_eq!(
        differences
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [r#"~ call #1 prices.get: sku "pen" → "book""#]
    );
}

#[tokio::test]
async fn a_bad_file_among_the_recordings_refuses_them_all() {
    let dir = record_checkouts(2).await;
    std::fs::write(dir.path().join("broken.json"), "{\"format\": \"escrow-rec").unwrap();
    let error = Recording::read_dir(dir.path()).unwrap_err().to_string();
    assert!(error.contains("broken.json` is not a recording"), "{error}");
}
