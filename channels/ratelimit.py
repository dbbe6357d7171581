"""A thread-safe token bucket that paces sends to a provider's rate.

Design (why it starts full but holds only one unit by default):
the bucket refills at `rate` units per second up to `burst` units and starts full. A caller *reserves* its units
at once (the balance may go negative, which queues later callers behind it in arrival order) and then sleeps until
the balance has climbed back to zero. So a request bigger than `burst` (a 6-segment SMS on a 1/s sender) is allowed
and simply waits longer; nothing can deadlock.

Guarantee: in any window of length t, the units granted are less than `max(burst, u) + rate * t`, where u is the
size of the first grant in the window. (Proof sketch: just after a grant the balance, net of every reservation made
so far, is at most `burst - u`, or 0 if that grant had to wait; it then grows by at most `rate * t` and must still
be >= 0 at each later grant.) With the default `burst` of one unit and unit grants, a one-second window therefore
holds fewer than `rate + 1` grants, i.e. at most `rate` for an integer rate. A bucket starting full with
`burst == rate` would allow up to `2 * rate` in one second, which providers count as over the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Pace work to `rate_per_second` units per second, allowing bursts of up to `burst` units (default 1)."""

    def __init__(
        self,
        rate_per_second: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be positive, got {rate_per_second!r}")
        burst = 1.0 if burst is None else float(burst)
        if not burst > 0:
            raise ValueError(f"burst must be positive, got {burst!r}")
        self.rate = float(rate_per_second)
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._balance = burst  # may go negative: units reserved by callers still waiting
        self._updated = clock()

    def _refill(self, now: float) -> None:
        # Callers hold the lock. max() guards against a clock that steps back.
        elapsed = max(0.0, now - self._updated)
        self._balance = min(self.burst, self._balance + elapsed * self.rate)
        self._updated = now

    def acquire(self, units: float = 1.0) -> float:
        """Block until `units` may be used; return the seconds waited.

        Any positive size is allowed: sizes above `burst` just wait for the refill. Callers are served in the order
        they called (their reservations queue on the balance), so a large request cannot be starved by small ones.
        """
        if units < 0:
            raise ValueError(f"units must be >= 0, got {units!r}")
        with self._lock:
            self._refill(self._clock())
            self._balance -= units
            wait = max(0.0, -self._balance / self.rate)
        if wait > 0:
            self._sleep(wait)  # outside the lock, so other callers can queue their reservations meanwhile
        return wait

    def try_acquire(self, units: float = 1.0) -> bool:
        """Take `units` now if they are available without waiting; never blocks.

        Returns False while anyone is queued, and always for `units > burst` (use `acquire` for those).
        """
        if units < 0:
            raise ValueError(f"units must be >= 0, got {units!r}")
        with self._lock:
            self._refill(self._clock())
            if self._balance < units:
                return False
            self._balance -= units
            return True
