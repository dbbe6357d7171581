"""Pacing sends to a provider's rate: evenly spaced, and never over the rate in any one-second window.

Providers count what they receive per second, and a dispatcher sends in *chunks* (one SendGrid
request carries many personalizations; an SMS costs several segments). A plain token bucket
cannot honour both "at the rate on average" and "never over it in any second" for chunks: if
its burst is one unit it loses the refill that accrues while a chunk is being sent (measured:
-11% to -21% at 200 email/s), and if its burst is a chunk, a window starting at one chunk also
holds the next second's worth (measured: 21 segments in one second at 20/s).

:class:`SendPacer` combines two rules, each checked at the moment a chunk may start:

1. **spacing** — a chunk starts no earlier than the previous chunk's start plus that chunk's
   units divided by the rate (the generic cell rate algorithm): the long-run average is the
   rate, and time spent sending counts towards the spacing instead of being lost;
2. **window** — the units started within the last ``window + margin`` seconds, plus this
   chunk's, never exceed the rate. Checked at every start, it bounds every half-open window of
   that length, whatever the chunk sizes. The margin absorbs network jitter between our start
   and the provider's clock.

A single chunk larger than the rate is allowed once the window is empty (it cannot be split here).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class SendPacer:
    """Pace chunks to ``rate_per_second`` units per second (see the module docstring)."""

    def __init__(
        self,
        rate_per_second: float,
        *,
        window_seconds: float = 1.0,
        margin_seconds: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be positive, got {rate_per_second!r}")
        if not window_seconds > 0 or margin_seconds < 0:
            raise ValueError("window_seconds must be positive and margin_seconds not negative")
        self.rate = float(rate_per_second)
        self.capacity = self.rate * window_seconds  # units allowed per window
        self.span = window_seconds + margin_seconds
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next_start = float("-inf")
        self._started: deque[tuple[float, float]] = deque()  # (start time, units), oldest first
        self._in_window = 0.0

    def acquire(self, units: float = 1.0) -> float:
        """Block until a chunk of ``units`` may start; return the seconds waited.

        Callers are served in the order they called: each reserves its start time under the lock
        and sleeps outside it.
        """
        if units < 0:
            raise ValueError(f"units must be >= 0, got {units!r}")
        with self._lock:
            now = self._clock()
            start = self._window_start(max(now, self._next_start), units)
            self._started.append((start, units))
            self._in_window += units
            self._next_start = start + units / self.rate
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def _window_start(self, start: float, units: float) -> float:
        """The earliest time from ``start`` at which the window has room for ``units`` (caller holds the lock)."""
        self._forget_before(start - self.span)
        while self._started and self._in_window + units > self.capacity:
            oldest, _ = self._started[0]
            start = max(start, oldest + self.span)  # wait for the oldest start to leave the window
            self._forget_before(start - self.span)
        return start

    def _forget_before(self, horizon: float) -> None:
        while self._started and self._started[0][0] <= horizon:
            self._in_window -= self._started.popleft()[1]
