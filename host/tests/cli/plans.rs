//! `escrow plan`, `apply`, `replay` and the approval commands, on the
//! checkout example, as an operator would use them.

use std::path::Path;

use escrow_fixtures::postgres::PostgresServer;
use serde_json::Value;

use super::{escrow, example_config, fixtures, stderr, stdout};

/// `escrow plan` of the checkout example for order `order` into `plan`,
/// its intents to go to the file `out`.
fn plan(plan: &Path, order: u64, out: &Path) -> std::process::Output {
    let config = example_config("checkout");
    let input = format!(r#"{{"id": {order}}}"#);
    let sink = format!("file:{}", out.display());
    escrow(&[
        "plan",
        fixtures::CHECKOUT,
        "--config",
        &config,
        "--input",
        &input,
        "--sink",
        &sink,
        "--out",
        plan.to_str().unwrap(),
    ])
}

/// `escrow apply` of `plan` with `plugin` and the checkout example's
/// config, delivering to the file `out`, and `extra` flags.
fn apply(plan: &Path, plugin: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let config = example_config("checkout");
    let sink = format!("file:{}", out.display());
    let mut args = vec![
        "apply",
        plan.to_str().unwrap(),
        "--plugin",
        plugin,
        "--config",
        &config,
        "--sink",
        &sink,
    ];
    args.extend_from_slice(extra);
    escrow(&args)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn plan_then_apply_delivers_the_checkout_s_three_intents_once() {
    let dir = tempfile::tempdir().unwrap();
    let (plan_file, out) = (dir.path().join("plan.json"), dir.path().join("out.jsonl"));

    let planned = plan(&plan_file, 42, &out);
    assert_eq!(planned.status.code(), Some(0), "{}", stderr(&planned));
    assert!(stderr(&planned).contains("3 intents to dispatch"));
    assert!(lines(&out).is_empty(), "planning dispatched");

    let applied = apply(&plan_file, fixtures::CHECKOUT, &out, &[]);
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    let delivered = lines(&out);
    let effects: Vec<&str> = delivered
        .iter()
        .map(|l| l["effect"].as_str().unwrap())
        .collect();
    assert_eq!(effects, ["payments.charge", "orders.save", "email.send"]);
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    let id = plan["body"]["id"].as_str().unwrap();
    assert_eq!(delivered[0]["idempotency_key"], format!("{id}:1"));

    let again = apply(&plan_file, fixtures::CHECKOUT, &out, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("was applied already"),
        "{}",
        stderr(&again)
    );
    assert_eq!(lines(&out).len(), 3, "the second apply dispatched");
}

#[test]
fn apply_through_an_outbox_dispatches_a_plan_once() {
    let dir = tempfile::tempdir().unwrap();
    let (plan_file, out) = (dir.path().join("plan.json"), dir.path().join("out.jsonl"));
    let outbox = dir.path().join("outbox.db");
    let planned = plan(&plan_file, 42, &out);
    assert_eq!(planned.status.code(), Some(0), "{}", stderr(&planned));
    let outbox_flag = ["--outbox", outbox.to_str().unwrap()];

    let first = apply(&plan_file, fixtures::CHECKOUT, &out, &outbox_flag);
    let second = apply(&plan_file, fixtures::CHECKOUT, &out, &outbox_flag);

    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert!(stderr(&second).contains("the outbox holds its intents; nothing dispatched"));
    assert_eq!(lines(&out).len(), 3);
    assert!(
        !dir.path().join("plan.json.applied").exists(),
        "the outbox remembers"
    );
}

#[test]
fn a_plan_applied_with_another_component_is_refused_with_exit_two_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (plan_file, out) = (dir.path().join("plan.json"), dir.path().join("out.jsonl"));
    assert_eq!(plan(&plan_file, 42, &out).status.code(), Some(0));

    let refused = apply(&plan_file, fixtures::CHECKOUT_NEXT, &out, &[]);

    assert_eq!(refused.status.code(), Some(2));
    let error = stderr(&refused);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with("escrow: the plan is refused: the plugin changed: sha256 "),
        "{error}"
    );
    assert!(lines(&out).is_empty());
}

