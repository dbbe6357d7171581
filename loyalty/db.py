"""Engines, sessions and migrations.

One engine per process, built from the settings. SQLite gets the pragmas that make it a
serious local database (WAL, foreign keys, a busy timeout so concurrent writers wait instead
of failing). The schema is created and upgraded by Alembic (:func:`upgrade`), never by
``create_all`` outside tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url``; for a SQLite file, create its folder too."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so that
        # SELECT ... then UPDATE inside one transaction is really isolated.
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level: SQLAlchemy's "begin" listener above owns transactions.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def is_sqlite(engine: Engine) -> bool:
    """Whether ``engine`` talks to SQLite (some statements differ)."""
    return engine.dialect.name == "sqlite"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def expire_cached(session: Session, model: type, ids: set[int]) -> None:
    """Expire loaded ``model`` objects whose rows a bulk statement just changed.

    Set-based updates bypass the ORM's identity map; without this a caller holding one of
    those objects would go on reading stale values.
    """
    for obj in list(session.identity_map.values()):
        if isinstance(obj, model) and getattr(obj, "id", None) in ids:
            session.expire(obj)


def fetch_rows(connection: Session | sa.Connection, query: sa.Executable) -> list[tuple[Any, ...]]:
    """Run ``query`` and return plain tuples (typed loosely: columns of computed SQL are untyped)."""
    return [tuple(row) for row in connection.execute(query)]


def count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    """``COUNT`` of the rows where ``condition`` holds (portable: no ``FILTER`` clause on old SQLite)."""
    return sa.func.count(sa.case((condition, 1)))


def balanced_ranges(engine: Engine, ids: sa.ColumnElement[int], where: sa.ColumnElement[bool],
                    chunk_size: int) -> list[tuple[int, int]]:
    """Half-open ``(lo, hi)`` ranges of ``ids``, each holding ``chunk_size`` rows matching ``where``.

    Cut on the matching rows, not raw ids, so chunks stay even however sparse the matches are:
    one statement numbers them and keeps every ``chunk_size``-th id.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    numbered = (sa.select(ids.label("id"), sa.func.row_number().over(order_by=ids).label("n"),
                          sa.func.max(ids).over().label("last")).where(where).subquery())
    query = (sa.select(numbered.c.id, numbered.c.last)
             .where((numbered.c.n - 1) % chunk_size == 0).order_by(numbered.c.id))
    with engine.connect() as connection:
        rows = fetch_rows(connection, query)
    if not rows:
        return []
    starts = [int(row[0]) for row in rows]
    return list(zip(starts, [*starts[1:], int(rows[0][1]) + 1], strict=True))


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration bound to ``engine`` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` drops everything)."""
    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
