"""Unit tests of plugin logic without a host: a sandbox that applies the
host's rules natively, the counterpart of Rust's
`escrow_guest::testing::Sandbox`.

    from escrow_guest.testing import Sandbox
    from app import checkout

    def test_a_checkout_charges_and_mails():
        sandbox = Sandbox.from_config("escrow.toml").query("prices.get", {"cents": 250})
        recording = sandbox.run(checkout, {"id": 7})
        assert recording.status == "committed"
        assert recording.committed_effects() == ["payments.charge", "email.send"]

As on the host, nothing is granted by default; the policy commits; no
handler exists until one is faked; effect names, payload and request
limits, policies, scopes, action kinds, compensations, locks and breakers
behave as the host has them. A run ends as a host ends it: scopes left
open roll back, and a failed run discards its intents and runs its
compensations, newest first.
"""

import json
import tomllib
import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Literal, Optional, Union

from escrow_guest import _encode, _message, _native
from escrow_guest._native import HandlerFailed, Limits

__all__ = [
    "Compensation",
    "HandlerFailed",
    "Intent",
    "Invocation",
    "Recording",
    "Sandbox",
]

#: The fate of a deferred request at the end of the run.
Fate = Literal["committed", "dropped", "blocked", "refused", "discarded"]

#: A fake handler's answer: a JSON value (bytes go out as they are), or a
#: function of the decoded request that returns one (or raises
#: `HandlerFailed`).
Answer = Union[Any, Callable[[Any], Any]]


@dataclass(frozen=True)
class Intent:
    """A deferred request and its fate at the end of the run: "committed",
    "dropped", "blocked", "refused" or "discarded"."""

    seq: int
    effect: str
    payload: bytes
    fate: str
    #: The refusal's kind, for a refused request.
    refusal: Optional[str] = None

    def json(self):
        """The payload, decoded from JSON."""
        return json.loads(self.payload) if self.payload else None


@dataclass(frozen=True)
class Invocation:
    """An immediate request: its answer (decoded from JSON; bytes when it
    is not JSON), or why it gave none."""

    seq: int
    effect: str
    payload: bytes
    answer: Any = None
    failed: Optional[str] = None
    refusal: Optional[str] = None


@dataclass(frozen=True)
class Compensation:
    """A compensation that ran: the call it undid, and how it went."""

    seq: int
    effect: str
    payload: bytes
    failed: Optional[str] = None


@dataclass(frozen=True)
class Recording:
    """What a sandboxed run returned and requested."""

    #: "committed", "dropped" (it succeeded and its policy withheld all it
    #: requested) or "failed", as the host would report it.
    status: str
    #: What the plugin returned, when it returned.
    output: Any
    #: The run's error, as the host would report it: the plugin's
    #: exception as its message, or the rule it broke.
    error: Optional[str]
    #: Where the plugin's exception was raised, as `@plugin` writes it to
    #: stderr.
    traceback: Optional[str]
    intents: List[Intent]
    invocations: List[Invocation]
    compensations: List[Compensation]
    #: Each acquisition: its keys, sorted, and its fencing token.
    locks: List[tuple]
    #: Each call through a breaker: (breaker, effect, rejected).
    breaker_calls: List[tuple]

    def committed(self):
        """The intents a host would dispatch, in order."""
        return [i for i in self.intents if i.fate == "committed"]

    def committed_effects(self):
        """The effect names of `committed`."""
        return [i.effect for i in self.committed()]


_POLICIES = {
    "commit": _native.ScopePolicy_Inherit,
    "drop": _native.ScopePolicy_Drop,
    "assert-none": _native.ScopePolicy_AssertNone,
}