#[test]
fn a_truncated_or_edited_plan_is_refused_with_exit_two_and_nothing_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let (plan_file, out) = (dir.path().join("plan.json"), dir.path().join("out.jsonl"));
    assert_eq!(plan(&plan_file, 42, &out).status.code(), Some(0));
    let text = std::fs::read_to_string(&plan_file).unwrap();

    for bad in [
        text[..text.len() - 40].to_owned(),
        text.replace("1999", "1"),
    ] {
        std::fs::write(&plan_file, bad).unwrap();
        let refused = apply(&plan_file, fixtures::CHECKOUT, &out, &[]);
        assert_eq!(refused.status.code(), Some(2));
        assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
        assert!(lines(&out).is_empty());
    }
}

#[test]
fn verify_and_refresh_accept_an_unchanged_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let (plan_file, out) = (dir.path().join("plan.json"), dir.path().join("out.jsonl"));
    assert_eq!(plan(&plan_file, 42, &out).status.code(), Some(0));

    let verified = apply(&plan_file, fixtures::CHECKOUT, &out, &["--verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", stderr(&verified));
    assert_eq!(lines(&out).len(), 3);

    let fresh = dir.path().join("fresh.json");
    assert_eq!(plan(&fresh, 43, &out).status.code(), Some(0));
    let refreshed = apply(&fresh, fixtures::CHECKOUT, &out, &["--refresh"]);
    assert_eq!(refreshed.status.code(), Some(0), "{}", stderr(&refreshed));
    assert_eq!(lines(&out).len(), 6);
}

#[test]
fn an_action_asked_during_a_plan_fails_it_and_is_not_performed() {
    let dir = tempfile::tempdir().unwrap();
    let plan_file = dir.path().join("plan.json");
    let planned = escrow(&[
        "plan",
        fixtures::TRIP_BOOKING,
        "--config",
        &example_config("trip-booking"),
        "--out",
        plan_file.to_str().unwrap(),
    ]);

    assert_eq!(planned.status.code(), Some(1), "{}", stderr(&planned));
    assert_eq!(
        stderr(&planned).trim(),
        "escrow: the plan failed: the plugin asked for the action `flight.book`; a plan \
         performs no action, and none was"
    );
    assert!(!plan_file.exists());
}

