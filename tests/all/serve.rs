//! The HTTP API of `escrow serve`, over real HTTP on a free port: tokens and
//! roles (401, 403, 429), runs, the run history, intents by key, held runs,
//! dead letters, breakers, and a reload under load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use escrow_host::backends::MemoryBreakers;
use escrow_host::breakers::{BreakerConfig, Breakers};
use escrow_host::outbox::{Outbox, SqliteOutbox};
use escrow_host::patterns::Patterns;
use escrow_host::serve::{MAX_FAILED_ATTEMPTS, Served, Service, Tokens, router};
use escrow_host::{Grants, Plugin, RunOptions};
use escrow_tests::{Recorder, fixtures, host};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub(crate) const OPERATOR: &str = "operator-token-for-tests";
pub(crate) const VIEWER: &str = "viewer-token-for-tests";

/// A service of the checkout example (`checkout`, and `held`, whose
/// charges wait for approval) on a free loopback port, its outbox in `dir`.
pub(crate) struct Api {
    pub(crate) base: String,
    client: reqwest::Client,
    pub(crate) recorder: Recorder,
    pub(crate) outbox: Outbox,
    pub(crate) service: Arc<Service>,
    _dir: tempfile::TempDir,
}

pub(crate) fn options() -> RunOptions {
    RunOptions::new().grants(
        Grants::new()
            .effects(["payments.charge", "orders.save", "email.send", "a.*"])
            .unwrap(),
    )
}

