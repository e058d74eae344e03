//! The host boundary, fuzzed. Random programs (`escrow-fuzz-program`) are
//! run by the fuzzing guest against a host with grants, handlers, breakers,
//! locks and a sink, under random policies and limits, and after every run
//! the invariants that hold whatever a guest does are checked:
//!
//! - the host does not panic, and answers with an outcome;
//! - every named bound held: record counts, name and text lengths, payload
//!   totals, the bytes the host keeps (counted by the allocator), the
//!   deadline;
//! - intents are dispatched only if the run committed, and in order;
//! - every lock is released;
//! - compensations are performed once each, newest first;
//! - the outcome's JSON matches `docs/outcome.schema.json`;
//! - the same program gives the same outcome.
//!
//! Every `cargo test` runs a few thousand programs (`ESCROW_FUZZ_CASES`
//! sets how many of each kind). The long run keeps going until a million
//! calls: `cargo test -p escrow-tests --test all -- --ignored fuzz_long
//! --nocapture`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use escrow_fuzz_program::{
    Call, End, Finish, Forged, LOCK_KEYS, Name, Payload, Policy, decode, encode,
};
use escrow_host::backends::{LockBackend, MemoryBreakers, MemoryLocks};
use escrow_host::breakers::{BreakerConfig, Breakers};
use escrow_host::handlers::{Call as HandlerCall, Handler, Handlers};
use escrow_host::limits::{
    DEADLINE_GRACE, MAX_EFFECT_NAME_BYTES, MAX_ERROR_TEXT_BYTES, MAX_FAILURE_TEXT_BYTES,
    MAX_GUEST_STDERR_BYTES, MAX_LOCK_KEY_BYTES,
};
use escrow_host::{
    CallError, EffectError, Failure, Fate, Grants, Limits, Outcome, Plugin, RunOptions, policy,
};
use escrow_tests::{Recorder, counting, fixtures, plugin};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

/// Programs of each kind per `cargo test`, unless `ESCROW_FUZZ_CASES` says.
const DEFAULT_CASES: u32 = 1_000;

/// Calls the long run makes at least.
const LONG_RUN_CALLS: u64 = 1_000_000;

/// What the host may keep of a run beyond what its outcome holds: the
/// outcome's own structures, per record, and a fixed allowance for the
/// run's bookkeeping. Generous on purpose: what it catches is a kept
/// allocation as large as the guest made it.
const KEPT_PER_RECORD: usize = 1 << 10;
const KEPT_FIXED: usize = 256 << 10;

/// How a program is run: the policy of its scope and whether its limits
/// are tight enough to be met.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    pub(crate) policy: u8,
    pub(crate) tight: bool,
}

impl Setting {
    /// Policy `commit` and the default limits.
    pub(crate) const PLAIN: Setting = Setting {
        policy: 0,
        tight: false,
    };

    pub(crate) fn options(self) -> RunOptions {
        let grants = Grants::new()
            .effects(["fx.*", "q.*", "act.*", "undo.*", "blk.*"])
            .unwrap()
            .locks(["k:*"])
            .unwrap()
            .breakers(["br.*"])
            .unwrap();
        let options = RunOptions::new().grants(grants).limits(self.limits());
        match self.policy % 4 {
            0 => options.policy(policy::Commit),
            1 => options.policy(policy::DropAll),
            2 => options.policy(policy::Block::new(["blk.*", "fx.b"]).unwrap()),
            _ => options.policy(policy::AssertNone),
        }
    }

    fn limits(self) -> Limits {
        if !self.tight {
            return Limits::default();
        }
        Limits {
            max_intents: 40,
            max_payload_bytes: 4 << 10,
            max_total_payload_bytes: 32 << 10,
            max_scope_depth: 4,
            max_locks: 3,
            max_lock_acquisitions: 20,
            ..Limits::default()
        }
    }
}

/// One handler call, as the handlers saw it.
#[derive(Debug, Clone)]
struct Event {
    seq: u64,
    compensation: bool,
}

/// The handlers of every `q.`, `act.` and `undo.` effect: each call is
/// logged; effects named `*.fail` fail, `q.get` answers its payload, the
/// others `ok`.
#[derive(Debug, Clone, Default)]
struct Logged(Arc<Mutex<Vec<Event>>>);

