"""Shared fixtures: a migrated database on every backend under test.

SQLite always; PostgreSQL too when ``LOYALFLOW_TEST_POSTGRES_URL`` is set (CI sets it). Each
PostgreSQL test gets a schema of its own, dropped afterwards, so tests never see each
other's rows and can run against a shared database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.db import create_db_engine, session_scope, upgrade
from loyalty.programme import Programme, load_programme, sync_catalogue

REPO_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("LOYALFLOW_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


def make_engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    """A freshly migrated, empty database on ``backend``; dropped when the generator ends."""
    if backend == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path / 'loyalflow.db'}")
        upgrade(engine)
        yield engine
        engine.dispose()
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need LOYALFLOW_TEST_POSTGRES_URL")
    schema = f"lf_test_{uuid.uuid4().hex[:12]}"
    admin = create_db_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = create_db_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def database_url(engine: Engine) -> str:
    """A URL another process (a CLI, a subprocess) can use to reach ``engine``'s database, schema included."""
    url = engine.url
    if url.get_backend_name() == "postgresql":  # carry the test's private schema along
        with engine.connect() as connection:
            schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
        url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test."""
    return str(request.param)


@pytest.fixture
def bare_engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database with no rows at all."""
    yield from make_engine(backend, tmp_path)


@pytest.fixture(scope="session")
def programme() -> Programme:
    """The programme shipped in ``config/``."""
    return load_programme(REPO_ROOT / "config")


@pytest.fixture
def engine(bare_engine: Engine, programme: Programme) -> Engine:
    """A migrated database with the configured tiers and offers synced."""
    with session_scope(bare_engine) as session:
        sync_catalogue(session, programme)
    return bare_engine


@pytest.fixture
def sqlite_engine(tmp_path: Path, programme: Programme) -> Iterator[Engine]:
    """A migrated SQLite *file* database with the catalogue synced, whatever the backend parameter:
    for browser tests, whose server thread must share it."""
    for engine in make_engine("sqlite", tmp_path):
        with session_scope(engine) as session:
            sync_catalogue(session, programme)
        yield engine


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on :func:`engine`; commit explicitly when a test needs to."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect API for the whole session (its startup costs 10-15 s)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def app_env(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """Point the process-wide runtime (used by flows and the CLI) at the test database."""
    from loyalty import jobs

    monkeypatch.setenv("LOYALFLOW_DATABASE_URL", database_url(engine))  # with the PostgreSQL test schema
    monkeypatch.setenv("LOYALFLOW_CONFIG_DIR", str(REPO_ROOT / "config"))
    jobs.runtime.cache_clear()
    yield engine
    jobs.runtime.cache_clear()


@pytest.fixture
def flow_env(app_env: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """``app_env`` with var/ (and the sandbox) in ``tmp_path``, no quiet hours (tests may run at night), no
    flow heartbeats."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from loyalty import jobs

    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(REPO_ROOT / "templates"))
    monkeypatch.setenv("LOYALFLOW_POLICY__QUIET_HOURS_START", "00:00")
    monkeypatch.setenv("LOYALFLOW_POLICY__QUIET_HOURS_END", "00:00")
    jobs.runtime.cache_clear()
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield app_env
