//! `escrow breakers`: the state of every breaker the config defines, read
//! from the configured store.

use std::path::PathBuf;

use clap::Args;
use escrow_host::config::Config;

/// List the breakers of a config and their state in its store.
///
/// With the in-memory store each process has its own state (always closed
/// here); point `[breaker_state] backend` at Redis to see the state every
/// host shares.
#[derive(Debug, Args)]
pub(crate) struct BreakersArgs {
    /// The config that defines the breakers (escrow.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(args: BreakersArgs) -> anyhow::Result<u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(list(args))
}

async fn list(args: BreakersArgs) -> anyhow::Result<u8> {
    let config = Config::load(&args.config)?;
    let breakers = config.breakers().await.map_err(anyhow::Error::msg)?;
    let store = config.breaker_state.backend.as_deref().unwrap_or("memory");
    let mut rows = Vec::new();
    for name in breakers.names() {
        let state = breakers.state(name).await.map_err(anyhow::Error::msg)?;
        rows.push((name.to_owned(), state.as_str()));
    }
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(name, state)| serde_json::json!({ "breaker": name, "state": state }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "store": store, "breakers": rows }))?
        );
    } else {
        println!("breaker state from {store}:");
        for (name, state) in &rows {
            println!("  {name:<24} {state}");
        }
        if rows.is_empty() {
            println!("  (the config defines no breaker)");
        }
    }
    Ok(0)
}
