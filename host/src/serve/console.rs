//! The console: the operator's pages, served by the service itself at `/`
//! (under any prefix it is nested in), with nothing asked of another host.
//!
//! A token opens a session ([`session`]); every page needs one, and every
//! change is a form that carries the session's own token (`csrf`) and, for a
//! retry or a breaker, a confirmation first. A viewer sees every page and
//! is refused every change (403).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::Markup;
use serde::Deserialize;

use super::auth::{Role, Verdict};
use super::service::Service;
use crate::breakers::Forced;
use crate::outbox::{DeadFilter, EntryStatus, Filter, Retry, RunFilter};
use crate::run_id::RunId;

mod pages;

use super::session::{self, Session};
use pages::{HeldRun, RunsForm, Viewer};

/// The most entries a page of dead letters or held runs shows.
pub const MAX_LISTED_ENTRIES: u32 = 500;

/// The console's pages, to merge into the service's router.
pub(super) fn routes() -> axum::Router<Arc<Service>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/runs/", get(runs))
        .route("/runs/{run_id}", get(one_run))
        .route("/dead/", get(dead))
        .route("/dead/retry", post(retry))
        .route("/held/", get(held))
        .route("/held/{run_id}", post(decide))
        .route("/breakers/", get(breakers))
        .route("/breakers/{name}/{action}", post(force_breaker))
}

/// Where the console is mounted: what the application's router stripped
/// from the path before it reached this one.
fn base(original: &Uri, uri: &Uri) -> String {
    let (whole, own) = (original.path(), uri.path());
    // A nested router's root is the prefix itself, without a final `/`.
    let prefix = match own == "/" && !whole.ends_with('/') {
        true => whole,
        false => whole.strip_suffix(own).unwrap_or(""),
    };
    prefix.trim_end_matches('/').to_owned()
}

/// What every page handler gets: the service, where it is mounted, and the
/// request's session (an extractor: a request without one is sent to the
/// login page).
struct Page {
    service: Arc<Service>,
    base: String,
    session: Session,
}

impl axum::extract::FromRequestParts<Arc<Service>> for Page {
    type Rejection = Redirect;

    /// The request's session and where the console is mounted; without a
    /// session, the login page's address.
    async fn from_request_parts(
        parts: &mut http::request::Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.clone(), |o| o.0.clone());
        let base = base(&original, &parts.uri);
        match service.sessions.of(&parts.headers, Instant::now()) {
            Some(session) => Ok(Page {
                service: Arc::clone(service),
                base,
                session,
            }),
            None => Err(Redirect::to(&format!("{base}/login"))),
        }
    }
}

/// Headers every page carries: no caching, no framing, no script or style
/// from anywhere else.
fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
        ],
        markup,
    )
        .into_response()
}

impl Page {
    fn render(&self, title: &str, active: &str, notice: Option<&str>, body: Markup) -> Response {
        let viewer = Viewer {
            role: self.session.role.as_str(),
            csrf: &self.session.csrf,
        };
        html(
            StatusCode::OK,
            pages::layout(&self.base, title, active, &viewer, notice, body),
        )
    }

    fn refuse(&self, status: StatusCode, message: &str, back: &str) -> Response {
        let viewer = Viewer {
            role: self.session.role.as_str(),
            csrf: &self.session.csrf,
        };
        let back = pages::link(&self.base, back);
        html(
            status,
            pages::layout(
                &self.base,
                "Not done",
                "",
                &viewer,
                None,
                pages::problem(message, &back),
            ),
        )
    }

