"""What a supervisor needs to know about a child: how to start it, when to restart it, how long to stop it.

A `ChildSpec.start` builds a FRESH actor on every call and spawns it, so a restart never reuses an object
whose state the crash may have left dirty. It receives the number of restarts so far, to pass to
`spawn(..., restarts=)` so that `ActorRef.statistics().restarts` tells the truth.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from dalston.actors.runtime import Actor, ActorRef, spawn

ChildKind = Literal["worker", "supervisor"]
BRUTAL_KILL = 0.0  # `shutdown_s` that kills at once, without `on_stop` (OTP `brutal_kill`)
INFINITY = math.inf  # `shutdown_s` that waits for `on_stop` however long it takes (OTP `infinity`, for supervisors)
StartFn = Callable[[int], Awaitable[ActorRef]]
"""`start(restarts)`: build a fresh actor, spawn it with `restarts=restarts`, return its ref once ready."""


class Restart(StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal exit
    TEMPORARY = "temporary"  # never restarted; removed from the supervisor when it exits


class Strategy(StrEnum):
    ONE_FOR_ONE = "one_for_one"  # restart only the child that exited
    ONE_FOR_ALL = "one_for_all"  # stop all the others, then restart all
    REST_FOR_ONE = "rest_for_one"  # stop the children started after it, then restart it and them


@dataclass(frozen=True)
class ChildSpec:
    id: str
    start: StartFn
    restart: Restart = Restart.PERMANENT
    shutdown_s: float = 5.0  # graceful stop time before the child is killed; BRUTAL_KILL or INFINITY
    kind: ChildKind = "worker"

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a child spec needs a non-empty id")
        if not self.shutdown_s >= 0:
            raise ValueError(f"shutdown_s must be >= 0 (0 is brutal_kill, math.inf infinity), got {self.shutdown_s}")
        if self.kind not in ("worker", "supervisor"):
            raise ValueError(f"kind must be 'worker' or 'supervisor', got {self.kind!r}")


def worker_spec(
    id: str,
    factory: Callable[[], Actor],
    *,
    restart: Restart = Restart.PERMANENT,
    shutdown_s: float = 5.0,
    mailbox_size: int | None = None,
) -> ChildSpec:
    """A spec whose start calls `factory()` for a fresh actor and spawns it under the name `id`."""

    async def start(restarts: int) -> ActorRef:
        return await spawn(factory(), id, mailbox_size=mailbox_size, restarts=restarts)

    return ChildSpec(id, start, restart, shutdown_s, "worker")
