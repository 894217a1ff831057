"""How often a channel asks for a partial: the configured interval, stretched while the model is behind.

Partials are "latest wins" in the model's queue, so a burst cannot pile up; but asking for them faster than the
model answers still spends its threads on text nobody will see. Each answered partial says how long it waited
in the queue: waiting over half an interval doubles the interval (up to `MAX_STRETCH` times the configured
one); waiting under a tenth of it halves the stretch again. Finals are never paced: they always go first.
Pure: no clock, no asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16000
MAX_STRETCH = 4.0


@dataclass
class PartialPace:
    stretch: float = 1.0  # the interval now, as a multiple of the configured one

    def interval_samples(self, interval_ms: int) -> int:
        return int(interval_ms * self.stretch) * SAMPLE_RATE // 1000

    def observe(self, queued_s: float, interval_ms: int) -> None:
        """A partial waited `queued_s` in the model's queue before it was decoded."""
        interval_s = interval_ms / 1000
        if queued_s > interval_s / 2:
            self.stretch = min(MAX_STRETCH, self.stretch * 2)
        elif queued_s < interval_s / 10:
            self.stretch = max(1.0, self.stretch / 2)
