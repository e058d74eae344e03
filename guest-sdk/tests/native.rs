//! Native mode: the SDK's calls record into a sandbox that applies the
//! host's rules, so plugin logic is unit-tested without a host.

use escrow_guest::testing::{Fate, Sandbox};
use escrow_guest::{
    Error, Refusal, Scope, ScopePolicy, defer, defer_bytes, pending, scope, scope_with,
};
use serde_json::json;

fn fates<T>(recording: &escrow_guest::testing::Recording<T>) -> Vec<(&str, Fate)> {
    recording
        .intents
        .iter()
        .map(|i| (i.effect.as_str(), i.fate.clone()))
        .collect()
}

#[test]
fn defer_records_json_payloads_in_order_with_sequence_numbers() {
    let recording = Sandbox::new().grant("*").grant_lock("*").run(|| {
        let first = defer("orders.save", &json!({ "id": 1 }))?;
        let second = defer_bytes("blob.put", &[0, 159, 146, 150])?;
        Ok::<_, Error>((first, second))
    });

    assert_eq!(recording.output.as_ref().unwrap(), &(1, 2));
    assert_eq!(recording.committed_effects(), ["orders.save", "blob.put"]);
    assert_eq!(
        recording.intents[0]
            .payload_json::<serde_json::Value>()
            .unwrap(),
        json!({ "id": 1 })
    );
    assert_eq!(recording.intents[1].payload, [0, 159, 146, 150]);
}

#[test]
fn an_effect_outside_the_sandbox_grants_is_refused_not_granted() {
    let recording = Sandbox::new()
        .grant("email.*")
        .run(|| defer("payments.charge", &5));

    let error = recording.output.unwrap_err();
    assert!(
        matches!(error.refusal(), Some(Refusal::NotGranted(_))),
        "{error}"
    );
    assert!(matches!(
        recording.intents[0].fate,
        Fate::Refused(Refusal::NotGranted(_))
    ));
}

#[test]
fn a_malformed_effect_name_is_refused_invalid() {
    let recording = Sandbox::new()
        .grant("*")
        .grant_lock("*")
        .run(|| defer("not an effect", &1));
    assert!(matches!(
        recording.output.unwrap_err().refusal(),
        Some(Refusal::Invalid(_))
    ));
}

#[test]
fn pending_lists_what_was_recorded_and_not_discarded() {
    let recording = Sandbox::new().grant("*").grant_lock("*").run(|| {
        defer("a.one", &1).unwrap();
        let inner = Scope::open(ScopePolicy::Inherit).unwrap();
        defer("b.two", &2).unwrap();
        inner.rollback();
        defer("c.three", &3).unwrap();
        pending().into_iter().map(|i| i.effect).collect::<Vec<_>>()
    });
    assert_eq!(recording.output, ["a.one", "c.three"]);
}

#[test]
fn scope_commits_on_ok_and_rolls_back_on_err() {
    let recording = Sandbox::new().grant("*").grant_lock("*").run(|| {
        scope(|| defer("a.kept", &1).map(drop))?;
        let failed: Result<(), Error> = scope(|| {
            defer("b.discarded", &2)?;
            Err(Error::msg("the step failed"))
        });
        assert!(failed.is_err());
        Ok::<_, Error>(())
    });

    assert!(recording.output.is_ok());
    assert_eq!(
        fates(&recording),
        [
            ("a.kept", Fate::Committed),
            ("b.discarded", Fate::Discarded)
        ]
    );
}

#[test]
fn dropping_a_scope_unfinished_rolls_it_back() {
    let recording = Sandbox::new().grant("*").grant_lock("*").run(|| {
        let scope = Scope::open(ScopePolicy::Inherit).unwrap();
        defer("a.inside", &1).unwrap();
        drop(scope);
    });
    assert_eq!(fates(&recording), [("a.inside", Fate::Discarded)]);
}

#[test]
fn narrowing_scopes_drop_block_and_forbid_like_the_host() {
    let recording = Sandbox::new().grant("*").grant_lock("*").run(|| {
        scope_with(ScopePolicy::Drop, || defer("a.simulated", &1).map(drop)).unwrap();
        scope_with(ScopePolicy::Block(vec!["email.*".into()]), || {
            defer("email.send", &2)?;
            defer("orders.save", &3).map(drop)
        })
        .unwrap();
        scope_with(ScopePolicy::AssertNone, || defer("b.impure", &4).map(drop))
    });

    assert!(matches!(
        recording.output.as_ref().unwrap_err().refusal(),
        Some(Refusal::Forbidden(_))
    ));
    assert_eq!(
        fates(&recording)[..4],
        [
            ("a.simulated", Fate::Dropped),
            ("email.send", Fate::Blocked),
            ("orders.save", Fate::Committed),
            (
                "b.impure",
                Fate::Refused(Refusal::Forbidden("`b.impure`: policy assert-none".into()))
            ),
        ]
    );
    assert!(recording.violation.is_some(), "a host would fail this run");
}

