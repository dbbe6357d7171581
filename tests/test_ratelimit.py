"""The send pacer: its two guarantees on a fake clock, and one short real-clock run across threads."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.ratelimit import SendPacer

EPS = 1e-9  # float slack when comparing start instants


class FakeClock:
    """A clock that only moves when someone sleeps on it or the test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(rate: float, units: list[float], *, gaps: list[float] | None = None, busy: float = 0.0,
        margin: float = 0.02) -> list[tuple[float, float]]:
    """(start instant, units) of chunks acquired back to back; ``busy`` seconds of sending after each."""
    clock = FakeClock()
    pacer = SendPacer(rate, margin_seconds=margin, clock=clock, sleep=clock.sleep)
    starts = []
    for i, size in enumerate(units):
        clock.now += gaps[i] if gaps else 0.0
        pacer.acquire(size)
        starts.append((clock.now, size))
        clock.now += busy  # the provider call: time that must count towards the spacing
    return starts


def max_in_window(starts: list[tuple[float, float]], length: float = 1.0) -> float:
    """The most units started in any half-open window [s, s + length); windows starting at a start suffice."""
    return max(sum(u for t, u in starts if start <= t < start + length - EPS) for start, _ in starts)


def average_rate(starts: list[tuple[float, float]], rate: float) -> float:
    """Units over the time they took, counting the last chunk's own spacing."""
    span = starts[-1][0] - starts[0][0] + starts[-1][1] / rate
    return sum(u for _, u in starts) / span


@pytest.mark.parametrize(("rate", "margin"), [(0, 0.0), (-1, 0.0), (10, -0.1)])
def test_rejects_bad_settings(rate: float, margin: float) -> None:
    with pytest.raises(ValueError, match="must"):
        SendPacer(rate, margin_seconds=margin)


def test_first_chunk_starts_at_once_then_chunks_are_evenly_spaced() -> None:
    starts = run(200, [20] * 4)
    gaps = [round(b[0] - a[0], 6) for a, b in itertools.pairwise(starts)]
    assert starts[0][0] == 1000.0 and gaps == [0.1, 0.1, 0.1]


def test_time_spent_sending_counts_towards_the_spacing() -> None:
    # A token bucket holding one unit lost this time and ran 10-20% slow; the pacer does not.
    starts = run(200, [20] * 200, busy=0.017)
    assert average_rate(starts, 200) == pytest.approx(200, rel=0.05)
    assert max_in_window(starts) <= 200


@settings(max_examples=60, deadline=None)
@given(rate=st.integers(5, 500), sizes=st.lists(st.integers(1, 5), min_size=5, max_size=200),
       busy=st.floats(0, 0.01))
def test_never_more_than_the_rate_in_any_one_second_window(rate: int, sizes: list[int], busy: float) -> None:
    starts = run(rate, [float(s) for s in sizes], busy=busy)  # chunks up to the rate (5 <= rate)
    assert max_in_window(starts) <= rate + EPS


@settings(max_examples=40, deadline=None)
@given(rate=st.integers(10, 500), size=st.integers(1, 4))
def test_saturated_long_run_is_within_five_percent_of_the_rate(rate: int, size: int) -> None:
    # Chunks that divide the rate, as the dispatcher chooses them: a window then fills exactly.
    chunk = max(d for d in range(1, min(size, rate // 10) + 1) if rate % d == 0)
    count = max(20, 3 * rate // chunk)
    starts = run(rate, [float(chunk)] * count)
    assert average_rate(starts, rate) == pytest.approx(rate, rel=0.05)


def test_idle_gaps_do_not_bank_a_burst() -> None:
    starts = run(10, [1.0] * 30, gaps=[0.0] * 10 + [5.0] + [0.0] * 19)
    assert max_in_window(starts) <= 10


def test_a_chunk_larger_than_the_rate_waits_for_an_empty_window_instead_of_deadlocking() -> None:
    starts = run(5, [3, 8, 1])
    assert starts[1][0] >= starts[0][0] + 1.0  # the 8-unit chunk waited for the window to clear
    assert starts[2][0] >= starts[1][0] + 1.0


def test_units_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="units"):
        SendPacer(1).acquire(-1)


def test_real_clock_threads_share_the_rate() -> None:
    rate, threads, per_thread = 100, 4, 10
    pacer = SendPacer(rate)
    waited: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(per_thread):
            w = pacer.acquire()
            with lock:
                waited.append(w)

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=5)
    elapsed = time.monotonic() - started
    total = threads * per_thread
    assert len(waited) == total
    assert elapsed >= (total - 1) / rate - 0.01  # 40 starts, one immediate: at least 0.39 s
