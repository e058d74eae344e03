//! `escrow serve`: the plugins of `[plugins.NAME]` as an HTTP service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use escrow_host::config::Config;
use escrow_host::serve::{Served, Service, TOKENS_VAR, Tokens, router};

use super::setup::{HostArgs, build_host, run_options};

/// Serve the plugins of the config's `[plugins.NAME]` tables over HTTP.
///
/// Each plugin runs under its table's grants, policy, blocks, limits and
/// approval, else the top-level ones. Requests need a bearer token from
/// ESCROW_TOKENS (`operator:TOKEN,viewer:TOKEN`) or `[serve] tokens_file`.
/// With an outbox, every run is kept in its history and delivery workers
/// run here. SIGHUP reloads every plugin from its file; SIGTERM or Ctrl-C
/// stops taking runs, answers those in flight, and settles the workers'
/// claims before exiting.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The config: `[plugins.NAME]` tables, and what they share.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Where to listen; loopback unless said otherwise.
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// The outbox, instead of `[outbox] url`: a SQLite file, or a
    /// postgres:// URL.
    #[arg(long, value_name = "URL")]
    outbox: Option<String>,
}

pub(crate) fn main(args: ServeArgs) -> anyhow::Result<u8> {
    // Runs are served on every core, unlike a one-off command.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

/// The tokens of `ESCROW_TOKENS` and of `[serve] tokens_file`.
fn tokens(config: &Config) -> anyhow::Result<Tokens> {
    let mut tokens = Tokens::new();
    if let Ok(pairs) = std::env::var(TOKENS_VAR) {
        tokens
            .parse(TOKENS_VAR, &pairs)
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(file) = config.serve.as_ref().and_then(|s| s.tokens_file.as_ref()) {
        let path = config.base.join(file);
        let pairs = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the tokens file `{}`", path.display()))?;
        tokens
            .parse(&format!("`{}`", path.display()), &pairs)
            .map_err(anyhow::Error::msg)?;
    }
    if tokens.is_empty() {
        bail!(
            "no token: every request would be refused; set {TOKENS_VAR}=operator:TOKEN or \
             [serve] tokens_file"
        );
    }
    Ok(tokens)
}

async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let config = Config::load(&args.config)?;
    if config.plugins.is_empty() {
        bail!(
            "`{}` has no [plugins.NAME] table: nothing to serve",
            args.config.display()
        );
    }
    let tokens = tokens(&config)?;
    let how = HostArgs {
        outbox: args.outbox.as_deref(),
        sink: None,
        json: false,
        keep_history: true,
    };
    let built = build_host(
        &config,
        how,
        escrow_host::DEFAULT_MAX_CONCURRENT_RUNS,
        true,
        false,
    )
    .await?;
    let host = built.host;
    let mut service = Service::new(tokens).breakers(Arc::clone(host.breakers()));
    if let Some(outbox) = host.outbox() {
        service = service.outbox(outbox.clone());
    }
    if let Ok(metrics) = escrow_host::observe::prometheus() {
        service = service.metrics(metrics);
    }
    for name in config.plugins.keys() {
        let (path, own) = config.for_plugin(name).expect("listed");
        let mut options = run_options(&own)?;
        let approval = own.approval().map_err(anyhow::Error::msg)?;
        if approval.is_some() && host.outbox().is_none() {
            bail!("plugins.{name}: [approval] holds runs in the outbox, and there is none");
        }
        options = options.require_approval(approval.unwrap_or_default());
        let plugin = host
            .load_file(&path)
            .with_context(|| format!("plugins.{name}"))?
            .with_name(name);
        eprintln!(
            "escrow: serving {name} (sha256 {})",
            &plugin.sha256().unwrap_or_default()[..12]
        );
        service = service.plugin(
            name,
            Served {
                plugin,
                options,
                path: Some(path),
            },
        );
    }
    let service = Arc::new(service);
    let worker = host.worker().map(|worker| worker.spawn());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("escrow: listening on http://{}", listener.local_addr()?);

    let reloads = tokio::spawn(reload_on_hangup(Arc::clone(&service)));
    let stopping = Arc::clone(&service);
    axum::serve(
        listener,
        router(Arc::clone(&service)).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = super::stop_asked().await;
        eprintln!("escrow: stopping: answering the runs in flight");
        stopping.stop_accepting();
    })
    .await?;
    reloads.abort();
    if let Some(worker) = worker {
        worker.stop().await?;
    }
    eprintln!("escrow: stopped");
    Ok(0)
}

/// Reloads every plugin from its file on each SIGHUP.
async fn reload_on_hangup(service: Arc<Service>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        let service = Arc::clone(&service);
        let failed = tokio::task::spawn_blocking(move || service.reload_all())
            .await
            .unwrap_or_default();
        for failure in failed {
            eprintln!("escrow: reload: {failure}");
        }
    }
}