#[async_trait::async_trait]
impl Handler for Logged {
    async fn call(&self, call: HandlerCall<'_>) -> Result<Vec<u8>, CallError> {
        self.0.lock().unwrap().push(Event {
            seq: call.seq,
            compensation: call.compensation,
        });
        if call.effect.ends_with(".fail") {
            return Err(CallError::new(format!("{} went wrong", call.effect)));
        }
        Ok(match call.effect {
            "q.get" => call.payload.to_vec(),
            _ => b"ok".to_vec(),
        })
    }
}

/// A fresh world for one run: its handlers' log, locks, breakers and sink.
pub(crate) struct World {
    log: Logged,
    locks: Arc<MemoryLocks>,
    recorder: Recorder,
    pub(crate) plugin: Plugin,
}

impl World {
    pub(crate) fn new() -> Self {
        let log = Logged::default();
        let mut handlers = Handlers::new();
        for effect in ["q.get", "q.fail"] {
            handlers.query(effect, log.clone()).unwrap();
        }
        for effect in ["act.do", "act.fail", "undo.do", "undo.fail"] {
            handlers.action(effect, log.clone()).unwrap();
        }
        let mut breakers = Breakers::new(Arc::new(MemoryBreakers::new()));
        for (name, threshold) in [("br.one", 2), ("br.two", 1)] {
            let config = BreakerConfig {
                failure_threshold: threshold,
                ..BreakerConfig::default()
            };
            breakers.define(name, config).unwrap();
        }
        let locks = Arc::new(MemoryLocks::new());
        let recorder = Recorder::new();
        let plugin = plugin(fixtures::FUZZ)
            .with_handlers(handlers)
            .with_breakers(Arc::new(breakers))
            .with_locks(Arc::clone(&locks) as Arc<dyn LockBackend>)
            .with_sinks(recorder.sinks());
        Self {
            log,
            locks,
            recorder,
            plugin,
        }
    }
}

/// A program's run and what the checks counted of it.
struct Checked {
    outcome: Outcome,
    calls: u64,
}

/// Runs `program` under `setting` twice, each time in a fresh world, and
/// checks every invariant.
async fn check(setting: Setting, program: &[u8]) -> Result<Checked, String> {
    let first = run_and_check(setting, program).await?;
    let again = run_and_check(setting, program).await?;
    let (a, b) = (normalized(&first.outcome), normalized(&again.outcome));
    if a != b {
        return Err(format!("the same program gave two outcomes:\n{a:#}\n{b:#}"));
    }
    Ok(first)
}

async fn run_and_check(setting: Setting, program: &[u8]) -> Result<Checked, String> {
    let world = World::new();
    let options = setting.options().input(program.to_vec());
    let limits = setting.limits();
    let before = counting::held();
    let started = Instant::now();
    let outcome = world
        .plugin
        .run(options)
        .await
        .map_err(|e| format!("the host failed to run the plugin: {e}"))?;
    let took = started.elapsed();
    let kept = (counting::held() - before).max(0) as usize;

    let ends = limits.deadline + DEADLINE_GRACE + Duration::from_secs(2);
    if took > ends {
        return Err(format!("the run took {took:?}, past its deadline"));
    }
    check_bounds(&outcome, &limits, kept)?;
    check_dispatch(&outcome, &world.recorder)?;
    check_locks_released(&world.locks).await?;
    check_compensations(&outcome, &world.log)?;
    check_schema(&outcome)?;
    Ok(Checked {
        calls: calls_made(program, &outcome),
        outcome,
    })
}

/// The calls a run is known to have made: every call of a program that
/// returned `ok` (repeats counted, up to its end); for a run that failed,
/// the requests its outcome records (a lower bound).
fn calls_made(program: &[u8], outcome: &Outcome) -> u64 {
    if outcome.result.is_err() {
        let invoked: HashSet<u64> = outcome.invocations.iter().map(|i| i.seq).collect();
        let breakers = outcome
            .breakers
            .iter()
            .filter(|b| !invoked.contains(&b.seq));
        let records = outcome.intents.len()
            + outcome.invocations.len()
            + breakers.count()
            + outcome.locks.len();
        return records as u64;
    }
    let mut calls = 0;
    for call in decode(program) {
        match call {
            Call::Finish(_) => return calls + 1,
            Call::Repeat(times, _) => calls += u64::from(times),
            _ => calls += 1,
        }
    }
    calls
}

