//! One module per fixture, named after it; `main.rs` checks that each
//! fixture has one.

pub mod scripted {
    use escrow_host::{RunOptions, Status};
    use escrow_tests::{Recorder, results, run_script};
    use serde_json::json;

    #[tokio::test]
    async fn answers_each_step_in_order() {
        let steps = json!([{ "env": "NOPE" }, "pending", { "stderr": "hello" }]);
        let outcome = run_script(steps, RunOptions::new(), &Recorder::new()).await;

        assert_eq!(outcome.status(), Status::Committed);
        let results = results(&outcome);
        assert_eq!(results.len(), 3);
        assert_eq!(results[1], json!([]));
        assert_eq!(outcome.guest_stderr, b"hello\n");
    }

    #[tokio::test]
    async fn reports_an_unknown_step_as_its_error() {
        let outcome = run_script(json!(["dance"]), RunOptions::new(), &Recorder::new()).await;
        assert_eq!(
            outcome.result,
            Err(escrow_host::Failure::GuestError(
                "unknown step `dance`".into()
            ))
        );
    }
}

pub mod fuzz {
    //! The fuzzing guest makes the calls its program lists and answers a
    //! line for each; `fuzz.rs` runs it on random programs.

    use escrow_fuzz_program::{Call, Finish, Name, Payload, encode};
    use escrow_host::{Failure, Fate, Grants, RunOptions};
    use escrow_tests::{fixtures, plugin};

    #[tokio::test]
    async fn makes_each_call_of_its_program_and_answers_a_line_for_each() {
        let program = encode(&[
            Call::Enqueue(Name::Index(0), Payload::Json(1)),
            Call::Enqueue(Name::Index(10), Payload::Empty),
            Call::Pending,
        ]);
        let options = RunOptions::new()
            .grants(Grants::new().effects(["fx.*"]).unwrap())
            .input(program);
        let outcome = plugin(fixtures::FUZZ).run(options).await.unwrap();

        let output = String::from_utf8(outcome.result.clone().unwrap()).unwrap();
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines[0], "enqueued 1");
        assert!(lines[1].starts_with("refused not-granted"), "{output}");
        assert_eq!(lines[2], "pending 1");
        assert_eq!(outcome.intents[0].effect, "fx.a");
        assert!(matches!(outcome.intents[1].fate, Fate::Refused(_)));
    }

    #[tokio::test]
    async fn ends_its_run_as_its_program_says() {
        let program = encode(&[Call::Finish(Finish::Err(5)), Call::Pending]);
        let outcome = plugin(fixtures::FUZZ)
            .run(RunOptions::new().input(program))
            .await
            .unwrap();
        assert_eq!(outcome.result, Err(Failure::GuestError("eeeee".into())));
    }
}

pub mod custom_world {
    //! An embedder's own world that includes escrow's imports: linked with
    //! `escrow_host::add_to_linker`, bounded with `set_deadline`, settled with
    //! `EscrowCtx::finish` and dispatched by the host.

    use std::sync::Arc;
    use std::time::Duration;

    use escrow_host::{EscrowCtx, Fate, Grants, Limits, Refusal, policy};
    use escrow_tests::{Recorder, delivered, fixtures, host};
    use wasmtime::Store;
    use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    wasmtime::component::bindgen!({
        path: ["../wit", "fixtures/guests/custom-world/wit"],
        world: "escrow-test:shop/shop",
        exports: { default: async },
        with: { "escrow:host": escrow_host::bindings::escrow::host },
    });

    struct State {
        escrow: EscrowCtx,
        wasi: WasiCtx,
        table: ResourceTable,
        in_stock: bool,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl escrow_test::shop::inventory::Host for State {
        fn reserve(&mut self, _item: String) -> bool {
            self.in_stock
        }
    }

    async fn place_order(
        grants: Grants,
        in_stock: bool,
    ) -> (Result<u64, String>, Vec<escrow_host::Intent>) {
        let engine = host().engine();
        let mut linker = Linker::<State>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        escrow_host::add_to_linker(&mut linker, |state| &mut state.escrow).unwrap();
        escrow_test::shop::inventory::add_to_linker::<_, HasSelf<State>>(&mut linker, |state| {
            state
        })
        .unwrap();
        let component = Component::from_file(engine, fixtures::CUSTOM_WORLD).unwrap();
        let pre = ShopPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();

        let escrow = EscrowCtx::new(
            Arc::new(grants),
            Arc::new(policy::Commit),
            Limits::default(),
        );
        let state = State {
            escrow,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            in_stock,
        };
        let mut store = Store::new(engine, state);
        escrow_host::set_deadline(&mut store, Duration::from_secs(5));
        let shop = pre.instantiate_async(&mut store).await.unwrap();
        let placed = shop.call_place_order(&mut store, 7, "tea").await.unwrap();
        let guest = placed
            .clone()
            .map(|seq| seq.to_le_bytes().to_vec())
            .map_err(escrow_host::Failure::GuestError);
        let settled = store.into_data().escrow.finish(guest).await;
        assert_eq!(settled.outcome.result.is_ok(), placed.is_ok());
        settled.locks.release().await;
        (placed, settled.outcome.intents)
    }

