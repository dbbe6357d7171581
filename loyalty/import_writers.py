"""The write side of imports: the member upsert, and the rejects file.

The member upsert is built with SQLAlchemy Core (the dialect's ``INSERT ... ON CONFLICT DO
UPDATE ... WHERE <something differs>``), compiled once per import with positional
parameters (values shared by all rows are literals), and run with the driver's
``executemany`` on tuples that :class:`~loyalty.import_pipeline.MemberEncoder` prepared.
Going through ``Connection.execute`` with dicts instead costs ~13 µs a row of generic
per-parameter processing (mostly formatting datetimes for SQLite), which alone would hold
an import under 60,000 rows/s. The encoder's value conversion is checked here against the
column types' own bind processors, so both paths store exactly the same values.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect, Engine

from loyalty.csv_rows import Reject
from loyalty.import_pipeline import CODECS, Encoded, MemberEncoder
from loyalty.models import CHANNEL_CONSENTS, MEMBERS

#: Profile fields an import may change on a known member (never tier or balance).
PROFILE_COLUMNS = ("first_name", "last_name", "email", "phone", "locale", "time_zone", "birthday")
_CONSENT_COLUMNS = ("member_id", "channel", "opted_in", "source", "recorded_at")
_BULK_AUTOCHECKPOINT_PAGES = 4000  # SQLite's default is 1000


class CodecMismatch(RuntimeError):
    """The fast value conversion no longer matches SQLAlchemy's (a library upgrade changed it)."""


class MemberWriter:
    """Upserts encoded member rows and their consents, one transaction per chunk.

    Use it as a context manager: it holds one connection for the whole import. On SQLite
    it also lets the write-ahead log grow to ~16 MB before checkpointing (instead of 4 MB),
    which saves ~20% of the write time of a bulk load (pages that every chunk touches are
    copied to the database once per checkpoint, not once per chunk), and checkpoints and
    restores the setting at the end.
    """

    def __init__(self, engine: Engine, entry_tier: str, now: datetime) -> None:
        self.engine = engine
        self._connection: sa.Connection | None = None
        self._autocheckpoint: int | None = None
        # What is the same for every row (tier, zero balance, the import's time, source) is
        # written into the statements once instead of being bound for each row.
        constants = _Constants(engine.dialect, entry_tier, now)
        dialect = _positional(engine.dialect)
        member_sql = _member_upsert(constants).compile(dialect=dialect, for_executemany=True)
        consent_sql = _consent_upsert(constants).compile(dialect=dialect, for_executemany=True)
        self._member_sql, self._consent_sql = str(member_sql), str(consent_sql)
        codec = "sqlite" if engine.dialect.name == "sqlite" else "native"
        check_codec(codec, engine.dialect)
        self.encoder = MemberEncoder(tuple(member_sql.positiontup or ()), tuple(consent_sql.positiontup or ()), codec)

    def __enter__(self) -> MemberWriter:
        self._connection = self.engine.connect()
        if self.engine.dialect.name == "sqlite":
            driver = _driver(self._connection)
            self._autocheckpoint = driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            driver.execute(f"PRAGMA wal_autocheckpoint={_BULK_AUTOCHECKPOINT_PAGES}")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        connection, self._connection = self._connection, None
        assert connection is not None
        try:
            if self._autocheckpoint is not None:
                driver = _driver(connection)
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)")
                driver.execute(f"PRAGMA wal_autocheckpoint={int(self._autocheckpoint)}")
        finally:
            connection.close()

    def write(self, chunk: Encoded) -> tuple[int, int]:
        """Upsert one chunk in its own transaction; returns (members, consents) inserted or updated."""
        if not chunk.members:
            return 0, 0
        if self._connection is None:
            raise RuntimeError("use MemberWriter as a context manager")
        with self._connection.begin():
            # rowcount sums over executemany; rows the WHERE clause spared do not count.
            changed = self._connection.exec_driver_sql(self._member_sql, chunk.members).rowcount
            consents = (self._connection.exec_driver_sql(self._consent_sql, chunk.consents).rowcount
                        if chunk.consents else 0)
        return changed, consents


def _driver(connection: sa.Connection) -> Any:
    """The DB-API connection under ``connection`` (pysqlite here: autocommit, so pragmas apply at once)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    return driver


def _positional(dialect: Dialect) -> Dialect:
    # Tuples are cheaper than dicts to build, pickle and bind; psycopg takes %s as well as %(name)s.
    return dialect if dialect.positional else type(dialect)(paramstyle="format")  # type: ignore[call-arg]


class _Constants:
    """Values shared by every row of an import, as SQL literals of ``dialect``."""

    def __init__(self, dialect: Dialect, entry_tier: str, now: datetime) -> None:
        self.dialect = dialect
        self.tier = self.literal(entry_tier, MEMBERS.c.tier)
        self.now = self.literal(now, MEMBERS.c.created_at)
        self.source = self.literal("import", CHANNEL_CONSENTS.c.source)

    def literal(self, value: Any, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        """``value`` rendered by ``column``'s type as a literal (bound values and literals store alike)."""
        sql = sa.literal(value, column.type).compile(dialect=self.dialect, compile_kwargs={"literal_binds": True})
        return sa.literal_column(str(sql), column.type)

    def insert(self, table: sa.Table) -> Any:
        return (pg_insert if self.dialect.name == "postgresql" else sqlite_insert)(table)


