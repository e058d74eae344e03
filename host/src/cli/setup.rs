//! What `run`, `plan`, `apply` and `replay` share: the config file and the
//! flags that add to it, and the host and plugin made of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use escrow_host::config::{Config, PolicyName, SinkSpec};
use escrow_host::outbox::OpenMode;
use escrow_host::{Host, Plugin, RunOptions};

/// The config file and the flags that add to it or override it.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
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
    /// Compile the plugin afresh instead of using the on-disk cache.
    #[arg(long)]
    no_cache: bool,
    /// Add the guest's wasm backtrace to the message of a trap.
    #[arg(long)]
    pub backtrace: bool,
}

/// How the host is made besides the config.
pub(crate) struct HostArgs<'a> {
    /// `--outbox`, overriding `[outbox] url`.
    pub outbox: Option<&'a str>,
    /// `--sink`, instead of the config's routes.
    pub sink: Option<SinkSpec>,
    /// `--json`: the report is the output, so nothing may go to stdout.
    pub json: bool,
    /// Whether the outbox keeps every run's outcome (`escrow serve`).
    pub keep_history: bool,
}

/// A plugin loaded as the config says, with the options of its runs.
pub(crate) struct Loaded {
    pub plugin: Plugin,
    pub options: RunOptions,
    /// Whether some route writes to stdout (which then carries no result).
    pub writes_stdout: bool,
    /// Whether no route takes intents (`--json` and nothing configured).
    pub no_sinks: bool,
}

impl ConfigArgs {
    /// The config file with the flags applied: they add to its grants and
    /// blocks, and override the rest.
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        config.grants.effects.extend(self.grant.iter().cloned());
        for dir in &self.dir {
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
        for pair in &self.env {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--env `{pair}`: give KEY=VALUE"))?;
            config.grants.env.insert(key.to_owned(), value.to_owned());
        }
        config.block.extend(self.block.iter().cloned());
        config.policy = self.policy.unwrap_or(config.policy);
        config.limits.timeout_ms = self.timeout_ms.or(config.limits.timeout_ms);
        Ok(config)
    }

    /// Builds the host `config` describes and loads `plugin` on it, with
    /// the options its runs take from the config (no input yet).
    pub(crate) async fn load(
        &self,
        config: &Config,
        plugin: &Path,
        how: HostArgs<'_>,
    ) -> anyhow::Result<Loaded> {
        let built = build_host(config, how, 1, !self.no_cache, self.backtrace).await?;
        let plugin = built.host.load_file(plugin)?;
        Ok(Loaded {
            plugin,
            options: run_options(config)?,
            writes_stdout: built.writes_stdout,
            no_sinks: built.no_sinks,
        })
    }
}

/// A host built as a config says.
pub(crate) struct Built {
    pub host: Host,
    /// Whether some route writes to stdout.
    pub writes_stdout: bool,
    /// Whether no route takes intents.
    pub no_sinks: bool,
}

/// The host `config` describes: its handlers, locks, breakers, routes,
/// outbox and approval, running at most `runs` plugins at once.
pub(crate) async fn build_host(
    config: &Config,
    how: HostArgs<'_>,
    runs: u32,
    cache: bool,
    backtraces: bool,
) -> anyhow::Result<Built> {
    let handlers = config.handlers().map_err(anyhow::Error::msg)?;
    let limits = config.limits();
    let approval = config.approval().map_err(anyhow::Error::msg)?;
    let outbox = config.outbox(how.outbox, OpenMode::Create).await?;
    if approval.is_some() && outbox.is_none() {
        bail!(
            "[approval] require holds runs in the outbox: give --outbox or [outbox] url in \
             the config"
        );
    }
    let outbox = match how.keep_history {
        true => outbox.map(escrow_host::outbox::Outbox::keep_history),
        false => outbox,
    };
    let breakers = Arc::new(config.breakers().await.map_err(anyhow::Error::msg)?);
    let routing = super::routing(config, how.sink, how.json, &breakers)?;
    let no_sinks = routing.sinks.is_empty();
    let mut host = Host::builder()
        .max_concurrent_runs(runs)
        .max_memory_bytes(limits.max_memory_bytes)
        .slot_size(config.slot_size())
        .typed_effects(config.typed_effects().map_err(anyhow::Error::msg)?)
        .backtraces(backtraces)
        .sinks(routing.sinks);
    if let Some(dir) = super::cache_dir().filter(|_| cache) {
        host = host.cache_dir(dir);
    }
    if let Some(outbox) = outbox {
        host = host.outbox(outbox);
    }
    if let Some(approval) = approval {
        host = host.require_approval(approval);
    }
    let locks = config.lock_backend().await.map_err(anyhow::Error::msg)?;
    let host = host
        .handlers(handlers)
        .locks(locks)
        .breakers(breakers)
        .build()?;
    Ok(Built {
        host,
        writes_stdout: routing.writes_stdout,
        no_sinks,
    })
}

/// The options of runs under `config`: its grants, policy and limits (no
/// input yet).
pub(crate) fn run_options(config: &Config) -> anyhow::Result<RunOptions> {
    Ok(RunOptions::new()
        .grants(config.grants().map_err(anyhow::Error::msg)?)
        .shared_policy(config.run_policy().map_err(anyhow::Error::msg)?)
        .limits(config.limits()))
}

/// `--input` and `--input-file`: the plugin's input, as JSON.
#[derive(Debug, Args)]
pub(crate) struct InputArgs {
    /// The input, as JSON; `-` reads it from stdin.
    #[arg(long, conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the input (JSON) from this file.
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
}

impl InputArgs {
    /// The input's bytes, checked to be JSON; empty when none is given.
    pub(crate) fn read(&self) -> anyhow::Result<Vec<u8>> {
        let (bytes, what) = match (&self.input, &self.input_file) {
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
}
