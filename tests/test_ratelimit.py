"""The token bucket: its pacing guarantee on a fake clock, and one short real-clock run across threads."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.ratelimit import TokenBucket

EPS = 1e-9  # float slack when comparing grant instants


class FakeClock:
    """A clock that only moves when someone sleeps on it or the test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def bucket(rate: float, burst: float | None = None) -> tuple[TokenBucket, FakeClock]:
    clock = FakeClock()
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep), clock


def run(rate: float, gaps: list[float], units: list[float], burst: float | None = None) -> list[tuple[float, float]]:
    """(grant instant, units) for callers arriving after the given idle gaps."""
    tb, clock = bucket(rate, burst)
    grants = []
    for gap, size in zip(gaps, units, strict=True):
        clock.now += gap
        tb.acquire(size)
        grants.append((clock.now, size))
    return grants


def max_in_window(grants: list[tuple[float, float]], length: float) -> float:
    """The most units granted in any half-open window [s, s + length); windows starting at a grant suffice."""
    return max(sum(u for t, u in grants if start <= t < start + length - EPS) for start, _ in grants)


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (1, 0), (1, -2)])
def test_rejects_non_positive_settings(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TokenBucket(rate, burst)


def test_starts_with_one_unit_then_paces() -> None:
    tb, _ = bucket(4)
    assert tb.acquire() == 0.0
    assert tb.acquire() == pytest.approx(0.25)
    assert tb.acquire(2) == pytest.approx(0.5)


@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([1, 2, 3, 7, 10, 50]),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.13, 0.5, 1.0, 2.7]), min_size=1, max_size=120),
)
def test_unit_grants_never_exceed_the_rate_in_any_one_second_window(rate: int, gaps: list[float]) -> None:
    grants = run(rate, gaps, [1.0] * len(gaps))
    assert max_in_window(grants, 1.0) <= rate


@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1, 3, 10]),
    calls=st.lists(
        st.tuples(st.sampled_from([0.0, 0.0, 0.2, 1.0, 3.0]), st.sampled_from([1.0, 1.0, 2.0, 3.0, 6.0])),
        min_size=1,
        max_size=80,
    ),
    length=st.sampled_from([1.0, 2.5, 10.0]),
)
def test_sized_grants_respect_the_documented_bound(
    rate: float, calls: list[tuple[float, float]], length: float
) -> None:
    # Bound from the module docstring: units in [s, s + t) < max(burst, first grant) + rate * t.
    grants = run(rate, [g for g, _ in calls], [u for _, u in calls])
    for start, first in grants:
        in_window = sum(u for t, u in grants if start <= t < start + length - EPS)
        assert in_window < max(1.0, first) + rate * length + EPS


@pytest.mark.parametrize(("rate", "size"), [(100, 1.0), (1, 1.0), (3, 2.0), (7.5, 1.0)])
def test_saturated_long_run_is_within_five_percent_of_the_rate(rate: float, size: float) -> None:
    tb, clock = bucket(rate)
    start, calls = clock(), 2000
    for _ in range(calls):
        tb.acquire(size)
    achieved = calls * size / (clock() - start)
    assert achieved == pytest.approx(rate, rel=0.05)


def test_a_burst_equal_to_the_rate_would_nearly_double_it_in_one_second() -> None:
    # Why the default burst is one unit: a full bucket of `rate` lets 10 through at once and 9 more within the second.
    grants = run(10, [5.0] + [0.0] * 30, [1.0] * 31, burst=10)
    assert max_in_window(grants, 1.0) == 19
    assert max_in_window(run(10, [5.0] + [0.0] * 30, [1.0] * 31), 1.0) == 10


def test_a_request_larger_than_the_burst_waits_instead_of_deadlocking() -> None:
    tb, _ = bucket(1)
    assert tb.acquire(6) == pytest.approx(5.0)
    assert tb.acquire(1) == pytest.approx(1.0)


def test_try_acquire_takes_only_what_is_there() -> None:
    tb, clock = bucket(2, burst=2)
    assert tb.try_acquire(2)
    assert not tb.try_acquire(1)
    clock.now += 0.5
    assert tb.try_acquire(1)
    clock.now += 10
    assert not tb.try_acquire(3)  # above the burst: only `acquire` can take it
    assert tb.try_acquire(2)


def test_try_acquire_does_not_jump_the_queue() -> None:
    tb, clock = bucket(1)
    tb.acquire(1)
    # Another caller has reserved 3 units and is asleep; a later try must not slip in ahead of it.
    reserving = TokenBucket(1, clock=clock, sleep=lambda _: None)
    reserving.acquire(1)
    reserving.acquire(3)
    clock.now += 2
    assert not reserving.try_acquire(1)
    clock.now += 2
    assert reserving.try_acquire(1)


def test_units_must_not_be_negative() -> None:
    tb, _ = bucket(1)
    with pytest.raises(ValueError, match="units"):
        tb.acquire(-1)
    with pytest.raises(ValueError, match="units"):
        tb.try_acquire(-1)


def test_real_clock_threads_share_the_rate() -> None:
    rate, threads, per_thread = 100, 4, 10
    tb = TokenBucket(rate)
    waited: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(per_thread):
            w = tb.acquire()
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
    assert elapsed >= (total - 1) / rate - 0.01  # 40 grants, one immediate: at least 0.39 s
    assert elapsed < 1.0
