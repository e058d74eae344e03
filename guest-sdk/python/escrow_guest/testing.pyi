# Types of escrow_guest.testing, checked by mypy --strict and, against the
# module itself, by stubtest (.ci/run).

from dataclasses import dataclass
from os import PathLike
from typing import Any, Callable, Literal, Optional, Union

from escrow_guest import Json, RefusalKind

__all__ = [
    "Compensation",
    "HandlerFailed",
    "Intent",
    "Invocation",
    "Recording",
    "Sandbox",
]

class HandlerFailed(Exception):
    """Raised by a fake handler: the effect failed with this message."""

#: A fake handler's answer: JSON, bytes as they are, or a function of the
#: decoded request.
Answer = Union[Json, bytes, Callable[[Json], Union[Json, bytes]]]

Fate = Literal["committed", "dropped", "blocked", "refused", "discarded"]

@dataclass(frozen=True)
class Intent:
    seq: int
    effect: str
    payload: bytes
    fate: Fate
    refusal: Optional[RefusalKind] = None
    def json(self) -> Json: ...

@dataclass(frozen=True)
class Invocation:
    seq: int
    effect: str
    payload: bytes
    answer: Union[Json, bytes] = None
    failed: Optional[str] = None
    refusal: Optional[RefusalKind] = None

@dataclass(frozen=True)
class Compensation:
    seq: int
    effect: str
    payload: bytes
    failed: Optional[str] = None

@dataclass(frozen=True)
class Recording:
    status: Literal["committed", "dropped", "failed"]
    output: Any
    error: Optional[str]
    traceback: Optional[str]
    intents: list[Intent]
    invocations: list[Invocation]
    compensations: list[Compensation]
    locks: list[tuple[list[str], int]]
    breaker_calls: list[tuple[str, str, bool]]
    def committed(self) -> list[Intent]: ...
    def committed_effects(self) -> list[str]: ...

class Sandbox:
    def __init__(self) -> None: ...
    @classmethod
    def from_config(cls, path: Union[str, "PathLike[str]"]) -> "Sandbox": ...
    def grant(self, pattern: str) -> "Sandbox": ...
    def grant_lock(self, pattern: str) -> "Sandbox": ...
    def policy(
        self,
        policy: Literal["commit", "drop", "assert-none"] = "commit",
        block: Optional[list[str]] = None,
    ) -> "Sandbox": ...
    def limits(self, **limits: int) -> "Sandbox": ...
    def query(
        self, effect: str, answer: Answer = None, *, fail: Optional[str] = None
    ) -> "Sandbox": ...
    def action(
        self, effect: str, answer: Answer = None, *, fail: Optional[str] = None
    ) -> "Sandbox": ...
    def breaker(self, name: str, failure_threshold: int = 5) -> "Sandbox": ...
    def open_breaker(self, name: str) -> "Sandbox": ...
    def run(self, plugin: Callable[[Any], object], input: Json = None) -> Recording: ...
