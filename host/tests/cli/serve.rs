//! `escrow serve`, as an operator starts it: plugins over HTTP, a reload on
//! SIGHUP, a graceful stop on SIGTERM, and refusals at start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{escrow, fixtures, stderr};

const OPERATOR: &str = "operator-token-for-cli-tests";

/// A config serving the checkout example (a copy of its component in
/// `dir`) as `checkout`, with an outbox in `dir`.
fn config(dir: &Path) -> String {
    std::fs::copy(fixtures::CHECKOUT, dir.join("checkout.wasm")).unwrap();
    let path = dir.join("escrow.toml");
    std::fs::write(
        &path,
        r#"
sink = "file:out.jsonl"
[grants]
effects = ["payments.charge", "orders.save", "email.send"]
[outbox]
url = "outbox.db"
[plugins.checkout]
path = "checkout.wasm"
"#,
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// Starts `escrow serve` on a port of its choosing; returns the process and
/// the address it listens on.
fn start(config: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(["serve", "--config", config, "--listen", "127.0.0.1:0"])
        .env("ESCROW_TOKENS", format!("operator:{OPERATOR}"))
        .env(
            "ESCROW_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("escrow-cache"),
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("escrow serve ended before listening")
            .unwrap();
        if let Some(address) = line.strip_prefix("escrow: listening on ") {
            break address.to_owned();
        }
    };
    // The rest of its stderr is read so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, address)
}

fn run(address: &str) -> Value {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let answer = reqwest::Client::new()
            .post(format!("{address}/v1/plugins/checkout/runs"))
            .bearer_auth(OPERATOR)
            .body(r#"{"id": 7}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.json().await.unwrap()
    })
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn serve_runs_plugins_reloads_them_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, address) = start(&config(dir.path()));

    let first = run(&address);
    assert_eq!(first["status"], "committed");
    let old = first["component_sha256"].as_str().unwrap().to_owned();

    std::fs::copy(fixtures::CHECKOUT_NEXT, dir.path().join("checkout.wasm")).unwrap();
    signal(&child, "HUP");
    let until = Instant::now() + Duration::from_secs(30);
    let reloaded = loop {
        let outcome = run(&address);
        if outcome["component_sha256"] != old.as_str() {
            break outcome;
        }
        assert!(Instant::now() < until, "SIGHUP reloaded nothing");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(reloaded["intents"][0]["payload"]["amount"], 2099);

    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let delivered = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(delivered.lines().count() >= 6, "{delivered}");
}

#[test]
fn serve_refuses_to_start_without_a_token_or_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let refused = escrow(&["serve", "--config", &config]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("no token: every request would be refused"),
        "{}",
        stderr(&refused)
    );

    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_escrow"))
        .args(["serve", "--config", empty.to_str().unwrap()])
        .env("ESCROW_TOKENS", format!("operator:{OPERATOR}"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&refused.stderr).lines().count(), 1);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no [plugins.NAME] table"));
}
