"""Reading import files: header checks, streaming chunks of rows, and per-row validation.

Nothing here touches the database, so validation can run in another process
(:mod:`loyalty.importing` does, for big files). Rows are plain tuples: cheap to build and to
pickle. A row that fails validation raises :class:`RowError` whose message names every
bad field (``"email: ...; phone: ..."``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from operator import itemgetter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from zoneinfo import available_timezones

from loyalty.contact import ContactError, email_fast_path, normalise_email, normalise_phone

if TYPE_CHECKING:
    from _csv import Reader  # the type csv.reader returns (the csv module does not re-export it)

MEMBER_COLUMNS = ("external_id", "first_name", "last_name", "email", "phone", "locale", "time_zone",
                  "joined_at", "birthday", "email_opt_in", "sms_opt_in")
MEMBER_REQUIRED = frozenset({"external_id"})
TRANSACTION_COLUMNS = ("external_id", "member_external_id", "amount", "currency", "category", "channel",
                       "occurred_at")
TRANSACTION_REQUIRED = frozenset({"external_id", "member_external_id", "amount", "occurred_at"})
SPECS = {"members": (MEMBER_COLUMNS, MEMBER_REQUIRED), "transactions": (TRANSACTION_COLUMNS, TRANSACTION_REQUIRED)}

DEFAULT_LOCALE = "en_CA"
DEFAULT_TIME_ZONE = "America/Toronto"
CHANNELS = frozenset({"store", "online", "app"})
FIRST_CHUNK_ROWS = 500
MAX_AMOUNT_CENTS = 10**12  # ten billion in currency units: anything bigger is a data error

# Row shapes handed to the writers (tuples, in this order):
#   member:      external_id, first_name, last_name, email, phone, locale, time_zone,
#                joined_at (aware UTC | None = not given), birthday, email_opt_in, sms_opt_in
#   transaction: external_id, member_external_id, amount_cents, currency, category, channel,
#                occurred_at (aware UTC)
MemberRow = tuple[str, str, str, str | None, str | None, str, str, datetime | None, date | None,
                  bool | None, bool | None]
TransactionRow = tuple[str, str, int, str, str, str, datetime]
#: A rejected row: physical line, reason, the fields as read.
Reject = tuple[int, str, Sequence[str]]

_LOCALE = re.compile(r"[a-z]{2}_[A-Z]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SUSPECT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control characters, or bytes that were not UTF-8
_NOT_UTF8 = re.compile(r"[\ud800-\udfff]")  # how surrogateescape decoding keeps undecodable bytes
_AMOUNT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_FLAGS: dict[str, bool | None] = {
    "": None, "true": True, "yes": True, "1": True, "false": False, "no": False, "0": False,
}


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (unreadable, bad header); nothing was loaded."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, for the validation process
        return (type(self), (self.path, self.message))


class RowError(ValueError):
    """A row is invalid; the message names the fields and why."""


@dataclass(frozen=True)
class FileLayout:
    """Where each known column sits in the file's rows (``None``: the column is absent)."""

    header: tuple[str, ...]  # as written in the file
    positions: tuple[int | None, ...]

    def getter(self) -> itemgetter[Any]:
        """Picks the known columns, in canonical order, from a row padded with one ``""``."""
        pad = len(self.header)
        return itemgetter(*[pad if p is None else p for p in self.positions])


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of a file, validated: the good ones, the rejects, and how many were read."""

    rows: list[Any] = field(default_factory=list)  # members: MemberRow; transactions: (line, row, fields)
    rejects: list[Reject] = field(default_factory=list)
    read: int = 0


def open_source(path: Path) -> IO[str]:
    """Open an import file: UTF-8 with or without BOM, any line ending, bad bytes kept for rejects."""
    try:
        return path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise ImportFileError(path, f"cannot open: {exc.strerror or exc}") from None


def read_layout(path: Path, reader: Reader, columns: Sequence[str], required: frozenset[str]) -> FileLayout:
    """Read and check the header row; ImportFileError names missing, unknown or repeated columns."""
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportFileError(path, f"unreadable header row: {exc}") from None
    if not header or not any(name.strip() for name in header):
        raise ImportFileError(path, "empty file: expected a header row naming the columns")
    names = tuple(name.strip().lower() for name in header)
    problems = []
    if missing := sorted(required - set(names)):
        problems.append("missing required column(s): " + ", ".join(missing))
    if unknown := [name for name in names if name not in columns]:
        problems.append("unknown column(s): " + ", ".join(repr(n) for n in unknown)
                        + " (expected: " + ", ".join(columns) + ")")
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        problems.append("repeated column(s): " + ", ".join(repeated))
    if problems:
        raise ImportFileError(path, "; ".join(problems))
    return FileLayout(tuple(header), tuple(names.index(c) if c in names else None for c in columns))


class RowChecker:
    """Reads and validates a file's rows a chunk at a time, remembering external ids across chunks."""

    def __init__(self, layout: FileLayout, kind: str, context: Any) -> None:
        self.parse = parse_member if kind == "members" else parse_transaction
        # Good transaction rows keep their fields: the database may still refuse them (unknown
        # member) and a reject carries the row as read. Member rows need neither line nor fields.
        self.keep_fields = kind != "members"
        self.context = context
        self.width, self.key = len(layout.header), layout.positions[0] or 0
        self.pick = layout.getter()
        self.in_order = layout.positions == tuple(range(self.width))  # all columns, canonical order: no picking
        self.seen: dict[str, int] = {}  # external_id -> first line: the one thing that grows with the file

    def next_chunk(self, reader: Reader, size: int) -> Chunk:
        """Up to ``size`` more rows (blank lines skipped), validated; ``read == 0`` at the end."""
        chunk = Chunk()
        read, last = 0, reader.line_num
        while read < size:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # e.g. an over-long field: reject the row, carry on with the next
                chunk.rejects.append((last + 1, f"csv: {exc}", []))
                read, last = read + 1, reader.line_num
                continue
            line, last = last + 1, reader.line_num
            if fields:
                read += 1
                self.check(line, fields, chunk)
        return Chunk(chunk.rows, chunk.rejects, read)

    def check(self, line: int, fields: list[str], chunk: Chunk) -> None:
        """Validate one row into ``chunk``: a good row, or a reject naming why."""
        ext = fields[self.key].strip() if len(fields) > self.key else ""
        if ext and (first := self.seen.setdefault(ext, line)) != line:
            chunk.rejects.append((line, f"duplicate external_id in file (first seen on line {first})", fields))
        elif len(fields) != self.width:
            chunk.rejects.append((line, f"expected {self.width} fields (as in the header), found {len(fields)}",
                                  fields))
        else:
            try:
                parsed = self.parse(fields if self.in_order else self.pick([*fields, ""]), self.context)
            except RowError as exc:
                chunk.rejects.append((line, str(exc), fields))
                return
            chunk.rows.append((line, parsed, fields) if self.keep_fields else parsed)


