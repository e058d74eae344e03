//! The HTTP API, version 1: JSON in and out, every route behind a token
//! but the health checks (`docs/serve.md`, `docs/serve.openapi.json`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Role, Verdict as Judged};
use super::service::Service;
use crate::breakers::Forced;
use crate::config::{PolicyName, build_policy};
use crate::outbox::{
    DeadFilter, Entry, EntryKind, Outbox, OutboxError, REQUEST_CLAIM_TIMEOUT, RequestClaim,
    RequestKey, Retry, RunFilter, RunSummary, Verdict, check_request_key, time_text,
};
use crate::run::Dispatch;
use crate::run_id::RunId;

/// The most bytes of a request body: a plugin's input, a decision.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// An answer that is not the happy one: a status and a one-line message.
pub(super) struct Problem(StatusCode, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl Problem {
    fn bad(message: impl Into<String>) -> Self {
        Problem(StatusCode::BAD_REQUEST, message.into())
    }

    fn missing(message: impl Into<String>) -> Self {
        Problem(StatusCode::NOT_FOUND, message.into())
    }
}

impl From<OutboxError> for Problem {
    fn from(error: OutboxError) -> Self {
        let status = match &error {
            OutboxError::NotHeld { .. } => StatusCode::NOT_FOUND,
            OutboxError::AlreadyDecided { .. } | OutboxError::NotRetriable { .. } => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Problem(status, error.to_string())
    }
}

type Answer = Result<Response, Problem>;

/// The role a request was allowed with, set by [`authenticate`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller(pub Role);

/// Lets a request through with the role of its bearer token, or answers
/// 401 (no or unknown token) or 429 (too many failures from its client).
pub(super) async fn authenticate(
    State(service): State<Arc<Service>>,
    mut request: Request,
    next: Next,
) -> Response {
    // Known when served with `into_make_service_with_connect_info`.
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match service.tokens.judge(presented, client, Instant::now()) {
        Judged::Allowed(role) => {
            request.extensions_mut().insert(Caller(role));
            next.run(request).await
        }
        Judged::Unknown => {
            let mut answer = Problem(
                StatusCode::UNAUTHORIZED,
                "a valid token is needed: Authorization: Bearer TOKEN".into(),
            )
            .into_response();
            answer.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("a header value"),
            );
            answer
        }
        Judged::Limited => Problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed attempts from this client; try again in a minute".into(),
        )
        .into_response(),
    }
}

/// 403 unless the caller's role is at least `needed`.
fn require(caller: Caller, needed: Role) -> Result<(), Problem> {
    match caller.0 >= needed {
        true => Ok(()),
        false => Err(Problem(
            StatusCode::FORBIDDEN,
            format!(
                "a {} token may not do this: it needs the {} role",
                caller.0.as_str(),
                needed.as_str()
            ),
        )),
    }
}

fn outbox(service: &Service) -> Result<&Outbox, Problem> {
    service.outbox.as_ref().ok_or(Problem(
        StatusCode::NOT_FOUND,
        "the service has no outbox: runs, intents and held runs live there".into(),
    ))
}

fn run_id(text: &str) -> Result<RunId, Problem> {
    text.parse()
        .map_err(|_| Problem::bad(format!("`{text}` is not a run id")))
}

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: it accepts runs (not while stopping).
pub(super) async fn readyz(State(service): State<Arc<Service>>) -> Response {
    match service.accepting() {
        true => "ready\n".into_response(),
        false => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response(),
    }
}

/// `GET /metrics`: Prometheus's text format.
pub(super) async fn metrics(State(service): State<Arc<Service>>) -> Answer {
    let handle = service.metrics.as_ref().ok_or(Problem::missing(
        "the service exports no metrics (Service::metrics)",
    ))?;
    Ok(handle.render().into_response())
}

/// `GET /v1/plugins`: each plugin served, with the component it runs.
pub(super) async fn plugins(State(service): State<Arc<Service>>) -> Answer {
    let plugins: Vec<Value> = service
        .names()
        .iter()
        .filter_map(|name| service.served(name).map(|s| (name.clone(), s)))
        .map(|(name, served)| json!({ "name": name, "component_sha256": served.plugin.sha256() }))
        .collect();
    Ok(Json(json!({ "plugins": plugins })).into_response())
}

/// The query of `POST /v1/plugins/{name}/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunQuery {
    policy: Option<PolicyName>,
    dispatch: Option<String>,
}

/// The request header that makes a run at most once.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header of an answer given again for a retried request.
const REPLAYED: &str = "idempotent-replayed";

