//! Typed effects: functions of WIT interfaces the host declares effects,
//! called by the `typed` fixture through plain `wit-bindgen` bindings.

use std::sync::{Arc, Mutex, OnceLock};

use escrow_host::handlers::{Call, EffectKind, Handler, Handlers, JsonHandler};
use escrow_host::typed::{Timing, TypedEffects, TypedInterface};
use escrow_host::{
    CallError, Dispatch, Error, Failure, Fate, Grants, Host, Limits, Outcome, Plugin, RunOptions,
    Status, policy,
};
use escrow_tests::{compile_cache, fixtures};

/// The typed fixture's interfaces, as a host declares them.
fn declared() -> TypedEffects {
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
    typed
}

/// A host declaring `typed`, compiling through the tests' cache.
fn host_with(typed: TypedEffects) -> Host {
    Host::builder()
        .max_concurrent_runs(4)
        .cache_dir(compile_cache())
        .typed_effects(typed)
        .build()
        .unwrap()
}

/// The `typed` fixture on a host that declares its interfaces, loaded once.
fn typed_plugin() -> Plugin {
    static PLUGIN: OnceLock<Plugin> = OnceLock::new();
    PLUGIN
        .get_or_init(|| host_with(declared()).load_file(fixtures::TYPED).unwrap())
        .clone()
}

/// Answers each call with a fixed text and records what it was asked.
#[derive(Clone)]
struct Answering {
    answer: Result<&'static str, &'static str>,
    calls: Arc<Mutex<Vec<(String, String)>>>,
}

#[async_trait::async_trait]
impl Handler for Answering {
    async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
        self.calls.lock().unwrap().push((
            call.effect.to_owned(),
            String::from_utf8_lossy(call.payload).into_owned(),
        ));
        match self.answer {
            Ok(answer) => Ok(answer.as_bytes().to_vec()),
            Err(error) => Err(CallError::new(error)),
        }
    }
}

impl Answering {
    fn with(answer: Result<&'static str, &'static str>) -> Self {
        Self {
            answer,
            calls: Arc::default(),
        }
    }

    /// Handlers performing each of `effects` (queries) with this one.
    fn handlers(&self, effects: &[&str]) -> Handlers {
        let mut handlers = Handlers::new();
        for effect in effects {
            handlers
                .register(effect, EffectKind::Query, Arc::new(self.clone()))
                .unwrap();
        }
        handlers
    }
}

async fn run(plugin: &Plugin, command: &str, options: RunOptions) -> Outcome {
    plugin.run(options.input(command)).await.unwrap()
}

/// Options granting `patterns`, holding committed intents for the test to
/// look at rather than dispatching them.
fn granted(patterns: &[&str]) -> RunOptions {
    RunOptions::new()
        .grants(Grants::new().effects(patterns.iter().copied()).unwrap())
        .dispatch(Dispatch::Hold)
}

fn answer(outcome: &Outcome) -> String {
    match &outcome.result {
        Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Err(failure) => panic!("the run failed: {failure}"),
    }
}

#[tokio::test]
async fn a_deferred_typed_call_is_an_intent_whose_payload_is_its_arguments_as_json() {
    let outcome = run(
        &typed_plugin(),
        "post sales 1999 gift",
        granted(&["ledger.*"]),
    )
    .await;

    assert_eq!(answer(&outcome), "Ok(())");
    let [intent] = outcome.intents.as_slice() else {
        panic!("one intent: {:?}", outcome.intents);
    };
    assert_eq!(intent.effect, "ledger.post");
    assert_eq!(
        String::from_utf8_lossy(&intent.payload),
        r#"{"entry":{"account":"sales","cents":1999,"memo":"gift"}}"#
    );
    assert_eq!(intent.fate, Fate::Committed);
}

#[tokio::test]
async fn a_value_of_every_type_lowered_by_the_guest_becomes_the_documented_json() {
    let outcome = run(&typed_plugin(), "take", granted(&["values.*"])).await;

    assert_eq!(answer(&outcome), "Ok(())");
    assert_eq!(
        String::from_utf8_lossy(&outcome.intents[0].payload),
        concat!(
            r#"{"value":{"yes":true,"tiny":-8,"byte":8,"short":-16,"ushort":16,"int":-32,"#,
            r#""uint":32,"long":-9223372036854775808,"ulong":18446744073709551615,"#,
            r#""single":1.5,"double":"Infinity","letter":"é","text":"naïve","bytes":"/wA=","#,
            r#""words":["a","b"],"pair":[7,"x"],"shape":{"rectangle":[2.0,3.0]},"#,
            r#""color":"green","maybe":3,"maybe-maybe":{"some":null},"outcome":{"err":"no"},"#,
            r#""bare":{"ok":null},"permissions":["read","execute"],"#,
            r#""nested":[null,{"point":null}]}}"#
        )
    );
}