class Sandbox:
    """A host stand-in: grants, a policy, limits, fake handlers and
    breakers. Each method returns the sandbox, so they chain."""

    def __init__(self):
        self._grants = []
        self._lock_grants = []
        self._policy = _native.ScopePolicy_Inherit()
        self._limits = Limits()
        self._handlers = {}
        self._breakers = {}

    @classmethod
    def from_config(cls, path):
        """A sandbox with the grants, policy, block patterns, limits and
        breakers of an `escrow.toml`, so that tests see what production runs
        get. Handlers are not taken: fake them."""
        with open(path, "rb") as file:
            config = tomllib.load(file)
        sandbox = cls()
        grants = config.get("grants", {})
        for pattern in grants.get("effects", []):
            sandbox.grant(pattern)
        for pattern in grants.get("locks", []):
            sandbox.grant_lock(pattern)
        block = config.get("block", [])
        sandbox.policy(config.get("policy", "commit"), block=block or None)
        limits = config.get("limits", {})
        sandbox.limits(**{name: limits[name] for name in vars(Limits()) if name in limits})
        for name, table in config.get("breakers", {}).items():
            sandbox.breaker(name, table.get("failure_threshold", 5))
        return sandbox

    def grant(self, pattern):
        """Grants effects matching `pattern` (`email.*`; `*` for all)."""
        self._check(_native.check_effect_name(pattern, pattern=True))
        self._grants.append(pattern)
        return self

    def grant_lock(self, pattern):
        """Grants locks on keys matching `pattern` (`account:*`)."""
        self._check(_native.check_lock_key(pattern, pattern=True))
        self._lock_grants.append(pattern)
        return self

    def policy(self, policy="commit", block=None):
        """The run's policy: "commit", "drop", "assert-none", or with
        `block`, commit all but the effects matching those patterns."""
        if block is not None:
            for pattern in block:
                self._check(_native.check_effect_name(pattern, pattern=True))
            self._policy = _native.ScopePolicy_Block(list(block))
        elif policy in _POLICIES:
            self._policy = _POLICIES[policy]()
        else:
            raise ValueError(f"unknown policy {policy!r}: use 'commit', 'drop' or 'assert-none'")
        return self

    def limits(self, **limits):
        """Limits other than the host's defaults: `max_intents`,
        `max_payload_bytes`, `max_total_payload_bytes`, `max_scope_depth`."""
        for name, value in limits.items():
            if not hasattr(self._limits, name):
                raise ValueError(f"unknown limit {name!r}")
            setattr(self._limits, name, int(value))
        return self

    def query(self, effect, answer=None, *, fail=None):
        """A fake handler for the query `effect`: it answers `answer` (a JSON
        value, or a function of the request), or fails with `fail`."""
        return self._handler(effect, "query", answer, fail)

    def action(self, effect, answer=None, *, fail=None):
        """A fake handler for the action `effect`, which the host performs
        only where the policy commits it."""
        return self._handler(effect, "action", answer, fail)

    def breaker(self, name, failure_threshold=5):
        """A breaker that opens after `failure_threshold` failures in a row
        and stays open for the rest of the run (the sandbox has no clock)."""
        self._breakers[name] = failure_threshold
        return self

    def open_breaker(self, name):
        """A breaker that is open from the start."""
        return self.breaker(name, 0)

    def run(self, plugin, input=None):
        """Runs `plugin` (a function made the plugin by `@plugin`) on
        `input` (a JSON value; None reads as `{}`, as an empty input does on
        the host) and returns what it did."""
        state = _native.State(
            grants=list(self._grants),
            lock_grants=list(self._lock_grants),
            policy=self._policy,
            limits=Limits(**vars(self._limits)),
            handlers=dict(self._handlers),
            breakers={n: _native.Breaker(t) for n, t in self._breakers.items()},
        )
        previous, _native.current = _native.current, state
        output = error = where = None
        try:
            try:
                output = plugin({} if input is None else json.loads(json.dumps(input)))
            except Exception as raised:  # noqa: BLE001 - every failure is the run's result
                where = traceback.format_exc()
                error = _message(raised)
            else:
                if not isinstance(output, (bytes, bytearray)):
                    try:
                        _encode(output)
                    except (TypeError, ValueError) as unencodable:
                        error = f"cannot encode the plugin's output: {unencodable}"
                        output = None
            failed = error is not None or state.violation is not None
            state.end(failed)
        finally:
            _native.current = previous
        if error is None and state.violation is not None:
            error = state.violation
        return Recording(
            status=_status(failed, state.records),
            output=output,
            error=error,
            traceback=where,
            intents=[
                Intent(r.seq, r.effect, r.payload, r.fate, _kind(r.refusal))
                for r in state.records
            ],
            invocations=[
                Invocation(
                    c.seq,
                    c.effect,
                    c.payload,
                    _decoded(c.answer),
                    c.failed,
                    _kind(c.refusal),
                )
                for c in state.calls
            ],
            compensations=[
                Compensation(u.seq, u.effect, u.payload, u.failed) for u in state.compensations
            ],
            locks=list(state.locks),
            breaker_calls=list(state.breaker_calls),
        )

    def _handler(self, effect, kind, answer, fail):
        self._check(_native.check_effect_name(effect))

        def call(payload):
            if fail is not None:
                raise HandlerFailed(fail)
            request = json.loads(payload) if payload else None
            value = answer(request) if callable(answer) else answer
            if isinstance(value, (bytes, bytearray)):
                return bytes(value)
            return b"" if value is None else json.dumps(value, separators=(",", ":")).encode()

        self._handlers[effect] = (kind, call)
        return self

    @staticmethod
    def _check(invalid):
        if invalid:
            raise ValueError(invalid)


def _status(failed, records):
    if failed:
        return "failed"
    fates = {r.fate for r in records}
    return "dropped" if "dropped" in fates and "committed" not in fates else "committed"


def _decoded(answer):
    """An answer decoded from JSON; one that is not JSON as its bytes."""
    if not answer:
        return None
    try:
        return json.loads(answer)
    except ValueError:
        return answer


def _kind(refusal):
    if refusal is None:
        return None
    return {
        _native.Refusal_NotGranted: "not-granted",
        _native.Refusal_Forbidden: "forbidden",
        _native.Refusal_Limit: "limit",
        _native.Refusal_Invalid: "invalid",
    }[type(refusal)]
