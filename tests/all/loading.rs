//! Loading plugins: clear errors for what cannot run, and the blocking
//! convenience for callers without an async runtime.

use escrow_host::{Error, RunOptions, Status};
use escrow_tests::{all_effects, fixtures, host};

#[test]
fn a_missing_plugin_file_is_a_read_error_naming_the_file() {
    let error = host().load_file("/nonexistent/plugin.wasm").unwrap_err();
    assert!(matches!(error, Error::Read { .. }), "{error}");
    assert!(
        error.to_string().contains("/nonexistent/plugin.wasm"),
        "{error}"
    );
}

#[test]
fn bytes_that_are_not_wasm_are_refused_as_not_webassembly() {
    let error = host().load(b"#!/bin/sh\necho hi\n").unwrap_err();
    assert!(matches!(error, Error::NotWasm(_)), "{error}");
}

#[test]
fn a_core_module_is_refused_with_the_way_to_build_a_component() {
    let error = host().load(b"\0asm\x01\0\0\0").unwrap_err();
    assert!(matches!(error, Error::CoreModule(_)), "{error}");
    assert!(error.to_string().contains("wasm32-wasip2"), "{error}");
}

#[test]
fn a_truncated_component_is_reported_as_invalid() {
    let bytes = fixtures::bytes(fixtures::SCRIPTED);
    let error = host().load(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(error, Error::Compile { .. }), "{error}");
}

#[test]
fn a_component_importing_what_escrow_does_not_provide_cannot_be_loaded() {
    let error = host().load_file(fixtures::BENCH_BASELINE).unwrap_err();
    assert!(matches!(error, Error::Link { .. }), "{error}");
    assert!(
        error.to_string().contains("escrow-bench:baseline/bare"),
        "{error}"
    );
}

#[test]
fn a_component_without_the_run_export_cannot_be_loaded() {
    // The smallest valid component: no imports, no exports.
    let error = host().load(b"\0asm\x0d\0\x01\0").unwrap_err();
    assert!(matches!(error, Error::Link { .. }), "{error}");
    assert!(error.to_string().contains("run"), "{error}");
}

#[test]
fn run_blocking_runs_a_plugin_without_an_async_runtime() {
    let plugin = escrow_tests::scripted();
    let input = br#"{"steps": [{"defer": "a.one", "payload": 1}]}"#;
    let outcome = plugin
        .run_blocking(
            RunOptions::new()
                .grants(all_effects())
                .input(input.to_vec()),
        )
        .unwrap();
    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(outcome.intents.len(), 1);
}

#[test]
fn a_host_that_served_run_blocking_can_be_dropped_on_an_async_task() {
    let host = escrow_host::Host::new().unwrap();
    let plugin = host.load_file(fixtures::SCRIPTED).unwrap();
    let outcome = plugin
        .run_blocking(RunOptions::new().input(br#"{"steps": []}"#.to_vec()))
        .unwrap();
    assert_eq!(outcome.status(), Status::Committed);
    drop(plugin);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // The last clone goes with the task: no panic about dropping a runtime
    // where blocking is not allowed.
    runtime.block_on(async move {
        tokio::spawn(async move { drop(host) }).await.unwrap();
    });
}

#[tokio::test]
async fn run_blocking_inside_an_async_runtime_is_an_error_not_a_deadlock() {
    let error = escrow_tests::scripted()
        .run_blocking(RunOptions::new())
        .unwrap_err();
    assert!(matches!(error, Error::BlockingInAsync), "{error}");
}

#[test]
fn a_component_larger_than_an_instance_slot_is_refused_at_load_with_the_numbers_and_the_knob() {
    let host = escrow_host::Host::builder()
        .slot_size(escrow_host::SlotSize {
            core_instances: 1,
            ..escrow_host::DEFAULT_SLOT
        })
        .build()
        .unwrap();
    let error = host.load_file(fixtures::SCRIPTED).unwrap_err();
    assert!(matches!(error, Error::Limits(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("does not fit an instance slot"),
        "{message}"
    );
    assert!(message.contains("core module instances"), "{message}");
    assert!(message.contains("core_instances_per_slot"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_beyond_the_slots_wait_for_one_and_never_fail_for_want_of_pool_space() {
    let host = escrow_host::Host::builder()
        .max_concurrent_runs(4)
        .build()
        .unwrap();
    let plugin = host.load_file(fixtures::SCRIPTED).unwrap();
    let runs: Vec<_> = (0..32)
        .map(|i| {
            let plugin = plugin.clone();
            let input = format!(
                r#"{{"steps": [{{"defer": "a.n{i}", "payload": {i}}}, {{"sleep_ms": 5}}]}}"#
            );
            tokio::spawn(async move {
                plugin
                    .run(
                        RunOptions::new()
                            .grants(all_effects())
                            .input(input.into_bytes()),
                    )
                    .await
            })
        })
        .collect();
    for run in runs {
        let outcome = run.await.unwrap().expect("every run starts");
        assert_eq!(outcome.status(), Status::Committed);
    }
}
