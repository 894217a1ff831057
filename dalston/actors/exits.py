"""Why actors stop, and the errors and signals that tell others about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dalston.actors.runtime import ActorRef


@dataclass(frozen=True)
class ExitReason:
    """Why an actor stopped. `normal` and `shutdown` are clean exits; anything else is abnormal (OTP)."""

    kind: str
    detail: str = ""
    error: BaseException | None = field(default=None, compare=False)

    @property
    def abnormal(self) -> bool:
        return self.kind not in ("normal", "shutdown")

    @classmethod
    def crashed(cls, error: BaseException) -> ExitReason:
        return cls("error", f"{type(error).__name__}: {error}", error)

    def __str__(self) -> str:
        return f"{self.kind}({self.detail})" if self.detail else self.kind


NORMAL = ExitReason("normal")
SHUTDOWN = ExitReason("shutdown")
KILLED = ExitReason("killed")


class ActorDead(Exception):
    """The actor is not running: a message to it cannot be delivered, or an ask to it was never answered."""

    def __init__(self, name: str, reason: ExitReason | None = None) -> None:
        super().__init__(f"actor {name} is dead" + (f" ({reason})" if reason else ""))
        self.name = name
        self.reason = reason


class StartFailed(Exception):
    """`on_start` raised: the actor never became ready."""


class CalledSelf(RuntimeError):
    """An actor waited on itself from its own task (`ask`, `stop`, `kill`, `wait_stopped`): a certain deadlock."""


@dataclass(frozen=True)
class Down:
    """Delivered to a monitoring actor once the watched actor has fully stopped.

    `handle` is the one `monitor` returned, so that `demonitor(handle, flush=True)` can withdraw it.
    """

    ref: ActorRef
    reason: ExitReason
    handle: int = 0
