"""Checked by mypy --strict in .ci/run: the stubs say what escrow_guest and
escrow_guest.testing do, as a typed plugin author uses them."""

from escrow_guest import (
    CircuitOpen,
    Failed,
    Json,
    Refused,
    breaker,
    defer,
    lock,
    pending,
    plugin,
    query,
    scope,
)
from escrow_guest.testing import HandlerFailed, Recording, Sandbox


@plugin
def checkout(order: dict[str, Json]) -> Json:
    price: Json = query("prices.get", {"sku": "tea"})
    seq: int = defer("orders.save", {"id": order["id"], "price": price})
    with scope(block=["email.*"]):
        defer("email.send", order.get("email"))
    with lock("account:a", timeout_ms=1000) as guard:
        token: int = guard.fencing_token()
    try:
        breaker("upstream").invoke("upstream.call")
    except CircuitOpen as error:
        return {"retry_ms": error.retry_ms}
    except Failed as error:
        return {"failed": error.reason}
    except Refused as error:
        return {"kind": error.kind, "reason": error.reason}
    return {"seq": seq, "token": token, "pending": [i.effect for i in pending()]}


def price(request: Json) -> Json:
    if request is None:
        raise HandlerFailed("no request")
    return {"cents": 250}


recording: Recording = (
    Sandbox()
    .grant("orders.*")
    .grant_lock("account:*")
    .policy(block=["email.*"])
    .limits(max_intents=10)
    .query("prices.get", price)
    .breaker("upstream", 2)
    .run(checkout, {"id": 7})
)
effects: list[str] = recording.committed_effects()
first_fate = recording.intents[0].fate if recording.intents else None
