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
    let recording = Sandbox::new().run(|| {
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
    let recording = Sandbox::new().run(|| defer("not an effect", &1));
    assert!(matches!(
        recording.output.unwrap_err().refusal(),
        Some(Refusal::Invalid(_))
    ));
}

#[test]
fn pending_lists_what_was_recorded_and_not_discarded() {
    let recording = Sandbox::new().run(|| {
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
    let recording = Sandbox::new().run(|| {
        scope(|| defer("a.kept", &1).map(drop))?;
        let failed: Result<(), Error> = scope(|| {
            defer("b.discarded", &2)?;
            Err(Refusal::Invalid("the step failed".into()).into())
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
    let recording = Sandbox::new().run(|| {
        let scope = Scope::open(ScopePolicy::Inherit).unwrap();
        defer("a.inside", &1).unwrap();
        drop(scope);
    });
    assert_eq!(fates(&recording), [("a.inside", Fate::Discarded)]);
}

#[test]
fn narrowing_scopes_drop_block_and_forbid_like_the_host() {
    let recording = Sandbox::new().run(|| {
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
    let recording = Sandbox::new().policy(ScopePolicy::Drop).run(|| {
        scope(|| defer("a.inside", &1).map(drop)).unwrap();
    });
    assert_eq!(fates(&recording), [("a.inside", Fate::Dropped)]);
}

#[test]
fn each_sandbox_run_starts_empty() {
    let sandbox = Sandbox::new();
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

    let recording = Sandbox::new().run(|| place(Order { id: 9 }));
    assert_eq!(recording.output, Ok(9));
    assert_eq!(recording.committed_effects(), ["orders.save"]);
}
