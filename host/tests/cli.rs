//! The `escrow` command line, driven as a user would: exit codes, stdout,
//! stderr and `--json`, against the real example plugins.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use escrow_fixtures as fixtures;
use serde_json::Value;

#[path = "cli/plans.rs"]
mod plans;
#[path = "cli/serve.rs"]
mod serve;

fn escrow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(args)
        .env_remove("ESCROW_LOG")
        .env_remove("ESCROW_TOKENS")
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
    // No sink was named: the report holds the intents, and says they went
    // nowhere.
    assert_eq!(intent["fate"], "committed");
    assert!(intent.get("delivery").is_none(), "{intent}");
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
    assert_eq!(names(&commit), ["committed", "committed", "committed"]);

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
    assert_eq!(names(&blocked), ["committed", "committed", "blocked"]);
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
        ["committed", "committed", "refused"]
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
        // With the intents in the file, stdout carries the plugin's result.
        assert_eq!(stdout(&output), "{\"order\":42,\"intents\":3}\n");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 6);
}

#[test]
fn config_routes_send_email_to_a_redis_stream_and_every_other_effect_to_the_sink() {
    let server = escrow_fixtures::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("escrow.toml");
    std::fs::write(
        &config,
        format!(
            "sink = \"file:rest.jsonl\"\n\
             [[routes]]\neffects = \"email.*\"\nsink = \"redis-stream://127.0.0.1:{}/emails\"\n\
             [grants]\neffects = [\"payments.charge\", \"orders.save\", \"email.send\"]\n",
            server.port()
        ),
    )
    .unwrap();
    let output = escrow(&[
        "run",
        fixtures::CHECKOUT,
        "--config",
        config.to_str().unwrap(),
    ]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(redis_cli(&server, &["XLEN", "emails"]).trim(), "1");
    assert_eq!(
        redis_cli(&server, &["XRANGE", "emails", "-", "+"])
            .lines()
            .filter(|line| *line == "email.send")
            .count(),
        1
    );
    let rest = std::fs::read_to_string(dir.path().join("rest.jsonl")).unwrap();
    let effects: Vec<String> = rest
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["effect"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(effects, ["payments.charge", "orders.save"]);
    // No route writes to stdout, so it carries the plugin's result.
    assert_eq!(stdout(&output), "{\"order\":42,\"intents\":3}\n");
}

#[test]
fn the_input_can_come_from_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args([
            "run",
            fixtures::CHECKOUT,
            "--config",
            &example_config("checkout"),
        ])
        .args(["--input", "-", "--json"])
        .env(
            "ESCROW_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("escrow-cache"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), br#"{"id": 9}"#).unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json_report(&output)["result"]["order"], 9);
}

#[test]
fn dir_and_env_flags_grant_what_the_config_would() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("note.txt"), "hello").unwrap();
    let mount = format!("{}:/data", dir.path().display());
    let input = r#"{"steps": [{"read_file": "/data/note.txt"}, {"env": "REGION"}]}"#;
    let output = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--input",
        input,
        "--dir",
        &mount,
        "--env",
        "REGION=eu",
        "--json",
    ]);
    let report = json_report(&output);
    assert_eq!(report["result"]["results"][0]["ok"], "hello", "{report}");
    assert_eq!(report["result"]["results"][1]["ok"], "eu", "{report}");
    let bad = escrow(&["run", fixtures::SCRIPTED, "--dir", "nocolon"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("give HOST:GUEST"), "{}", stderr(&bad));
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
fn inspect_and_run_share_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let escrow_in_cache = |command: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_escrow"))
            .args([command, fixtures::CHECKOUT, "--config"])
            .arg(example_config("checkout"))
            .args(extra)
            .env("ESCROW_CACHE_DIR", cache.path())
            .output()
            .unwrap()
    };

    let inspected = escrow_in_cache("inspect", &["--no-cache"]);
    assert_eq!(inspected.status.code(), Some(0), "{}", stderr(&inspected));
    assert!(walk(cache.path()).is_empty(), "--no-cache leaves it alone");
    assert_eq!(escrow_in_cache("inspect", &[]).status.code(), Some(0));
    let cached = walk(cache.path());
    assert!(!cached.is_empty(), "inspect fills the cache");
    let ran = escrow_in_cache("run", &[]);
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    assert_eq!(
        walk(cache.path()),
        cached,
        "run reuses what inspect compiled"
    );
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
/// own bookkeeping: usage statistics, the `.wip-` files they are written
/// through, which a background thread may leave at exit, and clean-up
/// markers).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if !name.starts_with('.') && !name.ends_with(".stats") && !name.contains(".wip-") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn trip(extra: &[&str]) -> (Option<i32>, Value) {
    let config = example_config("trip-booking");
    let mut args = vec!["run", fixtures::TRIP_BOOKING, "--config", &config, "--json"];
    args.extend_from_slice(extra);
    let output = escrow(&args);
    (output.status.code(), json_report(&output))
}

fn effects_of(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["effect"].as_str().unwrap())
        .collect()
}

