"""Offer choice inside a campaign run: tier and cooldown eligibility, the budget, the uplift model's plumbing,
and member-local send times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty import campaign_offers, campaign_run
from loyalty.campaigns import CampaignSpec
from loyalty.jobs import Runtime
from loyalty.models import CAMPAIGN_ASSIGNMENTS
from loyalty.programme import Programme
from loyalty.seed import seed_programme
from loyalty.seed_campaign import OFFER_CODES, campaign_slot_us
from loyalty.seed_io import from_us, to_us
from loyalty.settings import load_settings
from loyalty.training import train, training_data
from recommenders import registry
from recommenders.features import build_features, conform
from recommenders.policy import choose_offers, expected_value
from tests.conftest import REPO_ROOT
from tests.factories import add_contactable_member
from tests.test_seed import fresh_engine

NOW = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
BASE = {"channels": ["email"], "template": "offers/ten_percent_off", "recommender": "rules",
        "schedule": {"cron": "0 10 * * mon", "timezone": "America/Toronto"}}


def _spec(name: str, **fields: object) -> CampaignSpec:
    return CampaignSpec.model_validate({**BASE, "name": name, **fields})


def _runtime(engine: Engine | None, programme: Programme, var_dir: Path | None = None) -> Runtime:
    extra = {"var_dir": var_dir} if var_dir else {}
    settings = load_settings(config_dir=REPO_ROOT / "config", templates_dir=REPO_ROOT / "templates", **extra)
    return Runtime(settings, engine, programme)  # type: ignore[arg-type]  # some tests need no database


def _members(engine: Engine, tiers: list[str]) -> list[int]:
    with Session(engine) as session:
        ids = [add_contactable_member(session, tier=tier, joined_at=NOW - timedelta(days=400)).id for tier in tiers]
        session.commit()
    return [int(i or 0) for i in ids]


def _assign_earlier(engine: Engine, programme: Programme, member_id: int, offer: str, days_ago: int) -> None:
    """Record that ``member_id`` got ``offer`` in another campaign's run ``days_ago`` days before NOW."""
    run_id = campaign_run.plan_run(engine, _spec("earlier"), NOW - timedelta(days=days_ago))
    with engine.begin() as connection:
        connection.execute(sa.insert(CAMPAIGN_ASSIGNMENTS).values(run_id=run_id, member_id=member_id, arm=offer,
                                                                  offer_code=offer, assigned_at=NOW))


def test_tier_and_cooldown_make_offers_ineligible(engine: Engine, programme: Programme) -> None:
    gold, fresh, recent, long_ago = _members(engine, ["gold", "member", "member", "member"])
    _assign_earlier(engine, programme, recent, "ten_percent_off", days_ago=10)  # cooldown 30 days
    _assign_earlier(engine, programme, long_ago, "ten_percent_off", days_ago=45)
    spec = _spec("tiers_and_cooldowns", offers=["early_access", "ten_percent_off"])
    with Session(engine) as session:
        choice = campaign_offers.choose(session, _runtime(engine, programme), spec,
                                        [gold, fresh, recent, long_ago], NOW)
    # early_access is gold-only; rules take the first eligible offer in the spec's order.
    assert choice.offers == {gold: "early_access", fresh: "ten_percent_off", long_ago: "ten_percent_off"}
    assert choice.dropped["no_eligible_offer"] == 1 and recent not in choice.offers


def test_budget_is_spent_on_the_first_ranked_members(engine: Engine, programme: Programme) -> None:
    ids = _members(engine, ["member"] * 5)
    spec = _spec("budgeted", offers=["ten_percent_off"], budget_cents=1_000)  # 450 per send: room for two
    with Session(engine) as session:
        choice = campaign_offers.choose(session, _runtime(engine, programme), spec, ids, NOW,
                                        budget_cents=float(spec.budget_cents or 0))
    assert len(choice.offers) == 2 and choice.dropped["over_budget"] == 3