    #[tokio::test]
    async fn an_embedders_own_world_records_through_escrow_and_dispatches_through_the_host() {
        let recorder = Recorder::new();
        let (placed, mut intents) =
            place_order(Grants::new().effects(["orders.*"]).unwrap(), true).await;
        assert_eq!(placed, Ok(1));
        assert_eq!(intents[0].fate, Fate::Committed);

        recorder.sinks().dispatch(&mut intents).await;
        assert!(delivered(&intents[0]));
        assert_eq!(recorder.seen()[0].payload, br#"{"id":7,"item":"tea"}"#);
    }

    #[tokio::test]
    async fn an_embedders_own_world_is_refused_what_its_grants_do_not_cover() {
        let (placed, intents) = place_order(Grants::new(), true).await;
        assert!(placed.unwrap_err().contains("NotGranted"));
        assert!(matches!(
            intents[0].fate,
            Fate::Refused(Refusal::NotGranted(_))
        ));
    }

    #[tokio::test]
    async fn an_embedders_own_world_discards_intents_when_its_export_fails() {
        let (placed, intents) = place_order(Grants::new().effects(["*"]).unwrap(), false).await;
        assert_eq!(placed, Err("tea is out of stock".into()));
        assert!(intents.is_empty());
    }
}

pub mod bench {
    use escrow_host::{Fate, RunOptions};
    use escrow_tests::{all_effects, fixtures, plugin};

    #[tokio::test]
    async fn invokes_as_often_as_its_input_says() {
        let mut handlers = escrow_host::handlers::Handlers::new();
        handlers
            .query(
                "bench.noop",
                escrow_host::handlers::FnHandler(|p: &[u8]| {
                    Ok::<_, escrow_host::CallError>(p.to_vec())
                }),
            )
            .unwrap();
        let outcome = plugin(fixtures::BENCH)
            .with_handlers(handlers)
            .run(RunOptions::new().grants(all_effects()).input("invoke:3"))
            .await
            .unwrap();
        assert_eq!(outcome.invocations.len(), 3);
        assert!(
            outcome
                .invocations
                .iter()
                .all(|i| i.result == Ok(vec![7; 16]))
        );
    }

    #[tokio::test]
    async fn invokes_through_a_breaker_as_often_as_its_input_says() {
        let mut handlers = escrow_host::handlers::Handlers::new();
        handlers
            .query(
                "bench.noop",
                escrow_host::handlers::FnHandler(|_: &[u8]| {
                    Ok::<_, escrow_host::CallError>(Vec::new())
                }),
            )
            .unwrap();
        let mut breakers = escrow_host::breakers::Breakers::default();
        breakers.define("bench", Default::default()).unwrap();
        let grants = escrow_host::Grants::new()
            .effects(["bench.*"])
            .unwrap()
            .breakers(["bench"])
            .unwrap();
        let outcome = plugin(fixtures::BENCH)
            .with_handlers(handlers)
            .with_breakers(std::sync::Arc::new(breakers))
            .run(RunOptions::new().grants(grants).input("breaker:3"))
            .await
            .unwrap();
        assert_eq!(outcome.breakers.len(), 3);
        assert_eq!(outcome.invocations.len(), 3);
    }

    #[tokio::test]
    async fn locks_and_unlocks_as_often_as_its_input_says() {
        let grants = escrow_host::Grants::new().locks(["bench:*"]).unwrap();
        let outcome = plugin(fixtures::BENCH)
            .run(RunOptions::new().grants(grants).input("lock:3"))
            .await
            .unwrap();
        assert_eq!(outcome.locks.len(), 3);
        assert!(
            outcome
                .locks
                .windows(2)
                .all(|w| w[0].token() < w[1].token())
        );
    }

