//! The outcome as data: one JSON document, the same one `escrow run --json`
//! prints, versioned by its `schema` field (`docs/outcome.md`).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    BreakerDecision, BreakerVerdict, CallResult, Delivery, EffectError, Fate, Fence, Outcome,
    Refusal, Transition,
};

/// The version of the JSON document [`Outcome::to_json`] writes. It changes
/// when a field changes meaning or goes away; new fields may appear within
/// a version.
pub const OUTCOME_SCHEMA: u32 = 1;

/// Bytes a guest made (a payload, an answer, an output, its stderr) as a
/// JSON value, the one way every JSON view of escrow shows them: as JSON
/// when they are JSON, else as a string when they are UTF-8 text, else as
/// `{"$bytes_base64": "..."}`, so that no byte is lost.
///
/// # Examples
///
/// ```
/// use serde_json::json;
/// assert_eq!(escrow_host::bytes_json(br#"{"n": 1}"#), json!({"n": 1}));
/// assert_eq!(escrow_host::bytes_json(b"plain text"), json!("plain text"));
/// assert_eq!(escrow_host::bytes_json(&[0xff, 0x00]), json!({"$bytes_base64": "/wA="}));
/// ```
pub fn bytes_json(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    serde_json::from_slice(bytes).unwrap_or_else(|_| match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({
            "$bytes_base64": base64::engine::general_purpose::STANDARD.encode(bytes)
        }),
    })
}

impl Outcome {
    /// Why the run failed, and whether its undo is incomplete; `None` when
    /// it succeeded.
    pub fn error_text(&self) -> Option<String> {
        error_text(self)
    }

    /// The outcome as one JSON document: `schema`, `status`, `run_id`,
    /// `plugin`, `result` or `error`, and every intent, invocation, breaker
    /// decision, lock request and compensation, with timings. Payloads are
    /// embedded as JSON when they are JSON, as text when UTF-8, and as
    /// `{"$bytes_base64": ...}` otherwise. `escrow run --json` prints exactly
    /// this.
    pub fn to_json(&self) -> Value {
        to_json(self)
    }
}

fn error_text(outcome: &Outcome) -> Option<String> {
    let failure = outcome.result.as_ref().err()?;
    let mut text = failure.to_string();
    if outcome.rollback_incomplete() {
        let failed = outcome
            .compensations
            .iter()
            .filter(|c| c.result.is_err())
            .count();
        let _ = write!(
            text,
            "; rollback incomplete: {failed} of {} compensations failed",
            outcome.compensations.len()
        );
    }
    Some(text)
}

fn refusal_value(refusal: &Refusal) -> Value {
    json!({ "kind": refusal.kind(), "message": refusal.message() })
}

