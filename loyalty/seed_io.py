"""Bulk writing for the synthetic population (:mod:`loyalty.seed`).

The seeder writes tens of millions of rows, so it bypasses the ORM and SQLAlchemy's
per-value type processing: rows go to the DBAPI cursor as plain tuples, through
``executemany`` on SQLite and ``COPY ... FROM STDIN`` on PostgreSQL (psycopg 3). Values
are therefore pre-converted to what :class:`loyalty.types.UTCDateTime` and the other column
types would have stored:

* timestamps are naive UTC; on SQLite, text in SQLAlchemy's exact storage format
  (``YYYY-MM-DD HH:MM:SS.ffffff``) so that string comparisons agree with bound parameters;
* dates are ``YYYY-MM-DD`` text on SQLite and :class:`datetime.date` on PostgreSQL;
* enums are their ``.value`` strings and JSON columns are ``json.dumps`` text.

Times travel through the seeder as ``int64`` microseconds since the Unix epoch (UTC).
Ids are assigned by the seeder (the tables it fills are empty), so rows are identical on
every backend; :meth:`BulkWriter.sync_sequence` moves PostgreSQL's sequences past them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Column = Sequence[Any] | np.ndarray


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch for an aware datetime."""
    return (moment.astimezone(UTC) - _EPOCH) // _MICROSECOND



def from_us(us: int) -> datetime:
    """The aware UTC datetime for ``us`` microseconds since the epoch."""
    return _EPOCH + int(us) * _MICROSECOND


class BulkWriter:
    """Writes column-oriented batches into tables on the session's current connection.

    It never commits: rows join the session's transaction, like every other write.
    """

    def __init__(self, session: Session, chunk_size: int) -> None:
        self.session = session
        self.chunk_size = max(1, chunk_size)
        self.dialect = session.get_bind().dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"bulk seeding supports sqlite and postgresql, not {self.dialect}")

    # -- value conversion -------------------------------------------------------------
    def times(self, us: np.ndarray) -> list[Any]:
        """Database values for UTC timestamps given as microseconds since the epoch."""
        moments = np.asarray(us, dtype=np.int64).astype("datetime64[us]")
        if self.dialect == "postgresql":
            return moments.tolist()  # naive datetimes, as UTCDateTime binds them
        text = moments.astype("U26")
        text.view(np.uint32).reshape(-1, 26)[:, 10] = ord(" ")  # ISO 'T' -> SQLAlchemy's space
        return text.tolist()

    def optional_times(self, us: np.ndarray, present: np.ndarray) -> list[Any]:
        """Like :meth:`times`, with ``None`` where ``present`` is false."""
        values = self.times(us)
        return [v if keep else None for v, keep in zip(values, present.tolist(), strict=True)]

    def dates(self, days: np.ndarray) -> list[Any]:
        """Database values for dates given as days since the epoch."""
        as_dates = np.asarray(days, dtype=np.int64).astype("datetime64[D]")
        return as_dates.tolist() if self.dialect == "postgresql" else as_dates.astype("U10").tolist()

    def bools(self, flags: np.ndarray) -> list[Any]:
        """Database values for booleans (SQLite stores 0/1)."""
        values = np.asarray(flags, dtype=bool)
        return values.tolist() if self.dialect == "postgresql" else values.astype(np.int8).tolist()

    @staticmethod
    def as_json(value: Any) -> str:
        """A JSON column value."""
        return json.dumps(value, sort_keys=True)

    # -- writing ----------------------------------------------------------------------
    def insert(self, table: str, columns: Mapping[str, Column]) -> int:
        """Insert rows given column-wise (equal-length sequences); returns the row count."""
        names = list(columns)
        data: list[list[Any]] = [col.tolist() if isinstance(col, np.ndarray) else list(col) for col in columns.values()]
        count = len(data[0]) if data else 0
        if any(len(col) != count for col in data):
            raise ValueError(f"{table}: columns have different lengths")
        if count == 0:
            return 0
        raw = self.session.connection().connection.driver_connection
        cursor = raw.cursor()  # type: ignore[union-attr]
        try:
            for rows in _chunks(data, count, self.chunk_size):
                if self.dialect == "postgresql":
                    with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    marks = ", ".join("?" * len(names))
                    cursor.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", rows)
        finally:
            cursor.close()
        return count

    def update_rows(self, table: str, ids: np.ndarray, columns: Mapping[str, Column]) -> None:
        """``UPDATE table SET col = value ... WHERE id = ?`` for each row (executemany)."""
        mark = "%s" if self.dialect == "postgresql" else "?"
        sets = ", ".join(f"{name} = {mark}" for name in columns)
        data: list[list[Any]] = [col.tolist() if isinstance(col, np.ndarray) else list(col)
                                 for col in [*columns.values(), ids]]
        raw = self.session.connection().connection.driver_connection
        cursor = raw.cursor()  # type: ignore[union-attr]
        try:
            for rows in _chunks(data, len(ids), self.chunk_size):
                cursor.executemany(f"UPDATE {table} SET {sets} WHERE id = {mark}", rows)
        finally:
            cursor.close()

    def next_id(self, table: str) -> int:
        """The first free id of ``table`` (ids are assigned here, not by the database)."""
        found = self.session.execute(sa.text(f"SELECT COALESCE(MAX(id), 0) FROM {table}")).scalar()
        return int(found or 0) + 1

    def sync_sequence(self, *tables: str) -> None:
        """Move PostgreSQL's id sequences past explicitly inserted ids (no-op on SQLite)."""
        if self.dialect != "postgresql":
            return
        for table in tables:
            self.session.execute(sa.text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), MAX(id)) FROM {table} HAVING MAX(id) > 0"
            ))


def drop_indexes(session: Session, tables: Sequence[sa.Table]) -> list[sa.Index]:
    """Drop the plain (non-unique) indexes of ``tables``; returns them for :func:`create_indexes`.

    Maintaining secondary indexes row by row costs more than building them once at the end
    (SQLite sorts once; random b-tree inserts dirty pages all over the file). Inside the
    seeding transaction the drop is undone if anything fails.
    """
    dropped = [index for table in tables for index in sorted(table.indexes, key=lambda i: str(i.name))
               if not index.unique]
    for index in dropped:
        session.execute(sa.schema.DropIndex(index))
    return dropped


def create_indexes(session: Session, indexes: Sequence[sa.Index]) -> None:
    """Re-create indexes dropped by :func:`drop_indexes`, from the same table metadata."""
    for index in indexes:
        session.execute(sa.schema.CreateIndex(index))


def _chunks(data: list[list[Any]], count: int, size: int) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, count, size):
        stop = min(count, start + size)
        yield list(zip(*(col[start:stop] for col in data), strict=True))
