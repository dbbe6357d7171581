"""Lifetime value in the database: summaries by SQL, one fit row, one member row each, refits, audience filters."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty import clv
from loyalty.audience import audience_ids
from loyalty.campaigns import CampaignSpec
from loyalty.models import Transaction
from loyalty.models_measurement import LIFETIME_FITS, MEMBER_LIFETIME
from loyalty.programme import Programme
from tests.factories import add_contactable_member

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
START = datetime(2024, 7, 1, tzinfo=UTC)
_external = itertools.count(1)


def _buy(session: Session, member_id: int, when: datetime, cents: int) -> None:
    session.add(Transaction(external_id=f"T{next(_external):08d}", member_id=member_id, amount_cents=cents,
                            occurred_at=when))


def _crowd(session: Session, n: int = 60) -> list[int]:
    """Members buying as a BG/NBD population would (seeded), so the fit has something to learn from."""
    rng = np.random.default_rng(3)
    ids = []
    for _ in range(n):
        member = add_contactable_member(session, channels=("email",), joined_at=START - timedelta(days=30))
        assert member.id is not None
        ids.append(member.id)
        first = START + timedelta(days=float(rng.uniform(0, 200)))
        rate, dropout, when = rng.gamma(2.0, 1 / 60), rng.beta(1.0, 4.0), first
        _buy(session, member.id, when, int(rng.integers(1000, 8000)))
        while rng.random() >= dropout:
            when += timedelta(days=float(rng.exponential(1 / rate)))
            if when >= AS_OF:
                break
            _buy(session, member.id, when, int(rng.integers(1000, 8000)))
    return ids


@pytest.fixture
def people(session: Session) -> dict[str, int]:
    """Hand-written histories (named) among a simulated crowd."""
    ids = {f"crowd{i}": member_id for i, member_id in enumerate(_crowd(session))}

    def member(name: str) -> int:
        created = add_contactable_member(session, channels=("email",), joined_at=START)
        assert created.id is not None
        ids[name] = created.id
        return created.id

    alice = member("alice")
    _buy(session, alice, datetime(2025, 1, 10, 9, tzinfo=UTC), 2000)
    _buy(session, alice, datetime(2025, 1, 10, 23, 59, tzinfo=UTC), 500)  # same UTC day: one purchase day
    _buy(session, alice, datetime(2025, 2, 1, 12, tzinfo=UTC), 3000)
    _buy(session, alice, datetime(2025, 2, 3, 12, tzinfo=UTC), -1000)  # a refund: not a purchase day
    _buy(session, alice, datetime(2025, 3, 1, 0, 0, tzinfo=UTC), 5000)
    bob = member("bob")
    _buy(session, bob, datetime(2025, 5, 20, 18, tzinfo=UTC), 4200)
    _buy(session, bob, AS_OF + timedelta(hours=1), 9900)  # after as_of: unknown at the fit
    _buy(session, member("refund_only"), datetime(2025, 4, 1, tzinfo=UTC), -500)
    member("never_bought")
    session.commit()
    return ids


def _rows(engine: Engine) -> dict[int, dict[str, object]]:
    with engine.connect() as connection:
        return {int(r["member_id"]): dict(r) for r in connection.execute(sa.select(MEMBER_LIFETIME)).mappings()}


def test_summaries_follow_purchase_days_and_refund_rules(engine: Engine, people: dict[str, int]) -> None:
    s = clv.load_summaries(engine, as_of=AS_OF, chunk_size=7)  # several chunks
    by_id = {int(m): i for i, m in enumerate(s["member_id"])}
    assert people["refund_only"] not in by_id and people["never_bought"] not in by_id
    assert len(by_id) == len(people) - 2 and list(s["member_id"]) == sorted(by_id)
    alice = by_id[people["alice"]]
    # Days 10 Jan, 1 Feb, 1 Mar: 2 repeat days, 50 days apart; T from 10 Jan 00:00 to 1 Jun = 142 days.
    # Repeat-day spend 30 + 50 = 80.00, net of refunds pro rata (10.00 of 105.00 gross), over 2 days.
    assert (s["frequency"][alice], s["recency"][alice], s["T"][alice]) == (2, 50, 142)
    assert s["monetary"][alice] == pytest.approx(8000 * (1 - 1000 / 10500) / 2)
    bob = by_id[people["bob"]]
    assert (s["frequency"][bob], s["recency"][bob], s["monetary"][bob]) == (0, 0, 0)
    assert s["T"][bob] == pytest.approx(12.0)  # 20 May 00:00 to 1 June


def test_fit_writes_one_fit_and_one_row_per_purchaser(engine: Engine, people: dict[str, int]) -> None:
    result = clv.fit_lifetime(engine, as_of=AS_OF, chunk_size=25)
    rows = _rows(engine)
    assert result.members == len(rows) == len(people) - 2
    assert {r["fit_id"] for r in rows.values()} == {result.fit_id}
    for name in ("alice", "bob"):
        assert people[name] in rows
    alice, bob = rows[people["alice"]], rows[people["bob"]]
    assert (alice["frequency"], alice["recency_days"], alice["age_days"], alice["monetary_cents"]) == (
        2, 50.0, 142.0, round(8000 * (1 - 1000 / 10500) / 2))
    assert bob["p_alive"] == 1.0 and bob["monetary_cents"] == 0  # no repeat purchase: cannot have dropped out
    params = result.params
    assert all(params[k] > 0 for k in ("r", "alpha", "a", "b", "p", "q", "v")) and params["time_unit"] == "days"
    # Stored predictions are the model's, recomputed here from the stored parameters.
    from loyalty.clv_models import BetaGeo

    model = BetaGeo()
    model.r_, model.alpha_, model.a_, model.b_ = params["r"], params["alpha"], params["a"], params["b"]
    assert alice["p_alive"] == pytest.approx(model.p_alive(2, 50.0, 142.0)[0])
    assert alice["expected_purchases_12m"] == pytest.approx(
        model.conditional_expected_purchases(365, 2, 50.0, 142.0)[0])
    assert all(0 <= r["p_alive"] <= 1 and r["clv_12m_cents"] >= 0 for r in rows.values())
    with engine.connect() as connection:
        fits = connection.execute(sa.select(LIFETIME_FITS)).mappings().all()
    assert len(fits) == 1 and fits[0]["members"] == result.members


def test_refit_replaces_rows_and_drops_members_no_longer_in_the_fit(engine: Engine, people: dict[str, int]) -> None:
    first = clv.fit_lifetime(engine, as_of=AS_OF)
    later = clv.fit_lifetime(engine, as_of=AS_OF + timedelta(days=2))  # bob's late purchase now counts
    rows = _rows(engine)
    assert later.fit_id != first.fit_id and {r["fit_id"] for r in rows.values()} == {later.fit_id}
    assert len(rows) == first.members and rows[people["bob"]]["frequency"] == 1
    earlier = clv.fit_lifetime(engine, as_of=datetime(2025, 5, 1, tzinfo=UTC))  # bob had not bought yet
    rows = _rows(engine)
    assert people["bob"] not in rows and earlier.rows_deleted >= 1 and len(rows) == earlier.members
    assert clv.member_lifetime(engine, people["bob"]) is None
    assert clv.latest_fit(engine)["id"] == earlier.fit_id  # type: ignore[index]


def test_no_purchaser_is_an_error(engine: Engine) -> None:
    with pytest.raises(ValueError, match="nothing to fit"):
        clv.fit_lifetime(engine, as_of=AS_OF)


def test_lifetime_audience_filters_read_the_stored_rows(engine: Engine, programme: Programme,
                                                         people: dict[str, int]) -> None:
    clv.fit_lifetime(engine, as_of=AS_OF)
    rows = _rows(engine)
    p_cut = float(np.median([r["p_alive"] for r in rows.values()]))
    clv_cut = int(np.median([r["clv_12m_cents"] for r in rows.values()]))

    def ids(**audience: object) -> list[int]:
        spec = CampaignSpec.model_validate(
            {"name": "t", "audience": audience, "channels": ["email"], "template": "win_back",
             "schedule": {"cron": "0 10 * * *", "timezone": "UTC"}}, context={"programme": programme})
        with engine.connect() as connection:
            return audience_ids(connection, spec, (0, 10**9), as_of=AS_OF)

    assert ids(min_p_alive=p_cut) == sorted(m for m, r in rows.items() if r["p_alive"] >= p_cut)
    assert ids(max_p_alive=p_cut) == sorted(m for m, r in rows.items() if r["p_alive"] <= p_cut)
    assert ids(min_clv_12m_cents=clv_cut) == sorted(m for m, r in rows.items() if r["clv_12m_cents"] >= clv_cut)
    assert people["never_bought"] not in ids(min_p_alive=0.0)  # no row: no match
    assert len(ids()) == len(people)  # everyone without a lifetime filter


def test_lifetime_columns_are_optional_features_without_leakage(engine: Engine, programme: Programme,
                                                                people: dict[str, int]) -> None:
    from loyalty.features_query import LIFETIME_COLUMNS, load_member_rows

    clv.fit_lifetime(engine, as_of=AS_OF)
    stored = _rows(engine)[people["alice"]]
    later = AS_OF + timedelta(days=1)
    assert not set(LIFETIME_COLUMNS) & set(load_member_rows(engine, programme, id_range=(0, 10**9), as_of=later))
    rows = load_member_rows(engine, programme, id_range=(0, 10**9), as_of=later, lifetime=True).set_index("member_id")
    assert rows.loc[people["alice"], "p_alive"] == pytest.approx(stored["p_alive"])
    assert rows.loc[people["alice"], "clv_12m_cents"] == stored["clv_12m_cents"]
    assert np.isnan(rows.loc[people["never_bought"], "p_alive"])
    before = load_member_rows(engine, programme, id_range=(0, 10**9), as_of=AS_OF - timedelta(days=1), lifetime=True)
    assert before["p_alive"].isna().all()  # the fit saw purchases after this instant


def test_cli_fit_and_show(app_env: Engine, people: dict[str, int]) -> None:
    from typer.testing import CliRunner

    from loyalty.cli import AppContext
    from loyalty.cli_clv import clv_app
    from loyalty.settings import load_settings

    runner = CliRunner()
    fitted = runner.invoke(clv_app, ["fit", "--as-of", "2025-06-01T00:00:00"], obj=AppContext(load_settings()))
    assert fitted.exit_code == 0, fitted.output
    assert f"{len(people) - 2} members" in fitted.output and "alpha" in fitted.output
    shown = runner.invoke(clv_app, ["show", str(people["alice"])], obj=AppContext(load_settings()))
    assert shown.exit_code == 0 and "P(alive)" in shown.output and "36.19" in shown.output  # mean repeat spend
    missing = runner.invoke(clv_app, ["show", str(people["never_bought"])], obj=AppContext(load_settings()))
    assert missing.exit_code == 1 and "no lifetime value" in missing.output