fn to_json(outcome: &Outcome) -> Value {
    let intents: Vec<Value> = outcome
        .intents
        .iter()
        .map(|intent| {
            let mut entry = json!({
                "seq": intent.seq,
                "idempotency_key": intent.idempotency_key(),
                "effect": intent.effect,
                "payload": bytes_json(&intent.payload),
                "fate": intent.fate.name(),
                "rule": &*intent.rule,
            });
            if !intent.fences.is_empty() {
                entry["fences"] = fences_value(&intent.fences);
            }
            match &intent.fate {
                Fate::Dispatched(delivery) => entry["delivery"] = delivery_value(delivery),
                Fate::Refused(refusal) => entry["refusal"] = json!(refusal.kind()),
                _ => {}
            }
            entry
        })
        .collect();
    let invocations: Vec<Value> = outcome
        .invocations
        .iter()
        .map(|call| {
            let mut entry = json!({
                "seq": call.seq,
                "effect": call.effect,
                "kind": call.kind.map(|k| k.as_str()),
                "payload": bytes_json(&call.payload),
            });
            match &call.result {
                Ok(answer) => entry["answer"] = bytes_json(answer),
                Err(EffectError::Refused(refusal)) => entry["refused"] = refusal_value(refusal),
                Err(EffectError::Failed(message)) => entry["failed"] = json!(message),
            }
            if let Some(compensation) = &call.compensation {
                entry["compensation"] = json!(compensation);
            }
            entry
        })
        .collect();
    let compensations: Vec<Value> = outcome
        .compensations
        .iter()
        .map(|undo| {
            let mut entry = json!({
                "seq": undo.seq,
                "effect": undo.effect,
                "payload": bytes_json(&undo.payload),
                "cause": &*undo.cause,
            });
            match &undo.result {
                Ok(answer) => entry["result"] = json!({ "ok": bytes_json(answer) }),
                Err(message) => entry["result"] = json!({ "failed": message }),
            }
            entry
        })
        .collect();

    let mut report = json!({
        "schema": OUTCOME_SCHEMA,
        "status": outcome.status().as_str(),
        "run_id": outcome.run_id.to_string(),
        "plugin": &*outcome.plugin,
    });
    match (&outcome.result, error_text(outcome)) {
        (Ok(output), _) => report["result"] = bytes_json(output),
        (Err(_), error) => report["error"] = json!(error),
    }
    report["intents"] = Value::Array(intents);
    report["invocations"] = Value::Array(invocations);
    report["breakers"] = outcome.breakers.iter().map(breaker_value).collect();
    report["locks"] = outcome
        .locks
        .iter()
        .map(|lock| match &lock.result {
            Ok(token) => json!({ "keys": lock.keys, "fencing_token": token }),
            Err(why) => json!({ "keys": lock.keys, "refused": why }),
        })
        .collect();
    report["compensations"] = Value::Array(compensations);
    let t = &outcome.timings;
    report["timings_us"] = json!({
        "instantiate": t.instantiate.as_micros() as u64,
        "call": t.call.as_micros() as u64,
        "settle": t.settle.as_micros() as u64,
        "dispatch": t.dispatch.as_micros() as u64,
    });
    if !outcome.guest_stderr.is_empty() {
        report["guest_stderr"] = bytes_json(&outcome.guest_stderr);
    }
    if let Some(sha256) = &outcome.component_sha256 {
        report["component_sha256"] = json!(&**sha256);
    }
    report
}

fn counted(result: CallResult) -> &'static str {
    result.as_str()
}

fn transition_text(t: &Transition) -> String {
    t.to_string()
}

fn breaker_value(decision: &BreakerDecision) -> Value {
    let mut entry = json!({
        "seq": decision.seq,
        "breaker": &*decision.breaker,
        "effect": decision.effect,
        "transitions": decision.transitions.iter().map(transition_text).collect::<Vec<_>>(),
    });
    match &decision.verdict {
        BreakerVerdict::Refused(refusal) => {
            entry["verdict"] = json!("refused");
            entry["refusal"] = refusal_value(refusal);
        }
        BreakerVerdict::Allowed { trial, counted: c } => {
            entry["verdict"] = json!("allowed");
            entry["trial"] = json!(trial);
            entry["counted"] = json!(counted(*c));
        }
        BreakerVerdict::Rejected { retry_after_ms } => {
            entry["verdict"] = json!("rejected");
            entry["retry_after_ms"] = json!(retry_after_ms);
        }
    }
    entry
}

/// Locks held and their tokens, as every JSON form of escrow writes them.
pub(crate) fn fences_value(fences: &[Fence]) -> Value {
    fences
        .iter()
        .map(|f| json!({ "key": f.key, "token": f.token }))
        .collect()
}

fn delivery_value(delivery: &Delivery) -> Value {
    match delivery {
        Delivery::Delivered => json!("delivered"),
        Delivery::Failed(error) => json!({ "failed": error }),
        Delivery::NoSink => json!("no-sink"),
        Delivery::NotAttempted(why) => json!({ "not_attempted": why }),
        Delivery::Queued => json!("queued"),
        Delivery::Held => json!("held"),
    }
}