fn check_bounds(outcome: &Outcome, limits: &Limits, kept: usize) -> Result<(), String> {
    // A call a breaker let through is recorded twice under one number: its
    // decision and its invocation.
    let invoked: HashSet<u64> = outcome.invocations.iter().map(|i| i.seq).collect();
    let seqs: Vec<u64> = outcome
        .intents
        .iter()
        .map(|i| i.seq)
        .chain(outcome.invocations.iter().map(|i| i.seq))
        .chain(
            outcome
                .breakers
                .iter()
                .map(|b| b.seq)
                .filter(|seq| !invoked.contains(seq)),
        )
        .collect();
    let distinct: HashSet<u64> = seqs.iter().copied().collect();
    if distinct.len() != seqs.len() {
        return Err(format!("two requests share a sequence number: {seqs:?}"));
    }
    if let Some(seq) = seqs.iter().find(|s| **s > limits.max_intents as u64) {
        return Err(format!("request {seq} was recorded past max_intents"));
    }
    if outcome.locks.len() > limits.max_lock_acquisitions {
        return Err(format!("{} lock records", outcome.locks.len()));
    }
    let names = outcome
        .intents
        .iter()
        .map(|i| i.effect.as_str())
        .chain(outcome.invocations.iter().map(|i| i.effect.as_str()))
        .chain(
            outcome
                .invocations
                .iter()
                .filter_map(|i| i.compensation.as_deref()),
        )
        .chain(outcome.breakers.iter().map(|b| b.effect.as_str()))
        .chain(outcome.breakers.iter().map(|b| &*b.breaker));
    if let Some(name) = names.into_iter().find(|n| n.len() > MAX_EFFECT_NAME_BYTES) {
        return Err(format!("a {}-byte effect name was kept", name.len()));
    }
    for lock in &outcome.locks {
        if lock.keys.len() > limits.max_locks
            || lock.keys.iter().any(|k| k.len() > MAX_LOCK_KEY_BYTES)
        {
            return Err(format!("a lock record kept {:?}", lock.keys.len()));
        }
    }
    let payloads: usize = outcome
        .intents
        .iter()
        .map(|i| i.payload.len())
        .sum::<usize>()
        + outcome
            .invocations
            .iter()
            .map(|i| i.payload.len() + i.result.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
        + outcome
            .compensations
            .iter()
            .map(|c| c.payload.len())
            .sum::<usize>();
    if payloads > limits.max_total_payload_bytes {
        return Err(format!("{payloads} payload bytes kept"));
    }
    let failure = match &outcome.result {
        Err(Failure::GuestError(text) | Failure::Trap(text)) => text.len(),
        _ => 0,
    };
    let call_errors = outcome.invocations.iter().filter_map(|i| match &i.result {
        Err(EffectError::Failed(text)) => Some(text.len()),
        _ => None,
    });
    let undo_errors = outcome
        .compensations
        .iter()
        .filter_map(|c| c.result.as_ref().err());
    if failure > MAX_FAILURE_TEXT_BYTES
        || call_errors
            .chain(undo_errors.map(String::len))
            .any(|n| n > MAX_ERROR_TEXT_BYTES)
    {
        return Err("an error text was kept past its bound".into());
    }
    if outcome.guest_stderr.len() > MAX_GUEST_STDERR_BYTES {
        return Err(format!(
            "{} bytes of stderr kept",
            outcome.guest_stderr.len()
        ));
    }
    let records = outcome.intents.len()
        + outcome.invocations.len()
        + outcome.breakers.len()
        + outcome.locks.len()
        + outcome.compensations.len();
    let allowed = 2 * content_bytes(outcome) + KEPT_PER_RECORD * records + KEPT_FIXED;
    if kept > allowed {
        return Err(format!(
            "the host keeps {kept} bytes of the run; its outcome accounts for {allowed}"
        ));
    }
    Ok(())
}

/// The bytes of every name, text and payload an outcome holds.
fn content_bytes(outcome: &Outcome) -> usize {
    let result = match &outcome.result {
        Ok(output) => output.len(),
        Err(failure) => failure.to_string().len(),
    };
    let intents: usize = outcome
        .intents
        .iter()
        .map(|i| i.effect.len() + i.payload.len() + i.rule.len() + 64)
        .sum();
    let invocations: usize = outcome
        .invocations
        .iter()
        .map(|i| {
            let answer = match &i.result {
                Ok(answer) => answer.len(),
                Err(EffectError::Failed(text)) => text.len(),
                Err(EffectError::Refused(refusal)) => refusal.message().len(),
            };
            i.effect.len()
                + i.payload.len()
                + answer
                + i.compensation.as_ref().map_or(0, String::len)
        })
        .sum();
    let locks: usize = outcome
        .locks
        .iter()
        .map(|l| l.keys.iter().map(String::len).sum::<usize>() + 64)
        .sum();
    let undo: usize = outcome
        .compensations
        .iter()
        .map(|c| c.effect.len() + c.payload.len() + c.cause.len())
        .sum();
    result + intents + invocations + locks + undo + outcome.guest_stderr.len()
}

fn check_dispatch(outcome: &Outcome, recorder: &Recorder) -> Result<(), String> {
    let delivered: Vec<u64> = recorder.seen().iter().map(|d| d.seq).collect();
    if outcome.result.is_err() {
        if !delivered.is_empty() {
            return Err(format!("a failed run delivered {delivered:?}"));
        }
        if let Some(i) = outcome
            .intents
            .iter()
            .find(|i| matches!(i.fate, Fate::Committed | Fate::Dispatched(_)))
        {
            return Err(format!("a failed run left #{} {}", i.seq, i.fate.name()));
        }
        return Ok(());
    }
    if let Some(i) = outcome.intents.iter().find(|i| i.fate == Fate::Committed) {
        return Err(format!("#{} was committed and not dispatched", i.seq));
    }
    let expected: Vec<u64> = outcome
        .intents
        .iter()
        .filter(|i| escrow_tests::delivered(i))
        .map(|i| i.seq)
        .collect();
    if delivered != expected || !delivered.is_sorted() {
        return Err(format!(
            "delivered {delivered:?}, the outcome says {expected:?}"
        ));
    }
    Ok(())
}

async fn check_locks_released(locks: &MemoryLocks) -> Result<(), String> {
    for key in &LOCK_KEYS[..4] {
        let lease = locks
            .acquire(&[(*key).to_owned()], Duration::ZERO)
            .await
            .map_err(|e| format!("`{key}` is still held after the run: {e}"))?;
        locks.release(lease).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Compensations are registered in the order their actions were called;
/// each one performed must be the newest registered and not yet performed,
/// none is performed twice, and the outcome reports each as it ran. After
/// a failed run none is left owed.
fn check_compensations(outcome: &Outcome, log: &Logged) -> Result<(), String> {
    let registered: HashSet<u64> = outcome
        .invocations
        .iter()
        .filter(|i| i.compensation.is_some())
        .map(|i| i.seq)
        .collect();
    let mut owed: Vec<u64> = Vec::new();
    let mut performed: Vec<u64> = Vec::new();
    for event in log.0.lock().unwrap().iter() {
        if !event.compensation {
            if registered.contains(&event.seq) && !owed.contains(&event.seq) {
                owed.push(event.seq);
            }
            continue;
        }
        if owed.last() != Some(&event.seq) {
            return Err(format!(
                "compensation #{} ran while {owed:?} were owed",
                event.seq
            ));
        }
        owed.pop();
        performed.push(event.seq);
    }
    let reported: Vec<u64> = outcome.compensations.iter().map(|c| c.seq).collect();
    if reported != performed {
        return Err(format!(
            "compensations performed {performed:?}, reported {reported:?}"
        ));
    }
    if outcome.result.is_err() && !owed.is_empty() {
        return Err(format!("a failed run left {owed:?} uncompensated"));
    }
    Ok(())
}

fn check_schema(outcome: &Outcome) -> Result<(), String> {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = SCHEMA.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/outcome.schema.json");
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).expect("docs/outcome.schema.json is a JSON Schema")
    });
    let json = outcome.to_json();
    let text = serde_json::to_string(&json).map_err(|e| e.to_string())?;
    let parsed: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(&parsed)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "the outcome does not match its schema: {errors:?}\n{json:#}"
        ));
    }
    Ok(())
}

