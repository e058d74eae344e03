//! An HTTP service embedding escrow: the plugin is served once per tenant,
//! under the tenant's grants and policy from `tenants.toml`, through
//! escrow's own router (`escrow_host::serve::router`): `POST
//! /v1/plugins/{tenant}/runs` runs it with the request body as input and
//! answers the outcome as JSON; the API lists runs and breakers, and
//! `GET /metrics` serves Prometheus metrics. Requests need a token from
//! `ESCROW_TOKENS` (`operator:…,viewer:…`).
//!
//! ```sh
//! ESCROW_TOKENS=operator:$(openssl rand -hex 16) \
//!     escrow-service --plugin checkout.wasm --tenants tenants.toml --listen 127.0.0.1:8080
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use escrow_host::config::{PolicyName, build_policy};
use escrow_host::serve::{Served, Service, TOKENS_VAR, Tokens, router};
use escrow_host::sinks::FnSink;
use escrow_host::{CallError, Grants, Host, Intent, Plugin, RunOptions};
use serde::Deserialize;

/// Serve a plugin over HTTP, one run per request, per tenant.
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

/// The plugin served once per tenant of `path`, under its grants and
/// policy.
fn tenants(
    path: &std::path::Path,
    plugin: &Plugin,
    source: &std::path::Path,
) -> anyhow::Result<Vec<(String, Served)>> {
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
            let served = Served {
                plugin: plugin.clone(),
                options: RunOptions::new().grants(grants).shared_policy(policy),
                path: Some(source.to_owned()),
            };
            Ok((name, served))
        })
        .collect()
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
    let mut tokens = Tokens::new();
    let pairs = std::env::var(TOKENS_VAR)
        .with_context(|| format!("set {TOKENS_VAR}=operator:TOKEN: every request needs one"))?;
    tokens
        .parse(TOKENS_VAR, &pairs)
        .map_err(anyhow::Error::msg)?;
    let metrics = escrow_host::observe::prometheus().map_err(anyhow::Error::msg)?;
    // Committed intents are logged here; a real service routes them to its
    // queue, or commits them to a durable outbox (docs/delivery.md).
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
    let mut service = Service::new(tokens).metrics(metrics);
    for (tenant, served) in tenants(&args.tenants, &plugin, &args.plugin)? {
        service = service.plugin(&tenant, served);
    }
    let service = Arc::new(service);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    let stopping = Arc::clone(&service);
    axum::serve(
        listener,
        router(service).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        stop_asked().await;
        stopping.stop_accepting();
    })
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