#[test]
fn the_sandbox_policy_applies_to_the_whole_run() {
    let recording = Sandbox::new()
        .grant("*")
        .grant_lock("*")
        .policy(ScopePolicy::Drop)
        .run(|| {
            scope(|| defer("a.inside", &1).map(drop)).unwrap();
        });
    assert_eq!(fates(&recording), [("a.inside", Fate::Dropped)]);
}

#[test]
fn each_sandbox_run_starts_empty() {
    let sandbox = Sandbox::new().grant("*").grant_lock("*");
    sandbox.run(|| defer("a.one", &1).unwrap());
    let second = sandbox.run(|| defer("b.two", &2).unwrap());
    assert_eq!(second.output, 1);
    assert_eq!(second.committed_effects(), ["b.two"]);
}

#[test]
fn a_plugin_function_is_called_directly_in_native_mode() {
    #[derive(serde::Deserialize)]
    struct Order {
        id: u64,
    }

    #[escrow_guest::plugin]
    fn place(order: Order) -> Result<u64, String> {
        defer("orders.save", &order.id)?;
        Ok(order.id)
    }

    let recording = Sandbox::new()
        .grant("*")
        .grant_lock("*")
        .run(|| place(Order { id: 9 }));
    assert_eq!(recording.output, Ok(9));
    assert_eq!(recording.committed_effects(), ["orders.save"]);
}

mod effects {
    use escrow_guest::testing::{Answer, Sandbox};
    use escrow_guest::{Error, Refusal, ScopePolicy, invoke, invoke_reversible, query, saga};

    /// A fake booking handler that fails when the payload says `fail`.
    fn booking(effect: String) -> impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync {
        move |payload: &[u8]| {
            if payload.windows(4).any(|w| w == b"fail") {
                return Err(format!("{effect}: sold out"));
            }
            Ok(format!("\"{effect}-ok\"").into_bytes())
        }
    }

    fn trips() -> Sandbox {
        let mut sandbox = Sandbox::new().grant("*").grant_lock("*");
        for effect in ["flight", "hotel", "car"]
            .map(|leg| [format!("{leg}.book"), format!("{leg}.cancel")])
            .concat()
        {
            sandbox = sandbox.action(effect.clone(), booking(effect));
        }
        sandbox
    }