/// The outcome's JSON without what differs between runs of the same
/// program: the run's id and timings, and how long an open breaker waits.
fn normalized(outcome: &Outcome) -> Value {
    let mut json = outcome.to_json();
    let object = json.as_object_mut().expect("an object");
    object.remove("run_id");
    object.remove("timings_us");
    for intent in object["intents"].as_array_mut().into_iter().flatten() {
        intent.as_object_mut().unwrap().remove("idempotency_key");
    }
    for decision in object["breakers"].as_array_mut().into_iter().flatten() {
        decision.as_object_mut().unwrap().remove("retry_after_ms");
    }
    json
}

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        12 => (0u8..16).prop_map(Name::Index),
        1 => Just(Name::Empty),
        1 => (0u16..512).prop_map(Name::Long),
        1 => (0u32..(256 << 10)).prop_map(Name::Huge),
        1 => Just(Name::BadChar),
        1 => Just(Name::Star),
        1 => Just(Name::NonAscii),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        2 => Just(Payload::Empty),
        4 => any::<u8>().prop_map(Payload::Json),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(first, len)| Payload::Bytes { first, len }),
        2 => (0u32..(64 << 10)).prop_map(Payload::Zeros),
        // Just past the default payload limit.
        1 => ((1u32 << 20)..(1 << 20) + 4096).prop_map(Payload::Zeros),
    ]
}

