//! Traces and metrics: a span per run with its identity, status and counts,
//! Prometheus metrics by status, fate and refusal, and observers that see
//! every outcome.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use escrow_host::{Host, RunOptions, Status};
use escrow_tests::{all_effects, fixtures};
use serde_json::json;

/// Log lines written by the subscriber, kept for the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn input(steps: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "steps": steps })).unwrap()
}

#[test]
fn a_run_leaves_a_span_with_its_identity_status_and_counts() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plugin = escrow_tests::scripted().with_name("traced");
    let steps = json!([{ "defer": "a.b", "payload": 1 }, { "defer": "nope", "payload": 2 }]);
    let run = || {
        runtime
            .block_on(
                plugin.run(
                    RunOptions::new()
                        .grants(escrow_host::Grants::new().effects(["a.*"]).unwrap())
                        .input(input(steps.clone())),
                ),
            )
            .unwrap()
    };
    // tracing decides once per call site, process-wide, whether anyone
    // listens, from the thread that meets it first: a test running a plugin
    // on another thread with no subscriber may have decided "nobody" for
    // escrow's. Meet them here, then have tracing ask again, from this
    // thread, whose subscriber listens.
    run();
    tracing::callsite::rebuild_interest_cache();
    let outcome = run();

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let closed: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| {
            l["span"]["name"] == "escrow.run"
                && l["fields"]["message"] == "close"
                && l["span"]["run_id"] == outcome.run_id.to_string()
        })
        .unwrap_or_else(|| panic!("no closed escrow.run span of the second run in {text}"));
    let span = &closed["span"];
    assert_eq!(span["plugin"], "traced");
    assert_eq!(span["status"], "committed");
    assert_eq!(span["intents"], 2);
    assert_eq!(span["refused"], 1);
}

fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| escrow_host::observe::prometheus().unwrap())
}

/// The value of the sample `name{labels}` in the Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn runs_intents_and_refusals_are_counted_in_prometheus_metrics() {
    let handle = metrics();
    let plugin = escrow_tests::scripted().with_name("metered");
    let options = RunOptions::new().grants(escrow_host::Grants::new().effects(["a.*"]).unwrap());
    let steps = json!([{ "defer": "a.b", "payload": 1 }, { "defer": "nope", "payload": 2 }]);
    for _ in 0..2 {
        plugin
            .run(options.clone().input(input(steps.clone())))
            .await
            .unwrap();
    }
    plugin
        .run(options.clone().input(input(json!([{ "fail": "no" }]))))
        .await
        .unwrap();

    let text = handle.render();
    let plugin = ("plugin", "metered");
    assert_eq!(
        sample(
            &text,
            "escrow_runs_total",
            &[plugin, ("status", "committed")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "escrow_runs_total", &[plugin, ("status", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "escrow_intents_total",
            &[plugin, ("fate", "refused")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "escrow_refusals_total",
            &[plugin, ("kind", "not-granted")]
        ),
        Some(2.0)
    );
    // Durations are histograms, which Prometheus aggregates across hosts;
    // summaries' quantiles it cannot.
    assert!(
        text.contains("# TYPE escrow_run_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE escrow_pool_wait_seconds histogram"),
        "{text}"
    );
    assert!(!text.contains("quantile="), "{text}");
    assert_eq!(
        sample(&text, "escrow_run_duration_seconds_count", &[plugin]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "escrow_run_duration_seconds_bucket",
            &[plugin, ("le", "+Inf")]
        ),
        Some(3.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_recorder_set_after_the_plugin_was_loaded_counts_its_runs_from_then_on() {
    // A plugin's metric keys are made when it is loaded; which recorder
    // receives them is asked on every run.
    let plugin = escrow_tests::scripted().with_name("late-recorder");
    let options = RunOptions::new().grants(escrow_host::Grants::new().effects(["a.*"]).unwrap());
    let steps = input(json!([{ "defer": "a.b", "payload": 1 }]));
    plugin
        .run(options.clone().input(steps.clone()))
        .await
        .unwrap();

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    {
        let _on_this_thread = metrics::set_default_local_recorder(&recorder);
        for _ in 0..2 {
            plugin
                .run(options.clone().input(steps.clone()))
                .await
                .unwrap();
        }
    }
    plugin.run(options.input(steps)).await.unwrap();

    let text = handle.render();
    let plugin = ("plugin", "late-recorder");
    assert_eq!(
        sample(
            &text,
            "escrow_runs_total",
            &[plugin, ("status", "committed")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "escrow_intents_total",
            &[plugin, ("fate", "dispatched")]
        ),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test]
async fn an_observer_sees_every_finished_outcome() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let host = Host::builder()
        .observe(move |outcome| {
            sink.lock()
                .unwrap()
                .push((outcome.run_id, outcome.status()))
        })
        .build()
        .unwrap();
    let plugin = host.load_file(fixtures::SCRIPTED).unwrap();
    let ok = plugin
        .run(
            RunOptions::new()
                .grants(all_effects())
                .input(input(json!([]))),
        )
        .await
        .unwrap();
    let failed = plugin
        .run(RunOptions::new().input(input(json!([{ "fail": "no" }]))))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (ok.run_id, Status::Committed),
            (failed.run_id, Status::Failed)
        ]
    );
}

#[test]
fn a_host_with_an_outbox_and_no_sink_route_warns_when_it_is_built() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let build = |route: bool| {
        let outbox = escrow_host::outbox::Outbox::new(
            escrow_host::outbox::SqliteOutbox::open(dir.path().join("o.db")).unwrap(),
        );
        let mut builder = Host::builder().max_concurrent_runs(1).outbox(outbox);
        if route {
            builder = builder
                .route("*", escrow_host::sinks::JsonLines::stdout())
                .unwrap();
        }
        // Meet the warning's call site, then have tracing ask again from this
        // thread, whose subscriber listens (as in the span test above).
        builder.build().unwrap();
    };
    build(true);
    tracing::callsite::rebuild_interest_cache();
    build(true);
    let text = || String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!text().contains("no sink route"), "{}", text());
    build(false);
    assert!(
        text().contains("the host has an outbox but no sink route"),
        "{}",
        text()
    );
}