    #[tokio::test]
    async fn records_as_many_intents_as_its_input_says() {
        let outcome = plugin(fixtures::BENCH)
            .run(RunOptions::new().grants(all_effects()).input("5"))
            .await
            .unwrap();
        assert_eq!(outcome.intents.len(), 5);
        assert!(
            outcome
                .intents
                .iter()
                .all(|i| i.effect == "bench.noop" && i.payload == [7; 16])
        );
        assert!(
            outcome
                .intents
                .iter()
                .all(|i| matches!(i.fate, Fate::Dispatched(_)))
        );
    }
}

pub mod bench_baseline {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use escrow_host::{EffectError, Refusal};
    use escrow_tests::{fixtures, host};
    use wasmtime::Store;
    use wasmtime::component::{Component, Linker, ResourceTable};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    struct State {
        wasi: WasiCtx,
        table: ResourceTable,
        calls: Arc<AtomicU64>,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    #[tokio::test]
    async fn calls_the_bare_import_as_often_as_its_input_says() {
        let engine = host().engine();
        let mut linker = Linker::<State>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        linker
            .instance("escrow-bench:baseline/bare")
            .unwrap()
            .func_wrap(
                "call",
                |store: wasmtime::StoreContextMut<'_, State>,
                 (_effect, _payload): (String, Vec<u8>)| {
                    store.data().calls.fetch_add(1, Ordering::Relaxed);
                    Ok((Result::<u64, Refusal>::Ok(0),))
                },
            )
            .unwrap();
        linker
            .instance("escrow-bench:baseline/bare")
            .unwrap()
            .func_wrap(
                "call-invoke",
                |store: wasmtime::StoreContextMut<'_, State>,
                 (_effect, _payload): (String, Vec<u8>)| {
                    store.data().calls.fetch_add(1000, Ordering::Relaxed);
                    Ok((Result::<Vec<u8>, EffectError>::Ok(Vec::new()),))
                },
            )
            .unwrap();
        let component = Component::from_file(engine, fixtures::BENCH_BASELINE).unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let state = State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            calls: Arc::clone(&calls),
        };
        let mut store = Store::new(engine, state);
        escrow_host::set_deadline(&mut store, std::time::Duration::from_secs(5));
        let instance = linker
            .instantiate_async(&mut store, &component)
            .await
            .unwrap();
        let run = instance
            .get_typed_func::<(Vec<u8>,), (Result<Vec<u8>, String>,)>(&mut store, "run")
            .unwrap();
        for input in ["9", "invoke:2"] {
            let (result,) = run
                .call_async(&mut store, (input.as_bytes().to_vec(),))
                .await
                .unwrap();
            assert_eq!(result, Ok(Vec::new()));
        }
        // `call` counts 1, `call-invoke` 1000.
        assert_eq!(calls.load(Ordering::Relaxed), 2009);
    }
}

pub mod typed {
    //! The typed fixture calls its own WIT interfaces' functions; `typed.rs`
    //! tests them as typed effects.

    use escrow_host::Host;
    use escrow_tests::{compile_cache, fixtures};

    #[test]
    fn imports_interfaces_of_its_own_that_a_host_must_declare() {
        let host = Host::builder().cache_dir(compile_cache()).build().unwrap();
        let component = host.compile_file(fixtures::TYPED).unwrap();
        let imports: Vec<String> = component
            .component_type()
            .imports(host.engine())
            .map(|(name, _)| name.to_owned())
            .filter(|name| name.starts_with("escrow-test:"))
            .collect();
        assert_eq!(
            imports,
            [
                "escrow-test:typed/catalog",
                "escrow-test:typed/ledger",
                "escrow-test:typed/values"
            ]
        );
    }
}

pub mod typed_refused {
    //! The typed-refused fixture imports interfaces that cannot be typed
    //! effects; `typed.rs` tests the refusals.

    use escrow_host::Host;
    use escrow_tests::{compile_cache, fixtures};

    #[test]
    fn compiles_but_cannot_be_linked_without_the_interfaces_it_imports() {
        let host = Host::builder().cache_dir(compile_cache()).build().unwrap();
        host.compile_file(fixtures::TYPED_REFUSED).unwrap();
        assert!(host.load_file(fixtures::TYPED_REFUSED).is_err());
    }
}

pub mod checkout_next {
    //! The next version of the checkout example, for replays: the same
    //! intents, the charge with a service fee.

    use escrow_host::{Grants, RunOptions, Status};
    use escrow_tests::{Recorder, fixtures, plugin};
    use serde_json::json;

    #[tokio::test]
    async fn charges_the_order_with_its_service_fee() {
        let recorder = Recorder::new();
        let options = RunOptions::new()
            .grants(Grants::new().effects(["*"]).unwrap())
            .input(br#"{"id": 42}"#);
        let outcome = plugin(fixtures::CHECKOUT_NEXT)
            .with_sinks(recorder.sinks())
            .run(options)
            .await
            .unwrap();

        assert_eq!(outcome.status(), Status::Committed);
        let charge: serde_json::Value =
            serde_json::from_slice(&recorder.seen()[0].payload).unwrap();
        assert_eq!(charge, json!({ "order": 42, "amount": 2099 }));
        assert_eq!(
            recorder.effects(),
            ["payments.charge", "orders.save", "email.send"]
        );
    }
}
