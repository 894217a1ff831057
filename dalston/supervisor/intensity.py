"""Restart intensity: the pure decision of when a supervisor gives up (DESIGN §4, §12).

More than `max_restarts` restarts within `period_s` and the supervisor gives up. As in OTP, a restart at
time `t` still counts at `now` while `now - t <= period_s`. The clock value is passed in, so the decision
depends only on the history and `now`; there is no clock, no asyncio and no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RestartIntensity:
    max_restarts: int = 3
    period_s: float = 5.0
    restarts_at: tuple[float, ...] = ()  # times of the restarts still inside the window, oldest first

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if not self.period_s > 0:
            raise ValueError(f"period_s must be positive, got {self.period_s}")

    def record(self, now: float) -> RestartIntensity:
        """The history with one more restart at `now`; restarts that left the window are forgotten."""
        kept = tuple(t for t in self.restarts_at if now - t <= self.period_s)
        return replace(self, restarts_at=(*kept, now))

    @property
    def exceeded(self) -> bool:
        """True once the recorded restarts are more than the limit: the supervisor must give up."""
        return len(self.restarts_at) > self.max_restarts
