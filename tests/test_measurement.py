"""measure_run on every backend: a small randomised campaign built row by row, attributed, then measured."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty import attribution as at
from loyalty.db import fetch_rows
from loyalty.measurement import OVERALL, latest_run_id, list_runs, measure_run
from loyalty.measurement_stats import Moments, proportion_lift, welch_lift
from loyalty.measurement_types import ArmResult
from loyalty.models import CAMPAIGN_OUTCOMES, CAMPAIGNS
from loyalty.programme import ConfigError, Programme, load_programme
from loyalty.types import Channel
from tests.conftest import REPO_ROOT
from tests.factories import add_member
from tests.test_attribution import DAYS, END, SLOT, _assign, _buy, _events, _message, _run

D, H = timedelta(days=1), timedelta(hours=1)
ARMS = ("holdout", "bonus_500", "free_coffee")
CHANNELS = ("email", "sms", "push")


@dataclass
class Built:
    """The campaign's ids and what was inserted, member by member (the expected values come from here)."""

    run: int
    running: int
    arm: dict[int, str]
    variant: dict[int, str | None]
    converted: dict[int, bool]
    revenue: dict[int, int]
    sent: dict[int, str]  # member -> channel of a message actually sent


def build(engine: Engine, size: int = 48, seed: int = 1) -> Built:
    """``size`` members randomised over the holdout and two offers (bonus_500 in variants A and B)."""
    rng = np.random.default_rng(seed)
    with Session(engine) as session:
        members = [int(add_member(session).id or 0) for _ in range(size)]
        session.commit()
    arms = {m: ARMS[i % 3] for i, m in zip(rng.permutation(size).tolist(), members, strict=True)}
    variants = {m: ("A" if m % 2 else "B") if arms[m] == "bonus_500" else None for m in members}
    built = Built(0, 0, arms, variants, {}, {}, {})
    with engine.begin() as connection:
        campaign = int(connection.execute(CAMPAIGNS.insert().returning(CAMPAIGNS.c.id).values(
            name="measured", description="", created_at=SLOT - 10 * D)).scalar_one())
        built.run, built.running = _run(connection, campaign, SLOT, "completed"), _run(connection, campaign,
                                                                                      END, "running")
        _assign(connection, built.run, [(m, arms[m], variants[m]) for m in members])
        for index, m in enumerate(members):
            _outreach(connection, built, rng, m, index)
            _purchases(connection, built, rng, m)
    return built


def _outreach(connection: sa.Connection, built: Built, rng: np.random.Generator, member: int, index: int) -> None:
    if built.arm[member] == "holdout":
        return
    channel = CHANNELS[index % 3]
    if index % 7 == 0:  # treated but never sent: still in the arm (intent to treat)
        _message(connection, built.run, member, channel, "skipped", None)
        return
    outbox = _message(connection, built.run, member, channel, "delivered", SLOT + H)
    built.sent[member] = channel
    events = [("delivered", SLOT + 2 * H)]
    if rng.random() < 0.5:
        events += [("open", SLOT + 5 * H), ("open", SLOT + 6 * H)]
        if rng.random() < 0.5:
            events.append(("click", SLOT + 7 * H))
    _events(connection, outbox, *events)


def _purchases(connection: sa.Connection, built: Built, rng: np.random.Generator, member: int) -> None:
    """Purchases before, inside (first at a known day) and after the window; sometimes only a refund."""
    p = 0.25 if built.arm[member] == "holdout" else 0.5
    inside = [(int(rng.integers(500, 9000)), SLOT + int(rng.integers(0, DAYS * 24)) * H)
              for _ in range(int(rng.random() < p) + int(rng.random() < 0.2))]
    refund = [(-int(rng.integers(100, 400)), SLOT + 2 * D)] if rng.random() < 0.1 else []
    _buy(connection, member, (1234, SLOT - D), *inside, *refund, (999, END + H))
    built.converted[member] = bool(inside)
    built.revenue[member] = sum(cents for cents, _ in inside + refund)


@pytest.fixture
def built(engine: Engine) -> Built:
    """:func:`build` on the backend under test."""
    return build(engine)


