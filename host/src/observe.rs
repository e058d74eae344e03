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

use crate::breakers::BreakerState;
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

/// Records the metrics of a finished run.
pub(crate) fn record_run(outcome: &Outcome, pool_wait: Duration, total: Duration) {
    // The label shares the plugin's name: no allocation per run.
    let plugin = metrics::SharedString::from(Arc::clone(&outcome.plugin));
    metrics::counter!(RUNS, "plugin" => plugin.clone(), "status" => outcome.status().as_str())
        .increment(1);
    metrics::histogram!(POOL_WAIT, "plugin" => plugin.clone()).record(pool_wait);
    metrics::histogram!(RUN_DURATION, "plugin" => plugin.clone()).record(total);
    metrics::histogram!(DISPATCH_DURATION, "plugin" => plugin.clone())
        .record(outcome.timings.dispatch);
    let mut fates: [(&'static str, u64); 7] = [
        ("committed", 0),
        ("dispatched", 0),
        ("queued", 0),
        ("dropped", 0),
        ("blocked", 0),
        ("refused", 0),
        ("discarded", 0),
    ];
    let mut refusals: [(&'static str, u64); 4] = [
        ("not-granted", 0),
        ("forbidden", 0),
        ("limit", 0),
        ("invalid", 0),
    ];
    let count = |table: &mut [(&'static str, u64)], name: &str| {
        if let Some(entry) = table.iter_mut().find(|(n, _)| *n == name) {
            entry.1 += 1;
        }
    };
    for intent in &outcome.intents {
        let fate = match &intent.fate {
            Fate::Dispatched(Delivery::Queued) => "queued",
            other => other.name(),
        };
        count(&mut fates, fate);
        if let Fate::Refused(refusal) = &intent.fate {
            count(&mut refusals, refusal.kind());
        }
    }
    for call in &outcome.invocations {
        if let Err(crate::outcome::EffectError::Refused(refusal)) = &call.result {
            count(&mut refusals, refusal.kind());
        }
    }
    for (fate, n) in fates.into_iter().filter(|(_, n)| *n > 0) {
        metrics::counter!(INTENTS, "plugin" => plugin.clone(), "fate" => fate).increment(n);
    }
    for (kind, n) in refusals.into_iter().filter(|(_, n)| *n > 0) {
        metrics::counter!(REFUSALS, "plugin" => plugin.clone(), "kind" => kind).increment(n);
    }
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
        (Ok(_), Status::Committed | Status::Dropped) => {
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

/// Records what a worker counted in the outbox.
pub(crate) fn outbox_stats(stats: &crate::outbox::Stats, now_ms: i64) {
    metrics::gauge!(OUTBOX_PENDING).set(stats.pending as f64);
    metrics::gauge!(OUTBOX_DEAD).set(stats.dead as f64);
    let lag = stats
        .oldest_pending_ms
        .map_or(0.0, |oldest| (now_ms - oldest).max(0) as f64 / 1000.0);
    metrics::gauge!(OUTBOX_LAG).set(lag);
}

#[cfg(feature = "prometheus")]
pub use metrics_exporter_prometheus::PrometheusHandle;

/// Installs a Prometheus recorder as the process's metrics recorder and
/// returns the handle whose `render()` is the text a `/metrics` endpoint
/// serves.
///
/// # Errors
///
/// When a recorder was installed already.
#[cfg(feature = "prometheus")]
pub fn prometheus() -> Result<PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| e.to_string())
}