/// The key of a request that carries `Idempotency-Key`, claimed in the
/// outbox; `Ok(None)` without the header, `Err` with the answer to give at
/// once (the first request's, or a refusal).
async fn claim_key(
    service: &Service,
    plugin: &str,
    headers: &HeaderMap,
    query: &RunQuery,
    input: &[u8],
) -> Result<Option<(Outbox, RequestKey)>, Box<Response>> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let problem = |p: Problem| Box::new(p.into_response());
    let key = value
        .to_str()
        .map_err(|_| problem(Problem::bad("an idempotency key is printable ASCII")))?;
    check_request_key(key).map_err(|e| problem(Problem::bad(e)))?;
    let outbox = service.outbox.clone().ok_or_else(|| {
        problem(Problem::bad(
            "idempotency keys are kept in the outbox, and the service has none",
        ))
    })?;
    let input_sha256 = {
        use sha2::Digest as _;
        let mut digest = sha2::Sha256::new();
        digest.update(format!("{:?}|{:?}|", query.policy, query.dispatch));
        digest.update(input);
        format!("{:x}", digest.finalize())
    };
    let key = RequestKey {
        plugin: plugin.to_owned(),
        key: key.to_owned(),
        input_sha256,
    };
    let now = outbox.now_ms();
    let stale = now.saturating_sub(REQUEST_CLAIM_TIMEOUT.as_millis() as i64);
    let claim = outbox
        .store()
        .claim_request(&key, now, stale)
        .await
        .map_err(|e| problem(e.into()))?;
    match claim {
        RequestClaim::New => Ok(Some((outbox, key))),
        RequestClaim::Done { status, answer } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Err(Box::new(
                (
                    status,
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::HeaderName::from_static(REPLAYED), "true"),
                    ],
                    answer,
                )
                    .into_response(),
            ))
        }
        RequestClaim::InProgress => Err(problem(Problem(
            StatusCode::CONFLICT,
            "a request with this idempotency key is running; retry when it has answered".into(),
        ))),
        RequestClaim::OtherInput => Err(problem(Problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this idempotency key was used for another request".into(),
        ))),
    }
}

/// `POST /v1/plugins/{name}/runs`: runs the plugin with the body as its
/// input; answers the outcome (200, or 422 when the run failed). With an
/// `Idempotency-Key`, a retried request gets the first one's answer.
pub(super) async fn run(
    State(service): State<Arc<Service>>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<RunQuery>,
    headers: HeaderMap,
    input: Bytes,
) -> Answer {
    require(caller.0, Role::Operator)?;
    if !service.accepting() {
        return Err(Problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is stopping: it takes no new run".into(),
        ));
    }
    let served = service
        .served(&name)
        .ok_or_else(|| Problem::missing(format!("no plugin `{name}` is served")))?;
    let key = match claim_key(&service, &name, &headers, &query, &input).await {
        Ok(key) => key,
        Err(answer) => return Ok(*answer),
    };
    let answer = run_once(&served, query, input).await;
    if let Some((outbox, key)) = key {
        let kept = match &answer {
            Ok((status, body)) => {
                outbox
                    .store()
                    .answer_request(&key, status.as_u16(), body)
                    .await
            }
            Err(_) => outbox.store().release_request(&key).await,
        };
        if let Err(error) = kept {
            tracing::warn!(%error, "the answer of an idempotent request could not be kept");
        }
    }
    let (status, body) = answer?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Runs `served` once for a request; the status and the outcome as JSON.
