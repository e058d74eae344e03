//! The host: one wasmtime engine, one linker, the sinks, and the shared state
//! every run of every plugin uses.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::backends::{LockBackend, MemoryLocks};
use crate::breakers::Breakers;
use crate::error::Error;
use crate::handlers::Handlers;
use crate::limits::DEFAULT_MAX_MEMORY_BYTES;
use crate::outbox::Outbox;
use crate::outcome::Intent;
use crate::patterns::Patterns;
use crate::sinks::Sinks;
use crate::store::RunState;
use crate::typed::TypedEffects;

/// How often the host's clock ticks for deadlines. A run is stopped at most
/// about one tick after its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Default number of runs a host executes at once. With the pooling
/// allocator each one holds a preallocated instance slot; further runs wait
/// for a slot.
pub const DEFAULT_MAX_CONCURRENT_RUNS: u32 = 64;

/// What one instance slot holds by default: enough for a Rust guest (3–4
/// core instances, 1 memory) and for the components that Python and
/// JavaScript toolchains make (componentize-py: 14 core instances).
pub const DEFAULT_SLOT: SlotSize = SlotSize {
    core_instances: 20,
    memories: 4,
    tables: 24,
};

/// What one instance slot of the pool holds. A component that needs more
/// cannot be loaded on the host (a one-line error names the numbers and
/// the knob); every run of one that fits finds room once it has a slot, so
/// runs wait for a slot and never fail for want of pool space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSize {
    /// Core wasm instances (a component's modules, adapters and shims).
    pub core_instances: u32,
    /// Linear memories.
    pub memories: u32,
    /// Tables.
    pub tables: u32,
}

/// Bytes of each pooled slot's memory and stack pages kept resident between
/// runs instead of returned to the kernel: reusing them saves the page faults
/// that dominate a short run.
const KEEP_RESIDENT_BYTES: usize = 256 << 10;

