"""The host's bindings, natively: what `escrow_guest` calls when it is not
inside a component (`sys.platform` is not "wasi").

Each name stands for the one componentize-py generates from escrow's WIT
(`componentize_py_types.Err`, `wit_world.imports.intents.enqueue`, ...),
and each call goes to the sandbox of the run in progress: the one
`escrow_guest.testing.Sandbox.run` installs, or, outside it, one that
grants nothing. The sandbox applies the host's rules: effect names,
grants, limits, policies, scopes, handler kinds, compensations, locks and
breakers (`docs/guests/python.md`, "Testing").
"""

import enum
import fnmatch
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

#: Longest effect name the host accepts, in bytes (as escrow-host).
MAX_EFFECT_NAME_BYTES = 128
#: Longest lock key the host accepts, in bytes (as escrow-host).
MAX_LOCK_KEY_BYTES = 256


class Err(Exception):
    """An import's `err`, as componentize-py raises it: the WIT value is
    `value`."""

    def __init__(self, value):
        super().__init__(value)
        self.value = value


# escrow:host/types


@dataclass
class Refusal_NotGranted:
    value: str


@dataclass
class Refusal_Forbidden:
    value: str


@dataclass
class Refusal_Limit:
    value: str


@dataclass
class Refusal_Invalid:
    value: str


# escrow:host/effects


@dataclass
class EffectError_Refused:
    value: Any


@dataclass
class EffectError_Failed:
    value: str


# escrow:host/scopes


@dataclass
class ScopePolicy_Inherit:
    pass


@dataclass
class ScopePolicy_Drop:
    pass


@dataclass
class ScopePolicy_AssertNone:
    pass


@dataclass
class ScopePolicy_Block:
    value: List[str]


# escrow:host/locks


@dataclass
class LockError_Refused:
    value: Any


@dataclass
class LockError_Timeout:
    pass


@dataclass
class LockError_WouldDeadlock:
    value: str


@dataclass
class LockError_Unavailable:
    value: str


# escrow:host/breakers