def _attribute(engine: Engine, run: int, as_of: object) -> None:
    for id_range in at.pending_ranges(engine, run, 10):
        at.attribute_run(engine, run, id_range, as_of=as_of)  # type: ignore[arg-type]


def _moments(values: list[int]) -> Moments:
    return Moments(len(values), sum(values), sum(v * v for v in values))


def _expected(built: Built, members: list[int]) -> dict[str, object]:
    return {"members": len(members), "converted": sum(built.converted[m] for m in members),
            "revenue_cents": sum(built.revenue[m] for m in members),
            "sent": sum(m in built.sent for m in members)}


def _sql_counts(engine: Engine, run: int) -> dict[str, tuple[int, ...]]:
    o = CAMPAIGN_OUTCOMES.c
    query = (sa.select(o.arm, o.variant, sa.func.count(o.delivered_at), sa.func.count(o.opened_at),
                       sa.func.count(o.clicked_at)).where(o.run_id == run).group_by(o.arm, o.variant))
    counts: dict[str, tuple[int, ...]] = {}
    with engine.connect() as connection:
        for arm, variant, *values in fetch_rows(connection, query):
            for name in (str(arm), f"{arm}/{variant}") if variant else (str(arm),):
                previous = counts.get(name, (0, 0, 0))
                counts[name] = tuple(a + int(b) for a, b in zip(previous, values, strict=True))
    return counts


def _groups(built: Built) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for m, arm in built.arm.items():
        groups.setdefault(arm, []).append(m)
        if built.variant[m]:
            groups.setdefault(f"{arm}/{built.variant[m]}", []).append(m)
    groups[OVERALL] = [m for m, arm in built.arm.items() if arm != "holdout"]
    return groups


def test_closed_window_arms_counts_and_lifts(engine: Engine, built: Built, programme: Programme) -> None:
    _attribute(engine, built.run, END + D)
    result = measure_run(engine, built.run, as_of=END + D, programme=programme)
    assert (result.campaign, result.slot, result.window_end, result.caution) == ("measured", SLOT, END, None)
    assert [a.arm for a in result.arms] == ["holdout", "bonus_500", "bonus_500/A", "bonus_500/B", "free_coffee"]
    assert [a.treated for a in result.arms] == [False, True, True, True, True] and result.overall.treated
    groups, sql = _groups(built), _sql_counts(engine, built.run)
    holdout = groups["holdout"]
    for arm in [*result.arms, result.overall]:
        members = groups[arm.arm]
        got = {k: getattr(arm, k) for k in ("members", "converted", "revenue_cents", "sent")}
        assert got == _expected(built, members), arm.arm
        if arm.arm != OVERALL:
            assert (arm.delivered, arm.opened, arm.clicked) == sql[arm.arm], arm.arm
        if not arm.treated:
            assert arm.conversion_lift is None and arm.revenue_lift_cents is None and arm.roi is None
            continue
        x0 = sum(built.converted[m] for m in holdout)
        assert arm.conversion_lift == proportion_lift(arm.converted, arm.members, x0, len(holdout))
        assert arm.revenue_lift_cents == welch_lift(_moments([built.revenue[m] for m in members]),
                                                    _moments([built.revenue[m] for m in holdout]))
    overall = result.overall
    assert overall.delivered == sum(sql[a][0] for a in ("bonus_500", "free_coffee"))
    assert overall.members == sum(a.members for a in result.arms[1:] if "/" not in a.arm)


