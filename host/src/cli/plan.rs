//! `escrow plan` and `escrow apply`: what a run would dispatch, saved, and
//! later dispatched exactly, once.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use escrow_host::config::SinkSpec;
use escrow_host::plans::{Plan, PlanError};
use escrow_host::{Committed, Delivery, Fate, Intent};

use super::setup::{ConfigArgs, HostArgs, InputArgs};
use super::{EXIT_RUN_FAILED, EXIT_UNDELIVERED, EXIT_USAGE};

/// Plan a run: run the plugin without performing any action and without
/// dispatching anything, and save what it would dispatch.
///
/// Queries are performed and their answers kept in the plan; an action
/// fails the plan. The plan names the component's sha256 and the
/// configuration's digest: `escrow apply` refuses it under others. Exit
/// code: 0 when the plan was written, 1 when the plugin's run failed or
/// asked for an action, 2 for a bad invocation.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// The plugin: a component built for wasm32-wasip2.
    plugin: PathBuf,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    setup: ConfigArgs,
    /// Where the intents will go, instead of the config's routes and sink
    /// (part of the configuration the plan is made under: give `apply` the
    /// same).
    #[arg(long, value_name = "SINK")]
    sink: Option<SinkSpec>,
    /// Write the plan to this file.
    #[arg(long, value_name = "PLAN.json")]
    out: PathBuf,
    /// How long the plan can be applied: `24h`, `30m`, `7d`.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    expires_in: Duration,
}

/// Apply a plan: dispatch exactly its intents, once.
///
/// Refused (exit 2, one line) when the plan expired, or was made with
/// another component or under another configuration. With an outbox the
/// intents are committed to it with idempotency keys `{plan_id}:{seq}`, and
/// a plan already applied dispatches nothing; without one a marker file
/// `PLAN.json.applied` keeps it from being applied twice. Exit code: 0 when
/// applied (or applied already), 2 when refused, 3 when an intent was not
/// delivered.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The plan, as `escrow plan --out` wrote it.
    plan: PathBuf,
    /// The plugin the plan was made with.
    #[arg(long)]
    plugin: PathBuf,
    #[command(flatten)]
    setup: ConfigArgs,
    /// Where the intents go, instead of the config's routes and sink.
    #[arg(long, value_name = "SINK")]
    sink: Option<SinkSpec>,
    /// Commit the intents to this outbox (a SQLite file, or a postgres://
    /// URL) before delivering them.
    #[arg(long, value_name = "URL")]
    outbox: Option<String>,
    /// First run the plugin again on the plan's input, told the plan's
    /// answers, and refuse if its intents differ.
    #[arg(long, conflicts_with = "refresh")]
    verify: bool,
    /// First plan again with live queries, and refuse (printing the
    /// difference) if the world changed the intents.
    #[arg(long)]
    refresh: bool,
}

pub(crate) fn plan(args: PlanArgs) -> anyhow::Result<u8> {
    super::block_on(make(args))
}

pub(crate) fn apply(args: ApplyArgs) -> anyhow::Result<u8> {
    super::block_on(dispatch(args))
}

async fn make(args: PlanArgs) -> anyhow::Result<u8> {
    let config = args.setup.config()?;
    let input = args.input.read()?;
    let how = HostArgs {
        outbox: None,
        sink: args.sink.clone(),
        json: false,
        keep_history: false,
    };
    let loaded = args.setup.load(&config, &args.plugin, how).await?;
    let plan = match loaded.plugin.plan(loaded.options.input(input)).await {
        Ok(plan) => plan.expires_in(args.expires_in),
        Err(error @ (PlanError::Action(_) | PlanError::RunFailed(_))) => {
            eprintln!("escrow: the plan failed: {error}");
            return Ok(EXIT_RUN_FAILED);
        }
        Err(error) => return Err(error.into()),
    };
    plan.write(&args.out)?;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "plan {} of {} (sha256 {}), expires {}",
        plan.id,
        plan.plugin,
        &plan.component_sha256[..12],
        humantime::format_rfc3339_seconds(plan.expires_at)
    )?;
    for intent in &plan.intents {
        writeln!(
            err,
            "  #{} {} {}",
            intent.seq,
            intent.effect,
            escrow_host::bytes_json(&intent.payload.0)
        )?;
    }
    let queries = plan.answers.calls.len();
    writeln!(
        err,
        "{} intent{} to dispatch, {queries} quer{} answered; written to {}",
        plan.intents.len(),
        if plan.intents.len() == 1 { "" } else { "s" },
        if queries == 1 { "y" } else { "ies" },
        args.out.display()
    )?;
    Ok(0)
}