#[test]
fn the_trip_booking_example_books_three_legs_and_sends_the_itinerary() {
    let (code, report) = trip(&["--input", "{}"]);

    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        effects_of(&report["invocations"]),
        ["flight.book", "hotel.book", "car.book"]
    );
    assert_eq!(
        report["invocations"][2]["answer"],
        serde_json::json!({ "confirmation": "CAR-1042" })
    );
    assert_eq!(report["compensations"], serde_json::json!([]));
    assert_eq!(
        fates(&report),
        [("email.send".to_owned(), "committed".to_owned())]
    );
}

#[test]
fn the_trip_booking_example_cancels_hotel_then_flight_when_the_car_fails() {
    let (code, report) = trip(&["--input", r#"{"fail_at": "car"}"#]);

    assert_eq!(code, Some(1));
    assert_eq!(report["status"], "failed");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("no car available"),
        "{report}"
    );
    assert!(
        report["invocations"][2]["failed"]
            .as_str()
            .unwrap()
            .contains("no car available")
    );
    assert_eq!(
        effects_of(&report["compensations"]),
        ["car.cancel", "hotel.cancel", "flight.cancel"]
    );
    for undo in report["compensations"].as_array().unwrap() {
        assert!(undo["result"]["ok"].is_object(), "{undo}");
    }
    assert_eq!(
        report["intents"],
        serde_json::json!([]),
        "no email is even requested"
    );
}

/// A config granting everything, with `handlers` (TOML) appended.
fn config_with(dir: &Path, handlers: &str) -> String {
    let path = dir.join("escrow.toml");
    std::fs::write(&path, format!("[grants]\neffects = [\"*\"]\n\n{handlers}")).unwrap();
    path.to_str().unwrap().to_owned()
}

fn invoke_script(config: &str, steps: &str) -> Value {
    let input = format!(r#"{{"steps": {steps}}}"#);
    json_report(&escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        config,
        "--input",
        &input,
        "--json",
    ]))
}

#[test]
fn an_exec_handler_gets_the_payload_on_stdin_and_answers_from_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        r#"[handlers."prices.get"]
kind = "query"
exec = ["sh", "-c", 'printf "{\"stdin\": %s, \"effect\": \"%s\"}" "$(cat)" "$ESCROW_EFFECT"']
"#,
    );
    let report = invoke_script(
        &config,
        r#"[{"invoke": "prices.get", "payload": {"sku": "tea"}}]"#,
    );

    assert_eq!(
        report["invocations"][0]["answer"],
        serde_json::json!({ "stdin": { "sku": "tea" }, "effect": "prices.get" })
    );
    assert_eq!(report["invocations"][0]["kind"], "query");
}

#[test]
fn an_exec_handler_that_exits_non_zero_is_a_failure_carrying_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        r#"[handlers."orders.create"]
kind = "action"
exec = ["sh", "-c", "cat >/dev/null; echo 'the orders service is down' >&2; exit 3"]
"#,
    );
    let report = invoke_script(&config, r#"[{"invoke": "orders.create", "payload": 1}]"#);

    let failed = report["invocations"][0]["failed"].as_str().unwrap();
    assert!(failed.contains("exit status: 3"), "{failed}");
    assert!(failed.contains("the orders service is down"), "{failed}");
}

/// A real HTTP server on a free loopback port that answers each request with
/// `status` and `got <body> for <escrow-effect header>`.
fn http_server(status: u16) -> (String, std::thread::JoinHandle<()>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/price", server.server_addr().to_ip().unwrap());
    let handle = std::thread::spawn(move || {
        let mut request = server.recv().unwrap();
        let mut body = String::new();
        request.as_reader().read_to_string(&mut body).unwrap();
        let effect = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("escrow-effect"))
            .map(|h| h.value.to_string())
            .unwrap_or_default();
        let answer = format!(
            r#"{{"got": {body}, "for": "{effect}", "method": "{}"}}"#,
            request.method()
        );
        request
            .respond(tiny_http::Response::from_string(answer).with_status_code(status))
            .unwrap();
    });
    (url, handle)
}

#[test]
fn an_http_handler_sends_the_payload_to_its_url_and_answers_with_the_body() {
    let (url, server) = http_server(200);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        &format!("[handlers.\"prices.get\"]\nkind = \"query\"\nhttp = {{ url = \"{url}\" }}\n"),
    );
    let report = invoke_script(
        &config,
        r#"[{"invoke": "prices.get", "payload": {"sku": "tea"}}]"#,
    );
    server.join().unwrap();

    assert_eq!(
        report["invocations"][0]["answer"],
        serde_json::json!({ "got": { "sku": "tea" }, "for": "prices.get", "method": "POST" })
    );
}

