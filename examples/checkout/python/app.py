"""Checkout: charge the card, save the order, send the receipt.

All three effects are deferred: the host dispatches them only if the whole
checkout succeeds. With {"fail": true} saving the order fails after the
charge was requested, and nothing is dispatched.
"""

from escrow_guest import PluginError, defer, pending, plugin


@plugin
def checkout(order):
    id = order.get("id", 42)
    defer("payments.charge", {"amount": order.get("amount", 1999), "order": id})
    if order.get("fail"):
        raise PluginError(f"saving order {id} failed: the orders table is read-only")
    defer("orders.save", {"order": id, "status": "paid"})
    defer(
        "email.send",
        {"subject": f"Receipt for order {id}", "to": order.get("email", "ada@example.com")},
    )
    return {"order": id, "intents": len(pending())}
