"""Checkout against the shop's typed interfaces: charge the card, save the
order, send the receipt, each a plain call of componentize-py's bindings of
`acme:shop`, with no escrow SDK.

The host declares the three interfaces deferred (`escrow.toml`), so each
call is an intent, dispatched only if the whole checkout succeeds. With
{"fail": true} saving the order fails after the charge was requested, and
nothing is dispatched.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import email, intents, orders, payments


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        order = json.loads(input or b"{}")
        id = order.get("id", 42)
        payments.charge(order.get("amount", 1999), id)
        if order.get("fail"):
            raise Err(f"saving order {id} failed: the orders table is read-only")
        orders.save(id, orders.OrderStatus.PAID)
        email.send(f"Receipt for order {id}", order.get("email", "ada@example.com"))
        receipt = {"order": id, "intents": len(intents.pending())}
        return json.dumps(receipt, separators=(",", ":")).encode()