/// An escrow host: compiles plugins and runs them, each run in a fresh
/// instance, and delivers committed intents to its sinks.
///
/// `Host` is cheap to clone and share across threads: clones share the
/// engine, the sinks and the pool of instances.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use escrow_host::{Grants, Host, RunOptions, sinks::JsonLines};
///
/// let host = Host::builder().route("*", JsonLines::stdout())?.build()?;
/// let plugin = host.load_file("checkout.wasm")?;
/// let outcome = plugin
///     .run(RunOptions::new().input(br#"{"order": 7}"#).grants(Grants::new().effects(["*"])?))
///     .await?;
/// println!("{}", outcome.status());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<RunState>,
    sinks: Sinks,
    handlers: Arc<Handlers>,
    locks: Arc<dyn LockBackend>,
    breakers: Arc<Breakers>,
    outbox: Option<Outbox>,
    approval: Option<Arc<Patterns>>,
    observers: crate::observe::Observers,
    typed: TypedEffects,
    max_memory_bytes: usize,
    slots: Semaphore,
    blocking: OnceLock<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    /// The last clone of a host may be dropped on an async task, where a
    /// runtime must not be dropped (it would block): the blocking runtime is
    /// shut down without waiting instead.
    fn drop(&mut self) {
        if let Some(runtime) = self.blocking.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("sinks", &self.inner.sinks)
            .field("max_memory_bytes", &self.inner.max_memory_bytes)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Host`].
#[derive(Debug)]
pub struct HostBuilder {
    sinks: Sinks,
    handlers: Handlers,
    locks: Arc<dyn LockBackend>,
    breakers: Arc<Breakers>,
    outbox: Option<Outbox>,
    approval: Option<Arc<Patterns>>,
    observers: crate::observe::Observers,
    typed: TypedEffects,
    max_concurrent_runs: u32,
    max_memory_bytes: usize,
    pooling: bool,
    slot: SlotSize,
    backtraces: bool,
    cache_dir: Option<PathBuf>,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self {
            sinks: Sinks::new(),
            handlers: Handlers::new(),
            locks: Arc::new(MemoryLocks::new()),
            breakers: Arc::default(),
            outbox: None,
            approval: None,
            observers: Default::default(),
            typed: TypedEffects::new(),
            max_concurrent_runs: DEFAULT_MAX_CONCURRENT_RUNS,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            pooling: true,
            slot: DEFAULT_SLOT,
            backtraces: false,
            cache_dir: None,
        }
    }
}

impl HostBuilder {
    /// Sends committed intents whose effect matches `pattern` to `sink`.
    /// Routes are tried in the order they were added.
    ///
    /// # Errors
    ///
    /// Returns a [`NameError`](crate::patterns::NameError) for a malformed
    /// pattern.
    pub fn route(
        mut self,
        pattern: &str,
        sink: impl crate::sinks::Sink,
    ) -> Result<Self, crate::patterns::NameError> {
        self.sinks.route(pattern, sink)?;
        Ok(self)
    }

    /// Replaces the sinks.
    pub fn sinks(mut self, sinks: Sinks) -> Self {
        self.sinks = sinks;
        self
    }

    /// The handlers that perform immediate effects.
    pub fn handlers(mut self, handlers: Handlers) -> Self {
        self.handlers = handlers;
        self
    }

    /// Where locks live (default: [`MemoryLocks`], shared by this host's
    /// runs). Use a Redis backend to share locks between hosts.
    pub fn locks(mut self, backend: Arc<dyn LockBackend>) -> Self {
        self.locks = backend;
        self
    }

    /// The breakers plugins may open (default none), with their shared
    /// state and event stream.
    pub fn breakers(mut self, breakers: impl Into<Arc<Breakers>>) -> Self {
        self.breakers = breakers.into();
        self
    }

    /// Makes commit durable: a successful run writes its committed intents
    /// to `outbox` in one transaction before it counts as committed, then
    /// delivers them and marks them delivered; what a sink fails to take is
    /// retried by a [`Worker`](crate::outbox::Worker). Compensations are
    /// journaled there before their action runs. Without an outbox (the
    /// default) intents live in memory until dispatched, with one attempt.
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Holds for approval every committed run with at least one intent
    /// whose effect matches `patterns` (`payments.*`): its intents are
    /// written to the outbox `held`, and none is delivered until someone
    /// approves the run ([`Outbox::approve`]); a rejected run's intents
    /// never are. Needs an [outbox](Self::outbox). A run may say otherwise
    /// ([`RunOptions::require_approval`](crate::RunOptions::require_approval)).
    pub fn require_approval(mut self, patterns: Patterns) -> Self {
        self.approval = (!patterns.is_empty()).then(|| Arc::new(patterns));
        self
    }

    /// Treats the functions of the WIT interfaces in `typed` as effects: a
    /// plugin calls them through its own generated bindings, and each call
    /// is held in escrow as `enqueue` or `invoke` holds theirs
    /// (`docs/typed-effects.md`).
    pub fn typed_effects(mut self, typed: TypedEffects) -> Self {
        self.typed = typed;
        self
    }

    /// Calls `observer` with every finished run's outcome, after delivery,
    /// for audit logs and metrics of one's own. Observers run in the order
    /// added, on the run's task: keep them quick.
    pub fn observe(
        mut self,
        observer: impl Fn(&crate::outcome::Outcome) + Send + Sync + 'static,
    ) -> Self {
        self.observers.0.push(Arc::new(observer));
        self
    }

    /// How many runs may execute at once (default
    /// [`DEFAULT_MAX_CONCURRENT_RUNS`]); more wait for a free slot.
    pub fn max_concurrent_runs(mut self, runs: u32) -> Self {
        self.max_concurrent_runs = runs.max(1);
        self
    }

    /// The most linear memory any run may be allowed (default
    /// [`DEFAULT_MAX_MEMORY_BYTES`]). Each run's own cap,
    /// [`Limits::max_memory_bytes`](crate::limits::Limits::max_memory_bytes), may be
    /// lower but not higher.
    pub fn max_memory_bytes(mut self, bytes: usize) -> Self {
        self.max_memory_bytes = bytes;
        self
    }

    /// What each instance slot holds (default [`DEFAULT_SLOT`]). Larger slots
    /// admit larger components; they reserve more address space, not more
    /// memory.
    pub fn slot_size(mut self, slot: SlotSize) -> Self {
        self.slot = slot;
        self
    }

    /// Whether to preallocate instance slots (the pooling allocator, the
    /// default). Without it every run allocates its memory afresh: slower,
    /// but it reserves no address space up front.
    pub fn pooling(mut self, pooling: bool) -> Self {
        self.pooling = pooling;
        self
    }

    /// Whether a trap's message carries the guest's wasm backtrace (default
    /// off: messages stay one line, and traps are cheaper to take).
    pub fn backtraces(mut self, backtraces: bool) -> Self {
        self.backtraces = backtraces;
        self
    }

    /// Keeps compiled components in `dir` (created if needed), so that loading
    /// the same component again, in this process or a later one, skips
    /// compilation. Entries are keyed by the component's bytes and the
    /// engine's settings.
    #[cfg(feature = "cache")]
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Builds the host and starts its deadline clock.
    ///
    /// # Errors
    ///
    /// Fails if the engine cannot be created with this configuration.
    pub fn build(self) -> Result<Host, Error> {
        const WASM_PAGE: usize = 64 << 10;
        if self.outbox.is_some() && self.sinks.is_empty() {
            // Not refused: the host may only write (`Dispatch::Later`,
            // `Dispatch::Hold`) for workers elsewhere, or its plugins may
            // bring sinks of their own (`Plugin::with_sinks`).
            tracing::warn!(
                "the host has an outbox but no sink route: every intent it or its workers deliver \
                 will fail with `no sink route matches the effect`; route effects with \
                 HostBuilder::route, or deliver from workers that have sinks"
            );
        }
        if self.approval.is_some() && self.outbox.is_none() {
            return Err(Error::Approval(
                "runs held for approval wait in the outbox: give the host one \
                 (HostBuilder::outbox)"
                    .into(),
            ));
        }
        if self.max_memory_bytes < WASM_PAGE {
            return Err(Error::Limits(format!(
                "max_memory_bytes is {}; it must be at least {WASM_PAGE} (one wasm page)",
                self.max_memory_bytes
            )));
        }
        let mut config = Config::new();
        /// Frames of a wasm backtrace kept when backtraces are asked for.
        const BACKTRACE_FRAMES: std::num::NonZeroUsize = std::num::NonZeroUsize::new(20).unwrap();
        config.wasm_backtrace_max_frames(self.backtraces.then_some(BACKTRACE_FRAMES));
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // escrow runs each call to completion; the component-model-async
        // machinery would only add per-store and per-call cost.
        config.concurrency_support(false);
        if self.pooling {
            let runs = self.max_concurrent_runs;
            let mut pool = PoolingAllocationConfig::default();
            let slot = self.slot;
            // Totals are slots times what a slot holds, and a component that
            // needs more than a slot is refused when it is loaded: a run
            // holding a slot always finds room.
            pool.total_component_instances(runs)
                .total_core_instances(runs * slot.core_instances)
                .total_memories(runs * slot.memories)
                .total_tables(runs * slot.tables)
                .total_stacks(runs)
                .max_core_instances_per_component(slot.core_instances)
                .max_memories_per_component(slot.memories)
                .max_tables_per_component(slot.tables)
                .max_memory_size(self.max_memory_bytes)
                .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
                .table_keep_resident(KEEP_RESIDENT_BYTES)
                .async_stack_keep_resident(KEEP_RESIDENT_BYTES);
            // `pagemap_scan` stays off: in wasmtime 48.0.10 it leaves a dirty
            // page that was swapped out unreset, for the slot's next run to
            // read (docs/performance.md).
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            // Initial memory mapped copy-on-write: a slot that runs the same
            // component again keeps the image and only resets what the run
            // dirtied. For a Python or JavaScript component (megabytes of
            // snapshot data) this is 6 times faster than copying the data
            // in; for a small Rust guest it costs the same
            // (docs/performance.md).
            config.memory_init_cow(true);
        }
        #[cfg(feature = "cache")]
        if let Some(dir) = &self.cache_dir {
            config.cache(Some(compile_cache(dir)?));
        }
        let engine = Engine::new(&config).map_err(Error::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(Error::Engine)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(Error::Engine)?;
        crate::capabilities::add_to_linker(&mut linker, |state: &mut RunState| &mut state.escrow)
            .map_err(Error::Engine)?;
        spawn_epoch_clock(&engine);
        Ok(Host {
            inner: Arc::new(Inner {
                engine,
                linker,
                sinks: self.sinks,
                handlers: Arc::new(self.handlers),
                locks: self.locks,
                breakers: self.breakers,
                outbox: self.outbox,
                approval: self.approval,
                observers: self.observers,
                typed: self.typed,
                max_memory_bytes: self.max_memory_bytes,
                slots: Semaphore::new(self.max_concurrent_runs as usize),
                blocking: OnceLock::new(),
            }),
        })
    }
}

/// wasmtime's compilation cache in `dir`.
#[cfg(feature = "cache")]
fn compile_cache(dir: &Path) -> Result<wasmtime::Cache, Error> {
    let cache_error = |error: std::io::Error| Error::Cache {
        path: dir.to_owned(),
        error: error.into(),
    };
    std::fs::create_dir_all(dir).map_err(cache_error)?;
    // wasmtime wants an absolute directory.
    let dir = dir.canonicalize().map_err(cache_error)?;
    let mut cache = wasmtime::CacheConfig::new();
    cache.with_directory(&dir);
    wasmtime::Cache::new(cache).map_err(|error| Error::Cache { path: dir, error })
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is gone.
fn spawn_epoch_clock(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("escrow-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch clock thread");
}

impl Host {
    /// A host with the default configuration and no sinks.
    ///
    /// # Errors
    ///
    /// Fails if the engine cannot be created.
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    /// Starts configuring a host.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The wasmtime engine, for embedders that build their own linker and
    /// store (a world of their own that includes escrow's imports).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The host's sinks.
    pub fn sinks(&self) -> &Sinks {
        &self.inner.sinks
    }

    /// The host's lock backend.
    pub fn locks(&self) -> &Arc<dyn LockBackend> {
        &self.inner.locks
    }

    /// The host's breakers: their definitions, shared state and events.
    pub fn breakers(&self) -> &Arc<Breakers> {
        &self.inner.breakers
    }

    /// The host's handlers.
    pub fn handlers(&self) -> &Arc<Handlers> {
        &self.inner.handlers
    }

    /// The patterns of effects whose runs are held for approval, if any.
    pub fn approval(&self) -> Option<&Arc<Patterns>> {
        self.inner.approval.as_ref()
    }

    /// The host's outbox, if commit is durable.
    pub fn outbox(&self) -> Option<&Outbox> {
        self.inner.outbox.as_ref()
    }

    /// A delivery worker for the host's outbox, delivering through the
    /// host's sinks and performing owed compensations with its handlers.
    /// `None` without an outbox.
    pub fn worker(&self) -> Option<crate::outbox::Worker> {
        Some(self.worker_for(self.inner.outbox.clone()?))
    }

    /// A delivery worker for `outbox`, delivering through the host's sinks
    /// and performing owed compensations with its handlers.
    pub fn worker_for(&self, outbox: Outbox) -> crate::outbox::Worker {
        crate::outbox::Worker::new(
            outbox,
            self.inner.sinks.clone(),
            Arc::clone(&self.inner.handlers),
        )
    }

    /// Delivers the committed intents of a finished run to the host's sinks,
    /// in order. See [`Sinks::dispatch`].
    pub async fn dispatch(&self, intents: &mut [Intent]) {
        self.inner.sinks.dispatch(intents).await;
    }

    /// Reads and compiles the component at `path` without linking it, to
    /// inspect its imports and exports.
    ///
    /// # Errors
    ///
    /// Fails if the file cannot be read or is not a valid component.
    pub fn compile_file(&self, path: impl AsRef<Path>) -> Result<Component, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        compile(&self.inner.engine, &format!("`{}`", path.display()), &bytes)
    }

    /// The linker every plugin of this host is resolved against.
    pub(crate) fn linker(&self) -> &Linker<RunState> {
        &self.inner.linker
    }

    /// The interfaces whose functions are effects.
    pub fn typed_effects(&self) -> &TypedEffects {
        &self.inner.typed
    }

    pub(crate) fn observers(&self) -> &[crate::observe::Observer] {
        &self.inner.observers.0
    }

    pub(crate) fn max_memory_bytes(&self) -> usize {
        self.inner.max_memory_bytes
    }

    pub(crate) fn slots(&self) -> &Semaphore {
        &self.inner.slots
    }

    pub(crate) fn blocking_runtime(&self) -> &tokio::runtime::Runtime {
        self.inner.blocking.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a current-thread runtime")
        })
    }
}

/// Compiles `bytes` as a component, telling apart the usual mistakes.
pub(crate) fn compile(engine: &Engine, what: &str, bytes: &[u8]) -> Result<Component, Error> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if !bytes.starts_with(MAGIC) {
        return Err(Error::NotWasm(what.to_owned()));
    }
    if bytes.get(4..8) == Some(&CORE_MODULE_VERSION[..]) {
        return Err(Error::CoreModule(what.to_owned()));
    }
    Component::new(engine, bytes).map_err(|error| {
        // The pooling allocator refuses a component larger than a slot.
        let message = format!("{error:#}");
        if message.contains("exceeds the configured maximum") {
            let reason = message
                .lines()
                .find(|l| l.contains("exceeds the configured maximum"))
                .unwrap_or(&message)
                .trim();
            return Error::Limits(format!(
                "{what} does not fit an instance slot: {reason}; give slots more room \
                 (`HostBuilder::slot_size`, or `[pool]` in escrow.toml: core_instances_per_slot, \
                 memories_per_slot, tables_per_slot)"
            ));
        }
        Error::Compile {
            what: what.to_owned(),
            error,
        }
    })
}