async fn run_once(
    served: &super::service::Served,
    query: RunQuery,
    input: Bytes,
) -> Result<(StatusCode, String), Problem> {
    let mut options = served.options.clone().input(input.to_vec());
    if let Some(policy) = query.policy {
        options = options.shared_policy(build_policy(policy, &[]).map_err(Problem::bad)?);
    }
    match query.dispatch.as_deref() {
        None | Some("now") => {}
        Some("hold") => options = options.dispatch(Dispatch::Hold),
        Some(other) => {
            return Err(Problem::bad(format!(
                "dispatch `{other}`: use `now` or `hold`"
            )));
        }
    }
    let outcome = served
        .plugin
        .run(options)
        .await
        .map_err(|e| Problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let status = match outcome.result {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Ok((status, outcome.to_json().to_string()))
}

/// `POST /v1/plugins/{name}/reload`: serves the plugin's file anew.
pub(super) async fn reload(
    State(service): State<Arc<Service>>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Answer {
    require(caller.0, Role::Operator)?;
    let service = Arc::clone(&service);
    let reloaded = tokio::task::spawn_blocking(move || service.reload(&name))
        .await
        .map_err(|e| Problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match reloaded {
        Ok(sha256) => Ok(Json(json!({ "component_sha256": sha256 })).into_response()),
        Err(message) => Err(Problem(StatusCode::UNPROCESSABLE_ENTITY, message)),
    }
}

/// The query of `GET /v1/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsQuery {
    status: Option<String>,
    plugin: Option<String>,
    effect: Option<String>,
    /// RFC 3339, or ms since the Unix epoch.
    since: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

fn summary_value(run: &RunSummary) -> Value {
    json!({
        "run_id": run.run_id.to_string(),
        "plugin": run.plugin,
        "status": run.status,
        "component_sha256": run.component_sha256,
        "ended_at": time_text(run.ended_at_ms),
        "effects": run.effects,
    })
}

fn since_ms(text: &str) -> Result<i64, Problem> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|_| {
        Problem::bad(format!(
            "since `{text}`: give an RFC 3339 time or milliseconds since the Unix epoch"
        ))
    })?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

/// `GET /v1/runs`: runs newest first, a page at a time; `next_cursor`
/// continues.
pub(super) async fn runs(
    State(service): State<Arc<Service>>,
    Query(query): Query<RunsQuery>,
) -> Answer {
    let outbox = outbox(&service)?;
    let filter = RunFilter {
        status: query.status,
        plugin: query.plugin,
        effect: query.effect,
        since_ms: query.since.as_deref().map(since_ms).transpose()?,
        before: query.cursor.as_deref().map(run_id).transpose()?,
        limit: query.limit.unwrap_or(50),
    };
    let page = outbox.runs(&filter).await?;
    let next = (page.len() == filter.page() as usize)
        .then(|| page.last().map(|r| r.run_id.to_string()))
        .flatten();
    let runs: Vec<Value> = page.iter().map(summary_value).collect();
    Ok(Json(json!({ "runs": runs, "next_cursor": next })).into_response())
}

/// `GET /v1/runs/{run_id}`: the outcome, and where each of its entries
/// stands in the outbox.
pub(super) async fn one_run(State(service): State<Arc<Service>>, Path(id): Path<String>) -> Answer {
    let outbox = outbox(&service)?;
    let id = run_id(&id)?;
    let entries = outbox.store().run_entries(id).await?;
    let kept = outbox.run(id).await?;
    if kept.is_none() && entries.is_empty() {
        return Err(Problem::missing(format!("no run {id} is kept")));
    }
    let outcome: Option<Value> = kept.and_then(|k| serde_json::from_str(&k.outcome).ok());
    let entries: Vec<Value> = entries.iter().map(Entry::to_json).collect();
    Ok(
        Json(json!({ "run_id": id.to_string(), "outcome": outcome, "entries": entries }))
            .into_response(),
    )
}

/// The query of `GET /v1/intents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IntentsQuery {
    idempotency_key: String,
}

/// `GET /v1/intents?idempotency_key=RUN:SEQ`: the entry of that key.
pub(super) async fn intents(
    State(service): State<Arc<Service>>,
    Query(query): Query<IntentsQuery>,
) -> Answer {
    let outbox = outbox(&service)?;
    let key = &query.idempotency_key;
    let bad = || {
        Problem::bad(format!(
            "`{key}` is not an idempotency key: give RUN_ID:SEQ"
        ))
    };
    let (run, rest) = key.split_once(':').ok_or_else(bad)?;
    let (seq, kind) = match rest.split_once(':') {
        Some((seq, "compensate")) => (seq, EntryKind::Compensation),
        Some(_) => return Err(bad()),
        None => (rest, EntryKind::Intent),
    };
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    let entries = outbox.store().run_entries(run_id(run)?).await?;
    let entry = entries
        .iter()
        .find(|e| e.entry.seq == seq && e.entry.kind == kind)
        .ok_or_else(|| Problem::missing(format!("no entry has the key `{key}`")))?;
    Ok(Json(entry.to_json()).into_response())
}

/// `GET /v1/outbox/stats`.
pub(super) async fn stats(State(service): State<Arc<Service>>) -> Answer {
    let outbox = outbox(&service)?;
    let stats = outbox.store().stats().await?;
    let now = outbox.now_ms();
    Ok(Json(json!({
        "pending": stats.pending,
        "retrying": stats.retrying,
        "delivered": stats.delivered,
        "dead": stats.dead,
        "held": stats.held,
        "rejected": stats.rejected,
        "attempts": stats.attempts,
        "lag_ms": stats.oldest_pending_ms.map(|t| (now - t).max(0)),
        "claimed": stats.claimed,
        "decisions": {
            "approved": stats.decisions.approved,
            "rejected": stats.decisions.rejected,
            "expired": stats.decisions.expired,
        },
    }))
    .into_response())
}

/// The body of `POST /v1/outbox/retry`: ids, or every dead entry, of a
/// plugin or an effect if given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryBody {
    ids: Option<Vec<i64>>,
    #[serde(default)]
    dead: bool,
    plugin: Option<String>,
    effect: Option<String>,
}

/// `POST /v1/outbox/retry`.
pub(super) async fn retry(
    State(service): State<Arc<Service>>,
    caller: axum::Extension<Caller>,
    body: Bytes,
) -> Answer {
    require(caller.0, Role::Operator)?;
    let body: RetryBody = parse(&body)?;
    let filtered = body.plugin.is_some() || body.effect.is_some();
    let which = match (body.ids, body.dead) {
        (Some(ids), false) if !ids.is_empty() && !filtered => Retry::Ids(ids),
        (None, true) => Retry::Dead(DeadFilter {
            plugin: body.plugin,
            effect: body.effect,
        }),
        _ => {
            return Err(Problem::bad(
                "give either {\"ids\": [...]} or {\"dead\": true}, with \"plugin\" or \"effect\" \
                 to retry only the dead entries of those",
            ));
        }
    };
    let outbox = outbox(&service)?;
    let retried = outbox.store().retry(&which, outbox.now_ms()).await?;
    Ok(Json(json!({ "retried": retried })).into_response())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::bad(format!("the body is not valid: {e}")))
}

