//! `escrow.toml`: grants, policy, limits and sink for `escrow run`, in one
//! file an operator can review.
//!
//! ```toml
//! policy = "commit"               # commit | drop | assert-none
//! block = ["email.*"]             # with commit: keep these, never dispatch
//! sink = "stdout"                 # stdout | stderr | file:PATH | nats://… | redis-stream://…
//!
//! [[routes]]                      # tried in order, before `sink`
//! effects = "email.*"
//! sink = "redis-stream://127.0.0.1:6379/emails?db=0"
//! breaker = "mailer"              # optional: one of [breakers]
//!
//! [grants]
//! effects = ["payments.*", "orders.save", "email.send"]
//! env = { REGION = "eu-west" }
//! dirs = [{ host = "data", guest = "/data", writable = false }]
//!
//! [handlers."prices.get"]          # an immediate effect and who performs it
//! kind = "query"                  # query | action
//! http = { url = "https://prices.internal/v1/price", method = "POST" }
//!
//! [handlers."flights.book"]
//! kind = "action"
//! exec = ["./book-flight.sh"]     # payload on stdin, answer on stdout
//!
//! [typed."acme:shop/payments"]   # a WIT interface whose functions are effects
//! timing = "deferred"             # deferred | immediate
//! alias = "pay"                   # optional: effects named pay.FUNCTION
//!
//! [typed."acme:shop/payments".functions]
//! balance = "immediate"           # a function's own timing
//! # or its own table: a timing, the effect that undoes it, a breaker
//! refund-all = { timing = "immediate", compensate = "payments.restore", breaker = "payments" }
//!
//! [limits]
//! timeout_ms = 10000
//! max_memory_bytes = 67108864
//! max_intents = 1000
//! max_payload_bytes = 1048576
//! max_total_payload_bytes = 16777216
//! max_scope_depth = 32
//! ```
//!
//! Every key is optional; unknown keys are errors. Relative paths (`dirs`,
//! a `file:` sink, an `exec` program with a `/` in it) are relative to the
//! directory of the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::grants::Grants;
use crate::handlers::{EffectKind, Exec, Handlers};
use crate::limits::Limits;
use crate::patterns::NameError;
use crate::policy::{self, Policy};
use crate::sinks::{JsonLines, Sink};
use crate::typed::{Timing, TypedEffects, TypedError, TypedInterface};

/// A problem with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config `{}` is invalid: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A value is out of its allowed range or malformed.
    #[error("config `{}`: {message}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The policy named in a config file or on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// [`policy::Commit`] (or [`policy::Block`] with block patterns).
    #[default]
    Commit,
    /// [`policy::DropAll`].
    Drop,
    /// [`policy::AssertNone`].
    AssertNone,
}

impl std::str::FromStr for PolicyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "commit" => Ok(Self::Commit),
            "drop" => Ok(Self::Drop),
            "assert-none" => Ok(Self::AssertNone),
            other => Err(format!(
                "unknown policy `{other}`; use commit, drop or assert-none"
            )),
        }
    }
}

/// Where committed intents go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SinkSpec {
    /// JSON lines on standard output.
    #[default]
    Stdout,
    /// JSON lines on standard error.
    Stderr,
    /// JSON lines appended to a file.
    File(PathBuf),
    /// Messages published to NATS JetStream: `nats://HOST:PORT/SUBJECT`
    /// ([`sinks::NatsJetStream`](crate::sinks::NatsJetStream)).
    Nats(String),
    /// Entries added to a Redis stream:
    /// `redis-stream://HOST:PORT/STREAM?db=N`
    /// ([`sinks::RedisStream`](crate::sinks::RedisStream)).
    RedisStream(String),
}

impl std::str::FromStr for SinkSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = match s.split_once(':') {
            _ if s == "stdout" || s == "file:/dev/stdout" => Self::Stdout,
            _ if s == "stderr" || s == "file:/dev/stderr" => Self::Stderr,
            Some(("file", path)) if !path.is_empty() => Self::File(PathBuf::from(path)),
            Some(("nats", _)) => Self::Nats(s.to_owned()),
            Some(("redis-stream", _)) => Self::RedisStream(s.to_owned()),
            _ => {
                return Err(format!(
                    "unknown sink `{}`; use stdout, stderr, file:PATH, nats://HOST:PORT/SUBJECT \
                     or redis-stream://HOST:PORT/STREAM",
                    crate::text::printable(s, false)
                ));
            }
        };
        // A queue URL is checked now, so that a typo fails at load.
        spec.open_queue()?;
        Ok(spec)
    }
}

impl SinkSpec {
    /// The sink it names, ready to route to; a file is opened (created if
    /// needed), a queue is connected on its first delivery.
    ///
    /// # Errors
    ///
    /// A file that cannot be opened for appending, a malformed queue URL,
    /// or a queue whose cargo feature is off.
    pub fn open(&self) -> Result<Box<dyn Sink>, String> {
        Ok(match self {
            Self::Stdout => Box::new(JsonLines::stdout()),
            Self::Stderr => Box::new(JsonLines::stderr()),
            Self::File(path) => Box::new(
                JsonLines::append_to(path)
                    .map_err(|e| format!("cannot open sink file `{}`: {e}", path.display()))?,
            ),
            Self::Nats(_) | Self::RedisStream(_) => self.open_queue()?.expect("a queue sink"),
        })
    }

    /// Whether it writes to the process's standard output.
    pub fn is_stdout(&self) -> bool {
        matches!(self, Self::Stdout)
    }

