//! Traces and metrics of runs: a `tracing` span per run, and counters,
//! gauges and histograms through the `metrics` facade.
//!
//! The `metrics` crate is a facade, as `log` is for logs: escrow records,
//! and the embedder installs the recorder it wants (Prometheus, StatsD,
//! OpenTelemetry through a bridge). Without one, recording costs next to
//! nothing. With the `prometheus` feature, `prometheus()` installs a
//! Prometheus recorder and hands back what renders the text format.
//!
//! Labels are bounded: the plugin's name (one per loaded plugin), a run's
//! status, an intent's fate, a refusal's kind, a breaker's name (one per
//! defined breaker). Effect names are not labels: a refused request may name
//! anything.

use std::sync::Arc;
use std::time::Duration;

use crate::backends::breakers::BreakerState;
use crate::outcome::{Delivery, Fate, Outcome, Status};

/// Runs ended, by `plugin` and `status` (`committed`, `dropped`, `failed`).
pub const RUNS: &str = "escrow_runs_total";
/// Intents recorded, by `plugin` and `fate` (`dispatched`, `queued`,
/// `dropped`, `blocked`, `refused`, `discarded`, `committed`).
pub const INTENTS: &str = "escrow_intents_total";
/// Requests refused, by `plugin` and `kind` (`not-granted`, `forbidden`,
/// `limit`, `invalid`).
pub const REFUSALS: &str = "escrow_refusals_total";
/// Seconds a run waited for an instance slot, by `plugin`.
pub const POOL_WAIT: &str = "escrow_pool_wait_seconds";
/// Seconds from a run's start to its end, delivery included, by `plugin`.
pub const RUN_DURATION: &str = "escrow_run_duration_seconds";
/// Seconds a run spent delivering its committed intents, by `plugin`.
pub const DISPATCH_DURATION: &str = "escrow_dispatch_duration_seconds";
/// Delivery attempts a sink failed (or that had no sink).
pub const DELIVERY_FAILURES: &str = "escrow_delivery_failures_total";
/// A breaker's state, by `breaker`: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "escrow_breaker_state";
/// Entries pending in the outbox, as a worker last counted them.
pub const OUTBOX_PENDING: &str = "escrow_outbox_pending";
/// Dead entries in the outbox, as a worker last counted them.
pub const OUTBOX_DEAD: &str = "escrow_outbox_dead";
/// Age in seconds of the oldest pending outbox entry (the lag).
pub const OUTBOX_LAG: &str = "escrow_outbox_lag_seconds";

/// Sees every finished run's outcome: for audit logs and metrics of one's
/// own (`HostBuilder::observe`).
pub type Observer = Arc<dyn Fn(&Outcome) + Send + Sync>;

/// The observers of a host, in the order they were added.
#[derive(Clone, Default)]
pub(crate) struct Observers(pub(crate) Vec<Observer>);

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} observers", self.0.len())
    }
}

/// Where the metrics of this module are recorded from, as the macros would
/// say it.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Run statuses, intent fates and refusal kinds, in the order of the keys
/// of [`RunKeys`].
const STATUSES: [Status; 4] = [
    Status::Committed,
    Status::Dropped,
    Status::Held,
    Status::Failed,
];
const FATES: [&str; 8] = [
    "committed",
    "dispatched",
    "queued",
    "held",
    "dropped",
    "blocked",
    "refused",
    "discarded",
];
const REFUSAL_KINDS: [&str; 4] = ["not-granted", "forbidden", "limit", "invalid"];

/// The metric keys of one plugin's runs, made once when the plugin is
/// loaded: a run records through them without building a key (a vector of
/// labels and a hash per metric). Which recorder receives them is asked on
/// every run, so a recorder installed later is used from its first run on.
#[derive(Debug)]
pub(crate) struct RunKeys {
    runs: [metrics::Key; STATUSES.len()],
    intents: [metrics::Key; FATES.len()],
    refusals: [metrics::Key; REFUSAL_KINDS.len()],
    pool_wait: metrics::Key,
    run_duration: metrics::Key,
    dispatch_duration: metrics::Key,
}

impl RunKeys {
    /// The keys of the plugin called `plugin`.
    pub(crate) fn new(plugin: &Arc<str>) -> Self {
        let key = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
            let plugin =
                metrics::Label::new("plugin", metrics::SharedString::from(Arc::clone(plugin)));
            let labels = match extra {
                None => vec![plugin],
                Some((label, value)) => vec![plugin, metrics::Label::new(label, value)],
            };
            metrics::Key::from_parts(name, labels).to_retained()
        };
        Self {
            runs: STATUSES.map(|s| key(RUNS, Some(("status", s.as_str())))),
            intents: FATES.map(|f| key(INTENTS, Some(("fate", f)))),
            refusals: REFUSAL_KINDS.map(|k| key(REFUSALS, Some(("kind", k)))),
            pool_wait: key(POOL_WAIT, None),
            run_duration: key(RUN_DURATION, None),
            dispatch_duration: key(DISPATCH_DURATION, None),
        }
    }
}

