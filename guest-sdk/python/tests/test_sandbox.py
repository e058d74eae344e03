"""The native sandbox of `escrow_guest.testing`, under plain pytest: plugin
logic imported and run without a component build, with the host's rules.
(tests/all/languages.rs runs the same plugin natively and on the host and
compares what each did.)"""

import pytest

from escrow_guest import (
    CircuitOpen,
    Failed,
    PluginError,
    Refused,
    breaker,
    defer,
    invoke,
    invoke_reversible,
    lock,
    pending,
    plugin,
    query,
    scope,
)
from escrow_guest.testing import HandlerFailed, Sandbox


@plugin
def checkout(order):
    price = query("prices.get", {"sku": order.get("sku", "tea")})
    defer("payments.charge", {"order": order["id"], "cents": price["cents"]})
    defer("email.send", {"to": "ada@example.com"})
    if order.get("fail"):
        raise PluginError("the order is on hold")
    return {"charged": price["cents"]}


def shop():
    return Sandbox().grant("payments.*").grant("email.*").grant("prices.get").query(
        "prices.get", {"cents": 250}
    )


def test_nothing_is_granted_by_default_and_a_refusal_fails_the_run_with_its_reason():
    recording = Sandbox().run(checkout, {"id": 7})

    assert recording.status == "failed"
    assert recording.error == (
        "refused: not granted: `prices.get` is not covered by the plugin's grants"
    )
    assert recording.invocations[0].refusal == "not-granted"


def test_a_successful_run_commits_its_intents_in_order_with_their_payloads():
    recording = shop().run(checkout, {"id": 7})

    assert recording.status == "committed"
    assert recording.output == {"charged": 250}
    assert recording.committed_effects() == ["payments.charge", "email.send"]
    assert [i.seq for i in recording.intents] == [2, 3]
    assert recording.intents[0].json() == {"order": 7, "cents": 250}
    assert recording.invocations[0].answer == {"cents": 250}


def test_a_failed_run_discards_its_intents_and_keeps_where_the_exception_was_raised():
    recording = shop().run(checkout, {"id": 7, "fail": True})

    assert recording.status == "failed"
    assert recording.error == "the order is on hold"
    assert [i.fate for i in recording.intents] == ["discarded", "discarded"]
    assert 'raise PluginError("the order is on hold")' in recording.traceback
    assert "test_sandbox.py" in recording.traceback


def test_a_scripted_answer_sees_the_request_and_a_failure_reaches_the_plugin():
    @plugin
    def prices(_):
        tea = query("prices.get", {"sku": "tea"})
        try:
            query("prices.get", {"sku": "cup"})
        except Failed as failure:
            return {"tea": tea, "cup": failure.reason}

    def price(request):
        if request["sku"] != "tea":
            raise HandlerFailed(f"no price for {request['sku']}")
        return {"cents": 250}

    recording = Sandbox().grant("prices.get").query("prices.get", price).run(prices)

    assert recording.output == {"tea": {"cents": 250}, "cup": "no price for cup"}
    assert recording.invocations[1].failed == "no price for cup"


def test_a_granted_effect_without_a_fake_handler_is_refused_saying_what_to_add():
    @plugin
    def ask(_):
        try:
            query("prices.get")
        except Refused as refusal:
            return [refusal.kind, refusal.reason]

    kind, reason = Sandbox().grant("*").run(ask).output

    assert kind == "not-granted"
    assert "no handler performs it" in reason and "Sandbox.query" in reason


def test_under_assert_none_an_effect_is_forbidden_and_the_run_fails_even_when_handled():
    @plugin
    def careful(_):
        with scope("assert-none"):
            try:
                defer("email.send", {})
            except Refused as refusal:
                return refusal.kind

    recording = Sandbox().grant("*").run(careful)

    assert recording.output == "forbidden"
    assert recording.status == "failed"
    assert recording.error == (
        "`email.send`: scope 1 policy assert-none forbids effects here"
    )
    assert recording.intents[0].fate == "refused"


def test_a_scope_that_raises_rolls_back_its_intents_and_runs_its_compensations_newest_first():
    @plugin
    def booking(_):
        defer("email.send", {"kept": True})
        try:
            with scope():
                defer("email.send", {"kept": False})
                invoke_reversible("flight.book", {"n": 1}, "flight.cancel", {"n": 1})
                invoke_reversible("hotel.book", {"n": 2}, "hotel.cancel", {"n": 2})
                raise PluginError("the car is gone")
        except PluginError:
            pass
        return [i.effect for i in pending()]

    sandbox = Sandbox().grant("*")
    for effect in ["flight.book", "flight.cancel", "hotel.book", "hotel.cancel"]:
        sandbox.action(effect, {"ok": True})
    recording = sandbox.run(booking)

    assert recording.output == ["email.send"]
    assert [i.fate for i in recording.intents] == ["committed", "discarded"]
    assert [c.effect for c in recording.compensations] == ["hotel.cancel", "flight.cancel"]