def test_budget_share_follows_the_chunks_part_of_the_audience() -> None:
    spec = CampaignSpec.model_validate({**BASE, "name": "share", "offers": ["ten_percent_off"],
                                        "budget_cents": 10_000})
    run = campaign_run.RunInfo("share", NOW, planned_audience=1_000)
    assert campaign_run._budget_share(spec, run, 250) == pytest.approx(2_500)
    assert campaign_run._budget_share(spec, campaign_run.RunInfo("share", NOW, None), 250) == 10_000
    assert campaign_run._budget_share(_spec("free"), run, 250) is None


@pytest.mark.parametrize(("zone", "slot", "expected"), [
    # 2026-03-08 is the spring-forward day in Toronto: 10:00 is EDT (UTC-4) that morning.
    ("America/Toronto", datetime(2026, 3, 8, 6, 0, tzinfo=UTC), datetime(2026, 3, 8, 14, 0, tzinfo=UTC)),
    # Past 10:00 local already: the next morning.
    ("America/Toronto", datetime(2026, 3, 9, 15, 0, tzinfo=UTC), datetime(2026, 3, 10, 14, 0, tzinfo=UTC)),
    ("Asia/Tokyo", datetime(2026, 3, 9, 0, 0, tzinfo=UTC), datetime(2026, 3, 9, 1, 0, tzinfo=UTC)),  # 09:00 there
    ("Europe/Paris", datetime(2026, 3, 9, 9, 0, tzinfo=UTC), datetime(2026, 3, 9, 9, 0, tzinfo=UTC)),
])
def test_member_local_send_time(zone: str, slot: datetime, expected: datetime) -> None:
    spec = CampaignSpec.model_validate({**BASE, "name": "local", "schedule": {"member_local": "10:00"}})
    assert campaign_run.member_local_time(spec, zone, slot) == expected
    assert campaign_run.member_local_time(_spec("shared"), zone, slot) is None


def test_segments_are_refused_rather_than_ignored() -> None:
    spec = _spec("segmented", audience={"segments": ["lapsing high spenders"]})
    with pytest.raises(ValueError, match="segments"):
        campaign_run.check_supported(spec)


def test_uplift_choice_follows_the_trained_model(programme: Programme, tmp_path: Path) -> None:
    """The run scores each member with the newest artifact and keeps the offer of highest expected value."""
    as_of = datetime(2026, 6, 25, tzinfo=UTC)
    with fresh_engine("sqlite", tmp_path, programme) as engine:
        seed_programme(engine, programme, members=2_000, seed=11, as_of=as_of)
        data = training_data(engine, programme)
        registry.save(train(data, method="t", params={"max_iter": 20, "min_samples_leaf": 40}),
                      tmp_path / "var" / "models")
        rt = _runtime(engine, programme, tmp_path / "var")
        spec = _spec("nbo", offers=sorted(OFFER_CODES), recommender="uplift")
        slot = from_us(campaign_slot_us(to_us(as_of))) + timedelta(days=60)
        ids = list(range(1, 2_001, 3))  # every third member: the chunk's ids need not be contiguous
        with Session(engine) as session:
            choice = campaign_offers.choose(session, rt, spec, ids, slot)
            raw = campaign_offers.load_member_rows(session.connection(), programme, id_range=(1, 2_001), as_of=slot)
        artifact = campaign_offers.latest_artifact(rt)
        assert artifact is not None
        known = [i for i in ids if i in set(raw["member_id"])]  # members who joined after the slot have no row
        features, _ = build_features(raw.set_index("member_id", drop=False).loc[known].reset_index(drop=True),
                                     categories=list(programme.earn.category_multipliers))
        lift, redeem = artifact.model.predict_conversion(conform(features, artifact.card.feature_schema))
        book = campaign_offers.offer_book(rt, spec)
        value = expected_value(lift, margin_per_conversion=programme.margin_per_conversion_cents,
                               cost_cents=book.cost_cents, redeem_probability=redeem)
        expected = choose_offers(value, np.ones(value.shape, dtype=bool))
        wanted = {known[i]: book.codes[d] for i, d in enumerate(expected) if d >= 0}
    assert choice.offers == wanted
    assert len(wanted) > 0 and choice.dropped["no_offer_pays"] == len(known) - len(wanted)
    assert choice.dropped["no_eligible_offer"] == len(ids) - len(known)
