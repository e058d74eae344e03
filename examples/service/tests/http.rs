//! The service over real HTTP: runs per tenant with their grants and
//! policies through escrow's router, the outcome as JSON, 100 concurrent
//! requests, tokens, and metrics.

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOKEN: &str = "operator-token-for-the-example";

/// The service, killed when dropped.
struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> Service {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_escrow-service"))
        .args(["--plugin", escrow_fixtures::CHECKOUT])
        .args([
            "--tenants",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tenants.toml"),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("ESCROW_LOG", "warn")
        .env("ESCROW_TOKENS", format!("operator:{TOKEN}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the service");
    let service = Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while reqwest::get(format!("{}/healthz", service.base))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the service did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service
}

async fn run(client: &reqwest::Client, base: &str, tenant: &str, body: &str) -> (u16, Value) {
    let response = client
        .post(format!("{base}/v1/plugins/{tenant}/runs"))
        .bearer_auth(TOKEN)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_runs_under_its_grants_and_policy_and_gets_the_outcome_as_json() {
    let service = start().await;
    let client = reqwest::Client::new();
    let base = &service.base;

    let (status, committed) = run(&client, base, "acme", r#"{"id": 1}"#).await;
    assert_eq!(status, 200, "{committed}");
    assert_eq!(committed["status"], "committed");
    assert_eq!(committed["schema"], 1);
    assert_eq!(committed["intents"][0]["fate"], "dispatched");

    let (status, dropped) = run(&client, base, "trial", r#"{"id": 2}"#).await;
    assert_eq!((status, dropped["status"].as_str()), (200, Some("dropped")));

    let (status, refused) = run(&client, base, "readonly", r#"{"id": 3}"#).await;
    assert_eq!((status, refused["status"].as_str()), (422, Some("failed")));
    assert_eq!(refused["intents"][0]["refusal"], "not-granted");

    let (status, unknown) = run(&client, base, "nobody", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(unknown["error"], "no plugin `nobody` is served");

    let anonymous = client
        .post(format!("{base}/v1/plugins/acme/runs"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_each_get_a_run_of_their_own_and_are_counted() {
    let service = start().await;
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..100)
        .map(|i| {
            let (client, base) = (client.clone(), service.base.clone());
            tokio::spawn(
                async move { run(&client, &base, "acme", &format!(r#"{{"id": {i}}}"#)).await },
            )
        })
        .collect();
    let mut run_ids = HashSet::new();
    for request in requests {
        let (status, outcome) = request.await.unwrap();
        assert_eq!(status, 200, "{outcome}");
        assert_eq!(outcome["status"], "committed");
        run_ids.insert(outcome["run_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(run_ids.len(), 100);

    let metrics = client
        .get(format!("{}/metrics", service.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let committed = metrics
        .lines()
        .find(|l| {
            l.starts_with("escrow_runs_total")
                && l.contains(r#"plugin="checkout""#)
                && l.contains(r#"status="committed""#)
        })
        .unwrap_or_else(|| panic!("no committed runs in {metrics}"));
    assert!(committed.ends_with(" 100"), "{committed}");
}
