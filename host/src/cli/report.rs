//! How `escrow run` shows an outcome to people: a summary on stderr. The
//! JSON report is the library's (`Outcome::to_json`).

use std::fmt::Write as _;

use escrow_host::text::printable;
use escrow_host::{BreakerVerdict, Delivery, EffectError, Fate, Outcome};

/// The summary for people: one line per request, in request order, then
/// the compensations in the order they ran. Guest-controlled text is
/// escaped; a failure's message keeps its lines only with `backtrace`.
pub(crate) fn human(outcome: &Outcome, backtrace: bool) -> String {
    let mut out = String::new();
    let total = outcome.timings.total();
    match (&outcome.result, outcome.error_text()) {
        (Ok(output), _) => {
            let status = match outcome.status() {
                escrow_host::Status::Held => "held for approval".to_owned(),
                status => status.to_string(),
            };
            let _ = writeln!(out, "escrow: run {status} in {total:.1?}");
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
            if !outcome.guest_stderr.is_empty() {
                // A guest's traceback or stack, when it wrote one, is there.
                let _ = writeln!(
                    out,
                    "(the plugin wrote to stderr: see `guest stderr` below)"
                );
            }
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
            Fate::Dispatched(Delivery::Held) => "held for approval in the outbox".to_owned(),
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
            } => format!("trial, {}", c.as_str()),
            BreakerVerdict::Allowed {
                trial: false,
                counted: c,
            } => format!("allowed, {}", c.as_str()),
            BreakerVerdict::Rejected { retry_after_ms } => {
                format!("rejected, a trial in {retry_after_ms} ms")
            }
        };
        let moved: Vec<String> = decision
            .transitions
            .iter()
            .map(ToString::to_string)
            .collect();
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
