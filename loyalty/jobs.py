"""Units of batch work on member id ranges, called by the Prefect flows and the CLI.

Flows hand these functions id bounds, never rows or sessions (Prefect inspects task
arguments, and rows would be slow and leak data into its database). Each call opens its
own transaction, so a retried chunk either happened completely or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loyalty.db import create_db_engine, fetch_rows, session_scope
from loyalty.expiry import expire_points
from loyalty.models import MEMBERS
from loyalty.programme import Programme, load_programme
from loyalty.settings import Settings, load_settings
from loyalty.tiers import evaluate_tiers
from loyalty.types import TierDirection

IdRange = tuple[int, int]


@dataclass(frozen=True)
class Runtime:
    """What a worker process needs: settings, one engine, the validated programme."""

    settings: Settings
    engine: Engine
    programme: Programme


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """This process's runtime, built on first use from the environment and config files."""
    settings = load_settings()
    return Runtime(settings, create_db_engine(settings.database_url), load_programme(settings.config_dir))


def member_id_ranges(engine: Engine, chunk_size: int) -> list[IdRange]:
    """Split the member ids into ``[start, stop)`` ranges of at most ``chunk_size`` ids."""
    with engine.connect() as connection:
        [(low, high)] = fetch_rows(connection, sa.select(sa.func.min(MEMBERS.c.id), sa.func.max(MEMBERS.c.id)))
    if low is None or high is None:
        return []
    return [(start, min(start + chunk_size, high + 1)) for start in range(low, high + 1, chunk_size)]


def expire_chunk(id_range: IdRange, as_of: datetime) -> dict[str, int]:
    """Expire due points for members in ``id_range``."""
    rt = runtime()
    with session_scope(rt.engine) as session:
        result = expire_points(session, rt.programme, as_of=as_of, id_range=id_range)
    return {"members_expired": result.members, "points_expired": result.points}


def evaluate_chunk(id_range: IdRange, as_of: datetime) -> dict[str, int]:
    """Re-evaluate tiers for members in ``id_range``; moves are recorded as TierChange rows."""
    rt = runtime()
    with session_scope(rt.engine) as session:
        changes = evaluate_tiers(session, rt.programme, as_of=as_of, id_range=id_range)
    ups = sum(change.direction is TierDirection.UP for change in changes)
    return {"upgrades": ups, "downgrades": len(changes) - ups}
