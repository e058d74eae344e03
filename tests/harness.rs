//! The shared harness of escrow's integration tests: one host per test
//! binary, each fixture compiled once, helpers to run scripts and read
//! outcomes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use escrow_host::CallError;
use escrow_host::handlers::{Call, EffectKind, Handler, Handlers};
use escrow_host::sinks::{Sink, Sinks};
use escrow_host::{Fate, Grants, Host, Intent, Outcome, Plugin, RunOptions};
use serde_json::Value;

pub use escrow_fixtures as fixtures;

pub mod counting;

/// The README's Rust examples compile (the plugin) and type-check (the
/// embedding).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct Readme;

/// The guest SDK crate's README example compiles.
#[cfg(doctest)]
#[doc = include_str!("../guest-sdk/README.md")]
struct GuestReadme;

/// The host crate's README example type-checks.
#[cfg(doctest)]
#[doc = include_str!("../host/README.md")]
struct HostReadme;

/// The Rust examples of `docs/embedding.md` compile.
#[cfg(doctest)]
#[doc = include_str!("../docs/embedding.md")]
struct EmbeddingDocs;

/// The Rust examples of `docs/effects.md` compile.
#[cfg(doctest)]
#[doc = include_str!("../docs/effects.md")]
struct EffectsDocs;

/// The Rust examples of `docs/serve.md` compile.
#[cfg(doctest)]
#[doc = include_str!("../docs/serve.md")]
struct ServeDocs;

/// The Rust examples of `docs/plans.md` compile.
#[cfg(doctest)]
#[doc = include_str!("../docs/plans.md")]
struct PlansDocs;

/// The Rust examples of `docs/replay.md` compile.
#[cfg(doctest)]
#[doc = include_str!("../docs/replay.md")]
struct ReplayDocs;

/// The host every test shares: compiling a fixture once per test binary
/// keeps the suite fast.
pub fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        Host::builder()
            .max_concurrent_runs(32)
            .cache_dir(compile_cache())
            .build()
            .expect("building the test host")
    })
}

/// wasmtime's compilation cache for the tests' hosts, in the target
/// directory: the Python and JavaScript components (12–18 MB each) take
/// seconds to compile, and are compiled once, not once per `cargo test`.
pub fn compile_cache() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasmtime-cache")
}

/// The fixture at `path`, compiled once.
pub fn plugin(path: &'static str) -> Plugin {
    static PLUGINS: OnceLock<Mutex<HashMap<&'static str, Plugin>>> = OnceLock::new();
    let plugins = PLUGINS.get_or_init(Default::default);
    if let Some(plugin) = plugins.lock().unwrap().get(path) {
        return plugin.clone();
    }
    let plugin = host()
        .load_file(path)
        .unwrap_or_else(|e| panic!("loading {path}: {e}"));
    plugins
        .lock()
        .unwrap()
        .entry(path)
        .or_insert(plugin)
        .clone()
}

/// The `scripted` fixture.
pub fn scripted() -> Plugin {
    plugin(fixtures::SCRIPTED)
}

/// The `scripted` fixture with the breaker `upstream` (default settings),
/// its state in `store`, in front of a query `upstream.call` that answers
/// `ok`.
pub fn upstream_plugin(store: Arc<dyn escrow_host::backends::BreakerStore>) -> Plugin {
    let mut breakers = escrow_host::breakers::Breakers::new(store);
    breakers
        .define("upstream", escrow_host::breakers::BreakerConfig::default())
        .unwrap();
    let mut handlers = Handlers::new();
    handlers
        .query(
            "upstream.call",
            escrow_host::handlers::FnHandler(|_: &[u8]| Ok::<_, CallError>(b"ok".to_vec())),
        )
        .unwrap();
    scripted()
        .with_breakers(Arc::new(breakers))
        .with_handlers(handlers)
}

/// Grants for every effect.
pub fn all_effects() -> Grants {
    Grants::new().effects(["*"]).unwrap()
}

/// Run options granting every effect.
pub fn granted() -> RunOptions {
    RunOptions::new().grants(all_effects())
}