impl Api {
    pub(crate) async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::new(SqliteOutbox::open(dir.path().join("o.db")).unwrap()).keep_history();
        let recorder = Recorder::new();
        let component = dir.path().join("checkout.wasm");
        std::fs::copy(fixtures::CHECKOUT, &component).unwrap();
        let plugin = |name: &str| -> Plugin {
            host()
                .load_file(&component)
                .unwrap()
                .with_name(name)
                .with_sinks(recorder.sinks())
                .with_outbox(Some(outbox.clone()))
        };
        let mut tokens = Tokens::new();
        tokens
            .parse("test", &format!("operator:{OPERATOR},viewer:{VIEWER}"))
            .unwrap();
        let mut breakers = Breakers::new(Arc::new(MemoryBreakers::new()));
        breakers
            .define("payments", BreakerConfig::default())
            .unwrap();
        let service = Arc::new(
            Service::new(tokens)
                .outbox(outbox.clone())
                .breakers(Arc::new(breakers))
                .plugin(
                    "checkout",
                    Served {
                        plugin: plugin("checkout"),
                        options: options(),
                        path: Some(component.clone()),
                    },
                )
                .plugin(
                    "held",
                    Served {
                        plugin: plugin("held"),
                        options: options()
                            .require_approval(Patterns::effects(["payments.*"]).unwrap()),
                        path: None,
                    },
                ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = router(Arc::clone(&service)).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Api {
            base: format!("http://{address}"),
            client: reqwest::Client::new(),
            recorder,
            outbox,
            service,
            _dir: dir,
        }
    }

    fn get(&self, token: Option<&str>, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.get(format!("{}{path}", self.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn post(&self, token: Option<&str>, path: &str, body: &str) -> reqwest::RequestBuilder {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body.to_owned());
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET path` as a viewer: the answer's JSON, which must be a 200's.
    pub(crate) async fn read(&self, path: &str) -> Value {
        let answer = self.get(Some(VIEWER), path).send().await.unwrap();
        let status = answer.status();
        let body = answer.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// `POST path` with `body` as an operator: the status and the answer's
    /// JSON (every answer of the API is JSON, errors included).
    pub(crate) async fn act(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let answer = self.post(Some(OPERATOR), path, body).send().await.unwrap();
        (answer.status(), answer.json().await.unwrap())
    }

    /// Runs `plugin` for `order` as the operator; the outcome.
    pub(crate) async fn run(&self, plugin: &str, order: u64) -> Value {
        let input = json!({ "id": order }).to_string();
        let (status, outcome) = self
            .act(&format!("/v1/plugins/{plugin}/runs"), &input)
            .await;
        assert_eq!(status, StatusCode::OK, "{outcome}");
        outcome
    }

    /// A checkout of `order` whose intents no sink takes, delivered by a
    /// worker that gives up after one attempt: three dead letters.
    pub(crate) async fn dead_letters(&self, order: u64) -> escrow_host::Outcome {
        let input = json!({ "id": order }).to_string().into_bytes();
        let outcome = self
            .service
            .served("checkout")
            .unwrap()
            .plugin
            .with_sinks(escrow_host::sinks::Sinks::new())
            .run(
                options()
                    .input(input)
                    .dispatch(escrow_host::Dispatch::Later),
            )
            .await
            .unwrap();
        let impatient = self
            .outbox
            .clone()
            .retry_policy(escrow_host::outbox::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            });
        escrow_host::outbox::Worker::new(
            impatient,
            escrow_host::sinks::Sinks::new(),
            escrow_host::handlers::Handlers::new(),
        )
        .run_once()
        .await
        .unwrap();
        outcome
    }

    /// Delivers what is due to the recorder.
    pub(crate) async fn deliver(&self) {
        escrow_host::outbox::Worker::new(
            self.outbox.clone(),
            self.recorder.sinks(),
            escrow_host::handlers::Handlers::new(),
        )
        .run_once()
        .await
        .unwrap();
    }

    /// Waits for the history to list `run_id` (it is written after the run).
    pub(crate) async fn kept(&self, run_id: &str) -> Value {
        for _ in 0..500 {
            let answer = self
                .get(Some(VIEWER), &format!("/v1/runs/{run_id}"))
                .send()
                .await
                .unwrap();
            // `outcome` is null (or the run unknown) until the history's
            // writer has kept it.
            let body: Value = answer.json().await.unwrap();
            if !body["outcome"].is_null() {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("run {run_id} was never kept");
    }
}

#[tokio::test]
async fn every_route_but_the_health_checks_needs_a_valid_token() {
    let api = Api::start().await;
    let routes = [
        ("GET", "/v1/plugins"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/outbox/stats"),
        ("GET", "/v1/breakers"),
        ("GET", "/metrics"),
        ("POST", "/v1/plugins/checkout/runs"),
        ("POST", "/v1/outbox/retry"),
    ];
    let mut failures = 0;
    for (method, path) in routes {
        for token in [None, Some("not-a-token-at-all")] {
            let request = match method {
                "GET" => api.get(token, path),
                _ => api.post(token, path, "{}"),
            };
            let answer = request.send().await.unwrap();
            // Past the failures a client may make, it is limited instead.
            failures += 1;
            let refused = match failures <= MAX_FAILED_ATTEMPTS {
                true => StatusCode::UNAUTHORIZED,
                false => StatusCode::TOO_MANY_REQUESTS,
            };
            assert_eq!(answer.status(), refused, "{method} {path}");
        }
    }
    for path in ["/healthz", "/readyz"] {
        let answer = api.get(None, path).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
    }
    assert!(api.recorder.seen().is_empty());
}

#[tokio::test]
async fn a_viewer_reads_and_is_refused_every_change() {
    let api = Api::start().await;
    let ran = api.run("checkout", 1).await;
    let run_id = ran["run_id"].as_str().unwrap();
    for path in [
        "/v1/plugins",
        "/v1/runs",
        "/v1/outbox/stats",
        "/v1/breakers",
    ] {
        let answer = api.get(Some(VIEWER), path).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
    }
    let changes = [
        ("/v1/plugins/checkout/runs", "{}".to_owned()),
        ("/v1/plugins/checkout/reload", String::new()),
        ("/v1/outbox/retry", r#"{"dead": true}"#.to_owned()),
        (
            &*format!("/v1/runs/{run_id}/approve"),
            r#"{"by": "eve"}"#.to_owned(),
        ),
        ("/v1/breakers/payments/open", String::new()),
    ];
    for (path, body) in changes {
        let answer = api.post(Some(VIEWER), path, &body).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{path}");
        let error: Value = answer.json().await.unwrap();
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("needs the operator role"),
            "{error}"
        );
    }
    assert_eq!(
        api.recorder.seen().len(),
        3,
        "only the operator's run delivered"
    );
}

#[tokio::test]
async fn an_operator_runs_a_plugin_and_finds_the_run_and_its_intents() {
    let api = Api::start().await;

    let outcome = api.run("checkout", 42).await;

    assert_eq!(outcome["status"], "committed");
    let run_id = outcome["run_id"].as_str().unwrap();
    let sha256 = api
        .service
        .served("checkout")
        .unwrap()
        .plugin
        .sha256()
        .unwrap()
        .to_owned();
    assert_eq!(outcome["component_sha256"], sha256.as_str());
    let kept = api.kept(run_id).await;
    assert_eq!(kept["outcome"]["status"], "committed");
    let statuses: Vec<&str> = kept["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["delivered", "delivered", "delivered"]);
    let first = &kept["entries"][0];
    assert_eq!(first["run_id"], run_id);
    assert_eq!(first["plugin"], "checkout");
    assert_eq!(first["payload"], json!({ "order": 42, "amount": 1999 }));

    let listed = api
        .read("/v1/runs?plugin=checkout&effect=payments.charge")
        .await;
    assert_eq!(listed["runs"][0]["run_id"], run_id);

    let key = format!("{run_id}:1");
    let intent = api
        .read(&format!("/v1/intents?idempotency_key={key}"))
        .await;
    assert_eq!(intent["effect"], "payments.charge");
    assert_eq!(intent["status"], "delivered");
    assert_eq!(intent["payload"], json!({ "order": 42, "amount": 1999 }));
}

#[tokio::test]
async fn runs_are_listed_a_page_at_a_time_with_a_cursor() {
    let api = Api::start().await;
    let mut ids = Vec::new();
    for order in 0..5 {
        ids.push(
            api.run("checkout", order).await["run_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    api.kept(&ids[4]).await;
    api.kept(&ids[0]).await;

    let mut seen = Vec::new();
    let mut path = "/v1/runs?limit=2".to_owned();
    loop {
        let page = api.read(&path).await;
        for run in page["runs"].as_array().unwrap() {
            seen.push(run["run_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/runs?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn bad_requests_are_answered_in_one_line_with_their_status() {
    let api = Api::start().await;
    let cases = [
        (
            api.post(Some(OPERATOR), "/v1/plugins/nope/runs", "{}"),
            StatusCode::NOT_FOUND,
        ),
        (
            api.post(Some(OPERATOR), "/v1/outbox/retry", "{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            api.post(Some(OPERATOR), "/v1/outbox/retry", "{}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            api.get(Some(VIEWER), "/v1/runs/not-a-run"),
            StatusCode::BAD_REQUEST,
        ),
        (
            api.get(
                Some(VIEWER),
                &format!("/v1/runs/{}", escrow_host::RunId::new()),
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            api.get(Some(VIEWER), "/v1/intents?idempotency_key=nope"),
            StatusCode::BAD_REQUEST,
        ),
        (
            api.post(
                Some(OPERATOR),
                "/v1/plugins/checkout/runs?dispatch=later",
                "{}",
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            api.post(Some(OPERATOR), "/v1/breakers/nope/open", ""),
            StatusCode::NOT_FOUND,
        ),
        (
            api.post(Some(OPERATOR), "/v1/plugins/held/reload", ""),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (request, status) in cases {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), status);
        let error: Value = answer.json().await.unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(!message.is_empty() && !message.contains('\n'), "{message}");
    }
}

#[tokio::test]
async fn a_held_run_is_approved_over_http_and_delivered() {
    let api = Api::start().await;
    let outcome = api.run("held", 9).await;
    assert_eq!(outcome["status"], "held");
    let run_id = outcome["run_id"].as_str().unwrap();

    let (status, _) = api
        .act(
            &format!("/v1/runs/{run_id}/approve"),
            r#"{"by": "ana", "reason": "ok"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = api
        .act(&format!("/v1/runs/{run_id}/reject"), r#"{"by": "bob"}"#)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("already approved by ana"),
        "{refused}"
    );

    api.deliver().await;
    assert_eq!(api.recorder.seen().len(), 3);
    let stats = api.read("/v1/outbox/stats").await;
    assert_eq!(stats["decisions"]["approved"], 1);
}

#[tokio::test]
async fn a_dead_letter_found_by_its_key_is_retried_over_http_and_delivered() {
    let api = Api::start().await;
    let outcome = api.dead_letters(3).await;
    let key = format!("{}:1", outcome.run_id);
    let by_key = format!("/v1/intents?idempotency_key={key}");
    let dead = api.read(&by_key).await;
    assert_eq!(dead["status"], "dead");

    let ids = json!({ "ids": [dead["id"]] }).to_string();
    let (status, retried) = api.act("/v1/outbox/retry", &ids).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retried["retried"], 1);
    api.deliver().await;

    assert_eq!(api.read(&by_key).await["status"], "delivered");
    assert_eq!(api.recorder.effects()[0], "payments.charge");
    let (status, _) = api.act("/v1/outbox/retry", r#"{"ids": [999999]}"#).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The other two are dead still: only the one of an effect is retried.
    let (_, filtered) = api
        .act(
            "/v1/outbox/retry",
            r#"{"dead": true, "effect": "email.send"}"#,
        )
        .await;
    assert_eq!(filtered["retried"], 1);
    assert_eq!(api.outbox.store().stats().await.unwrap().dead, 1);
}

#[tokio::test]
async fn an_operator_opens_and_resets_a_breaker() {
    let api = Api::start().await;
    for (action, state) in [("open", "open"), ("reset", "closed")] {
        let (status, answer) = api
            .act(&format!("/v1/breakers/payments/{action}"), "")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["state"], state);
        let listed = api.read("/v1/breakers").await;
        assert_eq!(listed["breakers"][0]["state"], state);
    }
}

#[tokio::test]
async fn a_client_that_fails_too_often_is_refused_for_a_while() {
    let api = Api::start().await;
    for _ in 0..MAX_FAILED_ATTEMPTS {
        let answer = api
            .get(Some("guessing-a-token-now"), "/v1/runs")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let answer = api.get(Some(VIEWER), "/v1/runs").send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_reload_under_load_drops_no_run_and_each_names_the_version_it_ran() {
    let api = Api::start().await;
    let old = api
        .service
        .served("checkout")
        .unwrap()
        .plugin
        .sha256()
        .unwrap()
        .to_owned();
    let path = api
        .service
        .served("checkout")
        .unwrap()
        .path
        .clone()
        .unwrap();

    let runs: Vec<_> = (0..100)
        .map(|order| {
            let request = api
                .post(
                    Some(OPERATOR),
                    "/v1/plugins/checkout/runs",
                    &json!({ "id": order }).to_string(),
                )
                .send();
            tokio::spawn(async move {
                let answer = request.await.unwrap();
                (answer.status(), answer.json::<Value>().await.unwrap())
            })
        })
        .collect();
    // The next version replaces the file, and is served from now on.
    std::fs::copy(fixtures::CHECKOUT_NEXT, &path).unwrap();
    let (status, reloaded) = api.act("/v1/plugins/checkout/reload", "").await;
    assert_eq!(status, StatusCode::OK);
    let new = reloaded["component_sha256"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    for run in runs {
        let (status, outcome) = run.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{outcome}");
        let ran = outcome["component_sha256"].as_str().unwrap();
        assert!(ran == old || ran == new, "{ran}");
        // The version it names is the one whose charge it made.
        let amount = outcome["intents"][0]["payload"]["amount"].as_u64().unwrap();
        assert_eq!(amount == 2099, ran == new, "{outcome}");
    }
    let after = api.run("checkout", 1).await;
    assert_eq!(after["component_sha256"], new.as_str());
}

/// The routes `serve.rs` declares: `(METHOD, path)`.
fn declared_routes() -> Vec<(String, String)> {
    let source = include_str!("../../host/src/serve.rs");
    source
        .split(".route(\"")
        .skip(1)
        .map(|rest| {
            let (path, rest) = rest.split_once('"').unwrap();
            let method = rest.trim_start_matches([',', ' ', '\n']);
            let method = method.split('(').next().unwrap().trim().to_uppercase();
            (method, path.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn the_openapi_file_documents_exactly_the_routes_served_and_each_answers() {
    let doc: Value = serde_json::from_str(include_str!("../../docs/serve.openapi.json")).unwrap();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut declared = declared_routes();
    documented.sort();
    declared.sort();
    assert_eq!(documented, declared);

    let api = Api::start().await;
    let run = escrow_host::RunId::new().to_string();
    for (method, path) in &documented {
        let path = path.replace("{name}", "checkout").replace("{run_id}", &run);
        let path = match path.as_str() {
            "/v1/intents" => format!("/v1/intents?idempotency_key={run}:1"),
            "/v1/breakers/checkout/open" | "/v1/breakers/checkout/reset" => {
                path.replace("checkout", "payments")
            }
            _ => path,
        };
        let request = match method.as_str() {
            "GET" => api.get(Some(OPERATOR), &path),
            _ => api.post(Some(OPERATOR), &path, r#"{"by": "ana", "dead": true}"#),
        };
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let body = answer.text().await.unwrap();
        // A route that is not served answers 404 or 405 with no JSON body.
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            assert!(body.contains("\"error\""), "{method} {path} is not served");
        }
    }
}

#[tokio::test]
async fn a_retried_request_with_an_idempotency_key_gets_the_first_answer_and_runs_once() {
    let api = Api::start().await;
    let send = |body: &'static str, key: &str| {
        api.post(Some(OPERATOR), "/v1/plugins/checkout/runs", body)
            .header("Idempotency-Key", key)
            .send()
    };

    let first = send(r#"{"id": 42}"#, "order-42").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let again = send(r#"{"id": 42}"#, "order-42").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();

    assert_eq!(again["run_id"], first["run_id"]);
    assert_eq!(api.recorder.seen().len(), 3, "the plugin ran once");
    let other = send(r#"{"id": 43}"#, "order-42").await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let long = "k".repeat(escrow_host::outbox::MAX_REQUEST_KEY_BYTES + 1);
    let refused = send(r#"{"id": 44}"#, &long).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(api.recorder.seen().len(), 3);
}
