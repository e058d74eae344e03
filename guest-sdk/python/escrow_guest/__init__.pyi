# Types of escrow_guest, checked by mypy --strict and, against the module
# itself, by stubtest (.ci/run).

from types import TracebackType
from typing import Any, Callable, Literal, Optional, Sequence, TypeVar, Union

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

#: A JSON value, as payloads, answers, inputs and outputs are.
Json = Union[None, bool, int, float, str, list["Json"], dict[str, "Json"]]

#: A refusal's case; "forbidden" and "limit" fail the run even when handled.
RefusalKind = Literal["not-granted", "forbidden", "limit", "invalid"]

DEFAULT_LOCK_TIMEOUT_MS: int

class EscrowError(Exception): ...

class Refused(EscrowError):
    kind: RefusalKind
    reason: str
    def __init__(self, kind: RefusalKind, reason: str) -> None: ...

class Failed(EscrowError):
    reason: str
    def __init__(self, reason: str) -> None: ...

class CircuitOpen(EscrowError):
    retry_ms: int
    def __init__(self, retry_ms: int) -> None: ...

class LockError(EscrowError):
    kind: Literal["timeout", "would-deadlock", "unavailable"]
    def __init__(
        self, kind: Literal["timeout", "would-deadlock", "unavailable"], message: str
    ) -> None: ...

class PluginError(Exception): ...

def defer(effect: str, value: object) -> int: ...
def defer_bytes(effect: str, payload: bytes) -> int: ...

class PendingIntent:
    seq: int
    effect: str
    payload: bytes
    def __init__(self, info: Any) -> None: ...
    def json(self) -> Json: ...

def pending() -> list[PendingIntent]: ...
def invoke(effect: str, value: object = None) -> Json: ...
def query(effect: str, value: object = None) -> Json: ...
def invoke_bytes(effect: str, payload: bytes) -> bytes: ...
def invoke_reversible(
    effect: str, value: object, compensate: str, compensate_value: object
) -> Json: ...

class scope:
    def __init__(
        self,
        policy: Literal["inherit", "drop", "assert-none"] = "inherit",
        block: Optional[Sequence[str]] = None,
    ) -> None: ...
    def __enter__(self) -> "scope": ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Literal[False]: ...

class Guard:
    def __init__(self, guard: Any) -> None: ...
    def keys(self) -> list[str]: ...
    def fencing_token(self) -> int: ...
    def release(self) -> None: ...
    def __enter__(self) -> "Guard": ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Literal[False]: ...

def lock(*keys: str, timeout_ms: int = ...) -> Guard: ...

class Breaker:
    def __init__(self, handle: Any) -> None: ...
    def state(self) -> Literal["closed", "open", "half-open"]: ...
    def invoke(self, effect: str, value: object = None) -> Json: ...

def breaker(name: str) -> Breaker: ...

_Plugin = TypeVar("_Plugin", bound=Callable[[Any], object])

def plugin(function: _Plugin) -> _Plugin: ...