#[test]
fn replay_of_recorded_checkouts_reports_identical_runs_and_the_fields_a_new_version_changes() {
    let dir = tempfile::tempdir().unwrap();
    let recordings = dir.path().join("recordings");
    let record = recordings.to_str().unwrap();
    for order in 1..=3 {
        let input = format!(r#"{{"id": {order}}}"#);
        let ran = super::checkout(&["--input", &input, "--sink", "stderr", "--record", record]);
        assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    }
    let config = example_config("checkout");

    let same = escrow(&[
        "replay",
        record,
        "--plugin",
        fixtures::CHECKOUT,
        "--config",
        &config,
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    assert_eq!(stdout(&same), "3 runs: 3 identical, 0 differ, 0 diverged\n");

    let next = escrow(&[
        "replay",
        record,
        "--plugin",
        fixtures::CHECKOUT_NEXT,
        "--config",
        &config,
    ]);
    assert_eq!(next.status.code(), Some(1), "{}", stderr(&next));
    let text = stdout(&next);
    assert_eq!(
        text.matches("~ payments.charge #1: amount 1999 → 2099")
            .count(),
        3,
        "{text}"
    );
    assert!(text.ends_with("3 runs: 0 identical, 3 differ, 0 diverged\n"));

    let json = escrow(&[
        "replay",
        record,
        "--plugin",
        fixtures::CHECKOUT_NEXT,
        "--config",
        &config,
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["differ"], 3);
    let change = &report["replays"][0]["differences"][0];
    assert_eq!(change["change"], "changed");
    assert_eq!(change["fields"][0]["path"], "amount");
    assert_eq!(change["fields"][0]["old"], 1999);
    assert_eq!(change["fields"][0]["new"], 2099);
}

#[test]
fn a_recording_directory_with_a_bad_file_is_refused_with_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.json"), "{}").unwrap();
    let refused = escrow(&[
        "replay",
        dir.path().to_str().unwrap(),
        "--plugin",
        fixtures::CHECKOUT,
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
}

/// A config for the checkout example that holds runs charging a card, with
/// its outbox at `outbox` and intents going to `out`.
fn approval_config(dir: &Path, outbox: &str, out: &Path) -> String {
    let path = dir.join("escrow.toml");
    std::fs::write(
        &path,
        format!(
            r#"
sink = "file:{}"
[grants]
effects = ["payments.charge", "orders.save", "email.send"]
[outbox]
url = "{outbox}"
[approval]
require = ["payments.*"]
"#,
            out.display()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs the checkout for `order` under `config`; returns its run id.
fn held_run(config: &str, order: u64) -> String {
    let input = format!(r#"{{"id": {order}}}"#);
    let ran = escrow(&[
        "run",
        fixtures::CHECKOUT,
        "--config",
        config,
        "--input",
        &input,
        "--json",
    ]);
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    let report: Value = serde_json::from_slice(&ran.stdout).unwrap();
    assert_eq!(report["status"], "held");
    report["run_id"].as_str().unwrap().to_owned()
}

fn approve_and_reject_with_the_audit_trail(outbox: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let config = approval_config(dir.path(), outbox, &out);
    let ran = escrow(&[
        "run",
        fixtures::CHECKOUT,
        "--config",
        &config,
        "--input",
        r#"{"id": 1}"#,
    ]);
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    assert!(
        stderr(&ran).contains("run held for approval"),
        "{}",
        stderr(&ran)
    );
    let (approved, rejected) = (held_run(&config, 2), held_run(&config, 3));

    let held = escrow(&["outbox", "list", "--config", &config, "--status", "held"]);
    assert_eq!(stdout(&held).lines().count(), 9, "{}", stdout(&held));

    let approve = escrow(&[
        "outbox",
        "approve",
        &approved,
        "--config",
        &config,
        "--by",
        "ana",
        "--reason",
        "checked with the customer",
    ]);
    assert_eq!(approve.status.code(), Some(0), "{}", stderr(&approve));
    let reject = escrow(&[
        "outbox", "reject", &rejected, "--config", &config, "--by", "bob", "--reason", "fraud",
    ]);
    assert_eq!(reject.status.code(), Some(0), "{}", stderr(&reject));
    let twice = escrow(&[
        "outbox", "approve", &rejected, "--config", &config, "--by", "ana",
    ]);
    assert_ne!(twice.status.code(), Some(0));
    assert_eq!(stderr(&twice).lines().count(), 1, "{}", stderr(&twice));
    assert!(stderr(&twice).contains("was already rejected by bob"));

    let delivered = escrow(&["outbox", "deliver", "--config", &config]);
    assert_eq!(delivered.status.code(), Some(0), "{}", stderr(&delivered));
    let orders: Vec<u64> = lines(&out)
        .iter()
        .filter(|l| l["effect"] == "payments.charge")
        .map(|l| l["payload"]["order"].as_u64().unwrap())
        .collect();
    assert_eq!(orders, [2], "only the approved run is delivered");

    let decisions = escrow(&["outbox", "list", "--config", &config, "--decisions"]);
    let text = stdout(&decisions);
    assert!(
        text.contains(&format!("{approved}  approved  by ana at ")),
        "{text}"
    );
    assert!(text.contains(": checked with the customer"), "{text}");
    assert!(
        text.contains(&format!("{rejected}  rejected  by bob at ")),
        "{text}"
    );
    let json = escrow(&[
        "outbox",
        "list",
        "--config",
        &config,
        "--decisions",
        "--json",
    ]);
    let listed: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(listed[0]["by"], "bob");
    assert_eq!(listed[0]["intents"][0]["payload"]["order"], 3);
    let stats = escrow(&["outbox", "stats", "--config", &config, "--json"]);
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["held"], 3, "the first run is still held");
    assert_eq!(stats["decisions"]["approved"], 1);
    assert_eq!(stats["decisions"]["rejected"], 1);
}

#[test]
fn approve_and_reject_through_the_cli_on_sqlite_keep_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    approve_and_reject_with_the_audit_trail(dir.path().join("outbox.db").to_str().unwrap());
}

#[test]
fn approve_and_reject_through_the_cli_on_postgres_keep_the_audit_trail() {
    let server = PostgresServer::start();
    approve_and_reject_with_the_audit_trail(&server.url());
}

#[test]
fn approval_without_an_outbox_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("escrow.toml");
    std::fs::write(&path, "[approval]\nrequire = [\"payments.*\"]\n").unwrap();
    let refused = escrow(&[
        "run",
        fixtures::CHECKOUT,
        "--config",
        path.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        stderr(&refused).trim(),
        "escrow: error: [approval] require holds runs in the outbox: give --outbox or \
         [outbox] url in the config"
    );
}