fn slot() -> impl Strategy<Value = u8> {
    0u8..4
}

/// One call, never a repeat.
fn single() -> impl Strategy<Value = Call> {
    prop_oneof![
        6 => (name(), payload()).prop_map(|(n, p)| Call::Enqueue(n, p)),
        3 => (name(), payload()).prop_map(|(n, p)| Call::Invoke(n, p)),
        3 => (name(), payload(), name(), payload()).prop_map(|(effect, payload, compensate, compensate_payload)| {
            Call::InvokeReversible { effect, payload, compensate, compensate_payload }
        }),
        3 => prop_oneof![
            Just(Policy::Inherit),
            Just(Policy::Drop),
            Just(Policy::AssertNone),
            prop::collection::vec(name(), 0..4).prop_map(Policy::Block),
            (0usize..3).prop_map(|n| Policy::Block(vec![Name::Index(2); 63 + n])),
        ].prop_map(Call::OpenScope),
        3 => (slot(), prop_oneof![Just(End::Commit), Just(End::Rollback), Just(End::Drop)])
            .prop_map(|(s, e)| Call::EndScope(s, e)),
        3 => (prop::collection::vec(name(), 0..5), 0u16..20).prop_map(|(k, t)| Call::Acquire(k, t)),
        2 => slot().prop_map(Call::Release),
        1 => slot().prop_map(Call::GuardInfo),
        2 => name().prop_map(Call::OpenBreaker),
        1 => slot().prop_map(Call::BreakerState),
        3 => (slot(), name(), payload()).prop_map(|(s, n, p)| Call::BreakerInvoke(s, n, p)),
        1 => Just(Call::Pending),
        1 => (0u32..20_000).prop_map(Call::Stderr),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        40 => single(),
        2 => (0u16..100, single()).prop_map(|(times, call)| Call::Repeat(times, Box::new(call))),
        1 => prop_oneof![
            Just(Finish::Ok),
            (0u32..(200 << 10)).prop_map(Finish::Err),
            Just(Finish::Trap),
        ].prop_map(Call::Finish),
        1 => prop_oneof![
            any::<u32>().prop_map(Forged::Scope),
            any::<u32>().prop_map(Forged::Guard),
            any::<u32>().prop_map(Forged::Breaker),
            Just(Forged::ReleasedGuard),
        ].prop_map(Call::Forge),
    ]
}

fn setting() -> impl Strategy<Value = Setting> {
    (any::<u8>(), any::<bool>()).prop_map(|(policy, tight)| Setting { policy, tight })
}

