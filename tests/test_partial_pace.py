"""The pace of partials: the configured interval when the model keeps up, stretched (bounded) when it does not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dalston.actors.speech.partial_pace import MAX_STRETCH, PartialPace

INTERVAL_MS = 500


@given(st.lists(st.floats(min_value=0.0, max_value=30.0), max_size=50))
def test_the_interval_stays_between_the_configured_one_and_its_maximum_stretch(waits: list[float]) -> None:
    pace = PartialPace()
    for queued_s in waits:
        pace.observe(queued_s, INTERVAL_MS)
        assert 1.0 <= pace.stretch <= MAX_STRETCH
        assert INTERVAL_MS * 16 <= pace.interval_samples(INTERVAL_MS) <= INTERVAL_MS * 16 * MAX_STRETCH


@given(st.lists(st.floats(min_value=0.0, max_value=30.0), max_size=20))
def test_a_backlog_stretches_it_fully_within_two_partials_and_a_quiet_model_brings_it_back(
    before: list[float],
) -> None:
    pace = PartialPace()
    for queued_s in before:
        pace.observe(queued_s, INTERVAL_MS)
    for _ in range(2):
        pace.observe(2.0, INTERVAL_MS)  # each partial waited four intervals
    assert pace.stretch == MAX_STRETCH
    for _ in range(2):
        pace.observe(0.0, INTERVAL_MS)
    assert pace.stretch == 1.0 and pace.interval_samples(INTERVAL_MS) == 8000


def test_a_wait_between_a_tenth_and_half_an_interval_leaves_the_pace_as_it_is() -> None:
    pace = PartialPace(stretch=2.0)
    pace.observe(0.1, INTERVAL_MS)
    assert pace.stretch == 2.0
