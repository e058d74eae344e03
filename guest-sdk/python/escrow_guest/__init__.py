"""escrow's guest helpers for Python plugins (componentize-py).

The plugin's logic requests effects through these functions; the host
records, grants, and dispatches them as it does for a Rust plugin. Payloads
and answers are JSON. Every refusal is raised as an exception of a type
named after it, so that a plugin can handle it, and an uncaught one fails
the run with the refusal in its error.

    from escrow_guest import defer, plugin

    @plugin
    def checkout(order):
        defer("payments.charge", {"order": order["id"], "amount": 1999})
        return {"ok": True}

Build with `componentize-py -d wit -w plugin componentize app -p . -p
guest-sdk/python -o app.wasm` (docs/guests/python.md). Natively, as in a
unit test, the same calls go to a sandbox that applies the host's rules
(`escrow_guest.testing.Sandbox`).
"""

import json
import sys
import traceback
from typing import Literal, Union

if sys.platform == "wasi":
    # Inside a component: the host's imports, as componentize-py binds them.
    from componentize_py_types import Err
    from wit_world.imports import breakers as _breakers
    from wit_world.imports import effects as _effects
    from wit_world.imports import intents as _intents
    from wit_world.imports import locks as _locks
    from wit_world.imports import scopes as _scopes
    from wit_world.imports import types as _types
else:
    # Natively (a unit test): a sandbox stands in for the host
    # (`escrow_guest.testing`).
    from escrow_guest._native import Err
    from escrow_guest._native import breakers as _breakers
    from escrow_guest._native import effects as _effects
    from escrow_guest._native import intents as _intents
    from escrow_guest._native import locks as _locks
    from escrow_guest._native import scopes as _scopes
    from escrow_guest._native import types as _types

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_MS",
    "Breaker",
    "CircuitOpen",
    "EscrowError",
    "Failed",
    "Guard",
    "LockError",
    "PendingIntent",
    "PluginError",
    "Refused",
    "breaker",
    "defer",
    "defer_bytes",
    "invoke",
    "invoke_bytes",
    "invoke_reversible",
    "lock",
    "pending",
    "plugin",
    "query",
    "scope",
]

#: How long `lock` waits for its keys unless told otherwise.
DEFAULT_LOCK_TIMEOUT_MS = 5000

#: A JSON value, as payloads, answers, inputs and outputs are (for
#: annotations; `__init__.pyi` spells it out).
Json = Union[None, bool, int, float, str, list, dict]

#: A refusal's case; "forbidden" and "limit" fail the run even when handled.
RefusalKind = Literal["not-granted", "forbidden", "limit", "invalid"]


class EscrowError(Exception):
    """Anything an escrow call can fail with."""


class Refused(EscrowError):
    """The host refused the request; nothing was done.

    `kind` is the refusal's case: "not-granted", "forbidden", "limit" or
    "invalid", and `reason` the host's words. A "forbidden" or "limit"
    refusal fails the run even when the plugin handles it.
    """

    def __init__(self, kind, reason):
        super().__init__(f"refused: {kind.replace('-', ' ')}: {reason}")
        self.kind = kind
        self.reason = reason


class Failed(EscrowError):
    """The handler of an immediate effect ran and failed; it may have partly
    applied. `reason` is the handler's message."""

    def __init__(self, reason):
        super().__init__(f"failed: {reason}")
        self.reason = reason


class CircuitOpen(EscrowError):
    """The breaker was open: the handler was not called. A trial is let
    through after `retry_ms` milliseconds."""

    def __init__(self, retry_ms):
        super().__init__(f"the circuit is open; a trial in {retry_ms} ms")
        self.retry_ms = retry_ms


