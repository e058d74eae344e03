//! What both benchmarks share: the baselines they measure escrow against (a
//! minimal host of the same components, with host functions of the same
//! signatures that do nothing) and the no-op handler escrow's side calls.

use std::sync::Arc;
use std::time::Duration;

use escrow_host::handlers::{FnHandler, Handlers};
use escrow_host::{CallError, EffectError, EscrowCtx, Grants, Limits, policy};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The store data of the baselines.
pub struct State {
    pub escrow: EscrowCtx,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl State {
    pub fn new() -> Self {
        Self {
            escrow: EscrowCtx::new(
                Arc::new(Grants::new()),
                Arc::new(policy::Commit),
                Limits::default(),
            ),
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }
}

/// `fixture-bench-baseline`, its imports (`call`, `call-invoke`) linked to
/// host functions that do nothing. With `async_invoke`, `call-invoke` is an
/// async host function, as escrow's `invoke` is (a handler may wait): what
/// wasmtime charges any such call (a boxed future polled on the guest's
/// fiber) is then in the baseline too.
pub fn bare_calls(engine: &Engine, async_invoke: bool) -> InstancePre<State> {
    let mut linker = Linker::<State>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    let mut bare = linker.instance("escrow-bench:baseline/bare").unwrap();
    bare.func_wrap("call", |_, (_effect, _payload): (String, Vec<u8>)| {
        Ok((Result::<u64, escrow_host::Refusal>::Ok(0),))
    })
    .unwrap();
    type Answer = (Result<Vec<u8>, EffectError>,);
    if async_invoke {
        bare.func_wrap_async(
            "call-invoke",
            |_, (_effect, _payload): (String, Vec<u8>)| {
                Box::new(async { wasmtime::Result::<Answer>::Ok((Ok(Vec::new()),)) })
            },
        )
        .unwrap();
    } else {
        bare.func_wrap(
            "call-invoke",
            |_, (_effect, _payload): (String, Vec<u8>)| Ok::<Answer, _>((Ok(Vec::new()),)),
        )
        .unwrap();
    }
    let component = Component::from_file(engine, escrow_fixtures::BENCH_BASELINE).unwrap();
    linker.instantiate_pre(&component).unwrap()
}

/// The `typed` fixture with `ledger`'s functions linked as wasmtime's own
/// dynamic host functions (`func_new`) that do nothing but answer `ok`:
/// what lifting a typed call's arguments into `Val`s costs before escrow
/// does anything with them. Escrow's and WASI's interfaces are linked as
/// escrow links them; `catalog` and `values` are never called.
pub fn bare_typed(engine: &Engine) -> InstancePre<State> {
    use wasmtime::component::Val;
    let mut linker = Linker::<State>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    escrow_host::add_to_linker(&mut linker, |s| &mut s.escrow).unwrap();
    let mut ledger = linker.instance("escrow-test:typed/ledger").unwrap();
    for function in ["post", "attach"] {
        ledger
            .func_new(function, |_, _, _params, results| {
                results[0] = Val::Result(Ok(None));
                Ok(())
            })
            .unwrap();
    }
    let component = Component::from_file(engine, escrow_fixtures::TYPED).unwrap();
    linker.define_unknown_imports_as_traps(&component).unwrap();
    linker.instantiate_pre(&component).unwrap()
}

/// A fresh store and instance from `pre` (a baseline guest), whose `run` is
/// called with `input`: what a run is without escrow.
pub async fn bare_run(engine: &Engine, pre: &InstancePre<State>, input: &[u8]) {
    let mut store = Store::new(engine, State::new());
    escrow_host::set_deadline(&mut store, Duration::from_secs(60));
    let instance = pre.instantiate_async(&mut store).await.unwrap();
    let run = instance
        .get_typed_func::<(&[u8],), (Result<Vec<u8>, String>,)>(&mut store, "run")
        .unwrap();
    let (result,) = run.call_async(&mut store, (input,)).await.unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// `fixture-bench` linked as escrow links it, to be instantiated bare.
pub fn escrow_linked(engine: &Engine) -> InstancePre<State> {
    let mut linker = Linker::<State>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    escrow_host::add_to_linker(&mut linker, |s| &mut s.escrow).unwrap();
    let component = Component::from_file(engine, escrow_fixtures::BENCH).unwrap();
    linker.instantiate_pre(&component).unwrap()
}

/// Handlers with one query, `bench.noop`, that answers nothing at once.
pub fn noop_handlers() -> Handlers {
    let mut handlers = Handlers::new();
    handlers
        .query(
            "bench.noop",
            FnHandler(|_: &[u8]| Ok::<_, CallError>(Vec::new())),
        )
        .unwrap();
    handlers
}

/// The `typed` fixture on a host declaring its interfaces typed effects,
/// with a query `catalog.stock` that answers `1`: typed calls, each next to
/// the escrow call with the same payload.
pub fn typed_plugin() -> escrow_host::Plugin {
    use escrow_host::typed::{Timing, TypedEffects, TypedInterface};
    let mut typed = TypedEffects::new();
    for (name, timing) in [
        ("escrow-test:typed/catalog", Timing::Immediate),
        ("escrow-test:typed/ledger", Timing::Deferred),
        ("escrow-test:typed/values", Timing::Deferred),
    ] {
        typed
            .add(TypedInterface::new(name, timing).unwrap())
            .unwrap();
    }
    let mut handlers = Handlers::new();
    handlers
        .query(
            "catalog.stock",
            FnHandler(|_: &[u8]| Ok::<_, CallError>(b"1".to_vec())),
        )
        .unwrap();
    escrow_host::Host::builder()
        .cache_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasmtime-cache"),
        )
        .max_concurrent_runs(2)
        .typed_effects(typed)
        .handlers(handlers)
        .build()
        .unwrap()
        .load_file(escrow_fixtures::TYPED)
        .unwrap()
}
