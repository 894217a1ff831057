"""Restart intensity as a pure function of the restart history and the clock (DESIGN §4, §12)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dalston.supervisor.intensity import RestartIntensity


def exceeded_after(times: list[float], max_restarts: int, period_s: float) -> list[bool]:
    intensity = RestartIntensity(max_restarts, period_s)
    verdicts = []
    for now in times:
        intensity = intensity.record(now)
        verdicts.append(intensity.exceeded)
    return verdicts


def oracle(times: list[float], max_restarts: int, period_s: float) -> list[bool]:
    """Brute force: at each restart, count every restart so far that lies within `period_s` of it."""
    return [sum(now - t <= period_s for t in times[: i + 1]) > max_restarts for i, now in enumerate(times)]


def test_max_restarts_restarts_in_the_period_are_allowed_and_one_more_is_not() -> None:
    assert exceeded_after([0, 1, 2, 3], max_restarts=3, period_s=5) == [False, False, False, True]


def test_zero_max_restarts_gives_up_at_the_first_restart() -> None:
    assert exceeded_after([10.0], max_restarts=0, period_s=5) == [True]


def test_restarts_further_apart_than_the_period_never_exceed() -> None:
    assert not any(exceeded_after([i * 5.01 for i in range(50)], max_restarts=1, period_s=5))


def test_a_restart_exactly_one_period_old_still_counts_as_in_otp() -> None:
    assert exceeded_after([0.0, 5.0], max_restarts=1, period_s=5) == [False, True]


def test_the_history_keeps_only_the_restarts_inside_the_window() -> None:
    intensity = RestartIntensity(3, 5.0)
    for now in (0.0, 1.0, 7.0, 8.0):
        intensity = intensity.record(now)
    assert intensity.restarts_at == (7.0, 8.0)


def test_recording_returns_a_new_history_and_leaves_the_old_one_alone() -> None:
    before = RestartIntensity(1, 5.0)
    after = before.record(1.0)
    assert before.restarts_at == () and after.restarts_at == (1.0,)


@pytest.mark.parametrize(("max_restarts", "period_s"), [(-1, 5.0), (3, 0.0), (3, -1.0)])
def test_a_negative_limit_or_a_non_positive_period_is_refused(max_restarts: int, period_s: float) -> None:
    with pytest.raises(ValueError):
        RestartIntensity(max_restarts, period_s)


def test_every_small_integer_history_agrees_with_the_brute_force_count() -> None:
    # Exhaustive over all non-decreasing histories of up to 5 restarts on the integer times 0..6.
    for length in range(1, 6):
        for times in itertools.combinations_with_replacement(range(7), length):
            for max_restarts in range(4):
                for period_s in (1, 2, 3):
                    got = exceeded_after(list(times), max_restarts, period_s)
                    assert got == oracle(list(times), max_restarts, period_s), (times, max_restarts, period_s)


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), min_size=1, max_size=30),
    max_restarts=st.integers(min_value=0, max_value=6),
    period_s=st.floats(min_value=0.01, max_value=20, allow_nan=False),
)
def test_any_history_agrees_with_the_brute_force_count(
    gaps: list[float], max_restarts: int, period_s: float
) -> None:
    times = list(itertools.accumulate(gaps))
    assert exceeded_after(times, max_restarts, period_s) == oracle(times, max_restarts, period_s)


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), min_size=1, max_size=30),
    max_restarts=st.integers(min_value=0, max_value=6),
)
def test_the_kept_history_never_grows_past_the_limit_plus_one_while_allowed(
    gaps: list[float], max_restarts: int
) -> None:
    intensity = RestartIntensity(max_restarts, 5.0)
    for now in itertools.accumulate(gaps):
        intensity = intensity.record(now)
        if intensity.exceeded:
            assert len(intensity.restarts_at) == max_restarts + 1
            break
        assert len(intensity.restarts_at) <= max_restarts
