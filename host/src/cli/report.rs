//! How `escrow run` shows an outcome: a summary for people on stderr, or
//! one JSON object for programs.

use std::fmt::Write as _;

use escrow_host::backends::{CallResult, Transition};
use escrow_host::{
    BreakerDecision, BreakerVerdict, Delivery, EffectError, Fate, Fence, Outcome, Refusal,
};
use serde_json::{Value, json};

/// The guest's bytes exactly: as JSON when they are JSON, else as text when
/// they are UTF-8, else as `{"$bytes_base64": "..."}`.
fn bytes_value(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    serde_json::from_slice(bytes).unwrap_or_else(|_| match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({
            "$bytes_base64": base64::engine::general_purpose::STANDARD.encode(bytes)
        }),
    })
}

/// Guest-controlled text made safe for a terminal: control characters
/// (escape sequences, carriage returns) are shown escaped, so a plugin
/// cannot forge or hide lines of the summary. Newlines are kept only where
/// `multi_line`.
pub(crate) fn printable(text: &str, multi_line: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(multi_line && c == '\n') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why the run failed, and whether its undo is incomplete.
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

/// The `--json` report.
pub(crate) fn json(outcome: &Outcome) -> Value {
    let intents: Vec<Value> = outcome
        .intents
        .iter()
        .map(|intent| {
            let mut entry = json!({
                "seq": intent.seq,
                "idempotency_key": intent.idempotency_key(),
                "effect": intent.effect,
                "payload": bytes_value(&intent.payload),
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
                "payload": bytes_value(&call.payload),
            });
            match &call.result {
                Ok(answer) => entry["answer"] = bytes_value(answer),
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
                "payload": bytes_value(&undo.payload),
                "cause": &*undo.cause,
            });
            match &undo.result {
                Ok(answer) => entry["result"] = json!({ "ok": bytes_value(answer) }),
                Err(message) => entry["result"] = json!({ "failed": message }),
            }
            entry
        })
        .collect();

    let mut report = json!({
        "status": outcome.status().as_str(),
        "run_id": outcome.run_id.to_string(),
        "plugin": &*outcome.plugin,
    });
    match (&outcome.result, error_text(outcome)) {
        (Ok(output), _) => report["result"] = bytes_value(output),
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
        report["guest_stderr"] = bytes_value(&outcome.guest_stderr);
    }
    report
}

fn counted(result: CallResult) -> &'static str {
    match result {
        CallResult::Success => "success",
        CallResult::Failure => "failure",
        CallResult::NotCalled => "not-called",
    }
}

fn transition_text(t: &Transition) -> String {
    format!("{} → {}", t.from, t.to)
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

fn fences_value(fences: &[Fence]) -> Value {
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
    }
}

/// The summary for people: one line per request, in request order, then
/// the compensations in the order they ran. Guest-controlled text is
/// escaped; a failure's message keeps its lines only with `backtrace`.
pub(crate) fn human(outcome: &Outcome, backtrace: bool) -> String {
    let mut out = String::new();
    let total = outcome.timings.total();
    match (&outcome.result, error_text(outcome)) {
        (Ok(output), _) => {
            let _ = writeln!(out, "escrow: run {} in {total:.1?}", outcome.status());
            let _ = writeln!(
                out,
                "result: {}",
                printable(&String::from_utf8_lossy(output), false)
            );
        }
        (Err(_), error) => {
            let _ = writeln!(
                out,
                "escrow: run failed in {total:.1?}: {}",
                printable(&error.unwrap_or_default(), backtrace)
            );
        }
    }
    let _ = writeln!(out, "run id: {}", outcome.run_id);
    let width = outcome
        .intents
        .iter()
        .map(|i| i.effect.len())
        .chain(outcome.invocations.iter().map(|c| c.effect.len()))
        .max()
        .unwrap_or(0);
    let mut lines: Vec<(u64, String)> = Vec::new();
    for intent in &outcome.intents {
        let fate = match &intent.fate {
            Fate::Dispatched(Delivery::Delivered) => "dispatched".to_owned(),
            Fate::Dispatched(Delivery::Failed(error)) => {
                format!("dispatched, delivery failed: {error}")
            }
            Fate::Dispatched(Delivery::NoSink) => "dispatched, no sink".to_owned(),
            Fate::Dispatched(Delivery::NotAttempted(why)) => {
                format!("dispatched, not attempted: {why}")
            }
            Fate::Dispatched(Delivery::Queued) => "queued in the outbox".to_owned(),
            Fate::Refused(refusal) => format!("refused {}", refusal.kind()),
            other => other.name().to_owned(),
        };
        lines.push((
            intent.seq,
            printable(
                &format!("{:<width$}  {fate} ({})", intent.effect, intent.rule),
                false,
            ),
        ));
    }
    for call in &outcome.invocations {
        let result = match &call.result {
            Ok(answer) => format!("performed: {}", String::from_utf8_lossy(answer).trim()),
            Err(EffectError::Refused(refusal)) => {
                format!("refused {}: {}", refusal.kind(), refusal.message())
            }
            Err(EffectError::Failed(message)) => format!("failed: {message}"),
        };
        lines.push((
            call.seq,
            printable(&format!("{:<width$}  {result}", call.effect), false),
        ));
    }
    lines.sort_by_key(|(seq, _)| *seq);
    for (seq, line) in lines {
        let _ = writeln!(out, "  #{seq:<3} {line}");
    }
    for decision in &outcome.breakers {
        let verdict = match &decision.verdict {
            BreakerVerdict::Refused(refusal) => {
                format!("refused {}: {}", refusal.kind(), refusal.message())
            }
            BreakerVerdict::Allowed {
                trial: true,
                counted: c,
            } => format!("trial, {}", counted(*c)),
            BreakerVerdict::Allowed {
                trial: false,
                counted: c,
            } => format!("allowed, {}", counted(*c)),
            BreakerVerdict::Rejected { retry_after_ms } => {
                format!("rejected, a trial in {retry_after_ms} ms")
            }
        };
        let moved: Vec<String> = decision.transitions.iter().map(transition_text).collect();
        let moved = if moved.is_empty() {
            String::new()
        } else {
            format!("; {}", moved.join(", "))
        };
        let line = format!(
            "breaker {} #{} {}: {verdict}{moved}",
            decision.breaker, decision.seq, decision.effect
        );
        let _ = writeln!(out, "{}", printable(&line, false));
    }
    for lock in &outcome.locks {
        let line = match &lock.result {
            Ok(token) => format!("locked {} (fencing token {token})", lock.keys.join(", ")),
            Err(why) => format!("lock {} not given: {why}", lock.keys.join(", ")),
        };
        let _ = writeln!(out, "{}", printable(&line, false));
    }
    if !outcome.compensations.is_empty() {
        let _ = writeln!(out, "compensations:");
        for undo in &outcome.compensations {
            let result = match &undo.result {
                Ok(_) => "done".to_owned(),
                Err(message) => format!("FAILED: {message}"),
            };
            let line = format!(
                "  undo #{:<3} {}  {result} ({})",
                undo.seq, undo.effect, undo.cause
            );
            let _ = writeln!(out, "{}", printable(&line, false));
        }
    }
    if !outcome.guest_stderr.is_empty() {
        // Each line marked as the guest's, so that none passes for escrow's.
        let _ = writeln!(out, "guest stderr:");
        let text = String::from_utf8_lossy(&outcome.guest_stderr);
        for line in printable(text.trim_end(), true).lines() {
            let _ = writeln!(out, "  | {line}");
        }
    }
    out
}
