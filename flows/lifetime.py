"""Refit member lifetime value (BG/NBD + Gamma-Gamma) on the whole programme, weekly.

Orchestration only: :func:`loyalty.clv.fit_lifetime` reads purchase summaries chunk by chunk in SQL,
fits once in numpy and upserts ``member_lifetime`` in chunks, so the work is one task (splitting a
single model fit across tasks would gain nothing). Campaign audiences with lifetime bounds read the rows
it writes (and the feature query with ``lifetime=True``), hence a schedule before the week's campaigns.
With no purchase at all before ``as_of`` the flow skips, saying why, instead of failing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from sqlalchemy.engine import Engine

from loyalty import clv, jobs
from loyalty.clv_models import PARAM_NAMES
from loyalty.db import fetch_rows
from loyalty.models import TRANSACTIONS
from loyalty.models_measurement import MEMBER_LIFETIME
from loyalty.types import as_utc, utcnow

ARTIFACT_KEY = "lifetime-fit"


def has_purchases(engine: Engine, as_of: datetime) -> bool:
    """Whether any positive transaction happened before ``as_of`` (else there is nothing to fit)."""
    t = TRANSACTIONS.c
    with engine.connect() as connection:
        return bool(connection.scalar(sa.select(sa.exists().where(t.occurred_at < as_of, t.amount_cents > 0))))


def quartiles(engine: Engine, column: str) -> dict[str, float]:
    """min, Q1, median, Q3, max of a ``member_lifetime`` column, in SQL (``ntile``; no rows read into Python).

    Each cut is the largest value of its quarter, i.e. the lower quantile (exact to one member).
    """
    value = MEMBER_LIFETIME.c[column]
    quarter = sa.select(value.label("v"), sa.func.ntile(4).over(order_by=value).label("q")).subquery()
    query = sa.select(quarter.c.q, sa.func.min(quarter.c.v), sa.func.max(quarter.c.v)).group_by(quarter.c.q)
    with engine.connect() as connection:
        rows = {int(q): (float(lo), float(hi)) for q, lo, hi in fetch_rows(connection, query)}
    if not rows:
        return {}
    tops = [rows[q][1] for q in sorted(rows)]
    cuts = (tops + [tops[-1]] * 4)[:4]  # fewer than four members: repeat the last cut
    return {"min": rows[min(rows)][0], "q1": cuts[0], "median": cuts[1], "q3": cuts[2], "max": cuts[3]}


@task(name="fit-lifetime", cache_policy=NONE)
def fit_task(as_of: datetime, chunk_size: int) -> dict[str, Any]:
    """Fit and store (one transaction for the rows), then the quartiles; ``{"skipped": reason}`` without buyers."""
    engine = jobs.runtime().engine
    if not has_purchases(engine, as_of):
        return {"skipped": f"no purchase before {as_of:%Y-%m-%d %H:%M} UTC: nothing to fit", "as_of": as_of}
    result = clv.fit_lifetime(engine, as_of=as_of, chunk_size=chunk_size)
    return {"fit_id": result.fit_id, "as_of": result.as_of, "members": result.members,
            "repeat_members": result.repeat_members, "rows_deleted": result.rows_deleted,
            "seconds": result.seconds, "params": result.params,
            "p_alive": quartiles(engine, "p_alive"), "clv_cents": quartiles(engine, "clv_12m_cents")}


def _money(cents: float, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency}"


def markdown(result: dict[str, Any], currency: str) -> str:
    """The artifact: what was fitted, the parameters and the quartiles (or the skip reason)."""
    if "skipped" in result:
        return f"# Lifetime value refit skipped\n\n{result['skipped']}.\n"
    params = result["params"]
    lines = [f"# Lifetime value fit {result['fit_id']}", "",
             f"As of {result['as_of']:%Y-%m-%d %H:%M} UTC: {result['members']:,} members with a purchase, "
             f"{result['repeat_members']:,} with repeat purchase days; {result['seconds']:.1f} s. "
             f"12-month horizon, undiscounted.", "",
             "| parameter | value |", "|---|---|"]
    lines += [f"| {name} | {params[name]:.4g} |" for name in PARAM_NAMES if name in params]
    p, v = result["p_alive"], result["clv_cents"]
    lines += ["", "| quantile | P(alive) | CLV 12 months |", "|---|---|---|"]
    lines += [f"| {label} | {p[key]:.3f} | {_money(v[key], currency)} |"
              for key, label in (("min", "min"), ("q1", "25%"), ("median", "median"), ("q3", "75%"), ("max", "max"))]
    return "\n".join(lines) + "\n"


@flow(name="refit-lifetime", log_prints=False)
def refit_lifetime(as_of: datetime | None = None, chunk_size: int | None = None) -> dict[str, Any]:
    """Refit lifetime value as of ``as_of`` (default now); a summary (no per-member data) or why it skipped."""
    rt = jobs.runtime()
    when = as_utc(as_of) if as_of else utcnow()
    result = fit_task(when, chunk_size or rt.settings.chunk_size)
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown(result, rt.programme.currency),
                             description=f"Lifetime value refit as of {when.isoformat()}")
    logger = get_run_logger()
    if "skipped" in result:
        logger.warning("lifetime refit skipped: %s", result["skipped"])
        return {"skipped": result["skipped"], "as_of": when.isoformat()}
    logger.info("lifetime fit %s: %s members in %.1f s", result["fit_id"], result["members"], result["seconds"])
    return {"fit_id": result["fit_id"], "as_of": when.isoformat(), "members": result["members"],
            "repeat_members": result["repeat_members"], "rows_deleted": result["rows_deleted"],
            "median_p_alive": round(result["p_alive"]["median"], 4),
            "median_clv_cents": int(result["clv_cents"]["median"])}
