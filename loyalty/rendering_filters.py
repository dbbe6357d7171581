"""Locale-aware filters for templates (Babel): money, numbers, points, plurals, dates.

Every filter reads the member's locale and time zone from the render context (a hidden
``_fmt`` value built by :mod:`loyalty.rendering`), so ``{{ 1250|points }}`` is "1,250 points" for
an ``en_CA`` member and "1 250 points" for a ``fr_CA`` member, and ``{{ 1250|money }}`` (cents) is
"$12.50" or "12,50 $".
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import pass_context
from jinja2.runtime import Context

#: The word after a points count, per language: (singular, plural) chosen by the locale's plural rules.
POINT_WORDS = {"en": ("point", "points"), "fr": ("point", "points")}


class Formatter:
    """Formats values for one locale, time zone and currency."""

    def __init__(self, locale: str, time_zone: str, currency: str) -> None:
        try:
            self.locale = Locale.parse(locale)
        except (ValueError, UnknownLocaleError):
            self.locale = Locale.parse("en_CA")
        try:
            self.tz = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            self.tz = ZoneInfo("America/Toronto")
        self.currency = currency
        self.language = self.locale.language

    def money(self, cents: int | float, currency: str | None = None) -> str:
        """An amount in minor units (cents) as money: "$12.50", "12,50 $"."""
        amount = Decimal(int(cents)) / 100
        return str(format_currency(amount, currency or self.currency, locale=self.locale))

    def number(self, value: int | float) -> str:
        """A number with the locale's grouping and decimal mark: "1,250" / "1 250"."""
        return str(format_decimal(value, locale=self.locale))

    def percent(self, value: int | float) -> str:
        """A share (0.1) or a whole percentage (10) as a percent: "10%" / "10 %"."""
        share = value / 100 if abs(value) > 1 else value
        return str(format_percent(share, locale=self.locale))

    def plural(self, count: int | float, singular: str, plural: str) -> str:
        """``singular`` or ``plural`` by the locale's rules (French: 0 and 1 are singular)."""
        return singular if self.locale.plural_form(abs(count)) == "one" else plural

    def points(self, count: int | float) -> str:
        """A points count with its word: "1 point", "1,250 points", "0 point" (fr)."""
        singular, plural = POINT_WORDS.get(self.language, POINT_WORDS["en"])
        return f"{self.number(count)} {self.plural(count, singular, plural)}"

    def date(self, value: date | datetime, format: str = "long") -> str:
        """A date in the member's language: "March 5, 2026" / "5 mars 2026"."""
        if isinstance(value, datetime):
            value = value.astimezone(self.tz).date() if value.tzinfo else value.date()
        return str(format_date(value, format=format, locale=self.locale))

    def datetime(self, value: datetime, format: str = "medium") -> str:
        """A moment in the member's time zone and language."""
        return str(format_datetime(value, format=format, tzinfo=self.tz, locale=self.locale))


@lru_cache(maxsize=256)
def formatter(locale: str, time_zone: str, currency: str) -> Formatter:
    """The (cached) formatter for a locale, zone and currency."""
    return Formatter(locale, time_zone, currency)


def _filter(method: str) -> Callable[..., str]:
    @pass_context
    def apply(context: Context, value: Any, *args: Any) -> str:
        fmt: Formatter = context.parent["_fmt"]
        return str(getattr(fmt, method)(value, *args))

    apply.__name__ = method
    return apply


#: Filters added to the sandbox; documented in ``templates/README.md``.
LOCALE_FILTERS: dict[str, Callable[..., str]] = {
    name: _filter(name) for name in ("money", "number", "percent", "plural", "points", "date", "datetime")
}