def test_costs_incremental_and_roi(engine: Engine, built: Built, programme: Programme) -> None:
    _attribute(engine, built.run, END + D)
    priced = programme.model_copy(update={"margin_per_conversion_cents": 2000.0,
                                          "message_cost_cents": {Channel.EMAIL: 0.5, Channel.SMS: 4.0}})
    result = measure_run(engine, built.run, as_of=END + D, programme=priced)
    cost_of = {o.code: o.cost_cents for o in programme.offers}
    per_channel = {"email": 0.5, "sms": 4.0, "push": 0.0}
    groups = _groups(built)
    for arm in result.arms[1:]:
        members, offer = groups[arm.arm], arm.arm.split("/")[0]
        assert arm.offer_cost_cents == cost_of[offer] * arm.converted  # a converter redeems the offer
        assert arm.message_cost_cents == pytest.approx(sum(per_channel[built.sent[m]] for m in members
                                                           if m in built.sent))
        lift = arm.conversion_lift
        assert lift is not None
        assert arm.incremental_conversions == pytest.approx(lift.value * arm.members)
        assert arm.revenue_lift_cents is not None
        assert arm.incremental_revenue_cents == pytest.approx(arm.revenue_lift_cents.value * arm.members)
        cost = arm.offer_cost_cents + arm.message_cost_cents
        assert arm.roi == pytest.approx((arm.incremental_conversions * 2000 - cost) / cost)
    overall, offers = result.overall, [a for a in result.arms[1:] if "/" not in a.arm]
    assert overall.offer_cost_cents == sum(a.offer_cost_cents for a in offers)
    assert overall.message_cost_cents == pytest.approx(sum(a.message_cost_cents for a in offers))
    variants = [a for a in result.arms if a.arm.startswith("bonus_500/")]
    assert sum(a.offer_cost_cents for a in variants) == result.arms[1].offer_cost_cents
    assert result.arms[0].offer_cost_cents == result.arms[0].message_cost_cents == 0.0


def _rate(arm: ArmResult) -> float:
    return arm.converted / arm.members


def test_caution_while_open_then_none(engine: Engine, built: Built, programme: Programme) -> None:
    assert measure_run(engine, built.run, as_of=SLOT + D, programme=programme).caution == \
        "not attributed yet: run `loyalflow attribute`; no figures to read"
    early = SLOT + 2 * D + 3 * H
    _attribute(engine, built.run, early)
    result = measure_run(engine, built.run, as_of=early, programme=programme)
    assert result.caution is not None
    assert f"window open until {END:%Y-%m-%d %H:%M} UTC" in result.caution
    assert "do not stop the test" in result.caution
    assert [p.day for p in result.cumulative] == [1, 2, 3]  # the third day is partly counted
    # Attributed after the window closed but measured "as of" a moment inside it: still early.
    _attribute(engine, built.run, END + D)
    assert "window open" in (measure_run(engine, built.run, as_of=END - H, programme=programme).caution or "")
    closed = measure_run(engine, built.run, as_of=END + D, programme=programme)
    assert closed.caution is None
    assert [p.day for p in closed.cumulative] == list(range(1, DAYS + 1))
    last, holdout = closed.cumulative[-1], closed.arms[0]
    assert last.treated_rate == pytest.approx(_rate(closed.overall))
    assert last.holdout_rate == pytest.approx(_rate(holdout))
    rates = [p.treated_rate for p in closed.cumulative]
    assert rates == sorted(rates)


def test_partial_attribution_is_flagged(engine: Engine, built: Built, programme: Programme) -> None:
    first = at.pending_ranges(engine, built.run, 10)[0]
    at.attribute_run(engine, built.run, first, as_of=END + D)
    caution = measure_run(engine, built.run, as_of=END + D, programme=programme).caution
    assert caution == f"only 10 of {len(built.arm)} assigned members attributed so far"


def test_list_runs_and_latest(engine: Engine, built: Built) -> None:
    runs = list_runs(engine)
    assert [(r.run_id, r.campaign, r.slot, r.status, r.members) for r in runs] == [
        (built.run, "measured", SLOT, "completed", len(built.arm)), (built.running, "measured", END, "running", 0)]
    assert list_runs(engine, "nope") == [] and len(list_runs(engine, "measured")) == 2
    assert latest_run_id(engine, "measured") == built.run  # the running one is not measurable yet
    assert latest_run_id(engine, "nope") is None
    with pytest.raises(LookupError):
        measure_run(engine, 9999, programme=load_programme(REPO_ROOT / "config"))


@pytest.mark.parametrize(("text", "message"), [("message_cost_cents: {fax: 1}\n", "message_cost_cents.fax"),
                                               ("message_cost_cents: {sms: -1}\n", "message_cost_cents.sms")])
def test_message_costs_are_validated(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    original = (config / "programme.yaml").read_text()
    kept = "\n".join(line for line in original.splitlines()
                     if not line.startswith(("message_cost_cents", "  email", "  sms", "  push")))
    (config / "programme.yaml").write_text(kept + "\n" + text)
    with pytest.raises(ConfigError, match=message):
        load_programme(config)