def _member_upsert(constants: _Constants) -> sa.Insert:
    # joined_at_given is the file's joined_at, NULL when empty: a new member then joined now,
    # a known one keeps the stored date.
    given = sa.bindparam("joined_at_given", type_=MEMBERS.c.joined_at.type)
    row = {c: sa.bindparam(c, type_=MEMBERS.c[c].type) for c in ("external_id", *PROFILE_COLUMNS)}
    stmt = constants.insert(MEMBERS).values(
        **row, tier=constants.tier, points_balance=sa.literal_column("0"),
        joined_at=sa.func.coalesce(given, constants.now), created_at=constants.now, updated_at=constants.now)
    joined = sa.func.coalesce(given, MEMBERS.c.joined_at)
    differs = [MEMBERS.c[c].is_distinct_from(stmt.excluded[c]) for c in PROFILE_COLUMNS]
    return stmt.on_conflict_do_update(
        index_elements=[MEMBERS.c.external_id],
        set_={**{c: stmt.excluded[c] for c in PROFILE_COLUMNS}, "joined_at": joined, "updated_at": constants.now},
        # Only rows that really change are written: an identical re-import touches nothing.
        where=sa.or_(*differs, MEMBERS.c.joined_at.is_distinct_from(joined)),
    )


def _consent_upsert(constants: _Constants) -> sa.Insert:
    consents = CHANNEL_CONSENTS
    member = sa.select(
        MEMBERS.c.id,
        sa.bindparam("channel", type_=consents.c.channel.type),
        sa.bindparam("opted_in", type_=consents.c.opted_in.type),
        constants.source,
        constants.now,
    ).where(MEMBERS.c.external_id == sa.bindparam("external_id", type_=MEMBERS.c.external_id.type))
    stmt = constants.insert(consents).from_select(list(_CONSENT_COLUMNS), member)
    return stmt.on_conflict_do_update(
        index_elements=[consents.c.member_id, consents.c.channel],
        set_={c: stmt.excluded[c] for c in ("opted_in", "source", "recorded_at")},
        # Withdrawing is always applied; re-granting only over a consent an import recorded.
        where=consents.c.opted_in.is_distinct_from(stmt.excluded.opted_in)
        & (sa.not_(stmt.excluded.opted_in) | (consents.c.source == constants.source)),
    )


def check_codec(codec: str, dialect: Dialect) -> None:
    """Raise CodecMismatch unless ``codec`` converts like the columns' bind processors on ``dialect``."""
    to_datetime, to_date, to_bool = CODECS[codec]
    east = timezone(timedelta(hours=5, minutes=30))
    probes: list[tuple[sa.Column[Any], Any, Any]] = [
        *((MEMBERS.c.joined_at, v, to_datetime) for v in (datetime(2024, 2, 29, 23, 59, 58, 123, tzinfo=UTC),
                                                          datetime(1999, 1, 2, 3, 4, 5, tzinfo=east))),
        (MEMBERS.c.birthday, date(1985, 4, 12), to_date),
        *((CHANNEL_CONSENTS.c.opted_in, v, to_bool) for v in (True, False)),
    ]
    for column, value, convert in probes:
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        expected = value if process is None else process(value)
        if convert(value) != expected or type(convert(value)) is not type(expected):
            raise CodecMismatch(f"codec {codec!r} gives {convert(value)!r} for {column}, "
                                f"SQLAlchemy binds {expected!r}: update loyalty.import_pipeline.CODECS")


class RejectsFile:
    """``line,reason,<columns...>`` rows, written only once there is a reject.

    A run without rejects removes an older rejects file at the same path (recognised by
    its header), so the file next to a source always describes its latest import.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self.written = 0
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def add(self, rejects: Sequence[Reject]) -> None:
        """Append rejects, in line order."""
        if not rejects:
            return
        if self._writer is None:
            # surrogateescape writes undecodable bytes of the source back as they were.
            self._handle = self.path.open("w", encoding="utf-8", errors="surrogateescape", newline="")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["line", "reason", *self.columns])
        self._writer.writerows([line, reason, *fields] for line, reason, fields in sorted(rejects, key=_line))
        self.written += len(rejects)

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.close()
        elif exc is None and self.path.is_file() and _is_rejects_file(self.path):
            self.path.unlink()


def _line(reject: Reject) -> int:
    return reject[0]


def _is_rejects_file(path: Path) -> bool:
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        return handle.readline().startswith("line,reason")