/// The body of an approval or a rejection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionBody {
    by: String,
    reason: Option<String>,
}

/// `POST /v1/runs/{run_id}/approve`.
pub(super) async fn approve(
    State(service): State<Arc<Service>>,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    decide(&service, caller.0, &id, Verdict::Approved, &body).await
}

/// `POST /v1/runs/{run_id}/reject`.
pub(super) async fn reject(
    State(service): State<Arc<Service>>,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    decide(&service, caller.0, &id, Verdict::Rejected, &body).await
}

async fn decide(
    service: &Service,
    caller: Caller,
    id: &str,
    verdict: Verdict,
    body: &[u8],
) -> Answer {
    require(caller, Role::Operator)?;
    let body: DecisionBody = parse(body)?;
    if body.by.trim().is_empty() {
        return Err(Problem::bad("`by` names who decides"));
    }
    let outbox = outbox(service)?;
    let id = run_id(id)?;
    let reason = body.reason.as_deref();
    let decision = match verdict {
        Verdict::Approved => outbox.approve(id, &body.by, reason).await?,
        Verdict::Rejected => outbox.reject(id, &body.by, reason).await?,
    };
    Ok(Json(json!({
        "run_id": decision.run_id.to_string(),
        "verdict": decision.verdict.as_str(),
        "by": decision.by,
        "reason": decision.reason,
        "decided_at": time_text(decision.decided_at_ms),
        "intents": decision.intents.len(),
    }))
    .into_response())
}

/// `GET /v1/breakers`: each breaker and its state.
pub(super) async fn breakers(State(service): State<Arc<Service>>) -> Answer {
    let mut breakers = Vec::new();
    for name in service.breakers.names() {
        let state = match service.breakers.state(name).await {
            Ok(state) => json!(state.as_str()),
            Err(error) => json!({ "unknown": error }),
        };
        breakers.push(json!({ "name": name, "state": state }));
    }
    Ok(Json(json!({ "breakers": breakers })).into_response())
}

/// `POST /v1/breakers/{name}/open`.
pub(super) async fn open_breaker(
    State(service): State<Arc<Service>>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Answer {
    force_breaker(&service, caller.0, name, Forced::Open).await
}

/// `POST /v1/breakers/{name}/reset`.
pub(super) async fn reset_breaker(
    State(service): State<Arc<Service>>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Answer {
    force_breaker(&service, caller.0, name, Forced::Closed).await
}

async fn force_breaker(service: &Service, caller: Caller, name: String, to: Forced) -> Answer {
    require(caller, Role::Operator)?;
    if !service.breakers.is_defined(&name) {
        return Err(Problem::missing(format!("no breaker `{name}` is defined")));
    }
    service
        .breakers
        .force(&name, to)
        .await
        .map_err(|e| Problem(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let state = service
        .breakers
        .state(&name)
        .await
        .map_err(|e| Problem(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(json!({ "name": name, "state": state.as_str() })).into_response())
}
