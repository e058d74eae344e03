//! Plugins in Python and JavaScript: built with the real toolchains
//! (componentize-py, componentize-js with StarlingMonkey), they run on the
//! same host as Rust plugins, behave like the Rust checkout, reach every
//! capability through the language's helper module, and see refusals as
//! typed exceptions.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use escrow_host::breakers::{BreakerConfig, Breakers};
use escrow_host::handlers::{FnHandler, Handlers};
use escrow_host::limits::MAX_HTTP_FIELDS_BYTES;
use escrow_host::policy::DropAll;
use escrow_host::{CallError, Dispatch, Failure, Grants, Outcome, Plugin, RunOptions, Status};
use escrow_tests::fixtures::languages::{self, Language};
use escrow_tests::{Recorder, fates, fixtures};
use serde_json::{Value, json};

/// A language's component, loaded once per test binary.
fn load(path: &'static std::path::Path) -> Plugin {
    escrow_tests::plugin(path.to_str().expect("a UTF-8 path"))
}

fn checkout_grants() -> Grants {
    let config = escrow_host::config::Config::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/checkout/escrow.toml"),
    )
    .unwrap();
    config.grants().unwrap()
}

/// What a run amounts to, for comparing languages: status, result or error,
/// and each intent's sequence number, effect, exact payload and fate.
fn summary(outcome: &Outcome) -> Value {
    json!({
        "status": format!("{:?}", outcome.status()),
        "result": match &outcome.result {
            Ok(output) => json!({ "ok": String::from_utf8_lossy(output) }),
            Err(failure) => json!({ "err": failure.to_string() }),
        },
        "intents": outcome.intents.iter().map(|intent| json!([
            intent.seq,
            intent.effect,
            String::from_utf8_lossy(&intent.payload),
            intent.fate.name(),
        ])).collect::<Vec<_>>(),
    })
}

async fn checkout(plugin: &Plugin, input: &str, drop: bool) -> (Value, Vec<String>) {
    let recorder = Recorder::new();
    let mut options = RunOptions::new()
        .grants(checkout_grants())
        .input(input.as_bytes().to_vec());
    if drop {
        options = options.policy(DropAll);
    }
    let outcome = plugin
        .with_sinks(recorder.sinks())
        .run(options)
        .await
        .expect("the run starts");
    (summary(&outcome), recorder.effects())
}

