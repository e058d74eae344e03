//! escrow's integration tests: real guest components, built for
//! `wasm32-wasip2` by `escrow-fixtures`, against the real host.
//!
//! One binary, one module per area, one shared harness (`harness.rs`).

mod approvals;
mod breakers;
mod commit;
mod console;
mod containment;
mod effects;
mod fixtures;
mod fuzz;
mod grants;
mod history;
mod isolation;
mod languages;
mod limits;
mod loading;
mod locks;
mod observe;
mod outbox;
mod plans;
mod policies;
mod queue_sinks;
mod replay;
mod scopes;
mod serve;
mod sinks;
mod store_faults;
mod typed;

/// Counts what each thread holds, so that tests can check what the host
/// keeps of a run in allocated bytes.
#[global_allocator]
static ALLOCATOR: escrow_tests::counting::Counting = escrow_tests::counting::Counting;

/// Every fixture has a module of tests named after it in `fixtures.rs`.
macro_rules! assert_fixture_has_tests {
    ($name:ident) => {
        #[allow(unused_imports, reason = "the import is the check")]
        use fixtures::$name as _;
    };
}
escrow_tests::fixtures::foreach_fixture!(assert_fixture_has_tests);