fn cases() -> u32 {
    std::env::var("ESCROW_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// A runtime on this thread, warmed by one run: what a thread sets up once
/// (its random generator, the runtime's own state) is not counted against
/// the programs that follow.
fn runtime() -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(check(Setting::PLAIN, &[])).unwrap();
    runtime
}

fn fuzz<S: Strategy>(strategy: S, cases: u32, program: impl Fn(&S::Value) -> Vec<u8>) -> (u32, u64)
where
    S::Value: std::fmt::Debug,
{
    let runtime = runtime();
    let config = Config {
        cases,
        failure_persistence: None,
        // A case can take a run's whole deadline (a guest that spins):
        // shrinking a failure for ever would hold the suite for hours, so
        // it stops after a minute and reports what it has.
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let ran = std::cell::Cell::new((0u32, 0u64));
    TestRunner::new(config)
        .run(&(setting(), strategy), |(setting, value)| {
            let program = program(&value);
            let checked = runtime
                .block_on(check(setting, &program))
                .map_err(TestCaseError::fail)?;
            let (cases, calls) = ran.get();
            ran.set((cases + 1, calls + checked.calls));
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    ran.get()
}

#[test]
fn random_programs_keep_every_invariant() {
    fuzz(prop::collection::vec(call(), 0..48), cases(), |calls| {
        encode(calls)
    });
}

#[test]
fn random_byte_strings_keep_every_invariant() {
    fuzz(
        prop::collection::vec(any::<u8>(), 0..400),
        cases(),
        Clone::clone,
    );
}

/// The long run: random programs until a million calls, with its figures.
#[test]
#[ignore = "the long fuzzing run; minutes"]
fn fuzz_long() {
    let started = Instant::now();
    let (mut cases, mut calls) = (0u64, 0u64);
    while calls < LONG_RUN_CALLS {
        let (c, n) = fuzz(prop::collection::vec(call(), 0..64), 2_000, |calls| {
            encode(calls)
        });
        let (b, m) = fuzz(
            prop::collection::vec(any::<u8>(), 0..600),
            500,
            Clone::clone,
        );
        cases += u64::from(c + b);
        calls += n + m;
        eprintln!(
            "fuzz: {cases} programs, {calls} calls, {:.1} minutes, no finding",
            started.elapsed().as_secs_f64() / 60.0
        );
    }
}

// Also fuzzed: `escrow.toml`, the rows of an outbox, and bytes shown as
// JSON.

/// What a config key holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Number,
    Ratio,
    Texts,
    TextMap,
}

/// Every table of `escrow.toml` (`""` is the top level) with its keys. A
/// `*` table is a map of named tables.
const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    (
        "",
        &[
            ("policy", Kind::Text),
            ("block", Kind::Texts),
            ("sink", Kind::Text),
            ("handler_timeout_ms", Kind::Number),
        ],
    ),
    (
        "grants",
        &[
            ("effects", Kind::Texts),
            ("env", Kind::TextMap),
            ("locks", Kind::Texts),
            ("breakers", Kind::Texts),
        ],
    ),
    ("handlers.*", &[("kind", Kind::Text), ("exec", Kind::Texts)]),
    (
        "handlers.*.http",
        &[
            ("url", Kind::Text),
            ("method", Kind::Text),
            ("headers", Kind::TextMap),
        ],
    ),
    (
        "locks",
        &[
            ("backend", Kind::Text),
            ("lease_ms", Kind::Number),
            ("store_timeout_ms", Kind::Number),
        ],
    ),
    (
        "breakers.*",
        &[
            ("failure_threshold", Kind::Number),
            ("recovery_ms", Kind::Number),
            ("half_open_trials", Kind::Number),
            ("ignore", Kind::Texts),
            ("trial_lease_ms", Kind::Number),
        ],
    ),
    (
        "breakers.*.failure_rate",
        &[
            ("ratio", Kind::Ratio),
            ("window_ms", Kind::Number),
            ("min_calls", Kind::Number),
        ],
    ),
    (
        "breaker_state",
        &[("backend", Kind::Text), ("store_timeout_ms", Kind::Number)],
    ),
    (
        "limits",
        &[
            ("timeout_ms", Kind::Number),
            ("max_memory_bytes", Kind::Number),
            ("max_intents", Kind::Number),
            ("max_payload_bytes", Kind::Number),
            ("max_total_payload_bytes", Kind::Number),
            ("max_scope_depth", Kind::Number),
            ("max_locks", Kind::Number),
            ("max_lock_acquisitions", Kind::Number),
            ("compensation_budget_ms", Kind::Number),
        ],
    ),
    (
        "outbox",
        &[
            ("url", Kind::Text),
            ("max_attempts", Kind::Number),
            ("backoff_base_ms", Kind::Number),
            ("backoff_max_ms", Kind::Number),
            ("lease_ms", Kind::Number),
            ("delivery_lease_ms", Kind::Number),
            ("retain_delivered", Kind::Text),
            ("compensation_grace_ms", Kind::Number),
        ],
    ),
    (
        "pool",
        &[
            ("core_instances_per_slot", Kind::Number),
            ("memories_per_slot", Kind::Number),
            ("tables_per_slot", Kind::Number),
        ],
    ),
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "*",
            "commit",
            "drop",
            "assert-none",
            "block",
            "query",
            "action",
            "email.*",
            "payments.charge",
            "k:*",
            "bad name",
            "stdout",
            "file:/nonexistent/dir/x.jsonl",
            "exec:true",
            "redis://127.0.0.1:1",
            "postgres://nobody@127.0.0.1:1/x",
            "memory",
            "https://127.0.0.1:1/x",
            "GET",
            "é",
            "a\nb",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,40}",
        (0usize..400).prop_map(|n| "a".repeat(n)),
    ]
}