#[tokio::test]
async fn python_and_javascript_checkouts_commit_drop_and_fail_exactly_like_the_rust_one() {
    let rust = load_rust_checkout();
    for language in Language::ALL {
        let plugin = load(languages::checkout(language));
        for input in [
            "",
            "{}",
            r#"{"fail": true}"#,
            r#"{"id": 7, "amount": 5, "email": "grace@example.com"}"#,
        ] {
            for drop in [false, true] {
                let expected = checkout(&rust, input, drop).await;
                let got = checkout(&plugin, input, drop).await;
                assert_eq!(
                    got,
                    expected,
                    "{} checkout, input {input:?}, {}",
                    language.name(),
                    if drop { "drop" } else { "commit" }
                );
            }
        }
    }
    // The comparison is with a checkout that did something.
    let (committed, delivered) = checkout(&rust, "{}", false).await;
    assert_eq!(committed["status"], "Committed");
    assert_eq!(delivered, ["payments.charge", "orders.save", "email.send"]);
    let (failed, delivered) = checkout(&rust, r#"{"fail": true}"#, false).await;
    assert_eq!(failed["status"], "Failed");
    assert!(delivered.is_empty());
}

fn load_rust_checkout() -> Plugin {
    escrow_tests::plugin(fixtures::CHECKOUT)
}

/// The tour fixture in `language`, with the handlers, breaker and grants
/// its cases use.
fn tour(language: Language) -> Plugin {
    let mut handlers = Handlers::new();
    handlers
        .query(
            "prices.get",
            FnHandler(|_: &[u8]| Ok::<_, CallError>(br#"{"cents":250}"#.to_vec())),
        )
        .unwrap();
    handlers
        .action(
            "stock.reserve",
            FnHandler(|_: &[u8]| Err::<Vec<u8>, _>(CallError::new("out of stock"))),
        )
        .unwrap();
    handlers
        .query(
            "upstream.call",
            FnHandler(|_: &[u8]| Err::<Vec<u8>, _>(CallError::new("upstream is down"))),
        )
        .unwrap();
    let mut breakers = Breakers::default();
    breakers
        .define(
            "upstream",
            BreakerConfig {
                failure_threshold: 2,
                recovery: Duration::from_secs(60),
                ..BreakerConfig::default()
            },
        )
        .unwrap();
    load(languages::tour(language))
        .with_handlers(handlers)
        .with_breakers(Arc::new(breakers))
}

async fn run_tour(language: Language, case: Value) -> Outcome {
    run_tour_with(language, case, Dispatch::Now).await
}

async fn run_tour_with(language: Language, case: Value, dispatch: Dispatch) -> Outcome {
    let grants = Grants::new()
        .effects([
            "kept.*",
            "rolled.*",
            "dropped.*",
            "blocked.*",
            "prices.get",
            "stock.reserve",
            "upstream.call",
        ])
        .unwrap()
        .locks(["account:*"])
        .unwrap()
        .breakers(["upstream"])
        .unwrap();
    tour(language)
        .run(
            RunOptions::new()
                .grants(grants)
                .dispatch(dispatch)
                .input(serde_json::to_vec(&case).unwrap()),
        )
        .await
        .expect("the run starts")
}

fn output(outcome: &Outcome) -> Value {
    match &outcome.result {
        Ok(output) => serde_json::from_slice(output).expect("the guest answers JSON"),
        Err(failure) => panic!("the run failed: {failure}"),
    }
}

#[tokio::test]
async fn an_uncaught_refusal_fails_the_run_with_an_error_naming_the_refusal() {
    for language in Language::ALL {
        let outcome = run_tour(language, json!({ "do": "uncaught-refusal" })).await;
        assert_eq!(outcome.status(), Status::Failed, "{}", language.name());
        let Err(Failure::GuestError(message)) = &outcome.result else {
            panic!("{}: {:?}", language.name(), outcome.result);
        };
        assert_eq!(
            message,
            "refused: not granted: `never.granted` is not covered by the plugin's grants",
            "{}",
            language.name()
        );
    }
}

#[tokio::test]
async fn a_refusal_is_a_typed_exception_the_plugin_can_handle() {
    for language in Language::ALL {
        let outcome = run_tour(language, json!({ "do": "handled-refusal" })).await;
        assert_eq!(outcome.status(), Status::Committed, "{}", language.name());
        let answer = output(&outcome);
        assert_eq!(answer["kind"], "not-granted", "{}", language.name());
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .starts_with("refused: not granted: `never.granted`"),
            "{}: {answer}",
            language.name()
        );
    }
}

#[tokio::test]
async fn scopes_commit_on_success_roll_back_on_exception_and_keep_their_policies() {
    for language in Language::ALL {
        let outcome = run_tour(language, json!({ "do": "scopes" })).await;
        assert_eq!(
            output(&outcome),
            json!([
                "kept.first",
                "dropped.inside",
                "blocked.inside",
                "kept.last"
            ]),
            "{}",
            language.name()
        );
        assert_eq!(
            fates(&outcome),
            [
                ("kept.first", "dispatched"),
                ("rolled.back", "discarded"),
                ("dropped.inside", "dropped"),
                ("blocked.inside", "blocked"),
                ("kept.last", "dispatched"),
            ],
            "{}",
            language.name()
        );
    }
}

#[tokio::test]
async fn an_effect_inside_an_assert_none_scope_fails_the_run() {
    for language in Language::ALL {
        let outcome = run_tour(language, json!({ "do": "assert-none" })).await;
        assert_eq!(outcome.status(), Status::Failed, "{}", language.name());
        assert!(
            matches!(&outcome.result, Err(Failure::Forbidden { effect, .. }) if effect == "kept.first"),
            "{}: {:?}",
            language.name(),
            outcome.result
        );
    }
}

#[tokio::test]
async fn invoke_and_query_return_parsed_json_and_a_failing_handler_raises_failed() {
    for language in Language::ALL {
        let outcome = run_tour(language, json!({ "do": "effects" })).await;
        assert_eq!(
            output(&outcome),
            json!({ "price": { "cents": 250 }, "failure": "out of stock" }),
            "{}",
            language.name()
        );
    }
}

#[tokio::test]
async fn locks_are_taken_sorted_with_a_fencing_token_and_refused_outside_the_grants() {
    for language in Language::ALL {
        let outcome = run_tour(language, json!({ "do": "locks" })).await;
        let answer = output(&outcome);
        assert_eq!(
            answer["keys"],
            json!(["account:a", "account:b"]),
            "{}",
            language.name()
        );
        assert!(answer["token"].as_u64().unwrap() > 0, "{answer}");
        assert_eq!(answer["refused"], "not-granted", "{}", language.name());

        let outcome = run_tour(language, json!({ "do": "would-deadlock" })).await;
        assert_eq!(
            output(&outcome),
            json!({ "kind": "would-deadlock" }),
            "{}",
            language.name()
        );
    }
}

#[tokio::test]
async fn a_breaker_counts_failures_then_opens_and_the_guest_sees_circuit_open() {
    for language in Language::ALL {
        let outcome = run_tour(language, json!({ "do": "breakers" })).await;
        assert_eq!(
            output(&outcome),
            json!(["closed", "failed", "failed", "circuit-open"]),
            "{}",
            language.name()
        );
    }
}

#[tokio::test]
async fn an_output_that_is_not_json_fails_the_run_with_the_reason() {
    for language in Language::ALL {
        let outcome = run_tour(language, json!({ "do": "bad-output" })).await;
        let message = outcome.result.as_ref().unwrap_err().to_string();
        assert!(
            message.contains("cannot encode the plugin's output"),
            "{}: {message}",
            language.name()
        );
    }
}

#[tokio::test]
async fn an_outgoing_http_request_from_starlingmonkey_is_refused_and_never_leaves_the_host() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/steal", listener.local_addr().unwrap());

    let outcome = run_tour(Language::JavaScript, json!({ "do": "fetch", "url": url })).await;

    let answer = output(&outcome);
    assert!(
        answer["refused"]
            .as_str()
            .is_some_and(|e| e.contains("NetworkError")),
        "{answer}"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection reached the listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_python_runs_on_four_slots_wait_for_room_and_all_commit() {
    let host = escrow_host::Host::builder()
        .max_concurrent_runs(4)
        .cache_dir(escrow_tests::compile_cache())
        .build()
        .unwrap();
    let plugin = host
        .load_file(languages::checkout(Language::Python))
        .unwrap();
    let runs: Vec<_> = (0..32)
        .map(|id| {
            let plugin = plugin.clone();
            tokio::spawn(async move {
                plugin
                    .run(
                        RunOptions::new()
                            .grants(checkout_grants())
                            .input(format!(r#"{{"id": {id}}}"#).into_bytes()),
                    )
                    .await
            })
        })
        .collect();
    for (id, run) in runs.into_iter().enumerate() {
        let outcome = run.await.unwrap().expect("every run starts");
        assert_eq!(outcome.status(), Status::Committed, "run {id}");
        assert_eq!(
            serde_json::from_slice::<Value>(outcome.result.as_ref().unwrap()).unwrap(),
            json!({ "order": id, "intents": 3 })
        );
    }
}

#[test]
fn a_python_component_too_big_for_the_slots_is_refused_at_load_with_its_numbers_and_the_knob() {
    let host = escrow_host::Host::builder()
        .slot_size(escrow_host::SlotSize {
            core_instances: 8,
            ..escrow_host::DEFAULT_SLOT
        })
        .cache_dir(escrow_tests::compile_cache())
        .build()
        .unwrap();
    let error = host
        .load_file(languages::checkout(Language::Python))
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, escrow_host::Error::Limits(_)), "{message}");
    assert!(message.contains("14"), "{message}");
    assert!(message.contains("8"), "{message}");
    assert!(message.contains("core_instances_per_slot"), "{message}");
}

#[tokio::test]
async fn http_headers_past_the_host_s_bound_fail_only_the_run_that_made_them() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let small = json!({ "do": "big-headers", "url": url, "bytes": 100 });
    let large = json!({ "do": "big-headers", "url": url, "bytes": 2 * MAX_HTTP_FIELDS_BYTES });

    let outcome = run_tour(Language::JavaScript, small.clone()).await;
    assert!(
        output(&outcome)["refused"].is_string(),
        "{:?}",
        outcome.result
    );

    let outcome = run_tour(Language::JavaScript, large).await;
    let message = outcome.result.as_ref().unwrap_err().to_string();
    assert!(message.contains("fields exceeds limit"), "{message}");

    // The host is unharmed: the next run goes on as before.
    let outcome = run_tour(Language::JavaScript, small).await;
    assert!(
        output(&outcome)["refused"].is_string(),
        "{:?}",
        outcome.result
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection reached the listener"
    );
}

/// The workspace's root directory.
fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python of the venv `tests/setup.sh` makes.
fn venv_python() -> std::process::Command {
    std::process::Command::new(workspace().join("guest-sdk/python/.venv/bin/python"))
}

/// The tour of `language` run natively, in its sandbox, by the toolchain
/// `tests/setup.sh` installs: the script prints one JSON line per case.
fn native_tour(language: Language) -> std::process::Command {
    let root = workspace();
    match language {
        Language::Python => {
            let mut command = venv_python();
            command
                .env(
                    "PYTHONPATH",
                    format!(
                        "{}:{}",
                        root.join("guest-sdk/python").display(),
                        root.join("tests/fixtures/python/tour").display()
                    ),
                )
                .arg(root.join("tests/fixtures/python/tour/native.py"));
            command
        }
        Language::JavaScript => {
            let mut command = std::process::Command::new("node");
            command
                .arg("--import")
                .arg(root.join("guest-sdk/js/register.js"))
                .arg(root.join("tests/fixtures/javascript/native.js"));
            command
        }
    }
}

/// The sandbox's own tests and the checkout example's native tests: pytest
/// in `guest-sdk/python`, node's test runner in `guest-sdk/js`.
fn sandbox_tests(language: Language) -> std::process::Command {
    let root = workspace();
    match language {
        Language::Python => {
            let mut command = venv_python();
            command
                .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
                .args(["tests", "../../examples/checkout/python"])
                .current_dir(root.join("guest-sdk/python"));
            command
        }
        Language::JavaScript => {
            let mut command = std::process::Command::new("node");
            command
                .args(["--import", "./register.js", "--test", "test/"])
                .arg("../../examples/checkout/javascript/")
                .current_dir(root.join("guest-sdk/js"));
            command
        }
    }
}

/// Every case of the tour.
const TOUR_CASES: [&str; 9] = [
    "uncaught-refusal",
    "handled-refusal",
    "scopes",
    "assert-none",
    "effects",
    "locks",
    "breakers",
    "would-deadlock",
    "bad-output",
];

#[tokio::test]
async fn each_language_s_sandbox_gives_each_tour_case_the_status_output_and_intents_the_host_gives()
{
    // A fencing token only rises: the host's lock service has served other
    // runs before this one, the sandbox none.
    let comparable = |mut summary: Value| {
        if let Some(token) = summary.pointer_mut("/output/token") {
            *token = json!(token.as_u64().is_some_and(|t| t > 0));
        }
        summary
    };
    let cases: Vec<String> = TOUR_CASES
        .iter()
        .map(|case| json!({ "do": case }).to_string())
        .collect();
    for language in Language::ALL {
        let native = native_tour(language).args(&cases).output().unwrap();
        assert!(
            native.status.success(),
            "{}: {}",
            language.name(),
            String::from_utf8_lossy(&native.stderr)
        );
        let native: Vec<Value> = String::from_utf8(native.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(native.len(), cases.len(), "{}", language.name());

        for (case, native) in TOUR_CASES.iter().zip(native) {
            let outcome = run_tour_with(language, json!({ "do": case }), Dispatch::Hold).await;
            let host = json!({
                "status": format!("{:?}", outcome.status()).to_lowercase(),
                "output": match &outcome.result {
                    Ok(output) => serde_json::from_slice(output).unwrap(),
                    Err(_) => Value::Null,
                },
                "intents": outcome.intents.iter().map(|intent| json!([
                    intent.seq,
                    intent.effect,
                    String::from_utf8_lossy(&intent.payload),
                    intent.fate.name(),
                ])).collect::<Vec<_>>(),
            });
            assert_eq!(
                comparable(native),
                comparable(host),
                "the {} tour's `{case}`, natively and on the host",
                language.name()
            );
        }
    }
}

#[test]
fn each_language_s_sandbox_passes_its_own_tests_under_the_language_s_test_runner() {
    for language in Language::ALL {
        let output = sandbox_tests(language).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{}: {text}", language.name());
        let ran = match language {
            Language::Python => text.contains(" passed") && !text.contains(" failed"),
            Language::JavaScript => text.contains("# fail 0") && !text.contains("# pass 0"),
        };
        assert!(ran, "{}: {text}", language.name());
    }
}
