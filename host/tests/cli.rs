//! The `escrow` command line, driven as a user would: exit codes, stdout,
//! stderr and `--json`, against the real example plugins.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use escrow_fixtures as fixtures;
use serde_json::Value;

fn escrow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(args)
        .env_remove("ESCROW_LOG")
        // A cache of the tests' own, kept between test runs.
        .env(
            "ESCROW_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("escrow-cache"),
        )
        .output()
        .expect("running escrow")
}

/// `escrow run` of the checkout example with its config, and `extra` flags.
fn checkout(extra: &[&str]) -> Output {
    let config = example_config("checkout");
    let mut args = vec!["run", fixtures::CHECKOUT, "--config", &config];
    args.extend_from_slice(extra);
    escrow(&args)
}

fn example_config(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .join("escrow.toml");
    path.to_str().unwrap().to_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json_report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

fn fates(report: &Value) -> Vec<(String, String)> {
    report["intents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["effect"].as_str().unwrap().to_owned(),
                i["fate"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn run_prints_the_committed_intents_as_json_lines_and_exits_zero() {
    let output = checkout(&[]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let effects: Vec<&str> = lines
        .iter()
        .map(|l| l["effect"].as_str().unwrap())
        .collect();
    assert_eq!(effects, ["payments.charge", "orders.save", "email.send"]);
    assert_eq!(lines[0]["payload"]["amount"], 1999);
    assert!(
        stderr(&output).contains("escrow: run committed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn run_of_a_failing_checkout_prints_no_intents_and_exits_one() {
    let output = checkout(&["--input", r#"{"fail": true}"#]);

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "", "nothing is dispatched");
    let stderr = stderr(&output);
    assert!(stderr.contains("escrow: run failed"), "{stderr}");
    assert!(stderr.contains("saving order 42 failed"), "{stderr}");
    assert!(stderr.contains("payments.charge  discarded"), "{stderr}");
}

#[test]
fn run_json_reports_status_result_and_every_intent_with_its_fate() {
    let output = checkout(&["--input", r#"{"id": 7}"#, "--json"]);

    assert_eq!(output.status.code(), Some(0));
    let report = json_report(&output);
    assert_eq!(report["status"], "committed");
    assert_eq!(
        report["result"],
        serde_json::json!({ "order": 7, "intents": 3 })
    );
    let intent = &report["intents"][0];
    assert_eq!(intent["seq"], 1);
    assert_eq!(intent["effect"], "payments.charge");
    assert_eq!(
        intent["payload"],
        serde_json::json!({ "order": 7, "amount": 1999 })
    );
    assert_eq!(intent["fate"], "dispatched");
    assert_eq!(intent["delivery"], "delivered");
}

#[test]
fn run_json_of_a_failed_run_reports_the_error_and_discarded_intents() {
    let output = checkout(&["--input", r#"{"fail": true}"#, "--json"]);

    assert_eq!(output.status.code(), Some(1));
    let report = json_report(&output);
    assert_eq!(report["status"], "failed");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("saving order 42 failed")
    );
    assert!(report.get("result").is_none());
    assert_eq!(
        fates(&report),
        [("payments.charge".to_owned(), "discarded".to_owned())]
    );
}

#[test]
fn the_orders_example_shows_the_four_fates_under_the_four_policies() {
    let config = example_config("orders");
    let input = r#"{"sku": "tea-42", "quantity": 2, "email": "ada@example.com"}"#;
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            fixtures::ORDERS,
            "--config",
            &config,
            "--input",
            input,
            "--json",
        ];
        args.extend_from_slice(extra);
        let output = escrow(&args);
        (output.status.code(), json_report(&output))
    };
    let names = |report: &Value| {
        fates(report)
            .into_iter()
            .map(|(_, fate)| fate)
            .collect::<Vec<_>>()
    };

    let (code, commit) = run(&["--policy", "commit"]);
    assert_eq!(
        (code, commit["status"].as_str()),
        (Some(0), Some("committed"))
    );
    assert_eq!(names(&commit), ["dispatched", "dispatched", "dispatched"]);

    let (code, dropped) = run(&["--policy", "drop"]);
    assert_eq!(
        (code, dropped["status"].as_str()),
        (Some(0), Some("dropped"))
    );
    assert_eq!(names(&dropped), ["dropped", "dropped", "dropped"]);

    let (code, assert_none) = run(&["--policy", "assert-none"]);
    assert_eq!(
        (code, assert_none["status"].as_str()),
        (Some(1), Some("failed"))
    );
    assert_eq!(names(&assert_none), ["refused", "refused", "refused"]);
    assert_eq!(assert_none["intents"][0]["refusal"], "forbidden");

    let (code, blocked) = run(&["--block", "email.*"]);
    assert_eq!(
        (code, blocked["status"].as_str()),
        (Some(0), Some("committed"))
    );
    assert_eq!(names(&blocked), ["dispatched", "dispatched", "blocked"]);
}

#[test]
fn run_without_grants_refuses_every_effect() {
    let output = escrow(&["run", fixtures::CHECKOUT, "--json"]);
    let report = json_report(&output);
    assert!(
        report["intents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["refusal"] == "not-granted")
    );
}

#[test]
fn grant_on_the_command_line_adds_to_the_grants_of_the_config() {
    // The checkout config grants `orders.save` but not `inventory.*`.
    let output = escrow(&[
        "run",
        fixtures::ORDERS,
        "--config",
        &example_config("checkout"),
        "--grant",
        "inventory.*",
        "--input",
        r#"{"sku": "tea-42", "quantity": 1, "email": "ada@example.com"}"#,
        "--json",
    ]);
    let report = json_report(&output);
    assert_eq!(
        fates(&report)
            .into_iter()
            .map(|(_, f)| f)
            .collect::<Vec<_>>(),
        ["dispatched", "dispatched", "refused"]
    );
}

#[test]
fn the_file_sink_appends_committed_intents_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.jsonl");
    let sink = format!("file:{}", file.display());
    for _ in 0..2 {
        let output = checkout(&["--sink", &sink]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_eq!(stdout(&output), "");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 6);
}

#[test]
fn a_sink_that_cannot_write_makes_the_run_exit_three() {
    let output = checkout(&["--sink", "file:/dev/full"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("delivery failed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn timeout_ms_stops_a_plugin_that_never_returns() {
    let output = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--input",
        r#"{"steps": ["spin"]}"#,
        "--timeout-ms",
        "100",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("deadline"), "{}", stderr(&output));
}

fn one_line_error(args: &[&str]) -> String {
    let output = escrow(args);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let stderr = stderr(&output);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("escrow: error: "), "{stderr}");
    stderr
}

#[test]
fn a_missing_plugin_file_is_one_line_naming_it() {
    let error = one_line_error(&["run", "/nonexistent/plugin.wasm"]);
    assert!(
        error.contains("cannot read `/nonexistent/plugin.wasm`"),
        "{error}"
    );
}

#[test]
fn bad_json_input_is_one_line_saying_so() {
    let error = one_line_error(&["run", fixtures::CHECKOUT, "--input", "{not json"]);
    assert!(error.contains("--input is not valid JSON"), "{error}");
}

#[test]
fn a_bad_config_is_one_line_naming_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("escrow.toml");
    std::fs::write(&config, "[grants]\neffect = [\"x\"]\n").unwrap();
    let error = one_line_error(&[
        "run",
        fixtures::CHECKOUT,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(error.contains("escrow.toml"), "{error}");
    assert!(error.contains("unknown field `effect`"), "{error}");
    assert!(error.contains("line 2"), "{error}");
}

#[test]
fn a_core_module_is_one_line_saying_how_to_build_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let module: PathBuf = dir.path().join("core.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let error = one_line_error(&["run", module.to_str().unwrap()]);
    assert!(error.contains("core WebAssembly module"), "{error}");
    assert!(error.contains("wasm32-wasip2"), "{error}");
}

#[test]
fn an_unknown_policy_is_a_usage_error() {
    let output = escrow(&["run", fixtures::CHECKOUT, "--policy", "yolo"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown policy `yolo`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn inspect_lists_the_escrow_capabilities_and_the_grants_that_cover_them() {
    let output = escrow(&[
        "inspect",
        fixtures::CHECKOUT,
        "--config",
        &example_config("checkout"),
    ]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("run: func(input: list<u8>) -> result<list<u8>, string>"),
        "{text}"
    );
    assert!(text.contains("escrow:host/intents@0.1.0"), "{text}");
    assert!(text.contains("escrow: deferred effects"), "{text}");
    assert!(
        text.contains("effects: payments.charge, orders.save, email.send"),
        "{text}"
    );
    assert!(text.contains("runs on this host: yes"), "{text}");
}

#[test]
fn inspect_without_grants_warns_that_every_effect_will_be_refused() {
    let output = escrow(&["inspect", fixtures::CHECKOUT]);
    assert!(
        stdout(&output).contains("every effect this plugin requests will be refused"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn inspect_of_a_component_with_foreign_imports_says_it_cannot_run_here() {
    let output = escrow(&["inspect", fixtures::BENCH_BASELINE]);
    assert_eq!(output.status.code(), Some(2));
    let text = stdout(&output);
    assert!(text.contains("escrow-bench:baseline/bare"), "{text}");
    assert!(text.contains("not provided by escrow"), "{text}");
    assert!(text.contains("runs on this host: no"), "{text}");
}

#[test]
fn input_file_is_read_as_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("order.json");
    std::fs::write(&input, r#"{"id": 99}"#).unwrap();
    let output = checkout(&["--input-file", input.to_str().unwrap(), "--json"]);
    assert_eq!(json_report(&output)["result"]["order"], 99);
}

#[test]
fn a_truncated_component_is_one_line_saying_it_is_not_valid() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("broken.wasm");
    let bytes = std::fs::read(fixtures::CHECKOUT).unwrap();
    std::fs::write(&plugin, &bytes[..bytes.len() / 3]).unwrap();
    let error = one_line_error(&["run", plugin.to_str().unwrap()]);
    assert!(error.contains("is not a valid component"), "{error}");
}

#[test]
fn compiled_plugins_are_cached_on_disk_and_reused() {
    let cache = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_escrow"))
            .args([
                "run",
                fixtures::CHECKOUT,
                "--config",
                &example_config("checkout"),
            ])
            .env("ESCROW_CACHE_DIR", cache.path())
            .output()
            .unwrap()
    };
    let files = || walk(cache.path());

    assert_eq!(run().status.code(), Some(0));
    let cached = files();
    assert!(!cached.is_empty(), "the first run fills the cache");
    let output = run();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 3);
    assert_eq!(files(), cached, "the second run reuses the entry");
}

#[test]
fn no_cache_leaves_the_cache_alone() {
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args([
            "run",
            fixtures::CHECKOUT,
            "--config",
            &example_config("checkout"),
            "--no-cache",
        ])
        .env("ESCROW_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(walk(cache.path()).is_empty());
}

/// The compiled entries under `dir`, recursively, sorted (not the cache's
/// own bookkeeping: usage statistics and clean-up markers).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if !name.starts_with('.') && !name.ends_with(".stats") {
            files.push(path);
        }
    }
    files.sort();
    files
}
