"""``loyalflow demo``: from an empty folder to a running programme on the embedded defaults.

SQLite under ``var/``, Prefect's temporary API server (no Prefect server to install), no
provider keys. Each step is idempotent, so running the demo again reuses what exists.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from rich.console import Console
from sqlalchemy.engine import Engine

from loyalty.cli_show import table
from loyalty.db import fetch_rows, session_scope, upgrade
from loyalty.models import CAMPAIGN_ASSIGNMENTS, CHANNEL_CONSENTS, MEMBERS, TIER_CHANGES
from loyalty.programme import Programme, sync_catalogue

if TYPE_CHECKING:
    from loyalty.cli import AppContext


def programme_summary(engine: Engine) -> dict[str, Any]:
    """Headline counts of the programme, for people to read."""
    with engine.connect() as c:
        def counts(column: sa.Column[Any], *where: sa.ColumnElement[bool]) -> dict[str, int]:
            query = sa.select(column, sa.func.count()).where(*where).group_by(column)
            return {str(key): int(n) for key, n in fetch_rows(c, query)}

        tiers = counts(MEMBERS.c.tier)
        locales = counts(MEMBERS.c.locale)
        consents = counts(CHANNEL_CONSENTS.c.channel, CHANNEL_CONSENTS.c.opted_in.is_(True))
        arms = counts(CAMPAIGN_ASSIGNMENTS.c.arm)
        points = c.scalar(sa.select(sa.func.coalesce(sa.func.sum(MEMBERS.c.points_balance), 0)))
        pending = c.scalar(sa.select(sa.func.count()).select_from(TIER_CHANGES)
                           .where(TIER_CHANGES.c.handled_at.is_(None), TIER_CHANGES.c.direction == "up"))
    return {"tiers": tiers, "locales": locales, "consents": consents, "arms": arms,
            "points_outstanding": int(points or 0), "tier_changes_unmessaged": int(pending or 0)}


def run_demo(app_ctx: AppContext, programme: Programme, *, members: int, console: Console) -> None:
    """Migrate, seed when empty, run the nightly maintenance flow on Prefect, print a summary."""
    from loyalty.cli import run_seed
    from loyalty.seed import seed_programme

    engine = app_ctx.engine
    console.rule("[bold]loyalflow demo")
    upgrade(engine)
    with session_scope(engine) as session:
        sync_catalogue(session, programme)
    console.print(f"database ready: {app_ctx.settings.database_url}")
    with engine.connect() as connection:
        existing = connection.scalar(sa.select(sa.func.count()).select_from(MEMBERS)) or 0
    if existing:
        console.print(f"reusing the {existing:,} members already in the database")
    else:
        run_seed(app_ctx, programme, members, 42, seed_programme)
    console.print("running the [bold]nightly-maintenance[/] flow on Prefect's temporary API server "
                  "(the first start migrates Prefect's own database: ~20 s)...")
    started = time.perf_counter()
    with console.status("Prefect flow running"):
        from flows.maintenance import nightly_maintenance

        totals = nightly_maintenance()
    console.print(f"flow finished in {time.perf_counter() - started:.1f} s: {totals}")
    _print_summary(console, programme_summary(engine))
    console.print(f"Try: [bold].venv/bin/loyalflow members show S0000001[/] — database {app_ctx.settings.database_url}")


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    for title, key in (("Members by tier", "tiers"), ("Members by locale", "locales"),
                       ("Opted in, by channel", "consents"), ("Past campaign arms", "arms")):
        console.print(table(title, ["", "members"], [(k, f"{v:,}") for k, v in sorted(summary[key].items())]))
    console.print(f"points outstanding: {summary['points_outstanding']:,}; "
                  f"tier upgrades awaiting their message: {summary['tier_changes_unmessaged']:,}")
