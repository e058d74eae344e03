//! `escrow run`: run one plugin and deliver its committed intents.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use escrow_host::config::SinkSpec;
use escrow_host::{Dispatch, Status};

use super::setup::{ConfigArgs, HostArgs, InputArgs};
use super::{EXIT_RUN_FAILED, EXIT_UNDELIVERED, report};

/// Run a plugin once and deliver its committed intents.
///
/// Immediate effects are performed by the handlers of the config file.
/// Committed intents go to the config's routes and sink (JSON lines on
/// stdout by default) or to --sink, and a summary of every intent, call and
/// compensation to stderr. When no intent goes to stdout and there is no
/// --json, the plugin's result is printed on stdout. Exit code: 0 when the run
/// succeeded, 1 when it failed, 2 for a bad invocation, 3 when it committed
/// but not every intent was delivered. With --record the run is also
/// written to a file for `escrow replay`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The plugin: a component built for wasm32-wasip2.
    plugin: PathBuf,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    setup: ConfigArgs,
    /// Where committed intents go, instead of the config's routes and sink:
    /// stdout, stderr, file:PATH, nats://HOST:PORT/SUBJECT or
    /// redis-stream://HOST:PORT/STREAM.
    #[arg(long, value_name = "SINK")]
    sink: Option<SinkSpec>,
    /// Print one JSON report of the run on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Make commit durable: write committed intents to this outbox (a SQLite
    /// file, or a postgres:// URL) before delivering them.
    #[arg(long, value_name = "URL")]
    outbox: Option<String>,
    /// With an outbox: commit into it and leave delivery to
    /// `escrow outbox deliver`.
    #[arg(long)]
    no_deliver: bool,
    /// Write a recording of the run into this directory (created if
    /// missing), for `escrow replay`.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
}

pub(crate) fn main(args: RunArgs) -> anyhow::Result<u8> {
    super::block_on(run(args))
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let config = args.setup.config()?;
    let input = args.input.read()?;
    if let Some(dir) = &args.record {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--record `{}`: cannot create it", dir.display()))?;
    }
    let loaded = args
        .setup
        .load(
            &config,
            &args.plugin,
            HostArgs {
                outbox: args.outbox.as_deref(),
                sink: args.sink.clone(),
                json: args.json,
                keep_history: false,
            },
        )
        .await?;
    let has_outbox = loaded.plugin.outbox().is_some();
    if args.no_deliver && !has_outbox {
        bail!("--no-deliver needs an outbox: give --outbox or [outbox] url in the config");
    }
    // With --json and no sink, intents have nowhere to go: with an outbox
    // they stay there for `escrow outbox deliver`, never marked delivered.
    let report_only = args.json && loaded.no_sinks;
    let deliver_later = args.no_deliver || (has_outbox && report_only);
    let mut options = loaded.options.input(input).dispatch(if deliver_later {
        Dispatch::Later
    } else if report_only {
        // The report is the output: committed intents are listed in it,
        // and go nowhere else.
        Dispatch::Hold
    } else {
        Dispatch::Now
    });
    if let Some(dir) = &args.record {
        options = options.record(dir);
    }
    let outcome = loaded.plugin.run(options).await?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.to_json())?);
    } else {
        eprint!("{}", report::human(&outcome, args.setup.backtrace));
        // With stdout free of intents, it carries the plugin's result.
        if let (Ok(output), false) = (&outcome.result, loaded.writes_stdout) {
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
