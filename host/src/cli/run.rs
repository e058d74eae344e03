//! `escrow run`: run one plugin and deliver its committed intents.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use escrow_host::config::{Config, PolicyName, SinkSpec};
use escrow_host::{Dispatch, Host, RunOptions, Status};

use super::{EXIT_RUN_FAILED, EXIT_UNDELIVERED, report};

/// Run a plugin once and deliver its committed intents.
///
/// Immediate effects are performed by the handlers of the config file.
/// Committed intents go to the config's routes and sink (JSON lines on
/// stdout by default) or to --sink, and a summary of every intent, call and
/// compensation to stderr. When no intent goes to stdout and there is no
/// --json, the plugin's result is printed on stdout. Exit code: 0 when the run
/// succeeded, 1 when it failed, 2 for a bad invocation, 3 when it committed
/// but not every intent was delivered.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The plugin: a component built for wasm32-wasip2.
    plugin: PathBuf,
    /// The input, as JSON; `-` reads it from stdin.
    #[arg(long, conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the input (JSON) from this file.
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Let the guest see the host directory HOST as GUEST, read-only, or
    /// read-write with `:rw` (as `[[grants.dirs]]`).
    #[arg(long, value_name = "HOST:GUEST[:rw]")]
    dir: Vec<String>,
    /// Let the guest see the environment variable KEY (as `[grants] env`).
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// What happens to the intents: commit, drop or assert-none.
    #[arg(long, value_name = "POLICY")]
    policy: Option<PolicyName>,
    /// Keep intents whose effect matches PATTERN visible, never dispatch them.
    #[arg(long, value_name = "PATTERN")]
    block: Vec<String>,
    /// Let the plugin request effects matching PATTERN (`email.*`).
    #[arg(long, value_name = "PATTERN")]
    grant: Vec<String>,
    /// Grants, policy, limits and sink from this file (escrow.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stop the plugin after this many milliseconds.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// Where committed intents go, instead of the config's routes and sink:
    /// stdout, stderr, file:PATH, nats://HOST:PORT/SUBJECT or
    /// redis-stream://HOST:PORT/STREAM.
    #[arg(long, value_name = "SINK")]
    sink: Option<SinkSpec>,
    /// Print one JSON report of the run on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Compile the plugin afresh instead of using the on-disk cache.
    #[arg(long)]
    no_cache: bool,
    /// Make commit durable: write committed intents to this outbox (a SQLite
    /// file, or a postgres:// URL) before delivering them.
    #[arg(long, value_name = "URL")]
    outbox: Option<String>,
    /// With an outbox: commit into it and leave delivery to
    /// `escrow outbox deliver`.
    #[arg(long)]
    no_deliver: bool,
    /// Add the guest's wasm backtrace to the message of a trap.
    #[arg(long)]
    backtrace: bool,
}

pub(crate) fn main(args: RunArgs) -> anyhow::Result<u8> {
    super::block_on(run(args))
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    // Flags add to the file's grants and blocks, and override the rest.
    config.grants.effects.extend(args.grant.iter().cloned());
    for dir in &args.dir {
        let (host, rest) = dir
            .split_once(':')
            .with_context(|| format!("--dir `{dir}`: give HOST:GUEST or HOST:GUEST:rw"))?;
        let (guest, writable) = match rest.strip_suffix(":rw") {
            Some(guest) => (guest, true),
            None => (rest.strip_suffix(":ro").unwrap_or(rest), false),
        };
        config.grants.dirs.push(escrow_host::config::DirConfig {
            host: std::env::current_dir()?.join(host),
            guest: guest.to_owned(),
            writable,
        });
    }
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--env `{pair}`: give KEY=VALUE"))?;
        config.grants.env.insert(key.to_owned(), value.to_owned());
    }
    config.block.extend(args.block.iter().cloned());
    config.policy = args.policy.unwrap_or(config.policy);
    config.limits.timeout_ms = args.timeout_ms.or(config.limits.timeout_ms);
    let grants = config.grants().map_err(anyhow::Error::msg)?;
    let handlers = config.handlers().map_err(anyhow::Error::msg)?;
    let policy = config.run_policy().map_err(anyhow::Error::msg)?;
    let limits = config.limits();
    let input = read_input(&args)?;

    let outbox = config
        .outbox(
            args.outbox.as_deref(),
            escrow_host::outbox::OpenMode::Create,
        )
        .await?;
    if args.no_deliver && outbox.is_none() {
        bail!("--no-deliver needs an outbox: give --outbox or [outbox] url in the config");
    }
    let breakers = Arc::new(config.breakers().await.map_err(anyhow::Error::msg)?);
    let routing = super::routing(&config, args.sink.clone(), args.json, &breakers)?;
    // With --json and no sink, intents have nowhere to go: with an outbox
    // they stay there for `escrow outbox deliver`, never marked delivered.
    let report_only = args.json && routing.sinks.is_empty();
    let writes_stdout = routing.writes_stdout;
    let deliver_later = args.no_deliver || (outbox.is_some() && report_only);
    let mut host = Host::builder()
        .max_concurrent_runs(1)
        .max_memory_bytes(limits.max_memory_bytes)
        .slot_size(config.slot_size())
        .typed_effects(config.typed_effects().map_err(anyhow::Error::msg)?)
        .backtraces(args.backtrace)
        .sinks(routing.sinks);
    if let Some(dir) = super::cache_dir().filter(|_| !args.no_cache) {
        host = host.cache_dir(dir);
    }
    if let Some(outbox) = outbox {
        host = host.outbox(outbox);
    }
    let locks = config.lock_backend().await.map_err(anyhow::Error::msg)?;
    let host = host
        .handlers(handlers)
        .locks(locks)
        .breakers(breakers)
        .build()?;
    let plugin = host.load_file(&args.plugin)?;

    let options = RunOptions::new()
        .input(input)
        .grants(grants)
        .shared_policy(policy)
        .limits(limits)
        .dispatch(if deliver_later {
            Dispatch::Later
        } else if report_only {
            // The report is the output: committed intents are listed in it,
            // and go nowhere else.
            Dispatch::Hold
        } else {
            Dispatch::Now
        });
    let outcome = plugin.run(options).await?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.to_json())?);
    } else {
        eprint!("{}", report::human(&outcome, args.backtrace));
        // With stdout free of intents, it carries the plugin's result.
        if let (Ok(output), false) = (&outcome.result, writes_stdout) {
            std::io::Write::write_all(&mut std::io::stdout(), output)?;
            println!();
        }
    }
    Ok(match outcome.status() {
        Status::Failed => EXIT_RUN_FAILED,
        _ if outcome.undelivered().next().is_some() => EXIT_UNDELIVERED,
        _ => 0,
    })
}

fn read_input(args: &RunArgs) -> anyhow::Result<Vec<u8>> {
    let (bytes, what) = match (&args.input, &args.input_file) {
        (Some(dash), _) if dash == "-" => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .context("cannot read the input from stdin")?;
            (bytes, "the input on stdin".to_owned())
        }
        (Some(text), _) => (text.clone().into_bytes(), "--input".to_owned()),
        (None, Some(path)) => (
            std::fs::read(path)
                .with_context(|| format!("cannot read --input-file `{}`", path.display()))?,
            format!("--input-file `{}`", path.display()),
        ),
        (None, None) => return Ok(Vec::new()),
    };
    if let Err(error) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        bail!("{what} is not valid JSON: {error}");
    }
    Ok(bytes)
}