class LockError(EscrowError):
    """No lock was taken. `kind` is "timeout", "would-deadlock" or
    "unavailable" (a refusal is raised as `Refused`)."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class PluginError(Exception):
    """The plugin's own failure: the run returns `err` with exactly this
    message (other exceptions are prefixed with their type's name)."""


_REFUSAL_KINDS = {
    _types.Refusal_NotGranted: "not-granted",
    _types.Refusal_Forbidden: "forbidden",
    _types.Refusal_Limit: "limit",
    _types.Refusal_Invalid: "invalid",
}


def _refused(refusal):
    return Refused(_REFUSAL_KINDS[type(refusal)], refusal.value)


def _effect_error(error):
    if isinstance(error, _effects.EffectError_Refused):
        return _refused(error.value)
    return Failed(error.value)


def _encode(value):
    return json.dumps(value, separators=(",", ":")).encode()


def _decode(answer, effect):
    if not answer:
        return None
    try:
        return json.loads(answer)
    except ValueError as error:
        shown = bytes(answer[:_SHOWN_ANSWER_BYTES]).decode(errors="replace")
        raise ValueError(
            f"the answer of `{effect}` is not JSON ({error}): {shown!r}"
        ) from None


#: How much of an answer that is not JSON an error quotes.
_SHOWN_ANSWER_BYTES = 80


# Deferred effects.


def defer(effect, value):
    """Records an intent to perform `effect` with `value` (as JSON) once the
    run has succeeded, and returns its sequence number."""
    return defer_bytes(effect, _encode(value))


def defer_bytes(effect, payload):
    """`defer` with a raw payload."""
    try:
        return _intents.enqueue(effect, bytes(payload))
    except Err as err:
        raise _refused(err.value) from None


class PendingIntent:
    """An intent the run has recorded and not discarded."""

    def __init__(self, info):
        self.seq = info.seq
        self.effect = info.effect
        self.payload = bytes(info.payload)

    def json(self):
        """The payload, decoded from JSON."""
        return _decode(self.payload, self.effect)

    def __repr__(self):
        return f"PendingIntent(seq={self.seq}, effect={self.effect!r})"


def pending():
    """The intents recorded so far and not discarded, in order."""
    return [PendingIntent(info) for info in _intents.pending()]


# Immediate effects.


def invoke(effect, value=None):
    """Performs `effect` now with `value` (as JSON) and returns the handler's
    answer, decoded from JSON (an empty answer is None)."""
    return _decode(invoke_bytes(effect, _encode(value)), effect)


def query(effect, value=None):
    """`invoke` for reading: the same call, named for what it does. The host
    decides whether the effect is a query."""
    return invoke(effect, value)


def invoke_bytes(effect, payload):
    """`invoke` with raw bytes in and out."""
    try:
        return bytes(_effects.invoke(effect, bytes(payload)))
    except Err as err:
        raise _effect_error(err.value) from None


def invoke_reversible(effect, value, compensate, compensate_value):
    """Performs `effect` now and registers `compensate` with
    `compensate_value` as its undo, performed if the run (or the scope open
    now) later fails or rolls back."""
    try:
        answer = _effects.invoke_reversible(
            effect, _encode(value), compensate, _encode(compensate_value)
        )
    except Err as err:
        raise _effect_error(err.value) from None
    return _decode(bytes(answer), effect)


# Scopes.


class scope:
    """A nested scope, as a context manager: it commits when the block ends
    normally and rolls back (discarding its intents, running its
    compensations) when the block raises. The exception goes on.

        with scope():                       # the enclosing rules
        with scope("drop"):                 # keep, never dispatch
        with scope("assert-none"):          # any effect fails the run
        with scope(block=["email.*"]):      # never dispatch these
    """

    def __init__(self, policy="inherit", block=None):
        if block is not None:
            self._policy = _scopes.ScopePolicy_Block(list(block))
        elif policy == "inherit":
            self._policy = _scopes.ScopePolicy_Inherit()
        elif policy == "drop":
            self._policy = _scopes.ScopePolicy_Drop()
        elif policy == "assert-none":
            self._policy = _scopes.ScopePolicy_AssertNone()
        else:
            raise ValueError(
                f"unknown scope policy {policy!r}: "
                "use 'inherit', 'drop', 'assert-none' or block=[...]"
            )
        self._scope = None

    def __enter__(self):
        try:
            self._scope = _scopes.Scope.open(self._policy)
        except Err as err:
            raise _refused(err.value) from None
        return self

    def __exit__(self, exc_type, exc, tb):
        opened, self._scope = self._scope, None
        if exc_type is None:
            _scopes.Scope.commit(opened)
        else:
            _scopes.Scope.rollback(opened)
        return False


# Locks.


class Guard:
    """Locks held together; a context manager that releases them when the
    block ends. Without `with`, they are held until the run ends."""

    def __init__(self, guard):
        self._guard = guard

    def keys(self):
        """The keys held, sorted and deduplicated."""
        return list(self._guard.keys())

    def fencing_token(self):
        """Strictly greater than the token of every earlier acquisition of
        each of its keys: pass it along with writes."""
        return self._guard.fencing_token()

    def release(self):
        """Releases the locks now."""
        if self._guard is not None:
            self._guard.__exit__(None, None, None)
            self._guard = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.release()
        return False


_LOCK_ERRORS = {
    _locks.LockError_Timeout: "timeout",
    _locks.LockError_WouldDeadlock: "would-deadlock",
    _locks.LockError_Unavailable: "unavailable",
}


def lock(*keys, timeout_ms=DEFAULT_LOCK_TIMEOUT_MS):
    """Takes every key (all or none, in the host's global order), waiting
    at most `timeout_ms`, and returns their `Guard`."""
    try:
        return Guard(_locks.acquire(list(keys), timeout_ms))
    except Err as err:
        error = err.value
        if isinstance(error, _locks.LockError_Refused):
            raise _refused(error.value) from None
        kind = _LOCK_ERRORS[type(error)]
        detail = getattr(error, "value", None)
        message = {
            "timeout": f"the locks {list(keys)} were not all free within {timeout_ms} ms",
            "would-deadlock": f"would deadlock: {detail}",
            "unavailable": f"the lock service is unavailable: {detail}",
        }[kind]
        raise LockError(kind, message) from None


# Breakers.


class Breaker:
    """A granted circuit breaker in front of immediate effects."""

    def __init__(self, handle):
        self._breaker = handle

    def state(self):
        """"closed", "open" or "half-open"."""
        return {
            _breakers.BreakerState.CLOSED: "closed",
            _breakers.BreakerState.OPEN: "open",
            _breakers.BreakerState.HALF_OPEN: "half-open",
        }[self._breaker.state()]

    def invoke(self, effect, value=None):
        """`invoke` through the breaker; raises `CircuitOpen` while it is open."""
        try:
            return _decode(bytes(self._breaker.invoke(effect, _encode(value))), effect)
        except Err as err:
            error = err.value
            if isinstance(error, _breakers.BreakerError_CircuitOpen):
                raise CircuitOpen(error.value) from None
            raise _effect_error(error.value) from None


def breaker(name):
    """The breaker `name`, refused unless granted and defined by the host."""
    try:
        return Breaker(_breakers.Breaker.open(name))
    except Err as err:
        raise _refused(err.value) from None


# The plugin.


def _message(error):
    if isinstance(error, (EscrowError, PluginError)):
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def plugin(function):
    """Makes `function` the plugin's `run`, and returns it unchanged.

    The input is decoded from JSON (an empty input reads as `{}`) and passed
    to `function`; what it returns is encoded as JSON (bytes go out as they
    are) and the run returns `ok`. An exception it raises makes the run
    return `err` with the exception's type and message (a refusal reads
    "refused: not granted: ...", as in Rust), after its traceback is
    written to stderr, which the host keeps as the run's `guest_stderr`.

    It defines the `WitWorld` class that componentize-py looks for in the
    plugin's module.
    """

    def run(self, input):
        try:
            value = json.loads(input) if input else {}
        except ValueError as error:
            raise Err(f"the input is not valid for this plugin: {error}") from None
        try:
            output = function(value)
        except Exception as error:  # noqa: BLE001 - every failure is the run's result
            # Where it was raised, for the run's guest_stderr.
            traceback.print_exc(file=sys.stderr)
            raise Err(_message(error)) from None
        if isinstance(output, (bytes, bytearray)):
            return bytes(output)
        try:
            return _encode(output)
        except (TypeError, ValueError) as error:
            raise Err(f"cannot encode the plugin's output: {error}") from None

    module = sys.modules[function.__module__]
    module.WitWorld = type("WitWorld", (), {"run": run, "__doc__": function.__doc__})
    return function
