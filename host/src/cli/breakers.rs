//! `escrow breakers`: the state and settings of every breaker the config
//! defines, read from the configured store; `open` and `reset` set one by
//! hand.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use escrow_host::breakers::{BreakerConfig, Forced};
use escrow_host::config::Config;
use serde_json::json;

/// List the breakers of a config with their settings and state in its
/// store, or set one by hand.
///
/// With the in-memory store each process has its own state (always closed
/// here); point `[breaker_state] backend` at Redis to see and set the state
/// every host shares.
#[derive(Debug, Args)]
pub(crate) struct BreakersArgs {
    /// The config that defines the breakers (escrow.toml).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Isolate a breaker: calls through it fail fast until it is reset.
    Open {
        /// The breaker.
        name: String,
    },
    /// Close a breaker and clear its counts.
    Reset {
        /// The breaker.
        name: String,
    },
}

pub(crate) fn main(args: BreakersArgs) -> anyhow::Result<u8> {
    super::block_on(breakers(args))
}

fn settings(config: &BreakerConfig) -> serde_json::Value {
    json!({
        "failure_threshold": config.failure_threshold,
        "recovery_ms": config.recovery.as_millis() as u64,
        "half_open_trials": config.half_open_trials,
        "trial_lease_ms": config.trial_lease.as_millis() as u64,
        "failure_rate": config.failure_rate.as_ref().map(|rate| json!({
            "ratio": rate.ratio,
            "window_ms": rate.window.as_millis() as u64,
            "min_calls": rate.min_calls,
        })),
        "ignore": config.ignore,
    })
}

fn settings_text(config: &BreakerConfig) -> String {
    let mut text = format!(
        "threshold {}, recovery {:?}, trials {}, trial lease {:?}",
        config.failure_threshold, config.recovery, config.half_open_trials, config.trial_lease
    );
    if let Some(rate) = &config.failure_rate {
        text += &format!(
            ", rate {} over {:?} (at least {} calls)",
            rate.ratio, rate.window, rate.min_calls
        );
    }
    text
}

async fn breakers(args: BreakersArgs) -> anyhow::Result<u8> {
    let Some(path) = &args.config else {
        bail!("give the config that defines the breakers: --config escrow.toml");
    };
    let config = Config::load(path)?;
    let breakers = config.breakers().await.map_err(anyhow::Error::msg)?;
    let store = config.breaker_state.backend.as_deref().unwrap_or("memory");
    if let Some(action) = &args.action {
        let (name, to) = match action {
            Action::Open { name } => (name, Forced::Open),
            Action::Reset { name } => (name, Forced::Closed),
        };
        breakers.force(name, to).await.map_err(anyhow::Error::msg)?;
        let state = breakers.state(name).await.map_err(anyhow::Error::msg)?;
        eprintln!("escrow: breaker {name} is {state} in {store}");
        return Ok(0);
    }
    let mut rows = Vec::new();
    for name in breakers.names() {
        let state = breakers.state(name).await.map_err(anyhow::Error::msg)?;
        let config = breakers.config(name).expect("a defined breaker");
        rows.push((name.to_owned(), state.as_str(), config));
    }
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(name, state, config)| {
                json!({ "breaker": name, "state": state, "settings": settings(config) })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "store": store, "breakers": rows }))?
        );
    } else {
        println!("breaker state from {store}:");
        for (name, state, config) in &rows {
            println!("  {name:<24} {state:<10} {}", settings_text(config));
        }
        if rows.is_empty() {
            println!("  (the config defines no breaker)");
        }
    }
    Ok(0)
}
