//! The `escrow` command line: a thin clap front over the library, one file
//! per subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::{Parser, Subcommand};
use escrow_host::breakers::Breakers;
use escrow_host::config::{Config, SinkSpec};
use escrow_host::sinks::Sinks;

mod breakers;
mod inspect;
mod new;
mod outbox;
mod plan;
mod replay;
mod report;
mod run;
mod serve;
mod setup;

/// Exit code of a run that failed (the guest returned `err`, trapped, or
/// exceeded a limit).
pub(crate) const EXIT_RUN_FAILED: u8 = 1;
/// Exit code of a bad invocation: arguments, input, config or component.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code of a run that committed but whose intents were not all
/// delivered.
pub(crate) const EXIT_UNDELIVERED: u8 = 3;

/// Run WebAssembly plugins with their side effects held in escrow.
///
/// Logs go to stderr; `ESCROW_LOG` filters them (`info`, `escrow_host=debug`,
/// tracing's filter syntax; default: errors only).
#[derive(Debug, Parser)]
#[command(name = "escrow", version, about)]
struct Cli {
    /// How logs are written: text (coloured only on a terminal) or json,
    /// one object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::RunArgs),
    Plan(plan::PlanArgs),
    Apply(plan::ApplyArgs),
    Replay(replay::ReplayArgs),
    Serve(serve::ServeArgs),
    Inspect(inspect::InspectArgs),
    Breakers(breakers::BreakersArgs),
    Outbox(outbox::OutboxArgs),
    New(new::NewArgs),
}

/// Where `escrow run` and `escrow outbox deliver` send committed intents.
pub(crate) struct Routing {
    pub sinks: Sinks,
    /// Whether some route writes to stdout (which then carries no result).
    pub writes_stdout: bool,
}

/// The sinks of `escrow run` and `escrow outbox deliver`: `--sink` alone
/// when given; else the config's `[[routes]]` in order, then its `sink` for
/// every effect, or JSON lines on stdout when it has neither. With `--json`
/// and nothing configured the report is the output: there is no sink, and
/// committed intents are listed in the report as `committed`.
pub(crate) fn routing(
    config: &Config,
    flag: Option<SinkSpec>,
    json: bool,
    breakers: &Arc<Breakers>,
) -> anyhow::Result<Routing> {
    let mut routes: Vec<(String, SinkSpec, Option<String>)> = Vec::new();
    if let Some(sink) = flag {
        routes.push(("*".into(), sink, None));
    } else {
        for (effects, sink, breaker) in config.routes() {
            routes.push((effects.to_owned(), sink, breaker.map(str::to_owned)));
        }
        match config.sink() {
            Some(sink) => routes.push(("*".into(), sink, None)),
            None if routes.is_empty() && !json => routes.push(("*".into(), SinkSpec::Stdout, None)),
            None => {}
        }
    }
    let writes_stdout = routes.iter().any(|(_, sink, _)| sink.is_stdout());
    if json && writes_stdout {
        bail!("--json prints the report on stdout; send intents to --sink file:PATH")
    }
    let mut sinks = Sinks::new();
    for (effects, sink, breaker) in routes {
        let sink = sink.open().map_err(anyhow::Error::msg)?;
        match breaker {
            None => sinks.route(&effects, sink).map(drop)?,
            Some(name) => sinks
                .route_through(&effects, sink, breakers.clone(), &name)
                .map(drop)
                .map_err(anyhow::Error::msg)?,
        }
    }
    Ok(Routing {
        sinks,
        writes_stdout,
    })
}

/// Runs a command on a runtime of its own and returns as soon as the
/// command is done. What the command has not awaited is not waited for: a
/// store's DNS lookup given up at the store timeout would otherwise hold the
/// process until the resolver gives up too (10 s with glibc's defaults).
pub(crate) fn block_on<T>(command: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(command);
    runtime.shutdown_background();
    result
}

/// Ends when the command is asked to stop: Ctrl-C (SIGINT) or SIGTERM, as
/// process managers send.
pub(crate) async fn stop_asked() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Where compiled plugins are cached: `$ESCROW_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/escrow`, else `~/.cache/escrow`; none without a home.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("ESCROW_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("escrow")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/escrow")))
}

pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            // One line: clap's own error line, without its usage and hints.
            let rendered = error.render().to_string();
            let line = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("escrow: {}", line.trim_start_matches("error: "));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let filter = tracing_subscriber::EnvFilter::from_env("ESCROW_LOG");
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let result = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Plan(args) => plan::plan(args),
        Command::Apply(args) => plan::apply(args),
        Command::Replay(args) => replay::main(args),
        Command::Serve(args) => serve::main(args),
        Command::Inspect(args) => inspect::main(args),
        Command::Breakers(args) => breakers::main(args),
        Command::Outbox(args) => outbox::main(args),
        Command::New(args) => new::main(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("escrow: error: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn every_subcommand_s_arguments_are_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn a_command_returns_without_waiting_for_blocking_work_it_left_behind() {
        let started = Instant::now();
        let answer = super::block_on(async {
            // Like a DNS lookup the command stopped waiting for.
            drop(tokio::task::spawn_blocking(|| {
                std::thread::sleep(Duration::from_secs(5))
            }));
            Ok(7)
        });
        assert_eq!(answer.unwrap(), 7);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