#[test]
fn an_http_handler_reports_a_status_other_than_2xx_as_a_failure() {
    let (url, server) = http_server(503);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        &format!(
            "[handlers.\"orders.create\"]\nkind = \"action\"\nhttp = {{ url = \"{url}\", method = \"PUT\" }}\n"
        ),
    );
    let report = invoke_script(&config, r#"[{"invoke": "orders.create", "payload": 7}]"#);
    server.join().unwrap();

    let failed = report["invocations"][0]["failed"].as_str().unwrap();
    assert!(failed.contains("503"), "{failed}");
    assert!(failed.contains(r#""method": "PUT""#), "{failed}");
}

#[test]
fn a_failed_compensation_makes_the_error_say_the_rollback_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        r#"[handlers."rooms.book"]
kind = "action"
exec = ["sh", "-c", "cat >/dev/null; echo '{}'"]

[handlers."rooms.release"]
kind = "action"
exec = ["sh", "-c", "cat >/dev/null; echo 'the hotel hung up' >&2; exit 1"]
"#,
    );
    let steps = r#"[{"invoke_reversible": "rooms.book", "payload": 1, "compensate": "rooms.release", "compensate_payload": 1}, {"fail": "later"}]"#;
    let report = invoke_script(&config, steps);

    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("rollback incomplete: 1 of 1 compensations failed"),
        "{error}"
    );
    assert!(
        report["compensations"][0]["result"]["failed"]
            .as_str()
            .unwrap()
            .contains("the hotel hung up")
    );
}

