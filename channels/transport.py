"""Transport facts shared by the HTTP-based adapters: did a request leave, and when may we retry."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from urllib3.exceptions import MaxRetryError, NewConnectionError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header holding seconds or an HTTP date; None when absent or invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0)


def never_connected(exc: BaseException) -> bool:
    """True when the exception chain shows the TCP connection was never made (refused, DNS failure)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError | ConnectionRefusedError):
            return True
        if isinstance(current, MaxRetryError) and current.reason is not None:
            current = current.reason
        elif current.args and isinstance(current.args[0], BaseException):
            current = current.args[0]  # requests wraps urllib3's error as its first argument
        else:
            current = current.__cause__ or current.__context__
    return False
