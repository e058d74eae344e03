//! A driver for counting instructions with `valgrind --tool=callgrind`,
//! which repeats exactly on a machine whose timings move ±30 %.
//!
//! ```sh
//! cargo bench -p escrow-host --bench instructions -- SCENARIO N
//! valgrind --tool=callgrind target/release/deps/instructions-* SCENARIO N
//! ```
//!
//! runs SCENARIO with N operations after one warm-up. The difference between
//! the counts of two N, divided by the difference of the N, is the cost of
//! one operation with every fixed cost (start-up, compilation, the warm-up)
//! cancelled out. Without arguments (as `cargo bench` runs it) it runs every scenario once,
//! as a smoke test. Scenarios, each next to its baseline:
//!
//! - `intent` / `bare-call`: one run recording N intents (policy drop) /
//!   making N bare host calls of `enqueue`'s signature;
//! - `commit`: one run recording N intents committed to an in-memory sink;
//! - `invoke` / `bare-invoke` / `bare-async-invoke`: N invocations of a
//!   no-op handler / N bare calls of `invoke`'s signature, to a sync / an
//!   async host function;
//! - `breaker`: N invocations through a closed breaker;
//! - `lock`: N memory locks taken and released;
//! - `run` / `instantiate`: N whole runs of 2 committed intents / N bare
//!   instantiations of the same component;
//! - `typed-deferred` / `typed-enqueue` / `typed-serialize` / `bare-typed`:
//!   N deferred typed calls carrying a record of 3 fields / N `enqueue`s of
//!   the same JSON, ready / serialized from the same record in the guest
//!   each time / N calls of the same function to a wasmtime dynamic host
//!   function that does nothing (the arguments lifted into `Val`s and
//!   dropped);
//! - `typed-immediate` / `typed-invoke`: N immediate typed calls answered
//!   as a u32 / N `invoke`s of the same JSON.

mod baseline;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use escrow_host::breakers::{BreakerConfig, Breakers};
use escrow_host::policy::DropAll;
use escrow_host::sinks::FnSink;
use escrow_host::{CallError, Grants, Host, Intent, Limits, Plugin, RunOptions};
use wasmtime::Store;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (scenario, n) = match args.as_slice() {
        [scenario, n] => (scenario.as_str(), n.parse::<u64>().expect("N is a number")),
        // `cargo bench` with no arguments: check that every scenario runs.
        _ => {
            for scenario in SCENARIOS {
                run(scenario, 1);
            }
            return;
        }
    };
    run(scenario, n);
}

const SCENARIOS: [&str; 17] = [
    "typed-deferred",
    "typed-enqueue",
    "typed-serialize",
    "bare-typed",
    "typed-immediate",
    "typed-invoke",
    "intent",
    "bare-call",
    "commit",
    "invoke",
    "bare-invoke",
    "bare-async-invoke",
    "breaker",
    "lock",
    "run",
    "instantiate",
    "noop",
];

fn run(scenario: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Compiled code from the cache: under valgrind, compiling is slow and
    // not what is counted.
    let host = Host::builder()
        .route("*", FnSink(|_: &Intent| Ok::<_, CallError>(())))
        .unwrap()
        .cache_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasmtime-cache"))
        .max_concurrent_runs(2)
        .build()
        .unwrap();
    let plugin = host.load_file(escrow_fixtures::BENCH).unwrap();
    let limits = Limits {
        max_intents: (n as usize).max(2),
        ..Limits::default()
    };
    let effects = Grants::new().effects(["bench.*"]).unwrap();
    let mut breakers = Breakers::default();
    breakers.define("bench", BreakerConfig::default()).unwrap();
    let invoking = plugin.with_handlers(baseline::noop_handlers());

    let once = |plugin: &Plugin, options: RunOptions| rt.block_on(plugin.run(options)).unwrap();
    // A warm-up run of one operation first, so that state made lazily is
    // made outside the difference.
    let in_guest = |plugin: &Plugin, options: RunOptions, mode: &str| {
        let input = |count: u64| match mode {
            "" => count.to_string(),
            mode => format!("{mode}:{count}"),
        };
        once(plugin, options.clone().input(input(1)));
        let outcome = once(plugin, options.input(input(n)));
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    };
    let bare = |mode: &str, async_invoke: bool| {
        let engine = host.engine();
        let pre = baseline::bare_calls(engine, async_invoke);
        let call = |count: u64| {
            let input = match mode {
                "" => count.to_string(),
                mode => format!("{mode}:{count}"),
            };
            rt.block_on(baseline::bare_run(engine, &pre, input.as_bytes()));
        };
        call(1);
        call(n);
    };

    match scenario {
        "intent" => in_guest(
            &plugin,
            RunOptions::new()
                .grants(effects)
                .policy(DropAll)
                .limits(limits),
            "",
        ),
        "commit" => in_guest(
            &plugin,
            RunOptions::new().grants(effects).limits(limits),
            "",
        ),
        "bare-call" => bare("", false),
        "invoke" => in_guest(
            &invoking,
            RunOptions::new().grants(effects).limits(limits),
            "invoke",
        ),
        "bare-invoke" => bare("invoke", false),
        "bare-typed" => {
            let engine = host.engine();
            let pre = baseline::bare_typed(engine);
            for count in [1, n] {
                let input = format!("post:{count}");
                rt.block_on(baseline::bare_run(engine, &pre, input.as_bytes()));
            }
        }
        "bare-async-invoke" => bare("invoke", true),
        "breaker" => in_guest(
            &invoking.with_breakers(Arc::new(breakers)),
            RunOptions::new()
                .grants(effects.breakers(["bench"]).unwrap())
                .limits(limits),
            "breaker",
        ),
        "lock" => in_guest(
            &plugin,
            RunOptions::new()
                .grants(Grants::new().locks(["bench:*"]).unwrap())
                .limits(Limits {
                    max_lock_acquisitions: (n as usize).max(1),
                    ..limits
                }),
            "lock",
        ),
        "run" => {
            let options = RunOptions::new().grants(effects).input("2");
            for _ in 0..=n {
                let outcome = once(&plugin, options.clone());
                assert_eq!(outcome.dispatched().count(), 2);
            }
        }
        "instantiate" => {
            let engine = host.engine();
            let pre = baseline::escrow_linked(engine);
            for _ in 0..=n {
                rt.block_on(async {
                    let mut store = Store::new(engine, baseline::State::new());
                    escrow_host::set_deadline(&mut store, Duration::from_secs(60));
                    pre.instantiate_async(&mut store).await.unwrap();
                });
            }
        }
        "typed-deferred" | "typed-enqueue" | "typed-serialize" | "typed-immediate"
        | "typed-invoke" => {
            let typed = baseline::typed_plugin();
            let options = RunOptions::new()
                .grants(Grants::new().effects(["ledger.*", "catalog.*"]).unwrap())
                .policy(DropAll)
                .limits(limits);
            let mode = match scenario {
                "typed-deferred" => "post",
                "typed-enqueue" => "enqueue",
                "typed-serialize" => "serialize",
                "typed-immediate" => "stock",
                _ => "invoke",
            };
            once(&typed, options.clone().input(format!("{mode}:1")));
            let outcome = once(&typed, options.input(format!("{mode}:{n}")));
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        }
        // Start-up only: what every scenario shares.
        "noop" => {}
        other => panic!("unknown scenario `{other}`: one of {SCENARIOS:?}"),
    }
}