/// The transfer example's config, pointed at `server` for locks and
/// balances.
fn transfer_config(dir: &Path, server: &escrow_fixtures::redis::RedisServer) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/transfer");
    let text = std::fs::read_to_string(example.join("escrow.toml"))
        .unwrap()
        .replace("redis://127.0.0.1:6379/", &server.url())
        .replace("./handlers/", &format!("{}/handlers/", example.display()));
    let path = dir.join("escrow.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn redis_cli(server: &escrow_fixtures::redis::RedisServer, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli (it comes with redis-server)");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn concurrent_transfers_in_both_directions_complete_against_one_redis() {
    let server = escrow_fixtures::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = transfer_config(dir.path(), &server);
    redis_cli(
        &server,
        &["MSET", "balance:alice", "100", "balance:bob", "100"],
    );

    let transfers: Vec<_> = (0..16)
        .map(|i| {
            let (from, to) = if i % 2 == 0 {
                ("alice", "bob")
            } else {
                ("bob", "alice")
            };
            let input = format!(
                r#"{{"from": "{from}", "to": "{to}", "amount": {}}}"#,
                1 + i % 3
            );
            Command::new(env!("CARGO_BIN_EXE_escrow"))
                .args([
                    "run",
                    fixtures::TRANSFER,
                    "--config",
                    &config,
                    "--input",
                    &input,
                    "--json",
                ])
                .env("BANK_REDIS_PORT", server.port().to_string())
                .env(
                    "ESCROW_CACHE_DIR",
                    Path::new(env!("CARGO_TARGET_TMPDIR")).join("escrow-cache"),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut tokens = Vec::new();
    for transfer in transfers {
        let output = transfer.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let report = json_report(&output);
        tokens.push(report["locks"][0]["fencing_token"].as_u64().unwrap());
    }

    let balances = redis_cli(&server, &["MGET", "balance:alice", "balance:bob"]);
    let total: i64 = balances
        .lines()
        .map(|b| b.trim().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, 200, "{balances}");
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 16, "every transfer got its own fencing token");
}

#[test]
fn a_killed_holders_locks_are_free_again_once_its_lease_expires() {
    let server = escrow_fixtures::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("escrow.toml");
    let text = format!(
        "[grants]\nlocks = [\"*\"]\n\n[locks]\nbackend = \"{}\"\nlease_ms = 500\n",
        server.url()
    );
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let hold = r#"{"steps": [{"lock": ["k"], "as": "g"}, {"keep": "g"}, "spin"]}"#;
    let mut holder = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args([
            "run",
            fixtures::SCRIPTED,
            "--config",
            config,
            "--input",
            hold,
            "--timeout-ms",
            "60000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while redis_cli(&server, &["EXISTS", "escrow:lock:k"]).trim() != "1" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the holder never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();

    let take = r#"{"steps": [{"lock": ["k"], "as": "g", "timeout_ms": 5000}]}"#;
    let killed_at = std::time::Instant::now();
    let report = json_report(&escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        config,
        "--input",
        take,
        "--json",
    ]));
    assert_eq!(
        report["result"]["results"][0]["locked"],
        serde_json::json!(["k"]),
        "{report}"
    );
    assert!(
        killed_at.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        killed_at.elapsed()
    );
}

fn flaky(state: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let config = example_config("flaky-upstream");
    let mut args = vec![
        "run",
        fixtures::FLAKY_UPSTREAM,
        "--config",
        &config,
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(&args)
        .env("FLAKY_STATE", state)
        .output()
        .unwrap();
    (output.status.code(), json_report(&output))
}

#[test]
fn the_flaky_upstream_example_shows_the_breaker_opening_failing_fast_and_recovering() {
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = flaky(&dir.path().join("calls"), &[]);

    assert_eq!(code, Some(0), "{report}");
    let verdicts: Vec<&str> = report["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [
            "allowed", "allowed", "allowed", "rejected", "allowed", "allowed", "allowed", "allowed"
        ]
    );
    assert_eq!(
        report["breakers"][2]["transitions"],
        serde_json::json!(["closed → open"])
    );
    // The system clock moves between the third failure and the fourth call.
    let retry_after = report["breakers"][3]["retry_after_ms"].as_u64().unwrap();
    assert!((250..=300).contains(&retry_after), "{retry_after}");
    assert_eq!(report["breakers"][4]["trial"], true);
    assert_eq!(
        report["breakers"][4]["transitions"],
        serde_json::json!(["open → half-open", "half-open → closed"])
    );
    assert_eq!(
        report["invocations"].as_array().unwrap().len(),
        7,
        "the rejected call never ran"
    );
}

#[test]
fn escrow_breakers_lists_the_state_every_host_shares_through_redis() {
    let server = escrow_fixtures::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flaky-upstream");
    let text = std::fs::read_to_string(example.join("escrow.toml"))
        .unwrap()
        .replace("recovery_ms = 300", "recovery_ms = 60000")
        .replace("./handlers/", &format!("{}/handlers/", example.display()))
        + &format!("\n[breaker_state]\nbackend = \"{}\"\n", server.url());
    let config = dir.path().join("escrow.toml");
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();

    let list = || json_report(&escrow(&["breakers", "--config", config, "--json"]));
    let listed = list();
    assert_eq!(listed["breakers"][0]["breaker"], "upstream");
    assert_eq!(listed["breakers"][0]["state"], "closed");
    assert_eq!(listed["breakers"][0]["settings"]["recovery_ms"], 60000);
    assert!(listed["breakers"][0]["settings"]["failure_threshold"].is_u64());

    let output = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args([
            "run",
            fixtures::FLAKY_UPSTREAM,
            "--config",
            config,
            "--input",
            r#"{"calls": 3}"#,
        ])
        .env("FLAKY_STATE", dir.path().join("calls"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        list()["breakers"][0]["state"],
        "open",
        "another process sees what the run did"
    );

    // Closed and isolated by hand, for every host on that Redis.
    let reset = escrow(&["breakers", "reset", "upstream", "--config", config]);
    assert_eq!(reset.status.code(), Some(0), "{}", stderr(&reset));
    assert_eq!(list()["breakers"][0]["state"], "closed");
    let isolate = escrow(&["breakers", "open", "upstream", "--config", config]);
    assert_eq!(isolate.status.code(), Some(0), "{}", stderr(&isolate));
    assert!(
        stderr(&isolate).contains("breaker upstream is open"),
        "{}",
        stderr(&isolate)
    );
    assert_eq!(list()["breakers"][0]["state"], "open");
    let unknown = escrow(&["breakers", "reset", "nope", "--config", config]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no breaker `nope` is defined"));
}

fn scripted(steps: Value, extra: &[&str]) -> Output {
    let input = serde_json::json!({ "steps": steps }).to_string();
    let mut args = vec!["run", fixtures::SCRIPTED, "--input", &input, "--grant", "*"];
    args.extend_from_slice(extra);
    escrow(&args)
}

#[test]
fn guest_text_reaches_the_terminal_with_its_control_characters_escaped() {
    let forged =
        "\u{1b}[32mpayments.charge dispatched\u{1b}[0m\n  #9   payments.charge  dispatched";
    let output = scripted(
        serde_json::json!([{ "stderr": forged }, { "fail": forged }]),
        &[],
    );
    let stderr = stderr(&output);
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    assert!(stderr.contains("\\u{1b}[32mpayments.charge"), "{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("  #9")),
        "no forged line: {stderr}"
    );
}

#[test]
fn a_trap_is_one_line_unless_a_backtrace_is_asked_for() {
    let plain = scripted(serde_json::json!(["unreachable"]), &[]);
    let line = stderr(&plain)
        .lines()
        .find(|l| l.contains("trapped"))
        .unwrap()
        .to_owned();
    assert!(
        line.ends_with("wasm `unreachable` instruction executed"),
        "{line}"
    );
    assert!(
        !stderr(&plain).contains("wasm backtrace"),
        "{}",
        stderr(&plain)
    );

    let traced = scripted(serde_json::json!(["unreachable"]), &["--backtrace"]);
    assert!(
        stderr(&traced).contains("wasm backtrace"),
        "{}",
        stderr(&traced)
    );
}

#[test]
fn a_payload_that_is_not_utf8_is_shown_exactly_in_json() {
    let output = scripted(
        serde_json::json!([{ "defer_hex": "blob.put", "hex": "ff00fe" }]),
        &["--json"],
    );
    let report = json_report(&output);
    assert_eq!(
        report["intents"][0]["payload"],
        serde_json::json!({ "$bytes_base64": "/wD+" })
    );
}

#[test]
fn every_usage_error_is_one_line_and_exit_two() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[limits]\nmax_memory_bytes = 0\n").unwrap();
    for (args, says) in [
        (
            vec!["run", "x.wasm", "--timeout-ms", "abc"],
            "invalid value 'abc'",
        ),
        (
            vec!["run", "/nonexistent/p.wasm"],
            "cannot read `/nonexistent/p.wasm`",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (
            vec![
                "run",
                fixtures::SCRIPTED,
                "--config",
                config.path().to_str().unwrap(),
            ],
            "max_memory_bytes must be at least 65536",
        ),
    ] {
        let output = escrow(&args);
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("os error").count().min(1),
            stderr.matches("os error").count(),
            "the OS error once: {stderr}"
        );
    }
}

#[test]
fn a_sink_of_dev_stdout_writes_to_stdout() {
    let output = scripted(
        serde_json::json!([{ "defer": "a.b", "payload": 1 }]),
        &["--sink", "file:/dev/stdout"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let line: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(line["effect"], "a.b");
}

#[test]
fn a_plugin_that_takes_no_lock_and_opens_no_breaker_runs_while_their_redis_is_down() {
    let mut server = escrow_fixtures::redis::RedisServer::start();
    let url = server.url();
    server.kill();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("escrow.toml");
    std::fs::write(
        &config,
        format!(
            "[grants]\neffects = [\"*\"]\n[locks]\nbackend = \"{url}\"\n\
             [breaker_state]\nbackend = \"{url}\"\n[breakers.upstream]\n"
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let input = r#"{"steps": [{"defer": "a.b", "payload": 1}]}"#;
    let output = escrow(&[
        "run",
        fixtures::SCRIPTED,
        "--config",
        config.to_str().unwrap(),
        "--input",
        input,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// `escrow new`, run in a directory outside the checkout, writes a crate that
/// finds the guest SDK this binary was built with, builds for wasm, runs
/// under its grants, and passes its own native tests.
#[test]
fn escrow_new_writes_a_plugin_that_builds_outside_the_checkout_and_runs_under_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    assert!(
        !dir.path().starts_with(&checkout),
        "the plugin is written outside the checkout"
    );
    let new = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(["new", "greeter"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(new.status.code(), Some(0), "{}", stderr(&new));
    assert!(
        stderr(&new).contains("escrow-guest from"),
        "{}",
        stderr(&new)
    );
    let plugin = dir.path().join("greeter");
    for file in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "escrow.toml",
        "README.md",
    ] {
        assert!(plugin.join(file).is_file(), "{file} was not written");
    }
    let again = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(["new", "greeter"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing directory is not overwritten"
    );

    // Built and tested as its README says, with a target directory kept
    // between runs.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("escrow-new");
    let cargo = |args: &[&str]| {
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(args)
            .current_dir(&plugin)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .unwrap()
    };
    let build = cargo(&["build", "--quiet", "--release", "--target", "wasm32-wasip2"]);
    assert!(build.status.success(), "{}", stderr(&build));
    let test = cargo(&["test", "--quiet"]);
    assert!(test.status.success(), "{}", stderr(&test));
    assert!(
        stdout(&test).contains("2 passed"),
        "the template's two native tests ran: {}",
        stdout(&test)
    );
    let wasm = target.join("wasm32-wasip2/release/greeter.wasm");
    let config = plugin.join("escrow.toml");
    let run = escrow(&[
        "run",
        wasm.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--input",
        r#"{"id": 7, "email": "ada@example.com"}"#,
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let effects: Vec<String> = stdout(&run)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["effect"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(effects, ["orders.save", "email.send"]);
}

/// Runs `program` in `dir`, expecting success, and returns its stdout and
/// stderr.
fn succeed(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", stdout(&output), stderr(&output));
    assert!(output.status.success(), "{program} {args:?}: {text}");
    text
}

/// `escrow new NAME --lang LANG` in `dir`, with the helper package at
/// `sdk`; the plugin's directory.
fn new_plugin(dir: &Path, name: &str, lang: &str, sdk: &Path) -> PathBuf {
    let new = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(["new", name, "--lang", lang, "--sdk-path"])
        .arg(sdk)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(new.status.code(), Some(0), "{}", stderr(&new));
    dir.join(name)
}

/// The run of a template plugin as its README says, and the effects it
/// committed.
fn run_template(plugin: &Path) -> Vec<String> {
    let run = escrow(&[
        "run",
        plugin.join("app.wasm").to_str().unwrap(),
        "--config",
        plugin.join("escrow.toml").to_str().unwrap(),
        "--input",
        r#"{"id": 7, "email": "ada@example.com"}"#,
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    stdout(&run)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["effect"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn escrow_new_python_writes_a_plugin_that_tests_builds_and_runs_outside_the_checkout_from_the_wheel()
 {
    let dir = tempfile::tempdir().unwrap();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The package as a user gets it: a wheel, built from the checkout.
    succeed(
        dir.path(),
        checkout
            .join("guest-sdk/python/.venv/bin/pip")
            .to_str()
            .unwrap(),
        &[
            "wheel",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            "dist",
            checkout.join("guest-sdk/python").to_str().unwrap(),
        ],
    );
    let wheel = dir.path().join("dist/escrow_guest-0.1.0-py3-none-any.whl");
    let plugin = new_plugin(dir.path(), "orders", "python", &wheel);

    // The toolchain pinned as escrow's own tests pin it.
    let pins = std::fs::read_to_string(checkout.join("guest-sdk/python/requirements.txt")).unwrap();
    let requirements = std::fs::read_to_string(plugin.join("requirements.txt")).unwrap();
    for tool in ["componentize-py==", "pytest=="] {
        let pin = pins.lines().find(|l| l.starts_with(tool)).unwrap();
        assert!(
            requirements.lines().any(|l| l == pin),
            "{pin} in\n{requirements}"
        );
    }
    let tested = succeed(&plugin, "make", &["test"]);
    assert!(tested.contains("2 passed"), "{tested}");
    succeed(&plugin, "make", &[]);
    assert_eq!(run_template(&plugin), ["orders.save", "email.send"]);
}

#[test]
fn escrow_new_javascript_writes_a_plugin_that_tests_builds_and_runs_outside_the_checkout_from_the_tarball()
 {
    let dir = tempfile::tempdir().unwrap();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The package as a user gets it: a tarball, packed from the checkout.
    succeed(
        dir.path(),
        "npm",
        &[
            "pack",
            "--loglevel=error",
            "--pack-destination",
            dir.path().to_str().unwrap(),
            checkout.join("guest-sdk/js").to_str().unwrap(),
        ],
    );
    let tarball = dir.path().join("escrow-guest-0.1.0.tgz");
    let plugin = new_plugin(dir.path(), "shop", "javascript", &tarball);

    // The toolchain pinned as escrow's own tests pin it.
    let read = |path: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let pins = read(&checkout.join("guest-sdk/js/package.json"));
    let package = read(&plugin.join("package.json"));
    for tool in [
        "@bytecodealliance/componentize-js",
        "@bytecodealliance/preview2-shim",
    ] {
        assert_eq!(
            package["devDependencies"][tool], pins["devDependencies"][tool],
            "{tool}"
        );
    }

    succeed(
        &plugin,
        "npm",
        &["install", "--no-audit", "--no-fund", "--loglevel=error"],
    );
    let tested = succeed(&plugin, "npm", &["test"]);
    assert!(
        tested.contains("# pass 2") && tested.contains("# fail 0"),
        "{tested}"
    );
    succeed(&plugin, "npm", &["run", "build"]);
    assert_eq!(run_template(&plugin), ["orders.save", "email.send"]);

    // The build refuses, with a reason to act on, what componentize-js
    // would build without a word or with none that helps.
    let refused = |source: &str| {
        std::fs::write(plugin.join("app.js"), source).unwrap();
        let build = Command::new("npm")
            .args(["run", "build"])
            .current_dir(&plugin)
            .output()
            .unwrap();
        assert!(!build.status.success(), "{source} was built");
        stderr(&build)
    };
    let bare = refused("export function run(order) { return { order: order.id }; }\n");
    assert!(
        bare.contains(
            "app.js does not export a `run` made by plugin(); write \
             `export const run = plugin(body);`"
        ),
        "{bare}"
    );
    let syntax = refused("export const run = (order) => {\n  return order.;\n};\n");
    assert!(syntax.contains("app.js:2\n  return order.;"), "{syntax}");
}

#[test]
fn escrow_new_refuses_an_sdk_path_that_does_not_exist_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let new = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(["new", "greeter", "--sdk-path", "no/such/sdk"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(new.status.code(), Some(2), "{}", stderr(&new));
    assert!(stderr(&new).contains("no/such/sdk"), "{}", stderr(&new));
    assert!(!dir.path().join("greeter").exists());
}

#[test]
fn inspect_json_reports_capabilities_grants_and_the_verdict_with_grant_flags_added() {
    let output = escrow(&[
        "inspect",
        fixtures::CHECKOUT,
        "--config",
        &example_config("checkout"),
        "--grant",
        "audit.*",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json_report(&output);
    assert_eq!(report["runs_here"], true);
    let effects: Vec<&str> = report["grants"]["effects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        effects.contains(&"payments.charge") && effects.contains(&"audit.*"),
        "{effects:?}"
    );
    assert!(
        report["capabilities"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("deferred effects"))
    );
    assert!(report["exports"][0]["name"].is_string());
}

#[test]
fn inspect_and_run_refuse_a_component_larger_than_a_slot_alike() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[pool]\ncore_instances_per_slot = 1\n").unwrap();
    let config = config.path().to_str().unwrap();
    let inspect = escrow(&["inspect", fixtures::CHECKOUT, "--config", config]);
    let run = escrow(&["run", fixtures::CHECKOUT, "--config", config]);
    assert_eq!(inspect.status.code(), Some(2));
    assert!(
        stdout(&inspect).contains("runs on this host: no"),
        "{}",
        stdout(&inspect)
    );
    assert!(stdout(&inspect).contains("does not fit an instance slot"));
    assert_eq!(run.status.code(), Some(2));
    assert!(
        stderr(&run).contains("does not fit an instance slot"),
        "{}",
        stderr(&run)
    );
    assert!(stderr(&run).contains("core_instances_per_slot"));
}

/// A `--json` report without what differs from run to run or plugin to
/// plugin: ids, keys, the plugin's name, timings, what the guest wrote to
/// stderr.
fn comparable(mut report: Value) -> Value {
    let object = report.as_object_mut().unwrap();
    // A Python or JavaScript guest writes where it failed to stderr; a Rust
    // one does not. Each is its own component.
    for key in [
        "run_id",
        "plugin",
        "timings_us",
        "guest_stderr",
        "component_sha256",
    ] {
        object.remove(key);
    }
    for intent in object["intents"].as_array_mut().unwrap() {
        intent.as_object_mut().unwrap().remove("idempotency_key");
    }
    report
}

#[test]
fn python_and_javascript_checkouts_report_what_the_rust_checkout_reports_under_run() {
    use fixtures::languages::{Language, checkout};

    let config = example_config("checkout");
    let cases: [&[&str]; 3] = [
        &[],
        &["--input", r#"{"fail": true}"#],
        &["--input", r#"{"id": 7}"#, "--policy", "drop"],
    ];
    for extra in cases {
        let report = |plugin: &str| {
            let mut args = vec!["run", plugin, "--config", &config, "--json"];
            args.extend(extra);
            let output = escrow(&args);
            (output.status.code(), comparable(json_report(&output)))
        };
        let rust = report(fixtures::CHECKOUT);
        assert!(
            !rust.1["intents"].as_array().unwrap().is_empty(),
            "{}",
            rust.1
        );
        for language in Language::ALL {
            let path = checkout(language).to_str().unwrap();
            assert_eq!(
                report(path),
                rust,
                "{} checkout with {extra:?}",
                language.name()
            );
        }
    }
}

#[test]
fn the_typed_checkouts_in_rust_python_and_javascript_report_what_the_string_checkout_reports() {
    let cases: [&[&str]; 4] = [
        &[],
        &["--input", r#"{"fail": true}"#],
        &["--input", r#"{"id": 7}"#, "--policy", "drop"],
        &["--input", r#"{"id": 7}"#, "--block", "email.*"],
    ];
    for extra in cases {
        let report = |plugin: &str, example: &str| {
            let config = example_config(example);
            let mut args = vec!["run", plugin, "--config", &config, "--json"];
            args.extend(extra);
            let output = escrow(&args);
            (output.status.code(), comparable(json_report(&output)))
        };
        let strings = report(fixtures::CHECKOUT, "checkout");
        assert!(
            !strings.1["intents"].as_array().unwrap().is_empty(),
            "{}",
            strings.1
        );
        let typed = report(fixtures::TYPED_CHECKOUT, "typed-checkout");
        assert_eq!(typed, strings, "typed checkout with {extra:?}");
        for language in fixtures::languages::Language::ALL {
            let path = fixtures::languages::typed_checkout(language);
            let typed = report(path.to_str().unwrap(), "typed-checkout");
            assert_eq!(
                typed,
                strings,
                "{} typed checkout with {extra:?}",
                language.name()
            );
        }
    }
}

#[test]
fn the_typed_checkout_is_refused_at_load_by_a_config_that_does_not_declare_its_interfaces() {
    let output = escrow(&[
        "run",
        fixtures::TYPED_CHECKOUT,
        "--config",
        &example_config("checkout"),
    ]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("acme:shop/payments@1.0.0"), "{text}");
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
}

#[test]
fn inspect_lists_each_typed_function_with_its_timing_types_payload_and_grant() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("escrow.toml");
    let example = std::fs::read_to_string(example_config("typed-checkout")).unwrap();
    std::fs::write(
        &config,
        example.replace(
            r#"effects = ["payments.charge", "orders.save", "email.send"]"#,
            r#"effects = ["payments.*", "orders.save"]"#,
        ) + "\n[typed.\"acme:elsewhere/unused\"]\ntiming = \"immediate\"\n",
    )
    .unwrap();
    let output = escrow(&[
        "inspect",
        fixtures::TYPED_CHECKOUT,
        "--config",
        config.to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    for line in [
        "  acme:shop/payments@1.0.0                 typed effects",
        "  payments.charge (deferred): func(amount: u64, order: u64) -> result<_, string>",
        r#"    payload {"amount": u64, "order": u64}; granted by payments.*"#,
        r#"    payload {"order": u64, "status": "paid" | "refunded"}; granted by orders.save"#,
        r#"    payload {"subject": string, "to": string}; not granted"#,
        "  acme:elsewhere/unused: declared, not imported (unused)",
        "runs on this host: yes",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line `{line}` in\n{text}"
        );
    }

    // A signature `run` refuses, `inspect` refuses in the same words.
    std::fs::write(
        &config,
        "[typed.\"escrow-test:refused/counter\"]\ntiming = \"deferred\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let inspected = escrow(&["inspect", fixtures::TYPED_REFUSED, "--config", config]);
    let ran = escrow(&["run", fixtures::TYPED_REFUSED, "--config", config]);
    let why = "`counter.bump` is deferred, so it must be able to tell the guest it was refused: \
               it must return result<_, string> or result<_, refusal> (escrow:host/types), and \
               it returns u64";
    assert_eq!(inspected.status.code(), Some(2));
    assert_eq!(ran.status.code(), Some(2));
    assert!(stdout(&inspected).contains(why), "{}", stdout(&inspected));
    assert!(stderr(&ran).contains(why), "{}", stderr(&ran));
}

#[test]
fn a_typed_call_the_config_compensates_is_undone_by_its_handler_with_its_arguments_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let undone = dir.path().join("undone.json");
    let config = dir.path().join("escrow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[grants]
effects = ["catalog.*"]

[handlers."catalog.quote"]
kind = "action"
exec = ["printf", "%s", '{{"cents":1999,"currency":"EUR"}}']

[handlers."catalog.unquote"]
kind = "action"
exec = ["sh", "-c", "cat > '{}'"]

[breakers.quotes]

[typed."escrow-test:typed/catalog"]
timing = "immediate"
functions = {{ quote = {{ compensate = "catalog.unquote", breaker = "quotes" }} }}

[typed."escrow-test:typed/ledger"]
timing = "deferred"

[typed."escrow-test:typed/values"]
timing = "deferred"
"#,
            undone.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let inspected = escrow(&["inspect", fixtures::TYPED, "--config", config]);
    assert!(
        stdout(&inspected)
            .contains("; undone by catalog.unquote; through breaker quotes; granted by catalog.*"),
        "{}",
        stdout(&inspected)
    );
    let ran = escrow(&[
        "run",
        fixtures::TYPED,
        "--config",
        config,
        "--input",
        r#""fail-after quote pen 2""#,
        "--json",
    ]);
    let report = json_report(&ran);
    assert_eq!(report["status"], "failed", "{report}");
    assert_eq!(
        std::fs::read_to_string(&undone).unwrap(),
        r#"{"arguments":{"sku":"pen","quantity":2},"answer":{"cents":1999,"currency":"EUR"}}"#
    );
}

#[test]
fn a_python_or_javascript_plugin_s_uncaught_error_shows_where_it_was_raised_under_guest_stderr() {
    use fixtures::languages::{Language, tour};

    for language in Language::ALL {
        let output = escrow(&[
            "run",
            tour(language).to_str().unwrap(),
            "--input",
            r#"{"do": "uncaught-refusal"}"#,
        ]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(
            text.contains("run failed") && text.contains("refused: not granted: `never.granted`"),
            "{text}"
        );
        assert!(
            text.contains("(the plugin wrote to stderr: see `guest stderr` below)"),
            "{text}"
        );
        let (first, raised_at) = match language {
            Language::Python => (
                "  | Traceback (most recent call last):",
                "app.py\", line 23, in uncaught_refusal",
            ),
            Language::JavaScript => (
                "  | Refused: refused: not granted: `never.granted` is not covered by the \
                 plugin's grants",
                "uncaught-refusal@tests/fixtures/javascript/tour.js:23:",
            ),
        };
        assert!(
            text.lines().any(|l| l == first),
            "no line `{first}` in\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("  | ") && l.contains(raised_at)),
            "{}: no line with `{raised_at}` in\n{text}",
            language.name()
        );
    }
}

#[test]
fn inspect_shows_a_starlingmonkey_component_s_http_imports_as_denied_and_that_it_runs_here() {
    use fixtures::languages::{Language, checkout};

    let output = escrow(&[
        "inspect",
        checkout(Language::JavaScript).to_str().unwrap(),
        "--config",
        &example_config("checkout"),
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    let http: Vec<&str> = text.lines().filter(|l| l.contains("wasi:http/")).collect();
    assert!(!http.is_empty(), "{text}");
    for line in http {
        assert!(line.contains("WASI: http, denied"), "{line}");
    }
    assert!(text.contains("runs on this host: yes"), "{text}");
}

/// A run whose lock store is named by a host the resolver never answers for
/// is refused its locks at the store timeout, and the process exits then, not
/// when the resolver gives up (10 s). The resolver is made silent in a mount
/// namespace of the run's own, which needs root and `unshare`.
#[test]
fn a_run_against_a_redis_whose_name_never_resolves_exits_by_the_store_timeout() {
    let probe = Command::new("unshare").args(["--mount", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: `unshare --mount` needs root and util-linux");
        return;
    }
    // A name server that takes every question and answers none.
    let silent = std::net::UdpSocket::bind("127.0.0.77:53").expect("binding 127.0.0.77:53");
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.77\noptions timeout:5 attempts:2\n",
    )
    .unwrap();
    let config = dir.path().join("escrow.toml");
    std::fs::write(
        &config,
        "[grants]\nlocks = [\"account:*\"]\n\n[locks]\nbackend = \"redis://redis.escrow.test:6379/\"\nstore_timeout_ms = 300\n",
    )
    .unwrap();
    let input = serde_json::json!({ "steps": [{ "lock": ["account:a"] }] }).to_string();
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec {} run {} --config {} --input '{}'",
        resolv.display(),
        env!("CARGO_BIN_EXE_escrow"),
        fixtures::SCRIPTED,
        config.display(),
        input,
    );
    let started = std::time::Instant::now();
    let output = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .env(
            "ESCROW_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("escrow-cache"),
        )
        .output()
        .unwrap();
    let took = started.elapsed();
    drop(silent);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(
            "lock account:a not given: unavailable: Redis at redis://redis.escrow.test:6379/ did not answer within 300ms"
        ),
        "{}",
        stderr(&output)
    );
    assert!(
        took < std::time::Duration::from_secs(3),
        "the process exited {took:?} after it started"
    );
}
