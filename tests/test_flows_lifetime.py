"""The weekly lifetime-value refit flow, end to end on a temporary Prefect API (SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loyalty import clv
from loyalty.models import TRANSACTIONS
from loyalty.models_measurement import LIFETIME_FITS, MEMBER_LIFETIME
from loyalty.programme import Programme
from loyalty.seed import seed_programme
from tests.test_flows_attribution import _artifact

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]
AS_OF = datetime(2026, 6, 25, tzinfo=UTC)


def _column(engine: Engine, column: str) -> np.ndarray:
    with engine.connect() as connection:
        return np.sort(np.array(connection.execute(sa.select(MEMBER_LIFETIME.c[column])).scalars().all(), dtype=float))


def _purchasers(engine: Engine, as_of: datetime) -> int:
    t = TRANSACTIONS.c
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count(sa.distinct(t.member_id)))
                                     .where(t.occurred_at < as_of, t.amount_cents > 0)) or 0)


def test_nothing_to_fit_is_a_skip_not_a_failure(flow_env: Engine) -> None:
    from flows.lifetime import ARTIFACT_KEY, refit_lifetime

    result = refit_lifetime(as_of=AS_OF)
    assert result == {"skipped": "no purchase before 2026-06-25 00:00 UTC: nothing to fit", "as_of": AS_OF.isoformat()}
    assert "refit skipped" in str(_artifact(ARTIFACT_KEY)["data"])
    with flow_env.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(LIFETIME_FITS)) == 0


def test_refit_stores_every_purchaser_and_reports_quartiles(flow_env: Engine, programme: Programme,
                                                           tmp_path: Path) -> None:
    from flows.lifetime import ARTIFACT_KEY, quartiles, refit_lifetime

    seed_programme(flow_env, programme, members=400, seed=3, as_of=AS_OF, truth_dir=tmp_path / "truth")
    result = refit_lifetime(as_of=AS_OF - timedelta(days=30), chunk_size=150)
    first = clv.latest_fit(flow_env)
    assert first is not None and result["fit_id"] == first["id"]
    assert result["members"] == _purchasers(flow_env, AS_OF - timedelta(days=30)) == len(_column(flow_env, "p_alive"))
    assert 0 < result["repeat_members"] <= result["members"]
    p_alive, value = _column(flow_env, "p_alive"), _column(flow_env, "clv_12m_cents")
    # ntile(4): the first n % 4 quarters hold one member more; each cut is the top of its quarter.
    size, extra = divmod(len(value), 4)
    tops = [value[q * size + min(q, extra) - 1] for q in (1, 2, 3)]
    assert quartiles(flow_env, "clv_12m_cents") == {"min": value[0], "q1": tops[0], "median": tops[1],
                                                    "q3": tops[2], "max": value[-1]}
    assert result["median_clv_cents"] == int(tops[1])
    assert result["median_p_alive"] == round(float(p_alive[size * 2 + min(2, extra) - 1]), 4)
    markdown = str(_artifact(ARTIFACT_KEY)["data"])
    assert f"# Lifetime value fit {result['fit_id']}" in markdown and f"{result['members']:,} members" in markdown
    assert "| median |" in markdown and all(f"| {name} |" in markdown for name in ("r", "alpha", "a", "b"))

    again: dict[str, Any] = refit_lifetime(as_of=AS_OF)  # a later refit replaces the table with one fit
    assert again["fit_id"] > result["fit_id"] and again["members"] == _purchasers(flow_env, AS_OF)
    with flow_env.connect() as connection:
        fits = connection.execute(sa.select(MEMBER_LIFETIME.c.fit_id).distinct()).scalars().all()
    assert fits == [again["fit_id"]] and again["members"] >= result["members"]
