//! `escrow outbox`: deliver, list, retry and count what a durable outbox
//! holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use escrow_host::config::{Config, SinkSpec};
use escrow_host::outbox::{
    DeadFilter, Entry, EntryStatus, Filter, OpenMode, Outbox, Prune, Retry, RetryPolicy, Stats,
    Worker, time_text,
};
use serde_json::{Value, json};

use super::EXIT_UNDELIVERED;

mod decide;

/// Work with a durable outbox: deliver what is due, list entries, retry dead
/// ones, approve or reject held runs, and count them.
#[derive(Debug, Args)]
pub(crate) struct OutboxArgs {
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    Deliver(DeliverArgs),
    List(ListArgs),
    Retry(RetryArgs),
    Approve(decide::ApproveArgs),
    Reject(decide::RejectArgs),
    Prune(PruneArgs),
    Stats(StatsArgs),
}

/// Where the outbox is: a flag, or the config's `[outbox] url`.
#[derive(Debug, Args)]
struct Store {
    /// The outbox: a SQLite file, or a postgres:// URL.
    #[arg(long, value_name = "URL")]
    outbox: Option<String>,
    /// Read `[outbox]` (and the handlers and sink) from this file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Store {
    fn config(&self) -> anyhow::Result<Config> {
        Ok(match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        })
    }

    async fn open(&self, config: &Config) -> anyhow::Result<Outbox> {
        match config
            .outbox(self.outbox.as_deref(), OpenMode::Existing)
            .await?
        {
            Some(outbox) => Ok(outbox),
            None => bail!("no outbox: give --outbox or [outbox] url in the config"),
        }
    }
}

/// Deliver due intents (and perform owed compensations) through the same
/// sinks and handlers `escrow run` uses. Exit code 0 when nothing failed,
/// 3 when an attempt failed (it is retried later, or dead).
#[derive(Debug, Args)]
struct DeliverArgs {
    #[command(flatten)]
    store: Store,
    /// Where intents go, instead of the config's routes and sink: stdout,
    /// stderr, file:PATH, nats://HOST:PORT/SUBJECT or
    /// redis-stream://HOST:PORT/STREAM.
    #[arg(long, value_name = "SINK")]
    sink: Option<SinkSpec>,
    /// Deliver what is due now, then exit (the default).
    #[arg(long, conflicts_with = "follow")]
    once: bool,
    /// Keep delivering as intents come due, until interrupted (Ctrl-C or
    /// SIGTERM): the delivery in flight is finished and settled, and the
    /// rest of the claim given back.
    #[arg(long)]
    follow: bool,
    /// Attempt every pending entry now, and a failed one again at once
    /// instead of after a backoff, until it is delivered or dead (its
    /// attempts run out): for tests and drills.
    #[arg(long, conflicts_with = "follow")]
    ignore_backoff: bool,
    /// How often to look for due intents with --follow, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    poll_ms: u64,
}

/// List entries, oldest first; or, with --decisions, the decisions about
/// held runs, newest first.
#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    store: Store,
    /// Only entries with this status: pending, delivered, dead, held or
    /// rejected.
    #[arg(long, value_name = "STATUS", conflicts_with = "decisions")]
    status: Option<String>,
    /// List the decisions about held runs (who, when, why, and the run's
    /// intents as decided) instead of entries.
    #[arg(long)]
    decisions: bool,
    /// At most this many.
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Make dead (or pending) entries pending again, due now, with a fresh
/// count of attempts; the earlier ones stay in their history. All or
/// nothing: an unknown or delivered id changes nothing and fails.
#[derive(Debug, Args)]
struct RetryArgs {
    #[command(flatten)]
    store: Store,
    /// The ids of the entries to retry.
    #[arg(
        value_name = "ID",
        required_unless_present = "dead",
        conflicts_with = "dead"
    )]
    ids: Vec<i64>,
    /// Retry every dead entry.
    #[arg(long)]
    dead: bool,
}