async fn dispatch(args: ApplyArgs) -> anyhow::Result<u8> {
    let plan = Plan::read(&args.plan)?;
    let config = args.setup.config()?;
    let how = HostArgs {
        outbox: args.outbox.as_deref(),
        sink: args.sink.clone(),
        json: false,
        keep_history: false,
    };
    let loaded = args.setup.load(&config, &args.plugin, how).await?;
    let (plugin, options) = (loaded.plugin, loaded.options);
    let checked = if args.verify {
        plan.verify(&plugin, options.clone()).await
    } else if args.refresh {
        plan.refresh(&plugin, options.clone()).await
    } else {
        plan.check(&plugin, &options, SystemTime::now())
    };
    if let Err(error) = checked {
        return Ok(refused(&error));
    }
    // Without an outbox nothing else remembers that the plan was applied:
    // a marker beside it does, made before anything is dispatched.
    let marker = match plugin.outbox() {
        Some(_) => None,
        None => match mark_applied(&args.plan, &plan)? {
            Some(marker) => Some(marker),
            None => {
                eprintln!(
                    "plan {} was applied already ({}): nothing dispatched",
                    plan.id,
                    marker_path(&args.plan).display()
                );
                return Ok(0);
            }
        },
    };
    let applied = match plan.apply(&plugin, &options).await {
        Ok(applied) => applied,
        Err(error) => {
            if let Some(marker) = marker {
                let _ = std::fs::remove_file(marker);
            }
            return Ok(refused(&error));
        }
    };
    if applied.committed == Committed::Already {
        eprintln!(
            "plan {} was applied already: the outbox holds its intents; nothing dispatched",
            plan.id
        );
        return Ok(0);
    }
    let mut err = std::io::stderr().lock();
    writeln!(err, "plan {} applied", plan.id)?;
    for intent in &applied.intents {
        writeln!(
            err,
            "  #{} {} {} ({})",
            intent.seq,
            intent.effect,
            intent.idempotency_key(),
            fate_text(intent)
        )?;
    }
    let undelivered = applied.intents.iter().any(|i| {
        matches!(
            i.fate,
            Fate::Dispatched(Delivery::Failed(_) | Delivery::NoSink | Delivery::NotAttempted(_))
        )
    });
    Ok(if undelivered { EXIT_UNDELIVERED } else { 0 })
}

/// Prints why the plan is refused, with each difference on a line of its
/// own, and gives the exit code of a refusal.
fn refused(error: &PlanError) -> u8 {
    eprintln!("escrow: the plan is refused: {error}");
    if let PlanError::Differs(differences) = error {
        for difference in differences {
            eprintln!("  {difference}");
        }
    }
    match error {
        PlanError::RunFailed(_) | PlanError::Action(_) => EXIT_RUN_FAILED,
        _ => EXIT_USAGE,
    }
}

fn fate_text(intent: &Intent) -> String {
    match &intent.fate {
        Fate::Dispatched(Delivery::Delivered) => "delivered".into(),
        Fate::Dispatched(Delivery::Queued) => "queued in the outbox".into(),
        Fate::Dispatched(Delivery::Held) => "held for approval in the outbox".into(),
        Fate::Dispatched(Delivery::Failed(why)) => format!("failed: {why}"),
        Fate::Dispatched(Delivery::NoSink) => "no sink".into(),
        Fate::Dispatched(Delivery::NotAttempted(why)) => format!("not attempted: {why}"),
        other => other.name().into(),
    }
}

fn marker_path(plan: &Path) -> PathBuf {
    let mut name = plan.file_name().unwrap_or_default().to_os_string();
    name.push(".applied");
    plan.with_file_name(name)
}

/// Creates the marker of `plan` applied, unless it exists: `None` when it
/// does (the plan was applied already). Creating it is atomic, so two
/// applies at once dispatch once.
fn mark_applied(path: &Path, plan: &Plan) -> anyhow::Result<Option<PathBuf>> {
    let marker = marker_path(path);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(mut file) => {
            writeln!(
                file,
                "plan {} applied at {}",
                plan.id,
                humantime::format_rfc3339_seconds(SystemTime::now())
            )?;
            Ok(Some(marker))
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot create `{}`", marker.display())),
    }
}