def test_a_failed_run_runs_the_compensations_still_registered():
    @plugin
    def hold(_):
        invoke_reversible("payments.hold", {"cents": 5}, "payments.release", {"cents": 5})
        raise PluginError("no stock")

    sandbox = Sandbox().grant("payments.*").action("payments.hold").action("payments.release")
    recording = sandbox.run(hold)

    assert recording.status == "failed"
    assert [(c.effect, c.payload) for c in recording.compensations] == [
        ("payments.release", b'{"cents":5}')
    ]


def test_an_action_is_forbidden_where_the_policy_withholds_it_and_a_query_is_not():
    @plugin
    def both(_):
        query("prices.get")
        try:
            invoke("payments.charge")
        except Refused as refusal:
            return refusal.reason

    sandbox = Sandbox().grant("*").query("prices.get", 1).action("payments.charge", 2)
    recording = sandbox.policy("drop").run(both)

    assert recording.output == "`payments.charge` is an action; policy drop does not let it through"
    assert recording.status == "failed"
    assert recording.invocations[0].answer == 1


def test_past_max_intents_a_request_is_refused_limit_and_the_run_fails():
    @plugin
    def many(_):
        for n in range(3):
            defer("email.send", n)

    recording = Sandbox().grant("*").limits(max_intents=2).run(many)

    assert recording.status == "failed"
    assert recording.error == "refused: limit: max_intents: at most 2 requests per run"
    assert len(recording.intents) == 2


def test_a_payload_past_max_payload_bytes_is_refused_limit_and_not_kept():
    @plugin
    def big(_):
        defer("email.send", "x" * 100)

    recording = Sandbox().grant("*").limits(max_payload_bytes=50).run(big)

    assert recording.status == "failed"
    assert recording.intents[0].fate == "refused"
    assert recording.intents[0].refusal == "limit"
    assert recording.intents[0].payload == b""


def test_a_block_policy_keeps_matching_intents_visible_and_undispatched():
    @plugin
    def mail(_):
        defer("email.send", 1)
        defer("payments.charge", 2)

    recording = Sandbox().grant("*").policy(block=["email.*"]).run(mail)

    assert [i.fate for i in recording.intents] == ["blocked", "committed"]


def test_locks_need_grants_and_come_in_order_with_rising_fencing_tokens():
    @plugin
    def locks(_):
        with lock("account:b", "account:a") as guard:
            first = guard.fencing_token()
        with lock("account:a") as guard:
            second = guard.fencing_token()
        try:
            lock("vault:1")
        except Refused as refusal:
            return [first, second, refusal.kind]

    recording = Sandbox().grant_lock("account:*").run(locks)

    assert recording.output == [1, 2, "not-granted"]
    assert recording.locks[0] == (["account:a", "account:b"], 1)


def test_a_breaker_opens_after_its_threshold_and_then_fails_fast():
    @plugin
    def calls(_):
        upstream = breaker("upstream")
        seen = []
        for _ in range(3):
            try:
                upstream.invoke("upstream.call")
            except Failed:
                seen.append("failed")
            except CircuitOpen:
                seen.append("open")
        return seen

    sandbox = Sandbox().grant("*").query("upstream.call", fail="down").breaker("upstream", 2)
    recording = sandbox.run(calls)

    assert recording.output == ["failed", "failed", "open"]
    assert recording.breaker_calls[-1] == ("upstream", "upstream.call", True)


def test_from_config_takes_the_grants_policy_limits_and_breakers_of_an_escrow_toml(tmp_path):
    config = tmp_path / "escrow.toml"
    config.write_text(
        'policy = "drop"\n'
        "[grants]\n"
        'effects = ["email.*"]\n'
        'locks = ["account:*"]\n'
        "[limits]\n"
        "max_intents = 2\n"
        "[breakers.upstream]\n"
        "failure_threshold = 3\n"
    )

    @plugin
    def mail(request):
        defer("email.send", 1)
        try:
            defer("payments.charge", 2)
        except Refused as refusal:
            kind = refusal.kind
        if request.get("more"):
            defer("email.send", 3)
        with lock("account:a") as guard:
            guard.fencing_token()
        return [kind, breaker("upstream").state()]

    sandbox = Sandbox.from_config(config)
    recording = sandbox.run(mail)
    too_many = sandbox.run(mail, {"more": True})

    assert recording.output == ["not-granted", "closed"]
    assert [i.fate for i in recording.intents] == ["dropped", "refused"]
    assert too_many.status == "failed"
    assert too_many.error == "refused: limit: max_intents: at most 2 requests per run"


def test_a_handler_answer_that_is_not_json_names_the_effect():
    @plugin
    def ask(_):
        return query("prices.get")

    recording = Sandbox().grant("*").query("prices.get", b"<html>").run(ask)

    assert recording.error.startswith("ValueError: the answer of `prices.get` is not JSON")


def test_outside_a_sandbox_run_nothing_is_granted():
    with pytest.raises(Refused) as refused:
        defer("email.send", {})

    assert refused.value.kind == "not-granted"
