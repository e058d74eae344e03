"""The checkout's logic, natively, under the grants of the example's
escrow.toml (`pytest examples/checkout/python`, with guest-sdk/python on
the path): the intents commit would dispatch, and a failure that leaves
none."""

from pathlib import Path

from escrow_guest.testing import Sandbox

from app import checkout

CONFIG = Path(__file__).parent.parent / "escrow.toml"


def test_a_checkout_charges_saves_and_sends_the_receipt_in_that_order():
    recording = Sandbox.from_config(CONFIG).run(checkout, {"id": 7, "amount": 500})

    assert recording.status == "committed"
    assert recording.output == {"order": 7, "intents": 3}
    assert recording.committed_effects() == ["payments.charge", "orders.save", "email.send"]
    assert recording.intents[0].json() == {"amount": 500, "order": 7}


def test_a_failed_checkout_dispatches_nothing_not_even_the_charge():
    recording = Sandbox.from_config(CONFIG).run(checkout, {"fail": True})

    assert recording.status == "failed"
    assert recording.error == "saving order 42 failed: the orders table is read-only"
    assert [i.fate for i in recording.intents] == ["discarded"]


def test_under_drop_the_checkout_runs_and_dispatches_nothing():
    recording = Sandbox.from_config(CONFIG).policy("drop").run(checkout, {})

    assert recording.status == "dropped"
    assert {i.fate for i in recording.intents} == {"dropped"}