#[tokio::test]
async fn a_typed_call_without_a_grant_is_refused_as_a_value_and_the_run_goes_on() {
    let outcome = run(&typed_plugin(), "post sales 5", RunOptions::new()).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(
        answer(&outcome),
        "Err(Refusal::NotGranted(\"`ledger.post` is not covered by the plugin's grants\"))"
    );
    assert!(matches!(outcome.intents[0].fate, Fate::Refused(_)));

    // Through a `string` error, the refusal's kind and message.
    let outcome = run(&typed_plugin(), "attach a 3", RunOptions::new()).await;
    assert_eq!(
        answer(&outcome),
        "Err(\"not-granted: `ledger.attach` is not covered by the plugin's grants\")"
    );
}

#[tokio::test]
async fn typed_intents_are_dropped_blocked_or_forbidden_by_policy_like_string_effects() {
    let plugin = typed_plugin();
    let dropped = run(
        &plugin,
        "post sales 5",
        granted(&["ledger.*"]).policy(policy::DropAll),
    )
    .await;
    assert_eq!(dropped.intents[0].fate, Fate::Dropped);

    let blocked = run(
        &plugin,
        "post sales 5",
        granted(&["ledger.*"]).policy(policy::Block::new(["ledger.p*"]).unwrap()),
    )
    .await;
    assert_eq!(blocked.intents[0].fate, Fate::Blocked);

    let forbidden = run(
        &plugin,
        "post sales 5",
        granted(&["ledger.*"]).policy(policy::AssertNone),
    )
    .await;
    assert!(
        matches!(&forbidden.result, Err(Failure::Forbidden { effect, .. }) if effect == "ledger.post"),
        "{:?}",
        forbidden.result
    );
}

#[tokio::test]
async fn a_typed_intent_inside_a_rolled_back_scope_is_discarded_and_the_run_commits() {
    let outcome = run(
        &typed_plugin(),
        "rolled-back sales 5",
        granted(&["ledger.*"]),
    )
    .await;

    assert_eq!(answer(&outcome), "Ok(())");
    assert_eq!(outcome.status(), Status::Committed);
    let [intent] = outcome.intents.as_slice() else {
        panic!("one intent: {:?}", outcome.intents);
    };
    assert_eq!(intent.effect, "ledger.post");
    assert_eq!(intent.fate, Fate::Discarded);
}

#[tokio::test]
async fn arguments_past_the_payload_limit_are_refused_limit_while_written_and_nothing_is_kept() {
    let limits = Limits {
        max_payload_bytes: 1_000,
        ..Limits::default()
    };
    // 100,000 bytes are 133,336 characters of base64: writing stops at 1,000.
    let outcome = run(
        &typed_plugin(),
        "attach big 100000",
        granted(&["ledger.*"]).limits(limits),
    )
    .await;

    assert_eq!(
        outcome.result,
        Err(Failure::Limit(escrow_host::limits::Limit::PayloadSize))
    );
    let [intent] = outcome.intents.as_slice() else {
        panic!("one intent: {:?}", outcome.intents);
    };
    assert!(intent.payload.is_empty());
    let Fate::Refused(refusal) = &intent.fate else {
        panic!("refused: {:?}", intent.fate);
    };
    assert_eq!(
        refusal.message(),
        "max_payload_bytes: the arguments of `ledger.attach` as JSON are more than 1000 bytes"
    );
}