/// Delete delivered entries that ended longer ago than --older-than (and,
/// with --dead, dead ones too), in batches that never hold a long lock.
/// Workers do the same for delivered entries past `[outbox]
/// retain_delivered` (default 7 days); dead ones are kept until retried or
/// pruned here.
#[derive(Debug, Args)]
struct PruneArgs {
    #[command(flatten)]
    store: Store,
    /// How long ago an entry must have ended: `30d`, `12h`, `90min`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// Delete dead entries too (by the time their last attempt was due).
    #[arg(long)]
    dead: bool,
}

/// Counts by status, attempts, and the age of the oldest pending entry.
#[derive(Debug, Args)]
struct StatsArgs {
    #[command(flatten)]
    store: Store,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(args: OutboxArgs) -> anyhow::Result<u8> {
    super::block_on(async move {
        match args.command {
            OutboxCommand::Deliver(args) => deliver(args).await,
            OutboxCommand::List(args) => list(args).await,
            OutboxCommand::Retry(args) => retry(args).await,
            OutboxCommand::Approve(args) => decide::approve(args).await,
            OutboxCommand::Reject(args) => decide::reject(args).await,
            OutboxCommand::Prune(args) => prune(args).await,
            OutboxCommand::Stats(args) => stats(args).await,
        }
    })
}

async fn deliver(args: DeliverArgs) -> anyhow::Result<u8> {
    let config = args.store.config()?;
    let mut outbox = args.store.open(&config).await?;
    if args.ignore_backoff {
        outbox.store().expedite(outbox.now_ms()).await?;
        let retry = *outbox.retry();
        outbox = outbox.retry_policy(RetryPolicy {
            base: Duration::ZERO,
            max: Duration::ZERO,
            ..retry
        });
    }
    let handlers = config.handlers().map_err(anyhow::Error::msg)?;
    let breakers = Arc::new(config.breakers().await.map_err(anyhow::Error::msg)?);
    let sinks = super::routing(&config, args.sink.clone(), false, &breakers)?.sinks;
    let worker = Worker::new(outbox.clone(), sinks, handlers)
        .poll_interval(Duration::from_millis(args.poll_ms.max(1)));
    let report = if args.follow {
        let handle = worker.spawn();
        super::stop_asked().await?;
        eprintln!("escrow: stopping: finishing the delivery in flight");
        handle.stop().await?
    } else {
        worker.run_once().await?
    };
    eprintln!(
        "escrow: delivered {}, retrying {}, dead {}, not attempted {}",
        report.delivered, report.retried, report.dead, report.rescheduled
    );
    let stats = outbox.store().stats().await?;
    if let Some(claimed) = claimed_text(&stats, outbox.now_ms()) {
        eprintln!("escrow: {claimed}");
    }
    Ok(if report.retried + report.dead > 0 {
        EXIT_UNDELIVERED
    } else {
        0
    })
}

/// What another worker's claims hold back, and until when; `None` when
/// nothing is claimed.
fn claimed_text(stats: &Stats, now_ms: i64) -> Option<String> {
    let until = stats.claimed_until_ms?;
    let entries = match stats.claimed {
        1 => "1 entry is".to_owned(),
        n => format!("{n} entries are"),
    };
    let left = until - now_ms;
    let when = match left >= 0 {
        true => format!(
            "until {} (in {})",
            time_text(until),
            humantime::format_duration(Duration::from_millis(left as u64 / 100 * 100))
        ),
        false => format!(
            "whose lease ended at {} ({} ago): the next delivery takes them",
            time_text(until),
            humantime::format_duration(Duration::from_millis(-left as u64 / 100 * 100))
        ),
    };
    Some(format!(
        "{entries} claimed by another worker or host, {when}"
    ))
}

async fn list(args: ListArgs) -> anyhow::Result<u8> {
    let config = args.store.config()?;
    let outbox = args.store.open(&config).await?;
    if args.decisions {
        let decisions = outbox.decisions(args.limit).await?;
        if args.json {
            let values: Vec<Value> = decisions.iter().map(decide::decision_value).collect();
            println!("{}", serde_json::to_string_pretty(&values)?);
        } else {
            for decision in &decisions {
                print!("{}", decide::decision_lines(decision));
            }
        }
        return Ok(0);
    }
    let status = args
        .status
        .as_deref()
        .map(str::parse::<EntryStatus>)
        .transpose()?;
    let entries = outbox
        .store()
        .list(&Filter {
            status,
            limit: Some(args.limit),
        })
        .await?;
    if args.json {
        let values: Vec<Value> = entries.iter().map(Entry::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(0);
    }
    for entry in &entries {
        let e = &entry.entry;
        let error = entry
            .last_error
            .as_deref()
            .map(|m| format!("  last error: {m}"))
            .unwrap_or_default();
        let earlier = match entry.attempts_before_retry {
            0 => String::new(),
            n => format!(" (+{n} before a retry)"),
        };
        let expires = match entry.status {
            EntryStatus::Held => {
                let expiry = outbox.approval_expires_after().as_millis() as i64;
                format!(
                    "  held since {}, expires {}",
                    time_text(entry.created_at_ms),
                    time_text(entry.created_at_ms.saturating_add(expiry))
                )
            }
            _ => String::new(),
        };
        println!(
            "{:>6}  {:<9} {:<12} {}  {}  attempts {}{earlier}{error}{expires}",
            entry.id,
            entry.status.as_str(),
            e.kind.as_str(),
            entry.idempotency_key(),
            e.effect,
            entry.attempts,
        );
    }
    Ok(0)
}

async fn retry(args: RetryArgs) -> anyhow::Result<u8> {
    let config = args.store.config()?;
    let outbox = args.store.open(&config).await?;
    let which = if args.dead {
        Retry::Dead(DeadFilter::default())
    } else {
        Retry::Ids(args.ids)
    };
    let changed = outbox.store().retry(&which, outbox.now_ms()).await?;
    eprintln!("escrow: {changed} entries are pending again");
    Ok(0)
}

async fn prune(args: PruneArgs) -> anyhow::Result<u8> {
    let config = args.store.config()?;
    let outbox = args.store.open(&config).await?;
    let age = i64::try_from(args.older_than.as_millis()).unwrap_or(i64::MAX);
    let before = outbox.now_ms().saturating_sub(age);
    let (which, what) = match args.dead {
        true => (Prune::DeliveredAndDead, "delivered or dead"),
        false => (Prune::Delivered, "delivered"),
    };
    let deleted = outbox.prune(which, before).await?;
    eprintln!(
        "escrow: deleted {deleted} {what} entries that ended before {}",
        time_text(before)
    );
    Ok(0)
}

async fn stats(args: StatsArgs) -> anyhow::Result<u8> {
    let config = args.store.config()?;
    let outbox = args.store.open(&config).await?;
    let stats = outbox.store().stats().await?;
    let now = outbox.now_ms();
    let lag_ms = stats.oldest_pending_ms.map(|t| (now - t).max(0));
    if args.json {
        let value = json!({
            "pending": stats.pending,
            "retrying": stats.retrying,
            "delivered": stats.delivered,
            "dead": stats.dead,
            "attempts": stats.attempts,
            "oldest_pending_age_ms": lag_ms,
            "claimed": stats.claimed,
            "claimed_until": stats.claimed_until_ms.map(time_text),
            "held": stats.held,
            "rejected": stats.rejected,
            "decisions": {
                "approved": stats.decisions.approved,
                "rejected": stats.decisions.rejected,
                "expired": stats.decisions.expired,
            },
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    println!("pending    {} ({} retrying)", stats.pending, stats.retrying);
    println!("delivered  {}", stats.delivered);
    println!("dead       {}", stats.dead);
    println!("held       {}", stats.held);
    println!("rejected   {}", stats.rejected);
    let decided = &stats.decisions;
    println!(
        "decisions  {} approved, {} rejected ({} expired)",
        decided.approved, decided.rejected, decided.expired
    );
    println!("attempts   {}", stats.attempts);
    match lag_ms {
        Some(ms) => println!("lag        {:.1?}", Duration::from_millis(ms as u64)),
        None => println!("lag        none"),
    }
    match claimed_text(&stats, now) {
        Some(claimed) => println!("claimed    {claimed}"),
        None => println!("claimed    none"),
    }
    Ok(0)
}
