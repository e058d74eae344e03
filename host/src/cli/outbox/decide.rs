//! `escrow outbox approve` and `reject`: decide a run held for approval.

use clap::Args;
use escrow_host::RunId;
use escrow_host::outbox::{Decision, Verdict};
use serde_json::{Value, json};

use super::{Store, time_text};

/// Approve a run held for approval: its intents become due, and workers
/// deliver them in order. The decision is kept with who, when, why and the
/// run's intents. Fails, changing nothing, when the run is not held or was
/// decided already.
#[derive(Debug, Args)]
pub(super) struct ApproveArgs {
    #[command(flatten)]
    decide: DecideArgs,
}

/// Reject a run held for approval: its intents are never delivered, and
/// the compensations of its reversible actions are performed by workers,
/// once each. Fails, changing nothing, when the run is not held or was
/// decided already.
#[derive(Debug, Args)]
pub(super) struct RejectArgs {
    #[command(flatten)]
    decide: DecideArgs,
}

#[derive(Debug, Args)]
struct DecideArgs {
    #[command(flatten)]
    store: Store,
    /// The held run.
    #[arg(value_name = "RUN_ID")]
    run_id: RunId,
    /// Who decides (kept with the decision).
    #[arg(long, value_name = "NAME")]
    by: String,
    /// Why (kept with the decision).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

pub(super) async fn approve(args: ApproveArgs) -> anyhow::Result<u8> {
    decide(args.decide, Verdict::Approved).await
}

pub(super) async fn reject(args: RejectArgs) -> anyhow::Result<u8> {
    decide(args.decide, Verdict::Rejected).await
}

async fn decide(args: DecideArgs, verdict: Verdict) -> anyhow::Result<u8> {
    let config = args.store.config()?;
    let outbox = args.store.open(&config).await?;
    let reason = args.reason.as_deref();
    let decision = match verdict {
        Verdict::Approved => outbox.approve(args.run_id, &args.by, reason).await?,
        Verdict::Rejected => outbox.reject(args.run_id, &args.by, reason).await?,
    };
    let what = match verdict {
        Verdict::Approved => "its intents are due for delivery",
        Verdict::Rejected => "its intents will never be delivered",
    };
    eprintln!(
        "escrow: run {} {} by {}: {} ({what})",
        decision.run_id,
        decision.verdict,
        decision.by,
        intent_count(&decision)
    );
    Ok(0)
}

fn intent_count(decision: &Decision) -> String {
    match decision.intents.len() {
        1 => "1 intent".into(),
        n => format!("{n} intents"),
    }
}

/// A decision as `list --decisions --json` prints it.
pub(super) fn decision_value(decision: &Decision) -> Value {
    json!({
        "run_id": decision.run_id.to_string(),
        "plugin": decision.plugin,
        "verdict": decision.verdict.as_str(),
        "by": decision.by,
        "reason": decision.reason,
        "decided_at": time_text(decision.decided_at_ms),
        "held_at": time_text(decision.held_at_ms),
        "intents": decision.intents.iter().map(|i| json!({
            "seq": i.seq,
            "idempotency_key": decision.run_id.idempotency_key(i.seq),
            "effect": i.effect,
            "payload": escrow_host::bytes_json(&i.payload.0),
        })).collect::<Vec<_>>(),
    })
}

/// A decision as `list --decisions` prints it: a line, then a line per
/// intent.
pub(super) fn decision_lines(decision: &Decision) -> String {
    let mut text = format!(
        "{}  {:<8}  by {} at {}{}  ({}, {} held since {})\n",
        decision.run_id,
        decision.verdict.as_str(),
        decision.by,
        time_text(decision.decided_at_ms),
        decision
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default(),
        decision.plugin,
        intent_count(decision),
        time_text(decision.held_at_ms),
    );
    for intent in &decision.intents {
        text.push_str(&format!(
            "    #{} {} {}\n",
            intent.seq,
            intent.effect,
            escrow_host::bytes_json(&intent.payload.0)
        ));
    }
    text
}
