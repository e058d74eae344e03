//! A run's store: the data wasmtime keeps for one run (its escrow context,
//! its WASI sandbox, its memory cap) and the bounds set on it.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::ctx::EscrowCtx;
use crate::error::Error;
use crate::grants::Grants;
use crate::limits::{
    Limit, LimitExceeded, MAX_GUEST_STDERR_BYTES, MAX_HOST_CALL_COPY_BYTES, MAX_RESOURCE_HANDLES,
    deadline_after,
};
use crate::wasi_http::DenyOutgoing;

/// Most table elements a run may grow a table to. Tables hold function
/// references; real guests stay far below this.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The data of a run's store.
pub(crate) struct RunState {
    pub(crate) escrow: EscrowCtx,
    /// Built at the start of the run when the grants put something in it,
    /// otherwise on the guest's first WASI call: most runs make none.
    wasi: Option<WasiCtx>,
    /// The guest's stderr, kept for the outcome.
    stderr: MemoryOutputPipe,
    http: WasiHttpCtx,
    http_hooks: DenyOutgoing,
    table: ResourceTable,
    memory: MemoryCap,
}

impl RunState {
    /// A run's store: its escrow context, a WASI sandbox holding what the
    /// run's grants give and a bounded stderr, its memory cap, the bounds
    /// on host calls and handles, and its deadline.
    ///
    /// # Errors
    ///
    /// When a granted directory cannot be opened.
    pub(crate) fn store(engine: &Engine, escrow: EscrowCtx) -> Result<Store<RunState>, Error> {
        let stderr = MemoryOutputPipe::new(MAX_GUEST_STDERR_BYTES);
        let wasi = granted_wasi(&escrow.grants, &stderr)?;
        let limits = escrow.limits();
        let memory = MemoryCap(limits.max_memory_bytes);
        let deadline = limits.deadline;
        let state = RunState {
            memory,
            escrow,
            wasi,
            stderr,
            http: crate::wasi_http::context(),
            http_hooks: DenyOutgoing,
            table: ResourceTable::new(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_hostcall_fuel(MAX_HOST_CALL_COPY_BYTES);
        store.set_max_component_handles(MAX_RESOURCE_HANDLES);
        set_deadline(&mut store, deadline);
        Ok(store)
    }

    /// What the guest wrote to stderr (at most [`MAX_GUEST_STDERR_BYTES`]).
    pub(crate) fn stderr(&self) -> Vec<u8> {
        self.stderr.contents().to_vec()
    }
}

impl WasiHttpView for RunState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stderr = &self.stderr;
        WasiCtxView {
            ctx: self
                .wasi
                .get_or_insert_with(|| wasi_builder(stderr).build()),
            table: &mut self.table,
        }
    }
}

/// Caps linear memory at the run's limit; exceeding it stops the run.
struct MemoryCap(usize);

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.0 {
            return Err(LimitExceeded(Limit::Memory).into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Stops the guest in `store` once `deadline` has passed, by trapping with
/// the deadline limit, and yields to the async executor on every epoch tick
/// until then so that a busy guest does not hold a thread.
///
/// The host's engine ticks every [`EPOCH_TICK`](crate::host::EPOCH_TICK);
/// embedders that build their own store must call this before calling into
/// the guest.
pub fn set_deadline<T: 'static>(store: &mut Store<T>, deadline: Duration) {
    let deadline = deadline_after(Instant::now(), deadline);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(LimitExceeded(Limit::Deadline).into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

/// The guest's WASI context: nothing but a bounded buffer for its stderr,
/// and what the grants allow.
fn wasi_builder(stderr: &MemoryOutputPipe) -> WasiCtxBuilder {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stderr(stderr.clone());
    wasi
}

/// The WASI context of a run whose grants give the guest directories or
/// variables, built now so that a directory that cannot be opened fails the
/// run before it starts; `None` when they give neither, and the context can
/// wait for the guest's first WASI call.
fn granted_wasi(grants: &Grants, stderr: &MemoryOutputPipe) -> Result<Option<WasiCtx>, Error> {
    if grants.dirs().is_empty() && grants.env_vars().is_empty() {
        return Ok(None);
    }
    let mut wasi = wasi_builder(stderr);
    for dir in grants.dirs() {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|error| Error::Grant {
                path: dir.host.clone(),
                error,
            })?;
    }
    for (key, value) in grants.env_vars() {
        wasi.env(key, value);
    }
    Ok(Some(wasi.build()))
}
