//! An HTTP service embedding escrow: `POST /run/{tenant}` runs the plugin
//! once with the request body as input, under the tenant's grants and
//! policy, and answers the outcome as JSON; `GET /metrics` serves
//! Prometheus metrics; every run is logged as one `escrow.run` span.
//!
//! ```sh
//! escrow-service --plugin checkout.wasm --tenants tenants.toml --listen 127.0.0.1:8080
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use escrow_host::config::{PolicyName, build_policy};
use escrow_host::sinks::FnSink;
use escrow_host::{CallError, Grants, Host, Intent, Plugin, Policy, RunOptions, Status};
use serde::Deserialize;

/// Serve a plugin over HTTP, one run per request.
#[derive(Debug, Parser)]
struct Args {
    /// The plugin to run: a component built for wasm32-wasip2.
    #[arg(long)]
    plugin: PathBuf,
    /// The tenants: their grants and policy (tenants.toml).
    #[arg(long)]
    tenants: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// One tenant in `tenants.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    /// Effect patterns its runs may request.
    effects: Vec<String>,
    /// `commit`, `drop` or `assert-none`.
    #[serde(default)]
    policy: PolicyName,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    tenants: HashMap<String, TenantConfig>,
}

/// What a tenant's runs get, built once.
struct Tenant {
    grants: Arc<Grants>,
    policy: Arc<dyn Policy>,
}

struct App {
    plugin: Plugin,
    tenants: HashMap<String, Tenant>,
    metrics: escrow_host::observe::PrometheusHandle,
}

fn tenants(path: &std::path::Path) -> anyhow::Result<HashMap<String, Tenant>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let file: TenantsFile =
        toml::from_str(&text).with_context(|| format!("`{}` is invalid", path.display()))?;
    file.tenants
        .into_iter()
        .map(|(name, tenant)| {
            let grants = Grants::new()
                .effects(tenant.effects)
                .with_context(|| format!("tenant `{name}`"))?;
            let policy = build_policy(tenant.policy, &[]).map_err(anyhow::Error::msg)?;
            Ok((
                name,
                Tenant {
                    grants: Arc::new(grants),
                    policy,
                },
            ))
        })
        .collect()
}

/// `POST /run/{tenant}`: the body is the plugin's input.
async fn run(State(app): State<Arc<App>>, Path(tenant): Path<String>, input: Bytes) -> Response {
    let Some(grants) = app.tenants.get(&tenant) else {
        return (StatusCode::NOT_FOUND, format!("no tenant `{tenant}`\n")).into_response();
    };
    let options = RunOptions::new()
        .input(input.to_vec())
        .grants(Arc::clone(&grants.grants))
        .shared_policy(Arc::clone(&grants.policy));
    match app.plugin.run(options).await {
        Ok(outcome) => {
            let status = match outcome.status() {
                Status::Failed => StatusCode::UNPROCESSABLE_ENTITY,
                Status::Committed | Status::Dropped => StatusCode::OK,
                // Its intents wait in the outbox for a person's approval.
                Status::Held => StatusCode::ACCEPTED,
            };
            (status, axum::Json(outcome.to_json())).into_response()
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response(),
    }
}

/// `GET /metrics`: Prometheus's text format.
async fn metrics_page(State(app): State<Arc<App>>) -> String {
    app.metrics.render()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ESCROW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let metrics = escrow_host::observe::prometheus().map_err(anyhow::Error::msg)?;
    // Committed intents are logged here; a real service routes them to its
    // queue, or to a durable outbox (docs/delivery.md).
    let host = Host::builder()
        .route(
            "*",
            FnSink(|intent: &Intent| {
                tracing::info!(key = %intent.idempotency_key(), effect = %intent.effect, "intent delivered");
                Ok::<_, CallError>(())
            }),
        )?
        .build()?;
    let plugin = host.load_file(&args.plugin)?;
    let app = Arc::new(App {
        plugin,
        tenants: tenants(&args.tenants)?,
        metrics,
    });
    let router = Router::new()
        .route("/run/{tenant}", post(run))
        .route("/metrics", get(metrics_page))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(stop_asked())
        .await?;
    tracing::info!("stopped: the runs in flight were answered");
    Ok(())
}

/// Ends when the service is asked to stop: Ctrl-C (SIGINT) or SIGTERM, as
/// process managers send. The runs in flight are then answered before it
/// exits.
async fn stop_asked() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
