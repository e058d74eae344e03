//! Run history, on a real SQLite file and a real Postgres server: every
//! finished run is kept (failed and dropped ones too), listed newest first
//! by status, plugin, effect and start, a page at a time, with its
//! intents' delivery, and pruned with delivered entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use escrow_host::clock::ManualClock;
use escrow_host::handlers::Handlers;
use escrow_host::outbox::{EntryStatus, Outbox, RunFilter, RunSummary, Worker};
use escrow_host::{RunId, Status};
use escrow_tests::{Recorder, scripted};
use serde_json::{Value, json};

use crate::outbox::{Backend, script};

/// Waits until the history lists at least `n` runs (it is written after
/// each run, in the background).
async fn listed(outbox: &Outbox, filter: RunFilter, n: usize) -> Vec<RunSummary> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let runs = outbox.runs(&filter).await.unwrap();
        if runs.len() >= n || Instant::now() > until {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn all(limit: u32) -> RunFilter {
    RunFilter {
        limit,
        ..RunFilter::default()
    }
}

async fn run(outbox: &Outbox, recorder: &Recorder, steps: Value) -> RunId {
    scripted()
        .with_outbox(Some(outbox.clone()))
        .with_sinks(recorder.sinks())
        .run(script(steps))
        .await
        .unwrap()
        .run_id
}

#[tokio::test]
async fn every_finished_run_is_kept_failed_and_dropped_ones_too() {
    for backend in Backend::both() {
        let outbox = backend.open().await.keep_history();
        let recorder = Recorder::new();
        let committed = run(
            &outbox,
            &recorder,
            json!([{ "defer": "email.send", "payload": 1 }]),
        )
        .await;
        let failed = run(
            &outbox,
            &recorder,
            json!([{ "defer": "email.send", "payload": 2 }, { "fail": "no" }]),
        )
        .await;
        let dropped = scripted()
            .with_outbox(Some(outbox.clone()))
            .run(
                script(json!([{ "defer": "email.send", "payload": 3 }]))
                    .policy(escrow_host::policy::DropAll),
            )
            .await
            .unwrap();
        assert_eq!(dropped.status(), Status::Dropped);

        let runs = listed(&outbox, all(10), 3).await;

        let seen: Vec<(RunId, &str)> = runs.iter().map(|r| (r.run_id, r.status.as_str())).collect();
        assert_eq!(
            seen,
            [
                (dropped.run_id, "dropped"),
                (failed, "failed"),
                (committed, "committed")
            ],
            "{}",
            backend.name()
        );
        let kept = outbox.run(failed).await.unwrap().unwrap();
        let outcome: Value = serde_json::from_str(&kept.outcome).unwrap();
        assert_eq!(outcome["status"], "failed");
        assert_eq!(outcome["error"], "the plugin returned an error: no");
        assert_eq!(kept.effects, ["email.send"]);
        assert_eq!(
            kept.component_sha256.as_deref(),
            scripted().sha256(),
            "the run names the component it ran"
        );
    }
}

#[tokio::test]
async fn runs_are_listed_by_status_plugin_and_effect_a_page_at_a_time() {
    for backend in Backend::both() {
        let outbox = backend.open().await.keep_history();
        let recorder = Recorder::new();
        let mut ids = Vec::new();
        for n in 0..7 {
            let effect = if n % 2 == 0 {
                "email.send"
            } else {
                "payments.charge"
            };
            ids.push(
                run(
                    &outbox,
                    &recorder,
                    json!([{ "defer": effect, "payload": n }]),
                )
                .await,
            );
        }
        listed(&outbox, all(10), 7).await;

        // Newest first, three at a time, each page after the last one's run.
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let page = outbox
                .runs(&RunFilter {
                    before,
                    limit: 3,
                    ..RunFilter::default()
                })
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            before = page.last().map(|r| r.run_id);
            pages.push(page.iter().map(|r| r.run_id).collect::<Vec<_>>());
        }
        ids.reverse();
        assert_eq!(pages.concat(), ids, "{}", backend.name());
        assert_eq!(pages.len(), 3);

        let charging = outbox
            .runs(&RunFilter {
                effect: Some("payments.charge".into()),
                limit: 50,
                ..RunFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(charging.len(), 3, "{}", backend.name());
        let none = outbox
            .runs(&RunFilter {
                plugin: Some("another".into()),
                status: Some("committed".into()),
                limit: 50,
                ..RunFilter::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
        let scripted_runs = outbox
            .runs(&RunFilter {
                plugin: Some("fixture_scripted".into()),
                status: Some("committed".into()),
                since_ms: Some(0),
                limit: 50,
                ..RunFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(scripted_runs.len(), 7, "{}", backend.name());
        let future = outbox
            .runs(&RunFilter {
                since_ms: Some(i64::from(u32::MAX) * 1000),
                limit: 50,
                ..RunFilter::default()
            })
            .await
            .unwrap();
        assert!(future.is_empty());
    }
}

#[tokio::test]
async fn a_kept_run_shows_where_each_of_its_intents_stands() {
    for backend in Backend::both() {
        let outbox = backend.open().await.keep_history();
        let recorder = Recorder::new();
        let run_id = run(
            &outbox,
            &recorder,
            json!([
                { "defer": "a.ok", "payload": 1 },
                { "defer": "b.fail", "payload": 2 },
            ]),
        )
        .await;

        let entries = outbox.store().run_entries(run_id).await.unwrap();

        let states: Vec<(u64, EntryStatus, u32)> = entries
            .iter()
            .map(|e| (e.entry.seq, e.status, e.attempts))
            .collect();
        assert_eq!(
            states,
            [(1, EntryStatus::Delivered, 1), (2, EntryStatus::Pending, 1)],
            "{}",
            backend.name()
        );
        assert!(
            entries[1]
                .last_error
                .as_deref()
                .unwrap()
                .contains("b.fail is down")
        );
    }
}

#[tokio::test]
async fn kept_runs_past_the_retention_are_pruned_by_workers() {
    for backend in Backend::both() {
        let clock = ManualClock::new(1_000_000);
        let outbox = backend
            .open()
            .await
            .clock(Arc::new(clock.clone()))
            .retain_delivered(Duration::from_secs(60))
            .keep_history();
        let recorder = Recorder::new();
        run(
            &outbox,
            &recorder,
            json!([{ "defer": "a.ok", "payload": 1 }]),
        )
        .await;
        assert_eq!(listed(&outbox, all(10), 1).await.len(), 1);

        clock.advance(Duration::from_secs(61));
        Worker::new(outbox.clone(), recorder.sinks(), Handlers::new())
            .run_once()
            .await
            .unwrap();

        assert!(
            outbox.runs(&all(10)).await.unwrap().is_empty(),
            "{}",
            backend.name()
        );
    }
}

#[tokio::test]
async fn an_outbox_that_keeps_no_history_lists_no_run() {
    let backend = Backend::Sqlite(tempfile::tempdir().unwrap());
    let outbox = backend.open().await;
    run(
        &outbox,
        &Recorder::new(),
        json!([{ "defer": "a.ok", "payload": 1 }]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(outbox.runs(&all(10)).await.unwrap().is_empty());
}