    #[test]
    fn invoke_sends_json_and_decodes_the_fake_handlers_answer() {
        let recording = Sandbox::new()
            .grant("*")
            .grant_lock("*")
            .query("prices.get", |sku: &[u8]| {
                Ok(format!(
                    "{{\"sku\":{},\"cents\":1999}}",
                    String::from_utf8_lossy(sku)
                )
                .into_bytes())
            })
            .run(|| query::<serde_json::Value>("prices.get", &"tea"));

        assert_eq!(
            recording.output.unwrap(),
            serde_json::json!({ "sku": "tea", "cents": 1999 })
        );
        assert_eq!(recording.invocations[0].payload, br#""tea""#);
    }

    #[test]
    fn a_query_passes_a_drop_policy_and_an_action_does_not() {
        let recording = Sandbox::new()
            .grant("*")
            .grant_lock("*")
            .policy(ScopePolicy::Drop)
            .query("prices.get", |_: &[u8]| Ok(b"1".to_vec()))
            .action("orders.create", |_: &[u8]| Ok(b"2".to_vec()))
            .run(|| {
                (
                    invoke::<u32>("prices.get", &()),
                    invoke::<u32>("orders.create", &()),
                )
            });

        let (price, order) = recording.output;
        assert_eq!(price.unwrap(), 1);
        assert!(matches!(
            order.unwrap_err().refusal(),
            Some(Refusal::Forbidden(_))
        ));
        assert!(recording.violation.is_some());
    }

    #[test]
    fn an_effect_without_a_fake_handler_is_refused() {
        let recording = Sandbox::new()
            .grant("*")
            .grant_lock("*")
            .run(|| invoke::<u32>("orders.create", &()));
        assert!(matches!(
            recording.output.unwrap_err().refusal(),
            Some(Refusal::NotGranted(_))
        ));
    }

    #[test]
    fn a_failing_saga_undoes_its_steps_newest_first() {
        let recording = trips().run(|| {
            saga(|s| {
                s.step::<String>("flight.book", &"LHR", "flight.cancel")?;
                s.step::<String>("hotel.book", &"Ritz", "hotel.cancel")?;
                s.step::<String>("car.book", &"fail", "car.cancel")?;
                Ok::<_, Error>(())
            })
        });

        assert!(matches!(recording.output, Err(Error::Failed(ref m)) if m == "car.book: sold out"));
        let undone: Vec<&str> = recording
            .compensations
            .iter()
            .map(|c| c.effect.as_str())
            .collect();
        assert_eq!(undone, ["car.cancel", "hotel.cancel", "flight.cancel"]);
        assert_eq!(
            recording.compensations[0].result,
            Answer::Failed("car.cancel: sold out".into())
        );
        assert_eq!(
            recording.compensations[1].result,
            Answer::Ok(br#""hotel.cancel-ok""#.to_vec())
        );
        assert!(recording.registered_compensations.is_empty());
    }

    #[test]
    fn a_successful_saga_leaves_its_undos_registered_for_the_run() {
        let recording = trips().run(|| {
            saga(|s| {
                s.step::<String>("flight.book", &"LHR", "flight.cancel")?;
                s.step_with::<String>("hotel.book", &"Ritz", "hotel.cancel", &"booking 7")
            })
        });

        assert_eq!(recording.output.unwrap(), "hotel.book-ok");
        assert!(recording.compensations.is_empty());
        let registered: Vec<(&str, &[u8])> = recording
            .registered_compensations
            .iter()
            .map(|c| (c.effect.as_str(), c.payload.as_slice()))
            .collect();
        assert_eq!(
            registered,
            [
                ("hotel.cancel", &br#""booking 7""#[..]),
                ("flight.cancel", &br#""LHR""#[..])
            ]
        );
        assert!(
            recording
                .registered_compensations
                .iter()
                .all(|c| c.result == Answer::Pending)
        );
    }

    #[test]
    fn a_failed_reversible_call_still_registers_its_undo() {
        let recording = trips()
            .run(|| invoke_reversible::<String>("car.book", &"fail", "car.cancel", &"ref-1"));

        assert!(matches!(recording.output, Err(Error::Failed(_))));
        assert_eq!(recording.registered_compensations[0].effect, "car.cancel");
    }
}

#[test]
fn a_plugin_fails_with_its_own_message_through_error_msg_or_a_string() {
    fn check(quantity: u32) -> Result<u32, Error> {
        if quantity == 0 {
            return Err(Error::msg("an order needs at least one item"));
        }
        let parsed: u32 = "x"
            .parse()
            .map_err(|_| "quantity is not a number".to_owned())?;
        Ok(parsed)
    }
    assert_eq!(
        check(0).unwrap_err().to_string(),
        "an order needs at least one item"
    );
    assert_eq!(
        check(1).unwrap_err().to_string(),
        "quantity is not a number"
    );
    let from_str: Error = "plain".into();
    assert!(from_str.refusal().is_none());
}

#[test]
fn a_new_sandbox_grants_nothing_as_the_host_does() {
    let recording = Sandbox::new().run(|| defer("email.send", &1));
    assert!(matches!(
        recording.output.unwrap_err().refusal(),
        Some(Refusal::NotGranted(_))
    ));
}

#[test]
fn a_sandbox_from_a_config_has_its_grants_and_policy() {
    let dir = std::env::temp_dir().join(format!("escrow-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("escrow.toml");
    std::fs::write(
        &path,
        "policy = \"drop\"\n[grants]\neffects = [\"email.*\"]\n",
    )
    .unwrap();
    let sandbox = Sandbox::from_config(&path);
    let granted = sandbox.run(|| defer("email.send", &1));
    assert!(granted.output.is_ok());
    assert_eq!(granted.intents[0].fate, Fate::Dropped);
    let refused = sandbox.run(|| defer("payments.charge", &1));
    assert!(matches!(
        refused.output.unwrap_err().refusal(),
        Some(Refusal::NotGranted(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recorded_payloads_read_as_text_in_debug_output() {
    let recording = Sandbox::new()
        .grant("*")
        .run(|| defer("email.send", &serde_json::json!({ "to": "ada" })));
    let shown = format!("{:?}", recording.intents[0]);
    assert!(shown.contains(r#"payload: {"to":"ada"}"#), "{shown}");
}

mod aliases {
    /// A crate's own alias, with an error that displays.
    type Result<T> = std::result::Result<T, String>;

    #[escrow_guest::plugin]
    fn with_anyhow(quantity: u32) -> anyhow::Result<u32> {
        anyhow::ensure!(quantity > 0, "an order needs at least one item");
        Ok(quantity * 2)
    }

    #[escrow_guest::plugin]
    fn with_own_alias(quantity: u32) -> Result<u32> {
        Ok(quantity + 1)
    }

    #[test]
    fn plugins_may_return_result_aliases_such_as_anyhow_result() {
        assert_eq!(with_anyhow(2).unwrap(), 4);
        assert!(
            with_anyhow(0)
                .unwrap_err()
                .to_string()
                .contains("at least one item")
        );
        assert_eq!(with_own_alias(1).unwrap(), 2);
    }
}