fn toml_value(kind: Kind) -> BoxedStrategy<toml::Value> {
    let number = prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        0i64..100_000,
        Just(i64::from(u32::MAX)),
        Just(i64::MAX),
        Just(i64::MIN),
    ]
    .prop_map(toml::Value::Integer);
    let typed = match kind {
        Kind::Text => text().prop_map(toml::Value::String).boxed(),
        Kind::Number => number.boxed(),
        Kind::Ratio => prop_oneof![Just(f64::NAN), Just(-1.0), Just(2.0), 0.0f64..1.0]
            .prop_map(toml::Value::Float)
            .boxed(),
        Kind::Texts => prop::collection::vec(text().prop_map(toml::Value::String), 0..4)
            .prop_map(toml::Value::Array)
            .boxed(),
        Kind::TextMap => prop::collection::btree_map(text(), text(), 0..3)
            .prop_map(|map| {
                toml::Value::Table(
                    map.into_iter()
                        .map(|(k, v)| (k, toml::Value::String(v)))
                        .collect(),
                )
            })
            .boxed(),
    };
    // Now and then a value of another type than the key takes.
    prop_oneof![9 => typed, 1 => prop_oneof![
        Just(toml::Value::Boolean(true)),
        Just(toml::Value::Integer(7)),
        Just(toml::Value::String("7".into())),
        Just(toml::Value::Array(vec![])),
    ]]
    .boxed()
}

/// One `[table]` of a config document: its header and its `key = value` lines.
type ConfigTable = (String, Vec<(String, toml::Value)>);