    fn open_queue(&self) -> Result<Option<Box<dyn Sink>>, String> {
        match self {
            #[cfg(feature = "nats")]
            Self::Nats(url) => Ok(Some(Box::new(crate::sinks::NatsJetStream::new(url)?))),
            #[cfg(not(feature = "nats"))]
            Self::Nats(_) => Err("a nats:// sink needs escrow-host's `nats` feature".into()),
            #[cfg(feature = "redis")]
            Self::RedisStream(url) => Ok(Some(Box::new(crate::sinks::RedisStream::new(url)?))),
            #[cfg(not(feature = "redis"))]
            Self::RedisStream(_) => {
                Err("a redis-stream:// sink needs escrow-host's `redis` feature".into())
            }
            Self::Stdout | Self::Stderr | Self::File(_) => Ok(None),
        }
    }
}

/// One `[[routes]]` table: where the committed intents of matching effects
/// go. Routes are tried in order, before the top-level `sink`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The effect pattern (`email.*`; `*` for every effect).
    pub effects: String,
    /// The sink, written as the top-level `sink` is.
    pub sink: String,
    /// A breaker of `[breakers]` in front of the sink: while it is open,
    /// deliveries on this route are not attempted.
    pub breaker: Option<String>,
}

/// A parsed `escrow.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The run's policy.
    #[serde(default)]
    pub policy: PolicyName,
    /// Effect patterns to block (with policy commit).
    #[serde(default)]
    pub block: Vec<String>,
    /// Where committed intents go: `stdout`, `stderr`, `file:PATH`,
    /// `nats://HOST:PORT/SUBJECT` or `redis-stream://HOST:PORT/STREAM`; after
    /// the routes, for every effect.
    #[serde(default)]
    pub sink: Option<String>,
    /// Where the committed intents of some effects go, tried in order
    /// before `sink`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// What the plugin may request.
    #[serde(default)]
    pub grants: GrantsConfig,
    /// Who performs each immediate effect, by effect name.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// How long a handler may take, in milliseconds (default 30 000).
    pub handler_timeout_ms: Option<u64>,
    /// Where locks live.
    #[serde(default)]
    pub locks: LocksConfig,
    /// The circuit breakers, by name.
    #[serde(default)]
    pub breakers: BTreeMap<String, BreakerTable>,
    /// Where breaker state lives.
    #[serde(default)]
    pub breaker_state: BreakerStateConfig,
    /// The run's limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The durable outbox, if commit is durable.
    pub outbox: Option<OutboxConfig>,
    /// Which runs wait for a person's approval.
    pub approval: Option<ApprovalConfig>,
    /// The plugins `escrow serve` loads, by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `escrow serve`'s own settings.
    pub serve: Option<ServeConfig>,
    /// What each instance slot holds.
    #[serde(default)]
    pub pool: PoolConfig,
    /// The WIT interfaces whose functions are effects, by interface name
    /// (`acme:shop/payments`, or `acme:shop/payments@1.0.0` for that
    /// version only).
    #[serde(default)]
    pub typed: BTreeMap<String, TypedConfig>,
    /// The directory relative paths are resolved against.
    #[serde(skip)]
    pub base: PathBuf,
}

/// One `[typed."namespace:package/interface"]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedConfig {
    /// `deferred` (each call an intent) or `immediate` (each call performed
    /// now by its handler).
    pub timing: Timing,
    /// What its effect names start with instead of the interface's name.
    pub alias: Option<String>,
    /// What is said of single functions: a timing that differs from the
    /// interface's, or a table with a timing, a compensation and a breaker.
    #[serde(default)]
    pub functions: BTreeMap<String, TypedFunctionConfig>,
}

/// One entry of a `[typed]` table's `functions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TypedFunctionConfig {
    /// `charge = "immediate"`.
    Timing(Timing),
    /// `charge = { timing = "immediate", compensate = "payments.refund",
    /// breaker = "payments" }`.
    Table(TypedFunctionTable),
}

/// `functions.NAME = { … }` of a `[typed]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedFunctionTable {
    /// When it happens, if not at the interface's timing.
    pub timing: Option<Timing>,
    /// The effect that undoes a call when its run or scope fails; a
    /// `[handlers]` entry performs it.
    pub compensate: Option<String>,
    /// A breaker of `[breakers]` its calls go through.
    pub breaker: Option<String>,
}

/// `[grants]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Effect patterns the plugin may request.
    #[serde(default)]
    pub effects: Vec<String>,
    /// Environment variables the guest sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directories the guest sees.
    #[serde(default)]
    pub dirs: Vec<DirConfig>,
    /// Lock-key patterns the plugin may lock.
    #[serde(default)]
    pub locks: Vec<String>,
    /// Breaker-name patterns the plugin may open.
    #[serde(default)]
    pub breakers: Vec<String>,
}

/// One entry of `grants.dirs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirConfig {
    /// The host directory.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Whether the guest may write in it.
    #[serde(default)]
    pub writable: bool,
}

/// One `[handlers."effect.name"]` table: exactly one of `exec` and `http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// `query` or `action`.
    pub kind: EffectKind,
    /// A program and its arguments: the payload on stdin, the answer on
    /// stdout.
    pub exec: Option<Vec<String>>,
    /// A request to one URL: the payload as body, the response body as
    /// answer.
    pub http: Option<HttpConfig>,
}

/// The `http` of a handler.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The URL, `http` or `https`: the only one this handler reaches.
    pub url: String,
    /// The method (default `POST`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_method() -> String {
    "POST".into()
}