/// Runs the scripted fixture with `steps` under `options`, delivering to
/// `recorder`, with no handlers.
pub async fn run_script(steps: Value, options: RunOptions, recorder: &Recorder) -> Outcome {
    run_script_with(steps, options, recorder, Handlers::new()).await
}

/// Runs `plugin` (the scripted fixture with its sinks, handlers and locks
/// chosen) with `steps` under `options`.
pub async fn run_steps(plugin: &Plugin, steps: Value, options: RunOptions) -> Outcome {
    let input = serde_json::to_vec(&serde_json::json!({ "steps": steps })).unwrap();
    plugin
        .run(options.input(input))
        .await
        .expect("the run starts")
}

/// [`run_script`] with `handlers` performing immediate effects.
pub async fn run_script_with(
    steps: Value,
    options: RunOptions,
    recorder: &Recorder,
    handlers: Handlers,
) -> Outcome {
    let input = serde_json::to_vec(&serde_json::json!({ "steps": steps })).unwrap();
    scripted()
        .with_sinks(recorder.sinks())
        .with_handlers(handlers)
        .run(options.input(input))
        .await
        .expect("the run starts")
}

/// The per-step results the scripted guest answered.
pub fn results(outcome: &Outcome) -> Vec<Value> {
    let output = outcome.result.as_ref().expect("the run succeeded");
    let output: Value = serde_json::from_slice(output).expect("the guest answers JSON");
    output["results"]
        .as_array()
        .expect("a list of results")
        .clone()
}

/// `(effect, fate name)` of every intent, in request order.
pub fn fates(outcome: &Outcome) -> Vec<(&str, &'static str)> {
    outcome
        .intents
        .iter()
        .map(|i| (i.effect.as_str(), i.fate.name()))
        .collect()
}

/// Whether an intent was dispatched and delivered.
pub fn delivered(intent: &Intent) -> bool {
    intent.fate == Fate::Dispatched(escrow_host::Delivery::Delivered)
}

/// One delivery a [`Recorder`] saw.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The intent's sequence number.
    pub seq: u64,
    /// The effect.
    pub effect: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// When it was delivered.
    pub at: Instant,
}

/// A sink that records what it is given, and fails on effects named
/// `*.fail`.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Delivered>>>,
}

impl Recorder {
    /// A fresh recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sinks that route every effect here.
    pub fn sinks(&self) -> Sinks {
        let mut sinks = Sinks::new();
        sinks.route("*", self.clone()).unwrap();
        sinks
    }

    /// Everything delivered so far, in order.
    pub fn seen(&self) -> Vec<Delivered> {
        self.seen.lock().unwrap().clone()
    }

    /// The effects delivered so far, in order.
    pub fn effects(&self) -> Vec<String> {
        self.seen().into_iter().map(|d| d.effect).collect()
    }
}

#[async_trait::async_trait]
impl Sink for Recorder {
    async fn deliver(&self, intent: &Intent) -> Result<(), CallError> {
        if intent.effect.ends_with(".fail") {
            return Err(CallError::new(format!("{} is down", intent.effect)));
        }
        self.seen.lock().unwrap().push(Delivered {
            seq: intent.seq,
            effect: intent.effect.clone(),
            payload: intent.payload.clone(),
            idempotency_key: intent.idempotency_key(),
            at: Instant::now(),
        });
        Ok(())
    }
}

/// A handler that writes every call it gets into a shared log, in order,
/// answers `{"done": EFFECT}`, and fails on effects whose name contains
/// `fail`.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    calls: Arc<Mutex<Vec<String>>>,
}

impl Journal {
    /// A fresh journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handlers for `actions` and `queries`, all writing here.
    pub fn handlers(&self, actions: &[&str], queries: &[&str]) -> Handlers {
        let mut handlers = Handlers::new();
        for (names, kind) in [(actions, EffectKind::Action), (queries, EffectKind::Query)] {
            for name in names {
                handlers
                    .register(name, kind, Arc::new(self.clone()))
                    .unwrap();
            }
        }
        handlers
    }