/// Records the metrics of a finished run of the plugin whose keys are
/// `keys`.
pub(crate) fn record_run(keys: &RunKeys, outcome: &Outcome, pool_wait: Duration, total: Duration) {
    let mut fates = [0u64; FATES.len()];
    let mut refusals = [0u64; REFUSAL_KINDS.len()];
    let count = |table: &mut [u64], names: &[&str], name: &str| {
        if let Some(i) = names.iter().position(|n| *n == name) {
            table[i] += 1;
        }
    };
    for intent in &outcome.intents {
        let fate = match &intent.fate {
            Fate::Dispatched(Delivery::Queued) => "queued",
            Fate::Dispatched(Delivery::Held) => "held",
            other => other.name(),
        };
        count(&mut fates, &FATES, fate);
        if let Fate::Refused(refusal) = &intent.fate {
            count(&mut refusals, &REFUSAL_KINDS, refusal.kind());
        }
    }
    for call in &outcome.invocations {
        if let Err(crate::outcome::EffectError::Refused(refusal)) = &call.result {
            count(&mut refusals, &REFUSAL_KINDS, refusal.kind());
        }
    }
    let status = STATUSES
        .iter()
        .position(|s| *s == outcome.status())
        .expect("every status has a key");
    metrics::with_recorder(|recorder| {
        recorder
            .register_counter(&keys.runs[status], &METADATA)
            .increment(1);
        recorder
            .register_histogram(&keys.pool_wait, &METADATA)
            .record(pool_wait);
        recorder
            .register_histogram(&keys.run_duration, &METADATA)
            .record(total);
        recorder
            .register_histogram(&keys.dispatch_duration, &METADATA)
            .record(outcome.timings.dispatch);
        for (key, n) in keys.intents.iter().zip(fates).filter(|(_, n)| *n > 0) {
            recorder.register_counter(key, &METADATA).increment(n);
        }
        for (key, n) in keys.refusals.iter().zip(refusals).filter(|(_, n)| *n > 0) {
            recorder.register_counter(key, &METADATA).increment(n);
        }
    });
}

/// Fills in the run's span when the run is over.
pub(crate) fn close_span(span: &tracing::Span, outcome: &Outcome) {
    span.record("status", outcome.status().as_str());
    span.record("intents", outcome.intents.len());
    if !span.is_disabled() {
        // One pass over the intents, and none when nothing listens.
        let [mut dispatched, mut withheld, mut refused, mut discarded] = [0u64; 4];
        for intent in &outcome.intents {
            match intent.fate {
                Fate::Dispatched(Delivery::Delivered) => dispatched += 1,
                Fate::Dropped | Fate::Blocked => withheld += 1,
                Fate::Refused(_) => refused += 1,
                Fate::Discarded => discarded += 1,
                _ => {}
            }
        }
        span.record("dispatched", dispatched);
        span.record("withheld", withheld);
        span.record("refused", refused);
        span.record("discarded", discarded);
    }
    let t = &outcome.timings;
    span.record("instantiate_us", t.instantiate.as_micros() as u64);
    span.record("call_us", t.call.as_micros() as u64);
    span.record("dispatch_us", t.dispatch.as_micros() as u64);
    match (&outcome.result, outcome.status()) {
        (Err(failure), _) => {
            tracing::info!(parent: span, error = %failure, "run failed");
        }
        (Ok(_), Status::Committed | Status::Dropped | Status::Held) => {
            tracing::info!(parent: span, status = outcome.status().as_str(), "run ended");
        }
        (Ok(_), Status::Failed) => {}
    }
}

/// Records a breaker's state as a gauge.
pub(crate) fn breaker_state(breaker: &str, state: BreakerState) {
    let value = match state {
        BreakerState::Closed => 0.0,
        BreakerState::Open => 1.0,
        BreakerState::HalfOpen => 2.0,
    };
    metrics::gauge!(BREAKER_STATE, "breaker" => breaker.to_owned()).set(value);
}

/// Records a delivery attempt that failed.
pub(crate) fn delivery_failed() {
    metrics::counter!(DELIVERY_FAILURES).increment(1);
}

/// Records what a worker counted in the outbox: its pending and dead
/// entries, and how long the oldest pending one has waited.
pub(crate) fn outbox_stats(pending: u64, dead: u64, lag: Duration) {
    metrics::gauge!(OUTBOX_PENDING).set(pending as f64);
    metrics::gauge!(OUTBOX_DEAD).set(dead as f64);
    metrics::gauge!(OUTBOX_LAG).set(lag.as_secs_f64());
}

#[cfg(feature = "prometheus")]
pub use metrics_exporter_prometheus::PrometheusHandle;

/// The upper bounds, in seconds, of the buckets every escrow duration
/// (`*_seconds`) is exported with: from a run of tens of microseconds to a
/// delivery that waited out its 30 s timeout.
#[cfg(feature = "prometheus")]
pub const DURATION_BUCKETS_SECONDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs a Prometheus recorder as the process's metrics recorder and
/// returns the handle whose `render()` is the text a `/metrics` endpoint
/// serves. Durations are exported as histograms with
/// [`DURATION_BUCKETS_SECONDS`], which Prometheus can aggregate across
/// hosts (`histogram_quantile(0.99, sum by (le) (rate(..._bucket[5m])))`),
/// not as summaries, which it cannot.
///
/// # Errors
///
/// When a recorder was installed already.
#[cfg(feature = "prometheus")]
pub fn prometheus() -> Result<PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            DURATION_BUCKETS_SECONDS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}