/// A config document: some tables of the schema with some of their keys,
/// now and then a key no table has, or text that is not TOML at all.
fn config_text() -> impl Strategy<Value = String> {
    let tables: Vec<BoxedStrategy<ConfigTable>> = SCHEMA
        .iter()
        .map(|(table, keys)| {
            let entries: Vec<BoxedStrategy<Option<(String, toml::Value)>>> = keys
                .iter()
                .map(|(key, kind)| {
                    prop::option::weighted(
                        0.4,
                        toml_value(*kind).prop_map(|v| (key.to_string(), v)),
                    )
                    .boxed()
                })
                .collect();
            let name = prop::sample::select(vec!["one", "pay-ments", "x.y", "é"]);
            (name, entries)
                .prop_map(|(name, entries)| {
                    let quoted = toml::Value::String(name.to_owned()).to_string();
                    (
                        table.replace('*', &quoted),
                        entries.into_iter().flatten().collect(),
                    )
                })
                .boxed()
        })
        .collect();
    let document = (
        prop::collection::vec(prop::strategy::Union::new(tables), 0..5),
        any::<bool>(),
    )
        .prop_map(|(tables, unknown): (Vec<ConfigTable>, bool)| {
            let mut text = String::new();
            for (table, entries) in tables {
                if !table.is_empty() {
                    text += &format!("\n[{table}]\n");
                }
                for (key, value) in entries {
                    text += &format!("{key} = {value}\n");
                }
                if unknown {
                    text += "surprise = 1\n";
                }
            }
            text
        });
    prop_oneof![
        8 => document,
        1 => "[ -~\n]{0,200}",
        1 => any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

#[test]
fn random_config_files_give_a_config_or_a_one_line_error() {
    let runtime = runtime();
    let config = Config {
        cases: cases() / 2,
        failure_persistence: None,
        ..Config::default()
    };
    let path = std::path::Path::new("/nonexistent/escrow.toml");
    TestRunner::new(config)
        .run(&config_text(), |text| {
            match escrow_host::config::Config::parse(&text, path) {
                Err(error) => {
                    let message = error.to_string();
                    prop_assert!(
                        !message.is_empty() && !message.contains('\n'),
                        "{message:?}"
                    );
                }
                Ok(config) => {
                    // What the CLI makes of a config must not panic either.
                    let _ = config.slot_size();
                    let _ = config.sink();
                    let (Ok(grants), Ok(policy)) = (config.grants(), config.run_policy()) else {
                        return Err(TestCaseError::fail("a checked config's parts failed"));
                    };
                    let options = RunOptions::new()
                        .grants(grants)
                        .shared_policy(policy)
                        .limits(config.limits());
                    let run = runtime.block_on(World::new().plugin.run(options));
                    if let Err(error) = run {
                        let message = error.to_string();
                        prop_assert!(!message.contains('\n'), "{message:?}");
                    }
                }
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}

/// A column value of any SQLite type.
fn sql_value() -> impl Strategy<Value = rusqlite::types::Value> {
    use rusqlite::types::Value as Sql;
    prop_oneof![
        Just(Sql::Null),
        any::<i64>().prop_map(Sql::Integer),
        Just(Sql::Real(1.5)),
        prop_oneof![
            Just("intent".to_owned()),
            Just("pending".to_owned()),
            Just("[]".to_owned()),
            Just("0197c5a4-2a4e-778e-9001-db85db6f953b".to_owned()),
            Just(r#"[{"key":"k","token":-1}]"#.to_owned()),
            "[ -~]{0,20}",
        ]
        .prop_map(Sql::Text),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Sql::Blob),
    ]
}

#[test]
fn rows_of_any_shape_in_an_sqlite_outbox_give_entries_or_an_error_never_a_panic() {
    let runtime = runtime();
    let config = Config {
        cases: cases() / 4,
        failure_persistence: None,
        ..Config::default()
    };
    let rows = prop::collection::vec(prop::collection::vec(sql_value(), 12), 1..4);
    TestRunner::new(config)
        .run(&rows, |rows| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("outbox.db");
            let store = escrow_host::outbox::SqliteOutbox::open(&path).unwrap();
            {
                let db = rusqlite::Connection::open(&path).unwrap();
                for row in &rows {
                    // Rows the schema's own checks refuse cannot be there.
                    let _ = db.execute(
                        "INSERT INTO escrow_outbox (kind, run_id, seq, ord, plugin, effect, \
                         payload, fences, status, attempts, due_at, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                        rusqlite::params_from_iter(row.iter()),
                    );
                }
            }
            let outbox = escrow_host::Outbox::new(store);
            let one_line = |result: Result<String, escrow_host::outbox::OutboxError>| match result {
                Ok(_) => Ok(()),
                Err(error) if !error.to_string().contains('\n') => Ok(()),
                Err(error) => Err(TestCaseError::fail(format!("{error:?}"))),
            };
            runtime.block_on(async {
                let store = outbox.store();
                one_line(
                    store
                        .list(&Default::default())
                        .await
                        .map(|e| format!("{e:?}")),
                )?;
                one_line(store.stats().await.map(|s| format!("{s:?}")))?;
                let worker = escrow_tests::host().worker_for(outbox.clone());
                one_line(worker.run_once().await.map(|r| format!("{r:?}")))
            })
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}

/// Small JSON documents, as bytes.
fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~é]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
    .prop_map(|value| value.to_string().into_bytes())
}

/// A writer whose bytes the test can read back.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Written {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn any_bytes_show_as_json_that_keeps_every_byte() {
    use base64::Engine as _;
    use escrow_host::sinks::Sink as _;
    let base64 = base64::engine::general_purpose::STANDARD;
    let runtime = runtime();
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "[ -~é]{0,40}".prop_map(String::into_bytes),
        json_bytes(),
    ];
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new(config)
        .run(&bytes, |bytes| {
            // As every JSON view of escrow shows them.
            let shown = escrow_host::bytes_json(&bytes);
            let back: Value = serde_json::from_str(&shown.to_string()).unwrap();
            let json = serde_json::from_slice::<Value>(&bytes).ok();
            match (&json, std::str::from_utf8(&bytes)) {
                (Some(value), _) => prop_assert_eq!(&back, value),
                (None, Ok(text)) => prop_assert_eq!(&back, &Value::String(text.to_owned())),
                (None, Err(_)) => {
                    let encoded = back["$bytes_base64"].as_str().unwrap();
                    prop_assert_eq!(base64.decode(encoded).unwrap(), bytes.clone());
                }
            }

            // As the JSON-lines sink delivers them: one line, and the
            // payload exactly.
            let written = Written::default();
            let sink = escrow_host::sinks::JsonLines::to_writer(written.clone());
            let intent = escrow_host::Intent {
                run_id: escrow_host::RunId::new(),
                plugin: Arc::from("fuzz"),
                seq: 1,
                effect: "fx.a".into(),
                payload: bytes.clone(),
                fate: Fate::Committed,
                rule: Arc::from("fuzz"),
                fences: Arc::from([]),
            };
            runtime.block_on(sink.deliver(&intent)).unwrap();
            let line = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
            prop_assert_eq!(line.matches('\n').count(), 1);
            let line: Value = serde_json::from_str(&line).unwrap();
            match json {
                Some(value) => prop_assert_eq!(&line["payload"], &value),
                None => {
                    let encoded = line["payload_base64"].as_str().unwrap();
                    prop_assert_eq!(base64.decode(encoded).unwrap(), bytes);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}
