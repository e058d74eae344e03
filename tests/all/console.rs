//! The console: its pages over HTTP (sessions, the forms' own token, roles,
//! escaping, a prefix), and an operator's tour in a real browser (Debian's
//! Chromium through chromedriver), whose screenshots are in
//! `docs/console.md`.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use escrow_host::serve::router;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::json;

use crate::serve::{Api, OPERATOR, VIEWER};

/// A client that keeps redirects to itself, so that tests see them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; the session's cookie.
async fn sign_in(base: &str, token: &str) -> String {
    let answer = client()
        .post(format!("{base}/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

async fn page(base: &str, cookie: &str, path: &str) -> (StatusCode, String) {
    let answer = client()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (answer.status(), answer.text().await.unwrap())
}

/// The `csrf` field of a page's forms.
fn csrf(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a form") + r#"name="csrf" value=""#.len();
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_page_without_a_session_leads_to_the_login_and_a_bad_token_is_refused() {
    let api = Api::start().await;
    for path in ["/", "/runs/", "/dead/", "/held/", "/breakers/"] {
        let answer = client()
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers()["location"], "/login");
    }
    let refused = client()
        .post(format!("{}/login", api.base))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("That token is not valid.")
    );
}

#[tokio::test]
async fn a_viewer_sees_every_page_and_is_refused_every_change() {
    let api = Api::start().await;
    api.dead_letters(1).await;
    let cookie = sign_in(&api.base, VIEWER).await;
    for path in ["/", "/runs/", "/dead/", "/held/", "/breakers/"] {
        let (status, _) = page(&api.base, &cookie, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (_, dead) = page(&api.base, &cookie, "/dead/").await;
    let token = csrf(&dead);
    for (path, form) in [
        (
            "/dead/retry",
            vec![
                ("csrf", token.as_str()),
                ("which", "all"),
                ("confirmed", "yes"),
            ],
        ),
        (
            "/breakers/payments/open",
            vec![("csrf", token.as_str()), ("confirmed", "yes")],
        ),
    ] {
        let answer = client()
            .post(format!("{}{path}", api.base))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(
            answer
                .text()
                .await
                .unwrap()
                .contains("a viewer may not change anything")
        );
    }
    assert_eq!(api.outbox.store().stats().await.unwrap().dead, 3);
}

#[tokio::test]
async fn a_form_without_its_session_s_token_changes_nothing() {
    let api = Api::start().await;
    api.dead_letters(1).await;
    let cookie = sign_in(&api.base, OPERATOR).await;
    let answer = client()
        .post(format!("{}/dead/retry", api.base))
        .header("cookie", &cookie)
        .form(&[("csrf", "forged"), ("which", "all"), ("confirmed", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("did not come from this session")
    );
    assert_eq!(api.outbox.store().stats().await.unwrap().dead, 3);
}

#[tokio::test]
async fn what_a_guest_wrote_is_shown_as_text_never_as_markup() {
    let api = Api::start().await;
    let hostile = r#""><img src=x onerror=alert(1)><script>alert(2)</script>"#;
    let answer = client()
        .post(format!("{}/v1/plugins/held/runs", api.base))
        .bearer_auth(OPERATOR)
        .body(json!({ "id": 5, "email": hostile }).to_string())
        .send()
        .await
        .unwrap();
    let outcome: serde_json::Value = answer.json().await.unwrap();
    let run_id = outcome["run_id"].as_str().unwrap();
    api.kept(run_id).await;
    let cookie = sign_in(&api.base, VIEWER).await;
    for path in [format!("/runs/{run_id}"), "/held/".to_owned()] {
        let (status, html) = page(&api.base, &cookie, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains("<script>alert(2)"), "{path}");
        assert!(!html.contains("<img src=x"), "{path}");
        assert!(
            html.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_console_nested_under_a_prefix_links_and_redirects_under_it() {
    let api = Api::start().await;
    let app = axum::Router::new()
        .nest("/ops/escrow", router(Arc::clone(&api.service)))
        .into_make_service_with_connect_info::<SocketAddr>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/ops/escrow", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let answer = client().get(format!("{base}/runs/")).send().await.unwrap();
    assert_eq!(answer.headers()["location"], "/ops/escrow/login");
    let cookie = sign_in(&base, OPERATOR).await;
    // A nested router serves its root at the prefix itself.
    let (status, html) = page(&base, &cookie, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"href="/ops/escrow/runs/""#), "{html}");
}

/// Headless Chromium, driven through a chromedriver of its own on a free
/// port. chromedriver leads a process group of its own, which the Chromium
/// it starts joins: dropping the browser kills the whole group, so no
/// Chromium outlives its test, even one whose session could not be closed.
struct Browser {
    driver: Child,
    client: Client,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (tests/setup.sh installs chromium-driver)");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        });
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let connected = ClientBuilder::new(connector)
                .capabilities(capabilities.as_object().unwrap().clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match connected {
                Ok(client) => break client,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("chromedriver did not start: {error}"),
            }
        };
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            client,
            shots,
        }
    }

    async fn shoot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The page's text, once a page is there (a click may still be
    /// loading the next one).
    async fn text(&self) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let found = match self.client.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.ok(),
                Err(_) => None,
            };
            match found {
                Some(text) => return text,
                None if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => panic!("no page loaded"),
            }
        }
    }

    /// Waits until the page says `expected`; its text.
    async fn says(&self, expected: &str) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text().await;
            if text.contains(expected) {
                return text;
            }
            assert!(
                Instant::now() < until,
                "the page never said `{expected}`: {text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs in with `token` and waits for the page that says so: a click
    /// returns before the next page is there, and going elsewhere before
    /// the session's cookie is set would land on the login again.
    async fn sign_in(&self, base: &str, token: &str, role: &str) {
        self.client.goto(&format!("{base}/login")).await.unwrap();
        self.client
            .find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(token)
            .await
            .unwrap();
        self.click("button[type=submit]").await;
        self.says(&format!("signed in as {role}")).await;
    }

    async fn sign_out(&self) {
        self.click("header form button").await;
        self.says("Sign in").await;
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_retries_approves_and_controls_breakers_in_a_browser() {
    let api = Api::start().await;
    let committed = api.run("checkout", 42).await;
    let dead = api.dead_letters(7).await;
    let held = api.run("held", 9).await;
    api.kept(held["run_id"].as_str().unwrap()).await;
    let browser = Browser::start().await;
    let base = &api.base;

    // 1. A viewer signs in and sees a run.
    browser.sign_in(base, VIEWER, "viewer").await;
    browser.shoot("overview").await;
    browser.client.goto(&format!("{base}/runs/")).await.unwrap();
    let committed_id = committed["run_id"].as_str().unwrap();
    browser.says(committed_id).await;
    browser.shoot("runs").await;

    // 2. …and is refused a retry.
    browser.client.goto(&format!("{base}/dead/")).await.unwrap();
    browser.click("input[name=ids]").await;
    browser.click("button[value=selected]").await;
    browser.says("a viewer may not change anything").await;
    browser.shoot("viewer-refused").await;
    browser.sign_out().await;

    // 3. An operator finds the dead letter by its key, and retries it.
    browser.sign_in(base, OPERATOR, "operator").await;
    browser.client.goto(&format!("{base}/runs/")).await.unwrap();
    let key = format!("{}:1", dead.run_id);
    browser
        .client
        .find(Locator::Css("input[name=q]"))
        .await
        .unwrap()
        .send_keys(&key)
        .await
        .unwrap();
    browser.click("form.filters button").await;
    browser.says(&dead.run_id.to_string()).await;
    browser.shoot("run").await;
    browser.client.goto(&format!("{base}/dead/")).await.unwrap();
    browser.shoot("dead-letters").await;
    let checkbox = format!("input[aria-label='select {key}']");
    browser.click(&checkbox).await;
    browser.click("button[value=selected]").await;
    browser.says("Retry 1 dead letter?").await;
    browser.click("button.danger").await;
    browser.says("1 retried").await;

    // 4. …and sees it delivered.
    api.deliver().await;
    browser
        .client
        .goto(&format!("{base}/runs/{}", dead.run_id))
        .await
        .unwrap();
    browser
        .says(&format!("{key} payments.charge delivered"))
        .await;

    // 5. An operator approves the held run.
    browser.client.goto(&format!("{base}/held/")).await.unwrap();
    browser.shoot("held-runs").await;
    browser
        .client
        .find(Locator::Css("input[name=by]"))
        .await
        .unwrap()
        .send_keys("ana")
        .await
        .unwrap();
    browser.click("button[value=approve]").await;
    let held_id = held["run_id"].as_str().unwrap();
    browser
        .says(&format!("run {held_id} approved by ana"))
        .await;

    // 6. …and opens and resets a breaker, each after a confirmation.
    for (action, state) in [("open", "open"), ("reset", "closed")] {
        browser
            .client
            .goto(&format!("{base}/breakers/"))
            .await
            .unwrap();
        let button = format!("form[action$='/payments/{action}'] button");
        browser.click(&button).await;
        browser.says("Confirm").await;
        browser.click("button.danger").await;
        let done = match action {
            "open" => "payments is open: calls through it fail fast",
            _ => "payments is reset: closed",
        };
        browser.says(done).await;
        browser.says(&format!("payments {state}")).await;
        if action == "open" {
            browser.shoot("breakers").await;
        }
    }
    // Ending the session is tidiness, not behaviour under test: chromedriver
    // may time out quitting a loaded Chromium, and dropping the browser
    // kills what is left either way.
    if let Err(error) = browser.client.clone().close().await {
        eprintln!("the browser's session did not close: {error}");
    }
}

#[tokio::test]
async fn runs_are_filtered_by_how_long_ago_they_started() {
    let api = Api::start().await;
    let ran = api.run("checkout", 3).await;
    let run_id = ran["run_id"].as_str().unwrap();
    api.kept(run_id).await;
    let cookie = sign_in(&api.base, VIEWER).await;

    let (status, recent) = page(&api.base, &cookie, "/runs/?since=1h").await;
    assert_eq!(status, StatusCode::OK);
    assert!(recent.contains(run_id));
    let (status, refused) = page(&api.base, &cookie, "/runs/?since=lately").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused.contains("is not a duration"));
}