/// `[locks]`: the lock backend.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocksConfig {
    /// `memory` (default: locks shared by the runs of one process) or a
    /// Redis URL (`redis://127.0.0.1:6379/0`: locks shared by every host on
    /// that Redis).
    pub backend: Option<String>,
    /// How long a Redis lease lives without renewal, in milliseconds
    /// (default 10 000).
    pub lease_ms: Option<u64>,
    /// How long one Redis operation may take, in milliseconds (default 500).
    pub store_timeout_ms: Option<u64>,
}

/// One `[breakers.NAME]` table; missing keys keep the defaults of
/// [`crate::breakers`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerTable {
    /// Failures in a row that open it.
    pub failure_threshold: Option<u32>,
    /// How long it stays open before a trial, in milliseconds.
    pub recovery_ms: Option<u64>,
    /// Trial calls let through when half-open.
    pub half_open_trials: Option<u32>,
    /// A failure rate that opens it too.
    pub failure_rate: Option<FailureRateTable>,
    /// Patterns on handler error messages that do not count as failures.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// How long a half-open trial may take to report, in milliseconds,
    /// before it counts as failed.
    pub trial_lease_ms: Option<u64>,
}

/// `failure_rate = { ratio, window_ms, min_calls }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRateTable {
    /// The share of failed calls (0 to 1) that opens the breaker.
    pub ratio: f64,
    /// The window of calls counted, in milliseconds.
    pub window_ms: u64,
    /// The least number of calls in the window before the rate counts.
    pub min_calls: u32,
}

/// `[breaker_state]`: where breaker state lives.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerStateConfig {
    /// `memory` (default: state shared by the runs of one process) or a
    /// Redis URL (shared by every host on that Redis).
    pub backend: Option<String>,
    /// How long one Redis operation may take, in milliseconds (default 500).
    pub store_timeout_ms: Option<u64>,
}

/// `[outbox]`: where committed intents are made durable, and how their
/// delivery is retried. Missing keys keep the defaults of [`crate::outbox`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// A SQLite file (relative to the config's directory) or a
    /// `postgres://` URL.
    pub url: Option<String>,
    /// Attempts before an intent is dead.
    pub max_attempts: Option<u32>,
    /// The delay before the first retry, in milliseconds.
    pub backoff_base_ms: Option<u64>,
    /// The longest delay between attempts, in milliseconds.
    pub backoff_max_ms: Option<u64>,
    /// How long a worker's claim lasts without renewal, in milliseconds.
    pub lease_ms: Option<u64>,
    /// How long the claim a host takes to deliver the intents of its own
    /// runs lasts without renewal, in milliseconds.
    pub delivery_lease_ms: Option<u64>,
    /// How long delivered entries are kept before workers delete them, as
    /// a duration (`"7d"`, `"12h"`, `"90min"`).
    pub retain_delivered: Option<String>,
    /// How long after a run's deadline its unresolved compensations are
    /// owed, in milliseconds.
    pub compensation_grace_ms: Option<u64>,
}

/// One `[plugins.NAME]` table: a plugin `escrow serve` loads, and what it
/// sets for its runs instead of the top-level tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component, relative to the config's directory.
    pub path: PathBuf,
    /// Its grants, instead of `[grants]`.
    pub grants: Option<GrantsConfig>,
    /// Its policy, instead of `policy`.
    pub policy: Option<PolicyName>,
    /// Its blocks, instead of `block`.
    pub block: Option<Vec<String>>,
    /// Its limits, instead of `[limits]`.
    pub limits: Option<LimitsConfig>,
    /// Its approval, instead of `[approval]`.
    pub approval: Option<ApprovalConfig>,
}

/// The `[serve]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// A file of `ROLE:TOKEN` lines (relative to the config's directory),
    /// read besides the `ESCROW_TOKENS` environment variable.
    pub tokens_file: Option<PathBuf>,
}

/// The `[approval]` table: runs whose committed intents match `require`
/// wait in the outbox for an approval.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Effect patterns (`payments.*`): a committed run with an intent
    /// matching one is held.
    #[serde(default)]
    pub require: Vec<String>,
    /// How long a run stays held before it is rejected with reason
    /// `expired`, as a duration (`"7d"`, `"12h"`; default 7 days).
    pub expire_after: Option<String>,
}

impl ApprovalConfig {
    /// `expire_after`, parsed; `None` when not given.
    ///
    /// # Errors
    ///
    /// When it is not a duration.
    pub fn expires_after(&self) -> Result<Option<Duration>, String> {
        self.expire_after
            .as_deref()
            .map(|text| {
                humantime::parse_duration(text).map_err(|e| {
                    format!(
                        "approval.expire_after `{text}` is not a duration (\"7d\", \"12h\"): {e}"
                    )
                })
            })
            .transpose()
    }
}

impl OutboxConfig {
    /// `retain_delivered`, parsed; `None` when not given.
    ///
    /// # Errors
    ///
    /// When it is not a duration.
    pub fn retained_for(&self) -> Result<Option<Duration>, String> {
        self.retain_delivered
            .as_deref()
            .map(|text| {
                humantime::parse_duration(text).map_err(|e| {
                    format!(
                        "outbox.retain_delivered `{text}` is not a duration (\"7d\", \"12h\"): {e}"
                    )
                })
            })
            .transpose()
    }
}

/// `[pool]`: what each instance slot holds; missing keys keep
/// [`DEFAULT_SLOT`](crate::host::DEFAULT_SLOT).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Core wasm instances per slot.
    pub core_instances_per_slot: Option<u32>,
    /// Linear memories per slot.
    pub memories_per_slot: Option<u32>,
    /// Tables per slot.
    pub tables_per_slot: Option<u32>,
}