def validated_chunks(source: Path, kind: str, context: Any, size: int) -> Generator[Chunk]:
    """Stream ``source`` as validated chunks of ``size`` rows; later repeats of an external_id are rejected.

    The first chunk is smaller, so that a writer waiting on a helper process starts sooner.
    """
    columns, required = SPECS[kind]
    with open_source(source) as handle:
        reader = csv.reader(handle)
        checker = RowChecker(read_layout(source, reader, columns, required), kind, context)
        next_size = min(size, FIRST_CHUNK_ROWS)
        while (chunk := checker.next_chunk(reader, next_size)).read:
            yield chunk
            next_size = size


def file_layout(source: Path, kind: str) -> FileLayout:
    """The checked header of ``source`` (raises ImportFileError before anything is loaded)."""
    columns, required = SPECS[kind]
    with open_source(source) as handle:
        return read_layout(source, csv.reader(handle), columns, required)


# -------------------------------------------------------------------------------- members


@dataclass(frozen=True)
class MemberContext:
    """What member rows are checked against."""

    now: datetime
    today: date
    zones: frozenset[str]

    @classmethod
    def at(cls, now: datetime) -> MemberContext:
        """The context of an import started at ``now`` (aware)."""
        return cls(now, now.astimezone(UTC).date(), time_zones())


def parse_member(values: Sequence[str], context: MemberContext) -> MemberRow:
    """Validate one member row (canonical column order); RowError names every bad field."""
    # Written for speed (this runs for every row): cheap checks first, helpers only for non-empty fields.
    ext, first, last, email, phone, locale, zone, joined, birthday, email_in, sms_in = map(str.strip, values)
    errors: list[str] = []
    if not ext or len(ext) > 64 or len(first) > 100 or len(last) > 100 or _SUSPECT.search(ext + first + last):
        errors += _text_errors(("external_id", ext, 64), ("first_name", first, 100), ("last_name", last, 100))
    locale = locale or DEFAULT_LOCALE
    if not _locale_ok(locale):
        errors.append(f"locale: {locale!r} is not like fr_CA (language_REGION)")
    zone = zone or DEFAULT_TIME_ZONE
    if zone not in context.zones:
        errors.append(_zone_reason(zone))
    email_out = (email_fast_path(email) or _email(errors, email)) if email else None
    phone_out = _phone(errors, phone, locale[3:]) if phone else None
    joined_at = _past(errors, "joined_at", joined, context.now) if joined else None
    born = _birthday(errors, birthday, context.today) if birthday else None
    email_opt_in = _flag(errors, "email_opt_in", email_in) if email_in else None
    sms_opt_in = _flag(errors, "sms_opt_in", sms_in) if sms_in else None
    if errors:
        raise RowError("; ".join(errors))
    return (ext, first, last, email_out, phone_out, locale, zone, joined_at, born, email_opt_in, sms_opt_in)


