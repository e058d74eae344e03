//! How `escrow run` shows an outcome: a summary for people on stderr, or
//! one JSON object for programs.

use std::fmt::Write as _;

use escrow_host::{Delivery, Fate, Outcome};
use serde_json::{Value, json};

/// The guest's bytes as JSON when they are JSON, else as text.
fn bytes_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The `--json` report.
pub(crate) fn json(outcome: &Outcome) -> Value {
    let intents: Vec<Value> = outcome
        .intents
        .iter()
        .map(|intent| {
            let mut entry = json!({
                "seq": intent.seq,
                "effect": intent.effect,
                "payload": bytes_value(&intent.payload),
                "fate": intent.fate.name(),
                "rule": &*intent.rule,
            });
            match &intent.fate {
                Fate::Dispatched(delivery) => entry["delivery"] = delivery_value(delivery),
                Fate::Refused(refusal) => entry["refusal"] = json!(refusal.kind()),
                _ => {}
            }
            entry
        })
        .collect();
    let mut report = json!({ "status": outcome.status().as_str() });
    match &outcome.result {
        Ok(output) => report["result"] = bytes_value(output),
        Err(failure) => report["error"] = json!(failure.to_string()),
    }
    report["intents"] = Value::Array(intents);
    let t = &outcome.timings;
    report["timings_us"] = json!({
        "instantiate": t.instantiate.as_micros() as u64,
        "call": t.call.as_micros() as u64,
        "settle": t.settle.as_micros() as u64,
        "dispatch": t.dispatch.as_micros() as u64,
    });
    if !outcome.guest_stderr.is_empty() {
        report["guest_stderr"] = json!(String::from_utf8_lossy(&outcome.guest_stderr));
    }
    report
}

fn delivery_value(delivery: &Delivery) -> Value {
    match delivery {
        Delivery::Delivered => json!("delivered"),
        Delivery::Failed(error) => json!({ "failed": error }),
        Delivery::NoSink => json!("no-sink"),
    }
}

/// The summary for people.
pub(crate) fn human(outcome: &Outcome) -> String {
    let mut out = String::new();
    let total = outcome.timings.total();
    match &outcome.result {
        Ok(output) => {
            let _ = writeln!(out, "escrow: run {} in {total:.1?}", outcome.status());
            let _ = writeln!(out, "result: {}", String::from_utf8_lossy(output));
        }
        Err(failure) => {
            let _ = writeln!(out, "escrow: run failed in {total:.1?}: {failure}");
        }
    }
    let width = outcome
        .intents
        .iter()
        .map(|i| i.effect.len())
        .max()
        .unwrap_or(0);
    for intent in &outcome.intents {
        let fate = match &intent.fate {
            Fate::Dispatched(Delivery::Delivered) => "dispatched".to_owned(),
            Fate::Dispatched(Delivery::Failed(error)) => {
                format!("dispatched, delivery failed: {error}")
            }
            Fate::Dispatched(Delivery::NoSink) => "dispatched, no sink".to_owned(),
            Fate::Refused(refusal) => format!("refused {}", refusal.kind()),
            other => other.name().to_owned(),
        };
        let _ = writeln!(
            out,
            "  #{:<3} {:<width$}  {fate} ({})",
            intent.seq, intent.effect, intent.rule
        );
    }
    if !outcome.guest_stderr.is_empty() {
        let _ = writeln!(
            out,
            "guest stderr:\n{}",
            String::from_utf8_lossy(&outcome.guest_stderr).trim_end()
        );
    }
    out
}