#[tokio::test]
async fn an_immediate_typed_call_gets_its_handler_s_answer_as_its_result_type() {
    let handler = Answering::with(Ok(r#"{"cents": 1999, "currency": "EUR"}"#));
    let plugin = typed_plugin().with_handlers(handler.handlers(&["catalog.price-of"]));

    let outcome = run(&plugin, "price-of book", granted(&["catalog.*"])).await;

    assert_eq!(
        answer(&outcome),
        "Ok(Price { cents: 1999, currency: \"EUR\" })"
    );
    assert_eq!(
        *handler.calls.lock().unwrap(),
        [(
            "catalog.price-of".to_owned(),
            r#"{"sku":"book"}"#.to_owned()
        )]
    );
    assert_eq!(outcome.invocations[0].effect, "catalog.price-of");
}

#[tokio::test]
async fn an_answer_that_does_not_fit_fails_the_call_through_its_error_channel() {
    let handler = Answering::with(Ok(r#"{"cents": "many", "currency": "EUR"}"#));
    let plugin = typed_plugin().with_handlers(handler.handlers(&["catalog.price-of"]));

    let outcome = run(&plugin, "price-of book", granted(&["catalog.*"])).await;

    assert_eq!(outcome.status(), Status::Committed);
    assert_eq!(
        answer(&outcome),
        "Err(\"the handler's answer does not fit record { cents: u64, currency: string }: \
         .cents: expected u64, found \\\"many\\\"\")"
    );
}

#[tokio::test]
async fn an_effect_error_channel_gets_refusals_and_failures_as_its_own_cases() {
    let handler = Answering::with(Err("the catalog is down"));
    let plugin = typed_plugin().with_handlers(handler.handlers(&["catalog.quote"]));

    let failed = run(&plugin, "quote book 2", granted(&["catalog.*"])).await;
    assert_eq!(
        answer(&failed),
        "Err(EffectError::Failed(\"the catalog is down\"))"
    );
    assert_eq!(
        handler.calls.lock().unwrap()[0].1,
        r#"{"sku":"book","quantity":2}"#
    );

    let refused = run(&plugin, "quote book 2", RunOptions::new()).await;
    assert_eq!(
        answer(&refused),
        "Err(EffectError::Refused(Refusal::NotGranted(\"`catalog.quote` is not covered by the \
         plugin's grants\")))"
    );
}

#[tokio::test]
async fn without_an_error_channel_a_refused_or_unfit_call_fails_the_run_without_a_trap() {
    let handler = Answering::with(Ok(r#""seven""#));
    let plugin = typed_plugin().with_handlers(handler.handlers(&["catalog.stock"]));

    let unfit = run(&plugin, "stock book", granted(&["catalog.*"])).await;
    assert_eq!(
        unfit.result,
        Err(Failure::TypedEffect {
            effect: "catalog.stock".into(),
            reason: "the handler's answer does not fit u32: the value: expected u32, found \
                     \"seven\""
                .into()
        })
    );

    let refused = run(&plugin, "stock book", RunOptions::new()).await;
    let Err(failure) = &refused.result else {
        panic!("the run must fail");
    };
    assert_eq!(
        failure.to_string(),
        "`catalog.stock`: refused (not-granted): `catalog.stock` is not covered by the plugin's \
         grants"
    );
}

#[tokio::test]
async fn an_immediate_answer_feeds_a_deferred_call_in_one_run() {
    let handler = Answering::with(Ok(r#"{"cents": 250, "currency": "EUR"}"#));
    let plugin = typed_plugin().with_handlers(handler.handlers(&["catalog.price-of"]));

    let outcome = run(&plugin, "checkout pen", granted(&["catalog.*", "ledger.*"])).await;

    assert_eq!(answer(&outcome), "charged 250");
    assert_eq!(
        String::from_utf8_lossy(&outcome.intents[0].payload),
        r#"{"entry":{"account":"sales","cents":250,"memo":"EUR"}}"#
    );
}

#[tokio::test]
async fn a_recorded_typed_run_replays_identically_told_the_recorded_answers() {
    let dir = tempfile::tempdir().unwrap();
    let handler = Answering::with(Ok(r#"{"cents": 250, "currency": "EUR"}"#));
    let plugin = typed_plugin().with_handlers(handler.handlers(&["catalog.price-of"]));
    let options = granted(&["catalog.*", "ledger.*"]).input("checkout pen");
    plugin
        .run(options.clone().record(dir.path()))
        .await
        .unwrap();
    let recordings = escrow_host::recording::Recording::read_dir(dir.path()).unwrap();
    assert_eq!(recordings[0].answers.calls[0].effect, "catalog.price-of");

    // The price changed since: the replay is told the recorded one.
    let cheaper = Answering::with(Ok(r#"{"cents": 100, "currency": "EUR"}"#));
    let replayed = typed_plugin().with_handlers(cheaper.handlers(&["catalog.price-of"]));
    let report = replayed.replay(&recordings, options).await.unwrap();

    assert!(report.all_identical(), "{report:?}");
    assert!(cheaper.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_rust_handler_takes_the_arguments_and_gives_the_answer_as_serde_types() {
    #[derive(serde::Deserialize)]
    struct Quote {
        sku: String,
        quantity: u32,
    }
    #[derive(serde::Serialize)]
    struct Price {
        cents: u64,
        currency: &'static str,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code, reason = "only its shape is checked")]
    struct WrongShape {
        item: String,
    }
    let mut handlers = Handlers::new();
    handlers
        .query(
            "catalog.quote",
            JsonHandler::new(|quote: Quote| {
                Ok::<_, CallError>(Price {
                    cents: 250 * u64::from(quote.quantity) + quote.sku.len() as u64,
                    currency: "EUR",
                })
            }),
        )
        .unwrap()
        .query(
            "catalog.price-of",
            JsonHandler::new(|args: serde_json::Value| {
                Ok::<_, CallError>(serde_json::json!({ "cents": 5, "currency": args["sku"] }))
            }),
        )
        .unwrap()
        .query(
            "catalog.stock",
            JsonHandler::new(|_: WrongShape| Ok::<_, CallError>(1)),
        )
        .unwrap();
    let plugin = typed_plugin().with_handlers(handlers);

    let quoted = run(&plugin, "quote pen 2", granted(&["catalog.*"])).await;
    assert_eq!(
        answer(&quoted),
        "Ok(Price { cents: 503, currency: \"EUR\" })"
    );
    let priced = run(&plugin, "price-of XL", granted(&["catalog.*"])).await;
    assert_eq!(answer(&priced), "Ok(Price { cents: 5, currency: \"XL\" })");
    let stocked = run(&plugin, "stock pen", granted(&["catalog.*"])).await;
    let Err(failure) = &stocked.result else {
        panic!("the run must fail: stock has no error channel");
    };
    assert!(
        failure
            .to_string()
            .starts_with("`catalog.stock`: the payload of `catalog.stock` does not fit the handler: missing field `item`"),
        "{failure}"
    );
}

#[test]
fn a_deferred_function_that_cannot_carry_a_refusal_is_refused_at_load_in_one_line() {
    let mut typed = TypedEffects::new();
    typed
        .add(TypedInterface::new("escrow-test:refused/counter", Timing::Deferred).unwrap())
        .unwrap();
    let error = host_with(typed)
        .load_file(fixtures::TYPED_REFUSED)
        .unwrap_err();

    assert!(matches!(error, Error::TypedEffect { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.ends_with(
            "cannot run here: `counter.bump` is deferred, so it must be able to tell the guest \
             it was refused: it must return result<_, string> or result<_, refusal> \
             (escrow:host/types), and it returns u64"
        ),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1);
}

#[test]
fn a_declared_interface_with_a_resource_is_refused_at_load_naming_it() {
    let mut typed = TypedEffects::new();
    typed
        .add(TypedInterface::new("escrow-test:refused/files", Timing::Immediate).unwrap())
        .unwrap();
    let error = host_with(typed)
        .load_file(fixtures::TYPED_REFUSED)
        .unwrap_err();

    assert!(
        error.to_string().ends_with(
            "`escrow-test:refused/files` defines the resource `handle`; typed effects carry \
             values only (no resources, futures, streams or error-context)"
        ),
        "{error}"
    );
}

#[test]
fn a_function_configured_that_the_interface_lacks_is_refused_at_load() {
    let mut typed = TypedEffects::new();
    for interface in [
        TypedInterface::new("escrow-test:typed/catalog", Timing::Immediate)
            .unwrap()
            .function("price-off", Timing::Deferred),
        TypedInterface::new("escrow-test:typed/ledger", Timing::Deferred).unwrap(),
        TypedInterface::new("escrow-test:typed/values", Timing::Deferred).unwrap(),
    ] {
        typed.add(interface).unwrap();
    }
    let error = host_with(typed).load_file(fixtures::TYPED).unwrap_err();

    assert!(
        error.to_string().ends_with(
            "`price-off` is configured for `escrow-test:typed/catalog`, which has no such \
             function (it has price-of, stock, quote)"
        ),
        "{error}"
    );
}

#[test]
fn declared_interfaces_the_plugin_does_not_import_are_fine_and_undeclared_ones_are_refused() {
    let mut typed = declared();
    typed
        .add(TypedInterface::new("acme:elsewhere/unused", Timing::Deferred).unwrap())
        .unwrap();
    host_with(typed).load_file(fixtures::TYPED).unwrap();

    let error = host_with(TypedEffects::new())
        .load_file(fixtures::TYPED)
        .unwrap_err();
    assert!(matches!(error, Error::Link { .. }), "{error:?}");
    assert!(
        error.to_string().contains("escrow-test:typed/catalog"),
        "{error}"
    );
}

/// The type of `values.take`'s parameter: a record of every type a typed
/// effect carries.
fn everything() -> wasmtime::component::Type {
    static EVERYTHING: OnceLock<wasmtime::component::Type> = OnceLock::new();
    EVERYTHING.get_or_init(read_everything).clone()
}

fn read_everything() -> wasmtime::component::Type {
    use wasmtime::component::types::ComponentItem;
    let host = host_with(TypedEffects::new());
    let component = host.compile_file(fixtures::TYPED).unwrap();
    let engine = host.engine();
    let ty = component.component_type();
    let values = ty
        .get_import(engine, "escrow-test:typed/values")
        .expect("the fixture imports values");
    let ComponentItem::ComponentInstance(instance) = values.ty else {
        panic!("values is an interface");
    };
    let ComponentItem::ComponentFunc(take) = instance.get_export(engine, "take").unwrap().ty else {
        panic!("take is a function");
    };
    take.params().next().unwrap().1
}

mod json {
    //! The JSON mapping of WIT values, property-tested over generated
    //! values of every type.

    use escrow_host::typed::values::{ToJsonError, value_from_json, value_to_json};
    use proptest::prelude::*;
    use wasmtime::component::{Type, Val};

    /// Any value of type `ty`.
    fn val(ty: &Type) -> BoxedStrategy<Val> {
        match ty {
            Type::Bool => any::<bool>().prop_map(Val::Bool).boxed(),
            Type::S8 => any::<i8>().prop_map(Val::S8).boxed(),
            Type::U8 => any::<u8>().prop_map(Val::U8).boxed(),
            Type::S16 => any::<i16>().prop_map(Val::S16).boxed(),
            Type::U16 => any::<u16>().prop_map(Val::U16).boxed(),
            Type::S32 => any::<i32>().prop_map(Val::S32).boxed(),
            Type::U32 => any::<u32>().prop_map(Val::U32).boxed(),
            Type::S64 => any::<i64>().prop_map(Val::S64).boxed(),
            Type::U64 => any::<u64>().prop_map(Val::U64).boxed(),
            Type::Float32 => any::<f32>().prop_map(Val::Float32).boxed(),
            Type::Float64 => any::<f64>().prop_map(Val::Float64).boxed(),
            Type::Char => any::<char>().prop_map(Val::Char).boxed(),
            Type::String => any::<String>().prop_map(Val::String).boxed(),
            Type::List(list) => prop::collection::vec(val(&list.ty()), 0..4)
                .prop_map(Val::List)
                .boxed(),
            Type::Record(record) => {
                let names: Vec<String> = record.fields().map(|f| f.name.to_owned()).collect();
                let fields: Vec<_> = record.fields().map(|f| val(&f.ty)).collect();
                fields
                    .prop_map(move |vals| Val::Record(names.iter().cloned().zip(vals).collect()))
                    .boxed()
            }
            Type::Tuple(tuple) => {
                let items: Vec<_> = tuple.types().map(|t| val(&t)).collect();
                items.prop_map(Val::Tuple).boxed()
            }
            Type::Variant(variant) => {
                let cases: Vec<BoxedStrategy<Val>> = variant
                    .cases()
                    .map(|case| {
                        let name = case.name.to_owned();
                        match case.ty {
                            Some(ty) => val(&ty)
                                .prop_map(move |v| Val::Variant(name.clone(), Some(Box::new(v))))
                                .boxed(),
                            None => Just(Val::Variant(name, None)).boxed(),
                        }
                    })
                    .collect();
                proptest::strategy::Union::new(cases).boxed()
            }
            Type::Enum(cases) => {
                let names: Vec<String> = cases.names().map(str::to_owned).collect();
                prop::sample::select(names).prop_map(Val::Enum).boxed()
            }
            Type::Option(option) => prop::option::of(val(&option.ty()))
                .prop_map(|v| Val::Option(v.map(Box::new)))
                .boxed(),
            Type::Result(result) => {
                let side = |ty: Option<Type>| match ty {
                    Some(ty) => val(&ty).prop_map(|v| Some(Box::new(v))).boxed(),
                    None => Just(None).boxed(),
                };
                prop_oneof![
                    side(result.ok()).prop_map(|v| Val::Result(Ok(v))),
                    side(result.err()).prop_map(|v| Val::Result(Err(v))),
                ]
                .boxed()
            }
            Type::Flags(flags) => {
                let names: Vec<String> = flags.names().map(str::to_owned).collect();
                let count = names.len();
                prop::sample::subsequence(names, 0..=count)
                    .prop_map(Val::Flags)
                    .boxed()
            }
            other => panic!("the fixture has no {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_value_of_every_type_survives_json_and_back(
            value in val(&super::everything())
        ) {
            let ty = super::everything();
            let json = value_to_json(&ty, &value, usize::MAX).unwrap();
            let back = value_from_json(&ty, &json)
                .unwrap_or_else(|e| panic!("{e} in {}", String::from_utf8_lossy(&json)));
            prop_assert_eq!(back, value, "{}", String::from_utf8_lossy(&json));
        }

        #[test]
        fn a_value_is_written_within_a_bound_of_its_length_and_refused_under_it(
            value in val(&super::everything()),
            cut in 1..64usize,
        ) {
            let ty = super::everything();
            let json = value_to_json(&ty, &value, usize::MAX).unwrap();
            prop_assert_eq!(value_to_json(&ty, &value, json.len()), Ok(json.clone()));
            let under = json.len().saturating_sub(cut);
            prop_assert_eq!(
                value_to_json(&ty, &value, under),
                Err(ToJsonError::TooLarge { max: under })
            );
        }
    }

    #[test]
    fn the_extremes_survive_json_and_back() {
        let ty = super::everything();
        let Type::Record(record) = &ty else {
            panic!("a record");
        };
        let field = |name: &str| record.fields().find(|f| f.name == name).unwrap().ty;
        for (name, value, text) in [
            ("ulong", Val::U64(u64::MAX), "18446744073709551615"),
            ("long", Val::S64(i64::MIN), "-9223372036854775808"),
            ("double", Val::Float64(f64::NAN), r#""NaN""#),
            ("double", Val::Float64(f64::INFINITY), r#""Infinity""#),
            ("single", Val::Float32(f32::NEG_INFINITY), r#""-Infinity""#),
            ("double", Val::Float64(-0.0), "-0.0"),
            (
                "text",
                Val::String("naïve – 東京 🦀".into()),
                r#""naïve – 東京 🦀""#,
            ),
            (
                "bytes",
                Val::List([0xff, 0xfe, 0x00, 0x80].map(Val::U8).to_vec()),
                r#""//4AgA==""#,
            ),
            (
                "maybe-maybe",
                Val::Option(Some(Box::new(Val::Option(None)))),
                r#"{"some":null}"#,
            ),
            ("maybe-maybe", Val::Option(None), "null"),
            (
                "shape",
                Val::Variant("point".into(), None),
                r#"{"point":null}"#,
            ),
            (
                "permissions",
                Val::Flags(vec!["read".into(), "execute".into()]),
                r#"["read","execute"]"#,
            ),
        ] {
            let ty = field(name);
            let json = value_to_json(&ty, &value, usize::MAX).unwrap();
            assert_eq!(String::from_utf8_lossy(&json), text, "{name}");
            assert_eq!(value_from_json(&ty, &json).unwrap(), value, "{name}");
        }
    }

    #[test]
    fn json_that_does_not_fit_says_where_and_what() {
        let ty = super::everything();
        let error = value_from_json(&ty, br#"{"yes": 1}"#).unwrap_err();
        assert_eq!(error.to_string(), ".yes: expected bool, found 1");
        let Type::Record(record) = &ty else {
            panic!("a record");
        };
        let words = record.fields().find(|f| f.name == "words").unwrap().ty;
        let error = value_from_json(&words, br#"["a", 2]"#).unwrap_err();
        assert_eq!(error.to_string(), "[1]: expected string, found 2");
        let tiny = record.fields().find(|f| f.name == "tiny").unwrap().ty;
        let error = value_from_json(&tiny, b"200").unwrap_err();
        assert_eq!(error.to_string(), "the value: expected s8, found 200");
    }
}

mod guarded {
    //! Compensations and breakers of typed immediate effects, named by the
    //! operator for `catalog.quote`.

    use std::sync::{Arc, Mutex};

    use escrow_host::breakers::{BreakerConfig, Breakers};
    use escrow_host::handlers::{Call, EffectKind, Handler, Handlers};
    use escrow_host::outbox::{EntryKind, Filter, Outbox, SqliteOutbox};
    use escrow_host::typed::{Timing, TypedEffects, TypedInterface};
    use escrow_host::{BreakerVerdict, CallError, Plugin, Status};
    use escrow_tests::fixtures;

    use super::{Answering, answer, granted, host_with, run};

    /// The typed fixture with `catalog.quote` undone by `catalog.unquote`,
    /// or made through the breaker `quotes`.
    fn plugin(
        catalog: TypedInterface,
        ledger: TypedInterface,
    ) -> Result<Plugin, escrow_host::Error> {
        let values = TypedInterface::new("escrow-test:typed/values", Timing::Deferred).unwrap();
        let mut typed = TypedEffects::new();
        for interface in [catalog, ledger, values] {
            typed.add(interface).unwrap();
        }
        host_with(typed).load_file(fixtures::TYPED)
    }

    fn catalog() -> TypedInterface {
        TypedInterface::new("escrow-test:typed/catalog", Timing::Immediate).unwrap()
    }

    fn ledger() -> TypedInterface {
        TypedInterface::new("escrow-test:typed/ledger", Timing::Deferred).unwrap()
    }

    fn compensated() -> Plugin {
        let catalog = catalog().compensate("quote", "catalog.unquote").unwrap();
        plugin(catalog, ledger()).unwrap()
    }

    const PRICE: &str = r#"{"cents":1999,"currency":"EUR"}"#;

    #[tokio::test]
    async fn a_failed_run_undoes_a_compensated_typed_call_with_its_arguments_and_the_answer() {
        let handler = Answering::with(Ok(PRICE));
        let plugin =
            compensated().with_handlers(handler.handlers(&["catalog.quote", "catalog.unquote"]));

        let succeeded = run(&plugin, "quote pen 2", granted(&["catalog.*"])).await;
        assert_eq!(
            answer(&succeeded),
            r#"Ok(Price { cents: 1999, currency: "EUR" })"#
        );
        assert!(
            succeeded.compensations.is_empty(),
            "a success undoes nothing"
        );

        let failed = run(&plugin, "fail-after quote pen 2", granted(&["catalog.*"])).await;
        assert_eq!(failed.status(), Status::Failed);
        let [undo] = failed.compensations.as_slice() else {
            panic!("one compensation: {:?}", failed.compensations);
        };
        let undo_payload =
            r#"{"arguments":{"sku":"pen","quantity":2},"answer":{"cents":1999,"currency":"EUR"}}"#;
        assert_eq!(undo.effect, "catalog.unquote");
        assert_eq!(String::from_utf8_lossy(&undo.payload), undo_payload);
        assert_eq!(undo.result.as_deref(), Ok(PRICE.as_bytes()));
        let arguments = r#"{"sku":"pen","quantity":2}"#;
        assert_eq!(
            *handler.calls.lock().unwrap(),
            [
                ("catalog.quote".into(), arguments.into()),
                ("catalog.quote".into(), arguments.into()),
                ("catalog.unquote".into(), undo_payload.into()),
            ]
        );
    }

    #[tokio::test]
    async fn a_compensated_typed_call_that_failed_is_undone_with_its_arguments_and_no_answer() {
        let handler = Answering::with(Err("the price list is down"));
        let plugin =
            compensated().with_handlers(handler.handlers(&["catalog.quote", "catalog.unquote"]));

        let failed = run(&plugin, "fail-after quote pen 2", granted(&["catalog.*"])).await;

        let [undo] = failed.compensations.as_slice() else {
            panic!("one compensation: {:?}", failed.compensations);
        };
        assert_eq!(
            String::from_utf8_lossy(&undo.payload),
            r#"{"arguments":{"sku":"pen","quantity":2}}"#,
            "the handler may have acted before it failed: undone, with no answer to give"
        );
    }

    #[tokio::test]
    async fn a_compensated_typed_call_without_a_grant_for_its_compensation_is_refused_unperformed()
    {
        let handler = Answering::with(Ok(PRICE));
        let plugin =
            compensated().with_handlers(handler.handlers(&["catalog.quote", "catalog.unquote"]));

        let outcome = run(&plugin, "quote pen 2", granted(&["catalog.quote"])).await;

        assert!(
            answer(&outcome)
                .starts_with(r#"Err(EffectError::Refused(Refusal::NotGranted("`catalog.unquote`"#),
            "{}",
            answer(&outcome)
        );
        assert!(
            handler.calls.lock().unwrap().is_empty(),
            "nothing performed"
        );
    }

    /// Answers `catalog.quote` and records whether the outbox held its
    /// compensation, with which payload, when it was performed.
    #[derive(Clone)]
    struct Journaled {
        outbox: Outbox,
        seen: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Handler for Journaled {
        async fn call(&self, call: Call<'_>) -> Result<Vec<u8>, CallError> {
            if !call.compensation && call.effect == "catalog.quote" {
                let entries = self.outbox.store().list(&Filter::default()).await.unwrap();
                for e in entries {
                    if e.entry.kind == EntryKind::Compensation && e.entry.run_id == call.run_id {
                        let payload = String::from_utf8_lossy(&e.entry.payload).into_owned();
                        self.seen.lock().unwrap().push(payload);
                    }
                }
            }
            Ok(PRICE.as_bytes().to_vec())
        }
    }

    #[tokio::test]
    async fn a_compensated_typed_call_is_journaled_with_its_arguments_before_it_is_performed() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(SqliteOutbox::open(dir.path().join("outbox.db")).unwrap());
        let handler = Journaled {
            outbox: outbox.clone(),
            seen: Arc::default(),
        };
        let mut handlers = Handlers::new();
        for effect in ["catalog.quote", "catalog.unquote"] {
            handlers
                .register(effect, EffectKind::Action, Arc::new(handler.clone()))
                .unwrap();
        }
        let plugin = compensated()
            .with_handlers(handlers)
            .with_outbox(Some(outbox.clone()));

        let failed = run(&plugin, "fail-after quote pen 2", granted(&["catalog.*"])).await;

        assert_eq!(failed.status(), Status::Failed);
        assert_eq!(
            *handler.seen.lock().unwrap(),
            [r#"{"arguments":{"sku":"pen","quantity":2}}"#],
            "what is owed if the host stops during the call: the arguments, no answer yet"
        );
        assert_eq!(failed.compensations.len(), 1);
        assert_eq!(
            outbox.store().stats().await.unwrap().pending,
            0,
            "performed, so no longer owed"
        );
    }

    #[tokio::test]
    async fn a_typed_call_through_an_open_breaker_is_not_performed_and_the_guest_hears_why() {
        let plugin = plugin(catalog().breaker("quote", "quotes").unwrap(), ledger()).unwrap();
        let mut breakers = Breakers::default();
        breakers
            .define(
                "quotes",
                BreakerConfig {
                    failure_threshold: 1,
                    ..BreakerConfig::default()
                },
            )
            .unwrap();
        let handler = Answering::with(Err("the price list is down"));
        let plugin = plugin
            .with_handlers(handler.handlers(&["catalog.quote"]))
            .with_breakers(Arc::new(breakers));

        let first = run(&plugin, "quote pen 1", granted(&["catalog.*"])).await;
        assert_eq!(
            answer(&first),
            r#"Err(EffectError::Failed("the price list is down"))"#
        );
        let second = run(&plugin, "quote pen 1", granted(&["catalog.*"])).await;

        assert!(
            answer(&second).starts_with(
                r#"Err(EffectError::Failed("the breaker `quotes` is open: `catalog.quote` was not performed; retry after "#
            ),
            "{}",
            answer(&second)
        );
        assert_eq!(handler.calls.lock().unwrap().len(), 1, "called once");
        let [decision] = second.breakers.as_slice() else {
            panic!("one breaker decision: {:?}", second.breakers);
        };
        assert_eq!(decision.effect, "catalog.quote");
        assert!(
            matches!(decision.verdict, BreakerVerdict::Rejected { .. }),
            "{decision:?}"
        );
    }

    #[test]
    fn compensations_and_breakers_on_functions_that_cannot_have_them_are_refused_at_load() {
        for ((catalog, ledger), error) in [
            (
                (catalog().breaker("stock", "quotes").unwrap(), ledger()),
                "`catalog.stock` goes through the breaker `quotes`, so it must be able to tell \
                 the guest the circuit is open: it must return result<_, string> or \
                 result<_, effect-error> (escrow:host/effects)",
            ),
            (
                (
                    catalog(),
                    ledger().compensate("post", "ledger.unpost").unwrap(),
                ),
                "`ledger.post` is deferred and is given a compensation; only immediate \
                 functions have compensations and breakers (an intent is undone by not \
                 dispatching it)",
            ),
        ] {
            let Err(refused) = plugin(catalog, ledger) else {
                panic!("loaded, and should have been refused: {error}");
            };
            let refused = refused.to_string();
            assert!(refused.ends_with(error), "{refused}");
        }
    }
}