    /// The effects called so far, in order.
    pub fn effects(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Handler for Journal {
    async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        let effect = call.effect;
        self.calls.lock().unwrap().push(effect.to_owned());
        if effect.contains("fail") {
            return Err(CallError::new(format!("{effect} went wrong")));
        }
        Ok(serde_json::to_vec(&serde_json::json!({ "done": effect })).unwrap())
    }
}

/// The effects of the compensations an outcome lists, in the order they ran.
pub fn compensated(outcome: &Outcome) -> Vec<&str> {
    outcome
        .compensations
        .iter()
        .map(|c| c.effect.as_str())
        .collect()
}

/// Accounts for the transfer example: a query for the balance and two
/// actions that read, pause, then write the balance (a read-modify-write
/// that loses updates unless the caller holds the account's lock). Writes
/// carrying a fencing token older than one already seen are rejected.
#[derive(Debug, Clone)]
pub struct Bank {
    accounts: Arc<Mutex<HashMap<String, Account>>>,
}

#[derive(Debug, Default)]
struct Account {
    balance: i64,
    fence: u64,
}

#[derive(serde::Deserialize)]
struct Movement {
    account: String,
    amount: i64,
    fence: u64,
}

impl Bank {
    /// Accounts with their opening balances.
    pub fn new(opening: &[(&str, i64)]) -> Self {
        let accounts = opening
            .iter()
            .map(|(name, balance)| {
                let account = Account {
                    balance: *balance,
                    fence: 0,
                };
                ((*name).to_owned(), account)
            })
            .collect();
        Self {
            accounts: Arc::new(Mutex::new(accounts)),
        }
    }

    /// `accounts.balance` (query), `accounts.debit` and `accounts.credit`
    /// (actions).
    pub fn handlers(&self) -> Handlers {
        let mut handlers = Handlers::new();
        let bank = self.clone();
        handlers
            .query(
                "accounts.balance",
                escrow_host::handlers::FnHandler(move |payload: &[u8]| {
                    let name: String =
                        serde_json::from_slice(payload).map_err(|e| e.to_string())?;
                    let accounts = bank.accounts.lock().unwrap();
                    let balance = accounts.get(&name).map_or(0, |a| a.balance);
                    Ok::<_, CallError>(balance.to_string().into_bytes())
                }),
            )
            .unwrap();
        for (effect, sign) in [("accounts.debit", -1), ("accounts.credit", 1)] {
            let bank = self.clone();
            handlers
                .action(
                    effect,
                    escrow_host::handlers::AsyncFnHandler(move |payload: Vec<u8>| {
                        let bank = bank.clone();
                        async move { bank.apply(&payload, sign).await }
                    }),
                )
                .unwrap();
        }
        handlers
    }

    async fn apply(&self, payload: &[u8], sign: i64) -> Result<Vec<u8>, CallError> {
        let movement: Movement =
            serde_json::from_slice(payload).map_err(|e| CallError::new(e.to_string()))?;
        let read = {
            let mut accounts = self.accounts.lock().unwrap();
            let account = accounts.entry(movement.account.clone()).or_default();
            if movement.fence < account.fence {
                return Err(CallError::new(format!(
                    "stale fencing token {}",
                    movement.fence
                )));
            }
            account.fence = movement.fence;
            account.balance
        };
        // The pause between read and write is where an unlocked caller would
        // lose an update.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let written = read + sign * movement.amount;
        self.accounts
            .lock()
            .unwrap()
            .get_mut(&movement.account)
            .unwrap()
            .balance = written;
        Ok(written.to_string().into_bytes())
    }

    /// Every balance.
    pub fn balances(&self) -> HashMap<String, i64> {
        let accounts = self.accounts.lock().unwrap();
        accounts
            .iter()
            .map(|(name, a)| (name.clone(), a.balance))
            .collect()
    }

    /// The sum of every balance.
    pub fn total(&self) -> i64 {
        self.balances().values().sum()
    }
}