def _text_errors(*checks: tuple[str, str, int]) -> list[str]:
    errors = []
    for name, value, limit in checks:
        if len(value) > limit:
            errors.append(f"{name}: longer than {limit} characters")
        if _CONTROL.search(value):
            errors.append(f"{name}: contains a control character")
        if _NOT_UTF8.search(value):
            errors.append(f"{name}: is not valid UTF-8")
        if not value and name in ("external_id", "member_external_id"):
            errors.append(f"{name}: required")
    return errors


@lru_cache(maxsize=1024)
def _locale_ok(locale: str) -> bool:
    return _LOCALE.fullmatch(locale) is not None


# Field checks: each returns the clean value, or notes "field: reason" in ``errors`` and returns None.


def _email(errors: list[str], raw: str) -> str | None:
    try:
        return normalise_email(raw)
    except ContactError as exc:
        errors.append(f"email: {exc}")
        return None


def _phone(errors: list[str], raw: str, region: str) -> str | None:
    try:
        return normalise_phone(raw, region)
    except ContactError as exc:
        errors.append(f"phone: {exc}")
        return None


def _past(errors: list[str], name: str, raw: str, now: datetime) -> datetime | None:
    try:
        value = parse_datetime(raw)
    except ValueError as exc:
        errors.append(f"{name}: {exc}")
        return None
    if value > now:
        errors.append(f"{name}: {raw!r} is in the future")
        return None
    return value


def _birthday(errors: list[str], raw: str, today: date) -> date | None:
    try:
        value = date.fromisoformat(raw)
    except ValueError:
        errors.append(f"birthday: {raw!r} is not an ISO date (YYYY-MM-DD)")
        return None
    if value > today:
        errors.append(f"birthday: {raw!r} is in the future")
        return None
    return value


@cache
def time_zones() -> frozenset[str]:
    """The IANA zone names this system knows (computed once: it walks the tz database)."""
    return frozenset(available_timezones())


@cache
def _zones_by_folded_name() -> dict[str, str]:
    return {zone.casefold(): zone for zone in time_zones()}


def _zone_reason(zone: str) -> str:
    hint = _zones_by_folded_name().get(zone.casefold())
    return f"time_zone: unknown IANA time zone {zone!r}" + (f" (did you mean {hint!r}?)" if hint else "")


@lru_cache(maxsize=4096)  # dates repeat a lot in member files; parsing them once is enough
def parse_datetime(raw: str) -> datetime:
    """An ISO date or datetime as aware UTC; naive means UTC, a bare date midnight UTC."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not an ISO date or datetime (e.g. 2024-05-17T14:30:00)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _flag(errors: list[str], name: str, raw: str) -> bool | None:
    key = raw.lower()
    if key not in _FLAGS:
        errors.append(f"{name}: {raw!r} is not one of true/false/yes/no/1/0 (or empty)")
        return None
    return _FLAGS[key]


# --------------------------------------------------------------------------- transactions


@dataclass(frozen=True)
class TransactionContext:
    """What transaction rows are checked against."""

    now: datetime
    currency: str


def parse_transaction(values: Sequence[str], context: TransactionContext) -> TransactionRow:
    """Validate one transaction row (canonical column order); RowError names every bad field."""
    ext, member, amount, currency, category, channel, occurred = map(str.strip, values)
    errors = _text_errors(("external_id", ext, 64), ("member_external_id", member, 64), ("category", category, 32))
    errors += [f"{name}: required" for name, value in (("amount", amount), ("occurred_at", occurred)) if not value]
    cents = _amount(errors, amount) if amount else 0
    currency = currency.upper() or context.currency
    if currency != context.currency:
        errors.append(f"currency: {currency!r} is not the programme's currency ({context.currency})")
    channel = channel.lower() or "store"
    if channel not in CHANNELS:
        errors.append(f"channel: {channel!r} is not one of " + ", ".join(sorted(CHANNELS)))
    occurred_at = _past(errors, "occurred_at", occurred, context.now) if occurred else None
    if errors:
        raise RowError("; ".join(errors))
    return (ext, member, cast(int, cents), currency, category.lower() or "general", channel,
            cast(datetime, occurred_at))  # both set: no errors


def _amount(errors: list[str], raw: str) -> int | None:
    try:
        return amount_cents(raw)
    except ValueError as exc:
        errors.append(f"amount: {exc}")
        return None


def amount_cents(raw: str) -> int:
    """A decimal amount in currency units (``"12.5"``) as exact integer cents (``1250``)."""
    if not _AMOUNT.fullmatch(raw):
        raise ValueError(f"{raw!r} is not a decimal number like 12.50")
    try:
        cents = Decimal(raw) * 100
    except InvalidOperation:  # pragma: no cover - the pattern only lets decimals through
        raise ValueError(f"{raw!r} is not a decimal number like 12.50") from None
    if cents != cents.to_integral_value():
        raise ValueError(f"{raw!r} has more than 2 decimal places")
    if abs(cents) > MAX_AMOUNT_CENTS:
        raise ValueError(f"{raw!r} is out of range")
    return int(cents)