class BreakerState(enum.Enum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass
class BreakerError_CircuitOpen:
    value: int


@dataclass
class BreakerError_Effect:
    value: Any


class HandlerFailed(Exception):
    """Raised by a fake handler: the effect failed with this message."""


@dataclass
class Limits:
    """The host's limits on what a run may request (escrow-host's
    defaults)."""

    max_intents: int = 1000
    max_payload_bytes: int = 1 << 20
    max_total_payload_bytes: int = 16 << 20
    max_scope_depth: int = 32


@dataclass
class Record:
    """One deferred request and its fate."""

    seq: int
    effect: str
    payload: bytes
    fate: str
    refusal: Optional[Any] = None


@dataclass
class Call:
    """One immediate request and how it ended: `answer` (bytes), or
    `failed` (a message), or `refusal`."""

    seq: int
    effect: str
    payload: bytes
    answer: Optional[bytes] = None
    failed: Optional[str] = None
    refusal: Optional[Any] = None


@dataclass
class Undo:
    """A compensation: registered, then run or still owed."""

    seq: int
    effect: str
    payload: bytes
    handler: Callable[[bytes], bytes]
    answer: Optional[bytes] = None
    failed: Optional[str] = None


@dataclass
class Breaker:
    """A sandboxed breaker: failures in a row against its threshold. It has
    no clock: once open, it stays open for the run."""

    threshold: int
    failures: int = 0

    def is_open(self):
        return self.failures >= self.threshold


@dataclass
class Frame:
    id: int
    start: int
    undo_start: int
    policy: Any


#: What names and patterns are made of, beyond letters and digits.
_NAME_PUNCTUATION = "._-"


def _check_text(name, pattern, what, max_bytes, extra):
    allowed = _NAME_PUNCTUATION + extra + ("*" if pattern else "")
    if not name:
        return f"{what} is empty"
    size = len(name.encode())
    if size > max_bytes:
        return f"{what} is {size} bytes long; the limit is {max_bytes}"
    for ch in name:
        if not ((ch.isascii() and ch.isalnum()) or ch in allowed):
            return f"{what} `{name}` has {ch!r}"
    return None


def check_effect_name(name, pattern=False):
    """Why `name` is not an effect name (or pattern) the host accepts, or
    None."""
    return _check_text(name, pattern, "effect name", MAX_EFFECT_NAME_BYTES, "")


def check_lock_key(key, pattern=False):
    """Why `key` is not a lock key (or pattern) the host accepts, or None."""
    return _check_text(key, pattern, "lock key", MAX_LOCK_KEY_BYTES, ":/@")


def matches(patterns, name):
    """Whether `name` matches one of `patterns`, where `*` matches any run of
    characters. Names and patterns are checked first, so no other character
    `fnmatch` reads specially can be in them."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@dataclass
class State:
    """One sandboxed run."""

    grants: List[str] = field(default_factory=list)
    lock_grants: List[str] = field(default_factory=list)
    policy: Any = field(default_factory=ScopePolicy_Inherit)
    limits: Limits = field(default_factory=Limits)
    handlers: Dict[str, Any] = field(default_factory=dict)
    breakers: Dict[str, Breaker] = field(default_factory=dict)
    seq: int = 0
    payload_bytes: int = 0
    records: List[Record] = field(default_factory=list)
    calls: List[Call] = field(default_factory=list)
    pending: List[Undo] = field(default_factory=list)
    compensations: List[Undo] = field(default_factory=list)
    frames: List[Frame] = field(default_factory=list)
    next_frame: int = 1
    held: List[Any] = field(default_factory=list)
    next_guard: int = 1
    last_token: int = 0
    locks: List[Any] = field(default_factory=list)
    breaker_calls: List[Any] = field(default_factory=list)
    violation: Optional[str] = None

    def violate(self, why):
        if self.violation is None:
            self.violation = why

    def next_seq(self):
        """The next request's number, or its refusal past the limit."""
        self.seq += 1
        limit = self.limits.max_intents
        if self.seq > limit:
            why = f"max_intents: at most {limit} requests per run"
            self.violate(why)
            return None, Refusal_Limit(why)
        return self.seq, None

    def check(self, effect, held):
        """The checks every request passes: its name, the payload limits, a
        grant. Returns the refusal and whether its payload is kept."""
        invalid = check_effect_name(effect)
        if invalid:
            return Refusal_Invalid(invalid), False
        limits = self.limits
        exceeded = None
        if held > limits.max_payload_bytes:
            exceeded = ("max_payload_bytes", limits.max_payload_bytes)
        elif self.payload_bytes + held > limits.max_total_payload_bytes:
            exceeded = ("max_total_payload_bytes", limits.max_total_payload_bytes)
        if exceeded:
            name, limit = exceeded
            why = f"{name}: {held} bytes of payload, at most {limit}"
            self.violate(why)
            return Refusal_Limit(why), False
        if not matches(self.grants, effect):
            return Refusal_NotGranted(f"`{effect}` is not covered by the plugin's grants"), True
        return None, True

    def decide(self, effect):
        """The run's policy, then each open scope's from the outermost in:
        a forbidding rule wins, otherwise the outermost that withholds.
        Returns the fate and the rule that decided it (None to commit)."""
        decided = ("committed", None)
        rules = [("", self.policy)] + [(f"scope {f.id} ", f.policy) for f in self.frames]
        for prefix, policy in rules:
            if isinstance(policy, ScopePolicy_AssertNone):
                return "refused", f"{prefix}policy assert-none"
            if decided[1] is not None:
                continue
            if isinstance(policy, ScopePolicy_Drop):
                decided = ("dropped", f"{prefix}policy drop")
            elif isinstance(policy, ScopePolicy_Block):
                pattern = next((p for p in policy.value if matches([p], effect)), None)
                if pattern is not None:
                    decided = ("blocked", f"{prefix}block {pattern}")
        return decided

    def enqueue(self, effect, payload):
        seq, refusal = self.next_seq()
        if refusal:
            raise Err(refusal)
        refusal, keep = self.check(effect, len(payload))
        fate = "refused"
        if refusal is None:
            fate, rule = self.decide(effect)
            if fate == "refused":
                refusal = Refusal_Forbidden(f"`{effect}`: {rule} forbids effects here")
                self.violate(refusal.value)
        if refusal is None:
            self.payload_bytes += len(payload)
        kept = payload if keep else b""
        self.records.append(Record(seq, effect, bytes(kept), fate, refusal))
        if refusal:
            raise Err(refusal)
        return seq

    def handler(self, effect, compensation=False):
        what = "the compensation " if compensation else ""
        found = self.handlers.get(effect)
        if found is None:
            return None, Refusal_NotGranted(
                f"`{effect}` is granted, but no handler performs {what}it: give the sandbox "
                "one (Sandbox.query or Sandbox.action)"
            )
        return found, None

    def admit(self, effect, payload, undo):
        """The checks before a fake handler is called: the request's own
        for the effect and its compensation, a handler for each, and for
        an action the policies."""
        held = len(payload) + (len(undo[1]) if undo else 0)
        refusal, keep = self.check(effect, held)
        if refusal:
            return None, None, refusal, keep
        undo_handler = None
        if undo:
            refusal, _ = self.check(undo[0], 0)
            if refusal:
                return None, None, refusal, True
            undo_handler, refusal = self.handler(undo[0], compensation=True)
            if refusal:
                return None, None, refusal, True
        found, refusal = self.handler(effect)
        if refusal:
            return None, None, refusal, True
        kind, call = found
        if kind == "action":
            fate, rule = self.decide(effect)
            if fate != "committed":
                refusal = Refusal_Forbidden(f"`{effect}` is an action; {rule} does not let it through")
                self.violate(refusal.value)
                return None, None, refusal, True
        return call, undo_handler and undo_handler[1], None, True

    def invoke(self, effect, payload, undo=None):
        seq, refusal = self.next_seq()
        if refusal:
            raise Err(EffectError_Refused(refusal))
        call, undo_handler, refusal, keep = self.admit(effect, payload, undo)
        record = Call(seq, effect, bytes(payload if keep else b""))
        self.calls.append(record)
        if refusal:
            record.refusal = refusal
            raise Err(EffectError_Refused(refusal))
        try:
            answer = bytes(call(bytes(payload)))
        except HandlerFailed as failure:
            answer, record.failed = None, str(failure)
        # The handler ran: whatever it answered, it may have acted, so its
        # undo is registered.
        self.payload_bytes += len(payload)
        if undo:
            self.payload_bytes += len(undo[1])
            self.pending.append(Undo(seq, undo[0], bytes(undo[1]), undo_handler))
        if record.failed is not None:
            raise Err(EffectError_Failed(record.failed))
        record.answer = answer
        return answer

    def open_scope(self, policy):
        limit = self.limits.max_scope_depth
        if len(self.frames) >= limit:
            why = f"max_scope_depth: scopes nest at most {limit} deep"
            self.violate(why)
            raise Err(Refusal_Limit(why))
        if isinstance(policy, ScopePolicy_Block):
            for pattern in policy.value:
                invalid = check_effect_name(pattern, pattern=True)
                if invalid:
                    raise Err(Refusal_Invalid(invalid))
        frame = Frame(self.next_frame, len(self.records), len(self.pending), policy)
        self.next_frame += 1
        self.frames.append(frame)
        return frame.id

    def _roll_back(self, frame):
        for record in self.records[frame.start :]:
            if record.fate != "refused":
                record.fate = "discarded"
        undos = self.pending[frame.undo_start :]
        del self.pending[frame.undo_start :]
        self.run_undos(reversed(undos))

    def close_scope(self, id, commit):
        positions = [i for i, frame in enumerate(self.frames) if frame.id == id]
        if not positions:
            return
        position = positions[-1]
        while len(self.frames) > position + (1 if commit else 0):
            self._roll_back(self.frames.pop())
        del self.frames[position:]

    def run_undos(self, undos):
        for undo in undos:
            try:
                undo.answer = bytes(undo.handler(undo.payload))
            except HandlerFailed as failure:
                undo.failed = str(failure)
            self.compensations.append(undo)

    def acquire(self, keys):
        if not keys:
            raise Err(LockError_Refused(Refusal_Invalid("no lock keys given")))
        for key in keys:
            invalid = check_lock_key(key)
            if invalid:
                raise Err(LockError_Refused(Refusal_Invalid(invalid)))
            if not matches(self.lock_grants, key):
                raise Err(
                    LockError_Refused(
                        Refusal_NotGranted(f"lock `{key}` is not covered by the plugin's grants")
                    )
                )
        keys = sorted(set(keys))
        held = [k[-1] for (_, k, _) in self.held]
        if held and keys[0] <= max(held):
            raise Err(
                LockError_WouldDeadlock(
                    f"this run holds `{max(held)}` and asks for `{keys[0]}`"
                )
            )
        self.last_token += 1
        guard = (self.next_guard, keys, self.last_token)
        self.next_guard += 1
        self.held.append(guard)
        self.locks.append((keys, self.last_token))
        return guard

    def release(self, guard_id):
        self.held = [g for g in self.held if g[0] != guard_id]

    def end(self, failed):
        """Ends the run as a host would: scopes left open roll back; on
        failure every intent not refused is discarded and the compensations
        still registered run, newest first."""
        while self.frames:
            self._roll_back(self.frames.pop())
        if failed:
            for record in self.records:
                if record.fate != "refused":
                    record.fate = "discarded"
            undos, self.pending = self.pending, []
            self.run_undos(reversed(undos))


#: The run in progress; outside `Sandbox.run`, one that grants nothing.
current = State()


def _state():
    return current


class _IntentInfo(SimpleNamespace):
    pass


def _enqueue(effect, payload):
    return _state().enqueue(effect, bytes(payload))


def _pending():
    return [
        _IntentInfo(seq=r.seq, effect=r.effect, payload=r.payload)
        for r in _state().records
        if r.fate not in ("refused", "discarded")
    ]


def _invoke(effect, payload):
    return _state().invoke(effect, bytes(payload))


def _invoke_reversible(effect, payload, compensate, compensate_payload):
    return _state().invoke(effect, bytes(payload), (compensate, bytes(compensate_payload)))


class Scope:
    """A scope of the sandbox, as `scopes.Scope`."""

    def __init__(self, id):
        self._id = id

    @staticmethod
    def open(policy):
        return Scope(_state().open_scope(policy))

    @staticmethod
    def commit(scope):
        _state().close_scope(scope._id, True)

    @staticmethod
    def rollback(scope):
        _state().close_scope(scope._id, False)


class _Guard:
    def __init__(self, guard):
        self._id, self._keys, self._token = guard

    def keys(self):
        return list(self._keys)

    def fencing_token(self):
        return self._token

    def __exit__(self, *exc):
        _state().release(self._id)
        return False


def _acquire(keys, timeout_ms):
    return _Guard(_state().acquire(list(keys)))


class _BreakerHandle:
    """A breaker of the sandbox, as `breakers.Breaker`."""

    def __init__(self, name):
        self._name = name

    @staticmethod
    def open(name):
        if name not in _state().breakers:
            raise Err(Refusal_NotGranted(f"no breaker `{name}` is defined"))
        return _BreakerHandle(name)

    def state(self):
        is_open = _state().breakers[self._name].is_open()
        return BreakerState.OPEN if is_open else BreakerState.CLOSED

    def invoke(self, effect, payload):
        state = _state()
        breaker = state.breakers[self._name]
        if breaker.is_open():
            state.breaker_calls.append((self._name, effect, True))
            raise Err(BreakerError_CircuitOpen(0))
        state.breaker_calls.append((self._name, effect, False))
        try:
            answer = state.invoke(effect, bytes(payload))
        except Err as err:
            failed = isinstance(err.value, EffectError_Failed)
            breaker.failures = breaker.failures + 1 if failed else breaker.failures
            raise Err(BreakerError_Effect(err.value)) from None
        breaker.failures = 0
        return answer


types = SimpleNamespace(
    Refusal_NotGranted=Refusal_NotGranted,
    Refusal_Forbidden=Refusal_Forbidden,
    Refusal_Limit=Refusal_Limit,
    Refusal_Invalid=Refusal_Invalid,
)
intents = SimpleNamespace(enqueue=_enqueue, pending=_pending)
effects = SimpleNamespace(
    invoke=_invoke,
    invoke_reversible=_invoke_reversible,
    EffectError_Refused=EffectError_Refused,
    EffectError_Failed=EffectError_Failed,
)
scopes = SimpleNamespace(
    Scope=Scope,
    ScopePolicy_Inherit=ScopePolicy_Inherit,
    ScopePolicy_Drop=ScopePolicy_Drop,
    ScopePolicy_AssertNone=ScopePolicy_AssertNone,
    ScopePolicy_Block=ScopePolicy_Block,
)
locks = SimpleNamespace(
    acquire=_acquire,
    LockError_Refused=LockError_Refused,
    LockError_Timeout=LockError_Timeout,
    LockError_WouldDeadlock=LockError_WouldDeadlock,
    LockError_Unavailable=LockError_Unavailable,
)
breakers = SimpleNamespace(
    Breaker=_BreakerHandle,
    BreakerState=BreakerState,
    BreakerError_CircuitOpen=BreakerError_CircuitOpen,
    BreakerError_Effect=BreakerError_Effect,
)