    /// The fields of a form posted by this session, checked: its own token
    /// and, for a change, the operator role; else the refusal's page, with
    /// a link back to `back`.
    fn form(&self, body: &[u8], back: &str) -> Result<Vec<(String, String)>, Box<Response>> {
        let fields: Vec<(String, String)> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let csrf = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str());
        let refusal = if csrf != Some(self.session.csrf.as_str()) {
            "the form did not come from this session's page"
        } else if self.session.role < Role::Operator {
            "a viewer may not change anything: sign in with an operator token"
        } else {
            return Ok(fields);
        };
        Err(Box::new(self.refuse(StatusCode::FORBIDDEN, refusal, back)))
    }

    fn redirect(&self, to: &str) -> Response {
        Redirect::to(&pages::link(&self.base, to)).into_response()
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `GET /login`.
async fn login_page(original: OriginalUri, uri: Uri) -> Response {
    html(StatusCode::OK, pages::login(&base(&original, &uri), None))
}

/// `POST /login`: a token opens a session, counted as the API counts
/// failed attempts.
async fn login(
    State(service): State<Arc<Service>>,
    original: OriginalUri,
    uri: Uri,
    request: Request,
) -> Response {
    let base = base(&original, &uri);
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let body = match axum::body::to_bytes(request.into_body(), super::MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let token = field(&fields, "token");
    let now = Instant::now();
    let refused = |status, message: &str| html(status, pages::login(&base, Some(message)));
    match service.tokens.judge(token, client, now) {
        Verdict::Allowed(role) => {
            let id = service.sessions.open(role, now);
            let path = if base.is_empty() { "/" } else { &base };
            (
                [(header::SET_COOKIE, session::set_cookie(&id, path))],
                Redirect::to(&pages::link(&base, "/")),
            )
                .into_response()
        }
        Verdict::Unknown => refused(StatusCode::UNAUTHORIZED, "That token is not valid."),
        Verdict::Limited => refused(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts from here; try again in a minute.",
        ),
    }
}

/// `POST /logout`.
async fn logout(
    State(service): State<Arc<Service>>,
    original: OriginalUri,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let base = base(&original, &uri);
    service.sessions.close(&headers);
    let path = if base.is_empty() {
        "/".to_owned()
    } else {
        base.clone()
    };
    (
        [(header::SET_COOKIE, session::clear_cookie(&path))],
        Redirect::to(&format!("{base}/login")),
    )
        .into_response()
}

async fn breaker_states(service: &Service) -> Vec<(String, String)> {
    let mut states = Vec::new();
    for name in service.breakers.names() {
        let state = match service.breakers.state(name).await {
            Ok(state) => state.as_str().to_owned(),
            Err(_) => "unknown".to_owned(),
        };
        states.push((name.to_owned(), state));
    }
    states
}

/// `GET /`: the overview.
async fn overview(page: Page) -> Response {
    let service = &page.service;
    let (mut counts, mut stats, mut lag) = (Vec::new(), None, None);
    if let Some(outbox) = &service.outbox {
        let hour_ago = outbox.now_ms() - 3_600_000;
        counts = outbox
            .store()
            .run_counts(hour_ago)
            .await
            .unwrap_or_default();
        if let Ok(got) = outbox.store().stats().await {
            lag = got.oldest_pending_ms.map(|t| (outbox.now_ms() - t).max(0));
            stats = Some(got);
        }
    }
    let breakers = breaker_states(service).await;
    let plugins: Vec<(String, Option<String>)> = service
        .names()
        .into_iter()
        .map(|name| {
            let sha = service
                .served(&name)
                .and_then(|s| s.plugin.sha256().map(str::to_owned));
            (name, sha)
        })
        .collect();
    let body = pages::overview(
        &page.base,
        &counts,
        stats.as_ref(),
        lag,
        &breakers,
        &plugins,
    );
    page.render("Overview", "/", None, body)
}

/// The query of `GET /runs/`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RunsQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    plugin: String,
    #[serde(default)]
    effect: String,
    /// How far back: `1h`, `24h`, `7d`; any time when empty.
    #[serde(default)]
    since: String,
    cursor: Option<String>,
}

fn some(text: &str) -> Option<String> {
    (!text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// `GET /runs/`: filters, search by run id or idempotency key.
async fn runs(page: Page, Query(query): Query<RunsQuery>) -> Response {
    // A run id, or a key `RUN:SEQ[:compensate]`, opens that run.
    let q = query.q.trim().to_owned();
    if let Some(run) = q.split(':').next().and_then(|r| r.parse::<RunId>().ok()) {
        let anchor = q
            .split(':')
            .nth(1)
            .map(|seq| format!("#seq-{seq}"))
            .unwrap_or_default();
        return page.redirect(&format!("/runs/{run}{anchor}"));
    }
    let Some(outbox) = &page.service.outbox else {
        return page.refuse(
            StatusCode::NOT_FOUND,
            "the service has no outbox: no history",
            "/",
        );
    };
    let since_ms = match some(&query.since).map(|s| humantime::parse_duration(&s)) {
        None => None,
        Some(Ok(back)) => Some(outbox.now_ms().saturating_sub(back.as_millis() as i64)),
        Some(Err(_)) => {
            return page.refuse(
                StatusCode::BAD_REQUEST,
                &format!("`{}` is not a duration (1h, 24h, 7d)", query.since),
                "/runs/",
            );
        }
    };
    let filter = RunFilter {
        status: some(&query.status),
        plugin: some(&query.plugin),
        effect: some(&query.effect),
        since_ms,
        before: query.cursor.as_deref().and_then(|c| c.parse().ok()),
        limit: 50,
    };
    let found = match outbox.runs(&filter).await {
        Ok(found) => found,
        Err(error) => {
            return page.refuse(StatusCode::SERVICE_UNAVAILABLE, &error.to_string(), "/");
        }
    };
    let next = (found.len() == filter.page() as usize)
        .then(|| found.last().map(|r| r.run_id.to_string()))
        .flatten();
    let form = RunsForm {
        status: query.status,
        plugin: query.plugin,
        effect: query.effect,
        since: query.since,
        q: query.q,
    };
    let notice =
        (!q.is_empty()).then(|| format!("`{q}` is neither a run id nor an idempotency key"));
    let body = pages::runs(&page.base, &form, &found, next.as_deref());
    page.render("Runs", "/runs/", notice.as_deref(), body)
}

/// `GET /runs/{run_id}`.
async fn one_run(page: Page, Path(id): Path<String>) -> Response {
    let (Some(outbox), Ok(run_id)) = (&page.service.outbox, id.parse::<RunId>()) else {
        return page.refuse(StatusCode::NOT_FOUND, "no such run", "/runs/");
    };
    let entries = outbox.store().run_entries(run_id).await.unwrap_or_default();
    let kept = outbox.run(run_id).await.ok().flatten();
    if kept.is_none() && entries.is_empty() {
        return page.refuse(
            StatusCode::NOT_FOUND,
            &format!("no run {run_id} is kept"),
            "/runs/",
        );
    }
    let outcome = kept.and_then(|k| serde_json::from_str(&k.outcome).ok());
    let body = pages::run(&run_id.to_string(), outcome.as_ref(), &entries);
    page.render(&format!("Run {run_id}"), "/runs/", None, body)
}

/// `GET /dead/`.
async fn dead(page: Page, Query(done): Query<Done>) -> Response {
    let Some(outbox) = &page.service.outbox else {
        return page.refuse(StatusCode::NOT_FOUND, "the service has no outbox", "/");
    };
    let filter = Filter {
        status: Some(EntryStatus::Dead),
        limit: Some(MAX_LISTED_ENTRIES),
    };
    let entries = outbox.store().list(&filter).await.unwrap_or_default();
    let total = outbox.store().stats().await.map_or(0, |s| s.dead);
    let body = pages::dead(&page.base, &page.session.csrf, &entries, total);
    page.render("Dead letters", "/dead/", done.done.as_deref(), body)
}

/// A notice carried to the page an action leads back to.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Done {
    done: Option<String>,
}

fn done(message: &str) -> String {
    url::form_urlencoded::byte_serialize(message.as_bytes()).collect()
}

/// `POST /dead/retry`: the selected dead letters, or all; confirmed first.
async fn retry(page: Page, body: Bytes) -> Response {
    let fields = match page.form(&body, "/dead/") {
        Ok(fields) => fields,
        Err(refused) => return *refused,
    };
    let Some(outbox) = &page.service.outbox else {
        return page.refuse(StatusCode::NOT_FOUND, "the service has no outbox", "/");
    };
    let all = field(&fields, "which") == Some("all");
    let ids: Vec<i64> = fields
        .iter()
        .filter(|(k, _)| k == "ids")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    if !all && ids.is_empty() {
        return page.refuse(
            StatusCode::BAD_REQUEST,
            "select the dead letters to retry",
            "/dead/",
        );
    }
    if field(&fields, "confirmed") != Some("yes") {
        let count = match all {
            true => outbox.store().stats().await.map_or(0, |s| s.dead),
            false => ids.len() as u64,
        };
        let mut hidden: Vec<(&str, String)> =
            vec![("which", if all { "all" } else { "selected" }.into())];
        hidden.extend(ids.iter().map(|id| ("ids", id.to_string())));
        let body = pages::confirm(
            &format!("{}/dead/retry", page.base),
            &format!("{}/dead/", page.base),
            &page.session.csrf,
            &format!(
                "Retry {count} dead letter{}? They become pending, due now.",
                if count == 1 { "" } else { "s" }
            ),
            &hidden,
            &format!("Retry {count}"),
        );
        return page.render("Confirm", "/dead/", None, body);
    }
    let which = match all {
        true => Retry::Dead(DeadFilter::default()),
        false => Retry::Ids(ids),
    };
    match outbox.store().retry(&which, outbox.now_ms()).await {
        Ok(n) => page.redirect(&format!("/dead/?done={}", done(&format!("{n} retried")))),
        Err(error) => page.refuse(StatusCode::CONFLICT, &error.to_string(), "/dead/"),
    }
}

/// `GET /held/`: runs waiting for approval.
async fn held(page: Page, Query(done): Query<Done>) -> Response {
    let Some(outbox) = &page.service.outbox else {
        return page.refuse(StatusCode::NOT_FOUND, "the service has no outbox", "/");
    };
    let filter = Filter {
        status: Some(EntryStatus::Held),
        limit: Some(MAX_LISTED_ENTRIES),
    };
    let entries = outbox.store().list(&filter).await.unwrap_or_default();
    let mut runs: Vec<HeldRun> = Vec::new();
    for entry in entries
        .iter()
        .filter(|e| e.entry.kind == crate::outbox::EntryKind::Intent)
    {
        let run_id = entry.entry.run_id.to_string();
        if runs.last().is_none_or(|r| r.run_id != run_id) {
            runs.push(HeldRun {
                run_id,
                plugin: entry.entry.plugin.clone(),
                held_at: crate::outbox::time_text(entry.created_at_ms),
                intents: Vec::new(),
            });
        }
        let payload = crate::outcome::bytes_json(&entry.entry.payload);
        if let Some(run) = runs.last_mut() {
            run.intents
                .push((entry.entry.seq, entry.entry.effect.clone(), payload));
        }
    }
    let body = pages::held(&page.base, &page.session.csrf, &runs);
    page.render("Held runs", "/held/", done.done.as_deref(), body)
}

/// `POST /held/{run_id}`: approve or reject, with who and why.
async fn decide(page: Page, Path(id): Path<String>, body: Bytes) -> Response {
    let fields = match page.form(&body, "/held/") {
        Ok(fields) => fields,
        Err(refused) => return *refused,
    };
    let (Some(outbox), Ok(run_id)) = (&page.service.outbox, id.parse::<RunId>()) else {
        return page.refuse(StatusCode::NOT_FOUND, "no such run", "/held/");
    };
    let Some(by) = field(&fields, "by") else {
        return page.refuse(StatusCode::BAD_REQUEST, "say who decides", "/held/");
    };
    let reason = field(&fields, "reason");
    let decided = match field(&fields, "verdict") {
        Some("approve") => outbox.approve(run_id, by, reason).await,
        Some("reject") => outbox.reject(run_id, by, reason).await,
        _ => return page.refuse(StatusCode::BAD_REQUEST, "approve or reject", "/held/"),
    };
    match decided {
        Ok(decision) => page.redirect(&format!(
            "/held/?done={}",
            done(&format!(
                "run {} {} by {}",
                decision.run_id, decision.verdict, decision.by
            ))
        )),
        Err(error) => page.refuse(StatusCode::CONFLICT, &error.to_string(), "/held/"),
    }
}

/// `GET /breakers/`.
async fn breakers(page: Page, Query(done): Query<Done>) -> Response {
    let states = breaker_states(&page.service).await;
    let body = pages::breakers(&page.base, &page.session.csrf, &states);
    page.render("Breakers", "/breakers/", done.done.as_deref(), body)
}

/// `POST /breakers/{name}/{open|reset}`: confirmed first.
async fn force_breaker(
    page: Page,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = match page.form(&body, "/breakers/") {
        Ok(fields) => fields,
        Err(refused) => return *refused,
    };
    let to = match action.as_str() {
        "open" => Forced::Open,
        "reset" => Forced::Closed,
        _ => return page.refuse(StatusCode::NOT_FOUND, "open or reset", "/breakers/"),
    };
    if !page.service.breakers.is_defined(&name) {
        return page.refuse(
            StatusCode::NOT_FOUND,
            &format!("no breaker `{name}`"),
            "/breakers/",
        );
    }
    if field(&fields, "confirmed") != Some("yes") {
        let question = match to {
            Forced::Open => {
                format!("Open the breaker `{name}`? Calls through it fail fast until it is reset.")
            }
            Forced::Closed => format!("Reset the breaker `{name}`? It closes, its counts cleared."),
        };
        let body = pages::confirm(
            &format!("{}/breakers/{name}/{action}", page.base),
            &format!("{}/breakers/", page.base),
            &page.session.csrf,
            &question,
            &[],
            &format!(
                "{} {name}",
                if to == Forced::Open { "Open" } else { "Reset" }
            ),
        );
        return page.render("Confirm", "/breakers/", None, body);
    }
    match page.service.breakers.force(&name, to).await {
        Ok(_) => {
            let what = match to {
                Forced::Open => {
                    format!("{name} is open: calls through it fail fast until it is reset")
                }
                Forced::Closed => format!("{name} is reset: closed, its counts cleared"),
            };
            page.redirect(&format!("/breakers/?done={}", done(&what)))
        }
        Err(error) => page.refuse(StatusCode::SERVICE_UNAVAILABLE, &error, "/breakers/"),
    }
}
