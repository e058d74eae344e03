//! `escrow serve`: plugins as an HTTP service, with an API for operators
//! (`docs/serve.md`). Mount [`router`] in an application of your own, under
//! any prefix, or run `escrow serve`.
//!
//! ```text
//! request ─▶ authenticate (bearer token → role; 401, 429) ─▶ route (role? 403)
//!         ─▶ Service: the plugins (each replaceable), the outbox, the breakers
//! ```
//!
//! The service sits above the library and uses its public API: a run is
//! `Plugin::run`, a list of runs the outbox's history, a decision
//! `Outbox::approve`.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

mod api;
mod auth;
mod console;
mod service;
mod session;

pub use api::MAX_REQUEST_BYTES;
pub use auth::{
    FAILURE_WINDOW, MAX_FAILED_ATTEMPTS, MAX_TRACKED_CLIENTS, MIN_TOKEN_BYTES, Role, TOKENS_VAR,
    Tokens, Verdict,
};
pub use console::MAX_LISTED_ENTRIES;
pub use service::{Served, Service};
pub use session::{MAX_SESSIONS, SESSION_LIFETIME};

/// The API, the console and the health checks over `service`, to serve as
/// they are or to
/// nest under a prefix of your own (`Router::new().nest("/escrow", …)`).
/// For failed attempts to be limited per client, serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(service: Arc<Service>) -> Router {
    let api = Router::new()
        .route("/v1/plugins", get(api::plugins))
        .route("/v1/plugins/{name}/runs", post(api::run))
        .route("/v1/plugins/{name}/reload", post(api::reload))
        .route("/v1/runs", get(api::runs))
        .route("/v1/runs/{run_id}", get(api::one_run))
        .route("/v1/runs/{run_id}/approve", post(api::approve))
        .route("/v1/runs/{run_id}/reject", post(api::reject))
        .route("/v1/intents", get(api::intents))
        .route("/v1/outbox/stats", get(api::stats))
        .route("/v1/outbox/retry", post(api::retry))
        .route("/v1/breakers", get(api::breakers))
        .route("/v1/breakers/{name}/open", post(api::open_breaker))
        .route("/v1/breakers/{name}/reset", post(api::reset_breaker))
        .route("/metrics", get(api::metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&service),
            api::authenticate,
        ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(api)
        .merge(console::routes())
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(service)
}
