//! Every run has a fresh store and instance: nothing leaks between runs, and
//! concurrent runs never see each other's intents.

use std::time::{Duration, Instant};

use escrow_host::{Host, RunOptions, Status};
use escrow_tests::{Recorder, all_effects, fixtures, results, run_script};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runs_never_see_each_others_intents() {
    let runs = (0..16).map(|run| {
        tokio::spawn(async move {
            let recorder = Recorder::new();
            let effect = format!("run{run}.effect");
            let steps = json!([
                { "repeat": 20, "steps": [{ "defer": effect, "payload": run }] },
                "pending",
            ]);
            let outcome =
                run_script(steps, RunOptions::new().grants(all_effects()), &recorder).await;
            (run, effect, outcome, recorder)
        })
    });
    for run in runs {
        let (run, effect, outcome, recorder) = run.await.unwrap();
        assert_eq!(outcome.status(), Status::Committed);
        assert_eq!(outcome.intents.len(), 20, "run {run}");
        assert!(
            outcome.intents.iter().all(|i| i.effect == effect),
            "run {run}"
        );
        let pending = results(&outcome)[1].as_array().unwrap().clone();
        assert_eq!(pending.len(), 20, "run {run}");
        assert!(
            pending.iter().all(|i| i["effect"] == effect.as_str()),
            "run {run}"
        );
        assert_eq!(recorder.seen().len(), 20, "run {run}");
    }
}

#[tokio::test]
async fn every_run_starts_from_a_fresh_instance() {
    let options = || RunOptions::new().grants(all_effects());
    let steps = json!(["pending", { "defer": "a.one", "payload": 1 }]);
    let first = run_script(steps.clone(), options(), &Recorder::new()).await;
    let second = run_script(steps, options(), &Recorder::new()).await;

    for outcome in [first, second] {
        let results = results(&outcome);
        assert_eq!(
            results[0],
            json!([]),
            "nothing is left over from an earlier run"
        );
        assert_eq!(results[1], json!({ "seq": 1 }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_beyond_the_concurrency_limit_wait_for_a_free_slot() {
    let host = Host::builder().max_concurrent_runs(2).build().unwrap();
    let plugin = host.load_file(fixtures::SCRIPTED).unwrap();
    let input = serde_json::to_vec(&json!({ "steps": [{ "sleep_ms": 100 }] })).unwrap();
    let started = Instant::now();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let plugin = plugin.clone();
            let input = input.clone();
            tokio::spawn(async move { plugin.run(RunOptions::new().input(input)).await })
        })
        .collect();
    for run in runs {
        assert_eq!(run.await.unwrap().unwrap().status(), Status::Committed);
    }
    // Six runs of 100 ms, two at a time: at least three rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}