/// `[limits]`; each missing key keeps its default from [`crate::limits`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Wall-clock deadline in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Linear memory cap in bytes.
    pub max_memory_bytes: Option<usize>,
    /// Effect requests per run.
    pub max_intents: Option<usize>,
    /// Bytes per payload.
    pub max_payload_bytes: Option<usize>,
    /// Payload bytes per run.
    pub max_total_payload_bytes: Option<usize>,
    /// Nesting depth of scopes.
    pub max_scope_depth: Option<usize>,
    /// Lock keys held at once.
    pub max_locks: Option<usize>,
    /// Lock acquisitions per run, granted or refused.
    pub max_lock_acquisitions: Option<usize>,
    /// Time for a failed run's compensations, all together, in milliseconds.
    pub compensation_budget_ms: Option<u64>,
}

impl Config {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is not a valid config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` as the config file at `path`: relative paths in it
    /// are resolved against `path`'s directory, and errors name `path`.
    ///
    /// # Errors
    ///
    /// When `text` is not a valid config; the error is one line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: crate::text::printable(e.message(), false) + &location(text, e.span()),
        })?;
        config.base = path.parent().map(Path::to_owned).unwrap_or_default();
        config.check().map_err(|message| ConfigError::Value {
            path: path.to_owned(),
            message: crate::text::printable(&message, false),
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        self.grants()?;
        self.typed_effects()?;
        for (key, backend) in [
            ("locks.backend", &self.locks.backend),
            ("breaker_state.backend", &self.breaker_state.backend),
        ] {
            match backend.as_deref() {
                None | Some("memory") => {}
                Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {}
                Some(other) => {
                    return Err(format!("{key} `{other}`: use `memory` or a redis:// URL"));
                }
            }
        }
        self.breaker_configs()?;
        self.handlers()?;
        self.run_policy()?;
        self.approval()?;
        for name in self.plugins.keys() {
            crate::patterns::check_effect_name(name)
                .map_err(|e| format!("plugins.{name}: not a plugin name: {e}"))?;
            let (_, plugin) = self.for_plugin(name).expect("listed");
            let at = |message: String| format!("plugins.{name}: {message}");
            plugin.grants().map_err(at)?;
            plugin.run_policy().map_err(at)?;
            plugin.approval().map_err(at)?;
        }
        if let Some(approval) = &self.approval {
            approval.expires_after()?;
        }
        if let Some(sink) = &self.sink {
            sink.parse::<SinkSpec>()?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = |message: String| format!("routes[{i}]: {message}");
            crate::patterns::Patterns::effects([route.effects.as_str()])
                .map_err(|e| at(format!("effects: {e}")))?;
            route.sink.parse::<SinkSpec>().map_err(at)?;
            if let Some(breaker) = &route.breaker
                && !self.breakers.contains_key(breaker)
            {
                return Err(at(format!(
                    "breaker `{breaker}` is not defined in [breakers]"
                )));
            }
        }
        if let Some(outbox) = &self.outbox {
            if outbox.max_attempts == Some(0) {
                return Err("outbox.max_attempts must be at least 1".into());
            }
            if outbox.lease_ms == Some(0) {
                return Err("outbox.lease_ms must be at least 1".into());
            }
            if outbox.delivery_lease_ms == Some(0) {
                return Err("outbox.delivery_lease_ms must be at least 1".into());
            }
            outbox.retained_for()?;
        }
        if self
            .limits
            .max_memory_bytes
            .is_some_and(|bytes| bytes < 64 << 10)
        {
            return Err("limits.max_memory_bytes must be at least 65536 (one wasm page)".into());
        }
        if self.limits.timeout_ms == Some(0) {
            return Err("limits.timeout_ms must be at least 1".into());
        }
        Ok(())
    }

    /// The typed effects the `[typed]` tables declare.
    ///
    /// # Errors
    ///
    /// One line for a malformed interface name or alias, or two interfaces
    /// whose effects would be named alike.
    pub fn typed_effects(&self) -> Result<TypedEffects, String> {
        let mut typed = TypedEffects::new();
        for (name, table) in &self.typed {
            let at = |e: TypedError| format!("typed.\"{name}\": {e}");
            let mut interface = TypedInterface::new(name, table.timing).map_err(at)?;
            if let Some(alias) = &table.alias {
                interface = interface.alias(alias).map_err(at)?;
            }
            for (function, config) in &table.functions {
                let config = match config {
                    TypedFunctionConfig::Timing(timing) => {
                        interface = interface.function(function, *timing);
                        continue;
                    }
                    TypedFunctionConfig::Table(config) => config,
                };
                let at =
                    |message: String| format!("typed.\"{name}\".functions.{function}: {message}");
                if let Some(timing) = config.timing {
                    interface = interface.function(function, timing);
                }
                if let Some(compensate) = &config.compensate {
                    if !self.handlers.contains_key(compensate) {
                        return Err(at(format!(
                            "the compensation `{compensate}` has no [handlers] entry to perform it"
                        )));
                    }
                    interface = interface
                        .compensate(function, compensate)
                        .map_err(|e| at(e.to_string()))?;
                }
                if let Some(breaker) = &config.breaker {
                    if !self.breakers.contains_key(breaker) {
                        return Err(at(format!(
                            "breaker `{breaker}` is not defined in [breakers]"
                        )));
                    }
                    interface = interface
                        .breaker(function, breaker)
                        .map_err(|e| at(e.to_string()))?;
                }
            }
            typed.add(interface).map_err(|e| format!("typed: {e}"))?;
        }
        Ok(typed)
    }

    /// The grants, with relative directories resolved.
    ///
    /// # Errors
    ///
    /// A malformed effect pattern.
    pub fn grants(&self) -> Result<Grants, String> {
        let mut grants = Grants::new()
            .effects(self.grants.effects.iter().cloned())
            .map_err(|e: NameError| format!("effect grant: {e}"))?
            .locks(self.grants.locks.iter().cloned())
            .map_err(|e: NameError| format!("lock grant: {e}"))?
            .breakers(self.grants.breakers.iter().cloned())
            .map_err(|e: NameError| format!("breaker grant: {e}"))?;
        for dir in &self.grants.dirs {
            grants = grants.dir(self.base.join(&dir.host), dir.guest.clone(), dir.writable);
        }
        for (key, value) in &self.grants.env {
            grants = grants.env(key, value);
        }
        Ok(grants)
    }

    /// The handlers, with relative programs resolved.
    ///
    /// # Errors
    ///
    /// A malformed effect name, a handler with neither or both of `exec` and
    /// `http`, an empty `exec`, a malformed `http`.
    pub fn handlers(&self) -> Result<Handlers, String> {
        let mut handlers = Handlers::new();
        if let Some(ms) = self.handler_timeout_ms {
            handlers.timeout(Duration::from_millis(ms));
        }
        for (effect, config) in &self.handlers {
            let at = |message: String| format!("handlers.\"{effect}\": {message}");
            let handler: Arc<dyn crate::handlers::Handler> = match (&config.exec, &config.http) {
                (Some(command), None) => {
                    let (program, args) = command
                        .split_first()
                        .ok_or_else(|| at("`exec` is empty".into()))?;
                    let program = if program.contains('/') {
                        self.base.join(program).to_string_lossy().into_owned()
                    } else {
                        program.clone()
                    };
                    Arc::new(Exec::new(program, args))
                }
                #[cfg(feature = "http")]
                (None, Some(http)) => Arc::new(
                    crate::handlers::Http::new(
                        &http.method,
                        &http.url,
                        http.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    )
                    .map_err(at)?,
                ),
                #[cfg(not(feature = "http"))]
                (None, Some(_)) => {
                    return Err(at("`http` needs escrow-host's `http` feature".into()));
                }
                _ => return Err(at("give exactly one of `exec` and `http`".into())),
            };
            handlers
                .register(effect, config.kind, handler)
                .map_err(|e| at(e.to_string()))?;
        }
        Ok(handlers)
    }

    /// The lock backend the config names (Redis is connected on first use).
    ///
    /// # Errors
    ///
    /// A malformed Redis URL, or Redis named without the `redis` feature.
    pub async fn lock_backend(&self) -> Result<Arc<dyn crate::backends::LockBackend>, String> {
        match self.locks.backend.as_deref() {
            None | Some("memory") => Ok(Arc::new(crate::backends::MemoryLocks::new())),
            #[cfg(feature = "redis")]
            Some(url) => {
                let mut redis = crate::backends::RedisLocks::connect(url)
                    .await
                    .map_err(|e| format!("locks.backend `{url}`: {e}"))?;
                if let Some(ms) = self.locks.lease_ms {
                    redis = redis.lease(Duration::from_millis(ms));
                }
                if let Some(ms) = self.locks.store_timeout_ms {
                    redis = redis.store_timeout(Duration::from_millis(ms.max(1)));
                }
                Ok(Arc::new(redis))
            }
            #[cfg(not(feature = "redis"))]
            Some(url) => Err(format!(
                "locks.backend `{url}` needs escrow-host's `redis` feature"
            )),
        }
    }

    /// The breakers' definitions.
    ///
    /// # Errors
    ///
    /// A malformed name, a failure rate outside 0 to 1, a zero threshold or
    /// trial count.
    pub fn breaker_configs(&self) -> Result<Vec<(String, crate::breakers::BreakerConfig)>, String> {
        use crate::breakers::{BreakerConfig, FailureRate};
        self.breakers
            .iter()
            .map(|(name, table)| {
                let at = |message: &str| format!("breakers.{name}: {message}");
                crate::patterns::check_effect_name(name).map_err(|e| at(&e.to_string()))?;
                let defaults = BreakerConfig::default();
                let failure_rate = match &table.failure_rate {
                    Some(rate) if !(0.0..=1.0).contains(&rate.ratio) => {
                        return Err(at("failure_rate.ratio must be from 0 to 1"));
                    }
                    Some(rate) => Some(FailureRate {
                        ratio: rate.ratio,
                        window: Duration::from_millis(rate.window_ms),
                        min_calls: rate.min_calls,
                    }),
                    None => None,
                };
                let config = BreakerConfig {
                    failure_threshold: table
                        .failure_threshold
                        .unwrap_or(defaults.failure_threshold),
                    failure_rate,
                    recovery: table
                        .recovery_ms
                        .map_or(defaults.recovery, Duration::from_millis),
                    half_open_trials: table.half_open_trials.unwrap_or(defaults.half_open_trials),
                    ignore: table.ignore.clone(),
                    trial_lease: table
                        .trial_lease_ms
                        .map_or(defaults.trial_lease, Duration::from_millis),
                };
                if config.failure_threshold == 0 || config.half_open_trials == 0 {
                    return Err(at(
                        "failure_threshold and half_open_trials must be at least 1",
                    ));
                }
                Ok((name.clone(), config))
            })
            .collect()
    }

    /// The breakers and their state store (Redis is connected on first use).
    ///
    /// # Errors
    ///
    /// A malformed Redis URL, a malformed breaker definition, or Redis named
    /// without the `redis` feature.
    pub async fn breakers(&self) -> Result<crate::breakers::Breakers, String> {
        let store: Arc<dyn crate::backends::BreakerStore> =
            match self.breaker_state.backend.as_deref() {
                None | Some("memory") => Arc::new(crate::backends::MemoryBreakers::new()),
                #[cfg(feature = "redis")]
                Some(url) => {
                    let mut redis = crate::backends::RedisBreakers::connect(url)
                        .await
                        .map_err(|e| format!("breaker_state.backend `{url}`: {e}"))?;
                    if let Some(ms) = self.breaker_state.store_timeout_ms {
                        redis = redis.store_timeout(Duration::from_millis(ms.max(1)));
                    }
                    Arc::new(redis)
                }
                #[cfg(not(feature = "redis"))]
                Some(url) => {
                    return Err(format!(
                        "breaker_state.backend `{url}` needs escrow-host's `redis` feature"
                    ));
                }
            };
        let mut breakers = crate::breakers::Breakers::new(store);
        for (name, config) in self.breaker_configs()? {
            breakers.define(&name, config).map_err(|e| e.to_string())?;
        }
        Ok(breakers)
    }

    /// The outbox `url` names (or, without one, the config's `[outbox] url`),
    /// opened (created only under [`OpenMode::Create`](crate::outbox::OpenMode))
    /// and migrated, with the config's retry settings. `None` when neither
    /// names one.
    ///
    /// # Errors
    ///
    /// When the store cannot be opened, does not exist under
    /// [`OpenMode::Existing`](crate::outbox::OpenMode), or Postgres was named
    /// without the `postgres` feature.
    pub async fn outbox(
        &self,
        url: Option<&str>,
        mode: crate::outbox::OpenMode,
    ) -> Result<Option<crate::outbox::Outbox>, crate::outbox::OutboxError> {
        use crate::outbox::{Outbox, RetryPolicy, SqliteOutbox};
        let table = self.outbox.clone().unwrap_or_default();
        let Some(url) = url
            .map(str::to_owned)
            .or_else(|| table.url.as_ref().map(|u| resolve_store_url(&self.base, u)))
        else {
            return Ok(None);
        };
        let outbox = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            {
                Outbox::new(crate::outbox::PostgresOutbox::connect_with(&url, mode).await?)
            }
            #[cfg(not(feature = "postgres"))]
            {
                return Err(crate::outbox::OutboxError::Open {
                    what: url,
                    message: "Postgres needs escrow-host's `postgres` feature".into(),
                });
            }
        } else {
            let path = url.strip_prefix("sqlite:").unwrap_or(&url);
            Outbox::new(SqliteOutbox::open_with(path, mode)?)
        };
        let defaults = RetryPolicy::default();
        let mut outbox = outbox.retry_policy(RetryPolicy {
            max_attempts: table.max_attempts.unwrap_or(defaults.max_attempts),
            base: table
                .backoff_base_ms
                .map_or(defaults.base, Duration::from_millis),
            max: table
                .backoff_max_ms
                .map_or(defaults.max, Duration::from_millis),
        });
        if let Some(ms) = table.lease_ms {
            outbox = outbox.lease(Duration::from_millis(ms));
        }
        if let Some(ms) = table.delivery_lease_ms {
            outbox = outbox.delivery_lease(Duration::from_millis(ms));
        }
        if let Some(retain) =
            table
                .retained_for()
                .map_err(|message| crate::outbox::OutboxError::Open {
                    what: "[outbox] retain_delivered".into(),
                    message,
                })?
        {
            outbox = outbox.retain_delivered(retain);
        }
        if let Some(ms) = table.compensation_grace_ms {
            outbox = outbox.compensation_grace(Duration::from_millis(ms));
        }
        let expiry = self.approval.as_ref().map(ApprovalConfig::expires_after);
        if let Some(expiry) = expiry
            .transpose()
            .map_err(|message| crate::outbox::OutboxError::Open {
                what: "[approval] expire_after".into(),
                message,
            })?
            .flatten()
        {
            outbox = outbox.approval_expiry(expiry);
        }
        Ok(Some(outbox))
    }

    /// The configuration of the plugin `name` of `[plugins]`: this one with
    /// the plugin's own tables instead of the top-level ones, and its
    /// component's path resolved. `None` when there is no such plugin.
    pub fn for_plugin(&self, name: &str) -> Option<(PathBuf, Config)> {
        let plugin = self.plugins.get(name)?;
        let mut config = self.clone();
        if let Some(grants) = &plugin.grants {
            config.grants = grants.clone();
        }
        if let Some(policy) = plugin.policy {
            config.policy = policy;
        }
        if let Some(block) = &plugin.block {
            config.block = block.clone();
        }
        if let Some(limits) = &plugin.limits {
            config.limits = limits.clone();
        }
        if let Some(approval) = &plugin.approval {
            config.approval = Some(approval.clone());
        }
        Some((self.base.join(&plugin.path), config))
    }

    /// The patterns of `[approval] require`, compiled; `None` without any.
    ///
    /// # Errors
    ///
    /// A malformed pattern.
    pub fn approval(&self) -> Result<Option<crate::patterns::Patterns>, String> {
        let Some(table) = self.approval.as_ref().filter(|t| !t.require.is_empty()) else {
            return Ok(None);
        };
        crate::patterns::Patterns::effects(table.require.iter().cloned())
            .map(Some)
            .map_err(|e| format!("approval.require: {e}"))
    }

    /// The policy named by `policy` and `block`.
    ///
    /// # Errors
    ///
    /// Block patterns with a policy other than commit, or a malformed pattern.
    pub fn run_policy(&self) -> Result<Arc<dyn Policy>, String> {
        build_policy(self.policy, &self.block)
    }

    /// What each instance slot holds, defaults filled in.
    pub fn slot_size(&self) -> crate::host::SlotSize {
        let defaults = crate::host::DEFAULT_SLOT;
        let p = &self.pool;
        crate::host::SlotSize {
            core_instances: p
                .core_instances_per_slot
                .unwrap_or(defaults.core_instances)
                .max(1),
            memories: p.memories_per_slot.unwrap_or(defaults.memories).max(1),
            tables: p.tables_per_slot.unwrap_or(defaults.tables).max(1),
        }
    }

    /// The limits, defaults filled in.
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        let l = &self.limits;
        Limits {
            deadline: l
                .timeout_ms
                .map_or(defaults.deadline, Duration::from_millis),
            max_memory_bytes: l.max_memory_bytes.unwrap_or(defaults.max_memory_bytes),
            max_intents: l.max_intents.unwrap_or(defaults.max_intents),
            max_payload_bytes: l.max_payload_bytes.unwrap_or(defaults.max_payload_bytes),
            max_total_payload_bytes: l
                .max_total_payload_bytes
                .unwrap_or(defaults.max_total_payload_bytes),
            max_scope_depth: l.max_scope_depth.unwrap_or(defaults.max_scope_depth),
            max_locks: l.max_locks.unwrap_or(defaults.max_locks),
            max_lock_acquisitions: l
                .max_lock_acquisitions
                .unwrap_or(defaults.max_lock_acquisitions),
            compensation_budget: l
                .compensation_budget_ms
                .map_or(defaults.compensation_budget, Duration::from_millis),
        }
    }

    /// The sink, with a relative file path resolved.
    pub fn sink(&self) -> Option<SinkSpec> {
        Some(self.resolved(self.sink.as_ref()?.parse().ok()?))
    }

    /// The routes, in order: each effect pattern, its sink (a relative file
    /// path resolved) and its breaker.
    pub fn routes(&self) -> impl Iterator<Item = (&str, SinkSpec, Option<&str>)> {
        self.routes.iter().filter_map(|route| {
            let sink = self.resolved(route.sink.parse().ok()?);
            Some((route.effects.as_str(), sink, route.breaker.as_deref()))
        })
    }

    fn resolved(&self, sink: SinkSpec) -> SinkSpec {
        match sink {
            SinkSpec::File(path) => SinkSpec::File(self.base.join(path)),
            other => other,
        }
    }
}

/// A store URL from a config file: a relative SQLite path is resolved
/// against the config's directory.
fn resolve_store_url(base: &Path, url: &str) -> String {
    if url.contains("://") {
        return url.to_owned();
    }
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    base.join(path).to_string_lossy().into_owned()
}

/// The policy for a policy name and block patterns.
///
/// # Errors
///
/// Block patterns with a policy other than commit, or a malformed pattern.
pub fn build_policy(name: PolicyName, block: &[String]) -> Result<Arc<dyn Policy>, String> {
    match (name, block.is_empty()) {
        (PolicyName::Commit, true) => Ok(Arc::new(policy::Commit)),
        (PolicyName::Commit, false) => Ok(Arc::new(
            policy::Block::new(block.iter().cloned()).map_err(|e| format!("block: {e}"))?,
        )),
        (PolicyName::Drop, true) => Ok(Arc::new(policy::DropAll)),
        (PolicyName::AssertNone, true) => Ok(Arc::new(policy::AssertNone)),
        (_, false) => Err("block patterns apply only with policy commit".into()),
    }
}

/// ` (line L, column C)` for a byte span of `text`.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {column})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("escrow.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn a_typed_function_names_a_compensation_with_a_handler_and_a_defined_breaker() {
        let base = r#"
            [handlers."payments.refund"]
            kind = "action"
            exec = ["true"]

            [breakers.payments]

            [typed."acme:shop/payments"]
            timing = "immediate"
        "#;
        let config = parse(&format!(
            "{base}\n[typed.\"acme:shop/payments\".functions]\n\
             balance = \"deferred\"\n\
             charge = {{ compensate = \"payments.refund\", breaker = \"payments\" }}\n"
        ))
        .unwrap();
        let typed = config.typed_effects().unwrap();
        let [payments] = typed.interfaces() else {
            panic!("one interface");
        };
        assert_eq!(payments.timing_of("balance"), Timing::Deferred);
        assert_eq!(payments.timing_of("charge"), Timing::Immediate);
        let charge = payments.config_of("charge").unwrap();
        assert_eq!(charge.compensate.as_deref(), Some("payments.refund"));
        assert_eq!(charge.breaker.as_deref(), Some("payments"));

        for (function, error) in [
            (
                r#"charge = { breaker = "ledger" }"#,
                "typed.\"acme:shop/payments\".functions.charge: breaker `ledger` is not \
                 defined in [breakers]",
            ),
            (
                r#"charge = { compensate = "payments.void" }"#,
                "typed.\"acme:shop/payments\".functions.charge: the compensation \
                 `payments.void` has no [handlers] entry to perform it",
            ),
        ] {
            let text = format!("{base}\n[typed.\"acme:shop/payments\".functions]\n{function}\n");
            let refused = parse(&text).unwrap_err().to_string();
            assert!(refused.ends_with(error), "{refused}");
        }
    }

    #[test]
    fn an_empty_config_grants_nothing_and_keeps_the_default_limits() {
        let config = parse("").unwrap();
        assert!(config.grants().unwrap().effect_patterns().is_empty());
        assert_eq!(config.limits(), Limits::default());
        assert_eq!(config.policy, PolicyName::Commit);
    }

    #[test]
    fn unknown_keys_are_reported_with_their_line() {
        let error = parse("policy = \"commit\"\n[limits]\ntimeout = 5\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `timeout`"), "{error}");
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn an_unknown_policy_is_refused() {
        let error = parse("policy = \"yolo\"").unwrap_err().to_string();
        assert!(error.contains("unknown variant `yolo`"), "{error}");
    }

    #[test]
    fn a_value_with_a_line_break_is_refused_in_one_line_that_shows_it_escaped() {
        for text in [
            "policy = \"\"\"\na\nb\"\"\"",
            "[grants]\nlocks = [\"\"\"\na\nb\"\"\"]",
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(!error.contains('\n'), "{error}");
            assert!(error.contains("a\\nb"), "{error}");
        }
    }

    #[test]
    fn a_malformed_grant_pattern_is_refused() {
        let error = parse("[grants]\neffects = [\"email.{a,b}\"]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("effect grant"), "{error}");
    }

    #[test]
    fn block_with_drop_is_refused() {
        let error = parse("policy = \"drop\"\nblock = [\"a\"]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("only with policy commit"), "{error}");
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_directory() {
        let config = parse(
            "sink = \"file:out.jsonl\"\n[grants]\ndirs = [{ host = \"data\", guest = \"/data\" }]",
        )
        .unwrap();
        assert_eq!(
            config.sink(),
            Some(SinkSpec::File(config.base.join("out.jsonl")))
        );
        assert_eq!(
            config.grants().unwrap().dirs()[0].host,
            config.base.join("data")
        );
    }

    #[test]
    fn a_handler_needs_exactly_one_of_exec_and_http() {
        let neither = parse("[handlers.\"a.b\"]\nkind = \"query\"")
            .unwrap_err()
            .to_string();
        assert!(
            neither.contains("exactly one of `exec` and `http`"),
            "{neither}"
        );
        let empty = parse("[handlers.\"a.b\"]\nkind = \"query\"\nexec = []")
            .unwrap_err()
            .to_string();
        assert!(empty.contains("`exec` is empty"), "{empty}");
    }

    #[test]
    fn a_handler_with_a_bad_url_or_kind_is_refused() {
        let url = parse("[handlers.\"a.b\"]\nkind = \"query\"\nhttp = { url = \"ftp://x\" }")
            .unwrap_err()
            .to_string();
        assert!(url.contains("not an http or https URL"), "{url}");
        let kind = parse("[handlers.\"a.b\"]\nkind = \"write\"\nexec = [\"true\"]")
            .unwrap_err()
            .to_string();
        assert!(kind.contains("unknown variant `write`"), "{kind}");
    }

    #[test]
    fn handlers_are_registered_with_their_kind() {
        let config = parse(
            "[handlers.\"prices.get\"]\nkind = \"query\"\nexec = [\"cat\"]\n\
             [handlers.\"orders.create\"]\nkind = \"action\"\nhttp = { url = \"http://127.0.0.1:9/o\" }",
        )
        .unwrap();
        let handlers = config.handlers().unwrap();
        assert_eq!(handlers.kind("prices.get"), Some(EffectKind::Query));
        assert_eq!(handlers.kind("orders.create"), Some(EffectKind::Action));
    }

    #[test]
    fn the_documented_example_config_is_valid() {
        let doc = include_str!("../../docs/config.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("the block's end");
        let config = parse(&doc[start..end]).unwrap();
        assert_eq!(config.grants().unwrap().effect_patterns().len(), 3);
        assert_eq!(
            config.handlers().unwrap().kind("flight.book"),
            Some(EffectKind::Action)
        );
        assert_eq!(config.limits().max_intents, 1000);
        assert_eq!(
            config.grants().unwrap().lock_grant("account:7"),
            Some("account:*")
        );
        assert_eq!(
            config.locks.backend.as_deref(),
            Some("redis://127.0.0.1:6379/")
        );
    }

    #[test]
    fn breakers_are_defined_from_their_tables_with_defaults_for_missing_keys() {
        let config =
            parse("[breakers.upstream]\nfailure_threshold = 2\nignore = [\"*404*\"]\n").unwrap();
        let (name, breaker) = &config.breaker_configs().unwrap()[0];
        assert_eq!(name, "upstream");
        assert_eq!(breaker.failure_threshold, 2);
        assert_eq!(breaker.recovery, crate::breakers::DEFAULT_RECOVERY);
        assert_eq!(breaker.ignore, ["*404*"]);
        let bad =
            parse("[breakers.x]\nfailure_rate = { ratio = 2.0, window_ms = 1, min_calls = 1 }")
                .unwrap_err();
        assert!(bad.to_string().contains("from 0 to 1"), "{bad}");
    }

    #[test]
    fn limits_override_the_defaults_key_by_key() {
        let config = parse("[limits]\ntimeout_ms = 250\nmax_intents = 3").unwrap();
        let limits = config.limits();
        assert_eq!(limits.deadline, Duration::from_millis(250));
        assert_eq!(limits.max_intents, 3);
        assert_eq!(
            limits.max_payload_bytes,
            Limits::default().max_payload_bytes
        );
    }
}
