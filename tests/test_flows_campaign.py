"""Campaign runs: the plain functions on every backend, and the flow end to end on a temporary Prefect API."""

from __future__ import annotations

import math
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty import campaign_run as cr
from loyalty.audience import audience_ranges
from loyalty.campaigns import CampaignSpec
from loyalty.jobs import Runtime
from loyalty.models import CAMPAIGN_ASSIGNMENTS, CHANNEL_CONSENTS, MEMBERS, OUTBOX_MESSAGES
from loyalty.programme import Programme
from loyalty.settings import load_settings
from loyalty.types import Channel, OutboxStatus, utcnow
from tests.conftest import REPO_ROOT
from tests.factories import add_contactable_member

SPEC = {"description": "Test campaign", "offers": ["bonus_500"], "holdout_share": 0.2, "channels": ["email"],
        "template": "offers/bonus_500", "schedule": {"cron": "0 10 * * mon", "timezone": "America/Toronto"},
        "variants": [{"name": "A", "weight": 0.3, "subject": "Hi {{ member.first_name }}"},
                     {"name": "B", "weight": 0.7, "subject": "Bonus points inside"}]}


def _runtime(engine: Engine, programme: Programme, templates: Path = REPO_ROOT / "templates") -> Runtime:
    settings = load_settings(config_dir=REPO_ROOT / "config", templates_dir=templates)
    return Runtime(settings, engine, programme)


def _members(engine: Engine, count: int) -> None:
    """``count`` members opted in to email, inserted in bulk (the factories flush one at a time)."""
    now = utcnow() - timedelta(hours=1)
    with engine.begin() as connection:
        rows = [{"external_id": f"C{n:06d}", "first_name": "Ada", "last_name": f"M{n}", "email": f"c{n}@example.com",
                 "locale": "en_CA", "time_zone": "America/Toronto", "tier": "member", "points_balance": 0,
                 "joined_at": now, "created_at": now, "updated_at": now} for n in range(count)]
        connection.execute(sa.insert(MEMBERS), rows)
        ids = connection.execute(sa.select(MEMBERS.c.id)).scalars().all()
        connection.execute(sa.insert(CHANNEL_CONSENTS), [
            {"member_id": i, "channel": Channel.EMAIL, "opted_in": True, "source": "test", "recorded_at": now}
            for i in ids])


def _count(engine: Engine, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


def _run_all(rt: Runtime, spec: CampaignSpec, run_id: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    for id_range in audience_ranges(rt.engine, spec, as_of=utcnow(), chunk_size=700):
        for key, value in cr.process_chunk(run_id, id_range, rt=rt, spec=spec).items():
            totals[key] = totals.get(key, 0) + value
    return totals


def test_holdout_variants_and_rerun_of_a_slot(engine: Engine, programme: Programme) -> None:
    _members(engine, 2000)
    rt, spec = _runtime(engine, programme), CampaignSpec.model_validate({**SPEC, "name": "test_bonus"})
    slot = utcnow()
    run_id = cr.plan_run(engine, spec, slot)
    totals = _run_all(rt, spec, run_id)
    assert totals["audience"] == 2000 and totals["holdout"] + totals["treated"] == 2000
    assert abs(totals["holdout"] - 400) < 4 * math.sqrt(2000 * 0.2 * 0.8)  # within 4 binomial sd
    with engine.connect() as connection:
        variants = dict(connection.execute(sa.select(CAMPAIGN_ASSIGNMENTS.c.variant, sa.func.count())
                                           .group_by(CAMPAIGN_ASSIGNMENTS.c.variant)).all())
    assert variants[None] == totals["holdout"] and variants["A"] + variants["B"] == totals["treated"]
    assert abs(variants["A"] - 0.3 * totals["treated"]) < 4 * math.sqrt(totals["treated"] * 0.3 * 0.7)
    assert totals["queued"] == totals["treated"] == _count(engine, OUTBOX_MESSAGES, OUTBOX_MESSAGES.c.run_id == run_id)
    assert _count(engine, OUTBOX_MESSAGES, OUTBOX_MESSAGES.c.offer_code == "bonus_500") == totals["queued"]
    cr.finish_run(engine, run_id, totals)
    assert cr.plan_run(engine, spec, slot) == run_id  # the same slot resumes its run
    again = _run_all(rt, spec, run_id)
    assert again.get("queued", 0) == 0 and again.get("assigned", 0) == 0
    assert again["already_queued"] == totals["queued"]
    assert _count(engine, CAMPAIGN_ASSIGNMENTS) == 2000


def test_subject_variant_is_rendered(engine: Engine, programme: Programme) -> None:
    with Session(engine) as session:
        member = add_contactable_member(session, first_name="Zoé", joined_at=utcnow() - timedelta(hours=1))
        session.commit()
        member_id = member.id
    rt = _runtime(engine, programme)
    spec = CampaignSpec.model_validate({**SPEC, "name": "test_subject", "holdout_share": 0.0})
    run_id = cr.plan_run(engine, spec, utcnow())
    assert cr.process_chunk(run_id, (member_id or 0, (member_id or 0) + 1), rt=rt, spec=spec)["queued"] == 1
    with engine.connect() as connection:
        key, payload = connection.execute(sa.select(OUTBOX_MESSAGES.c.key, OUTBOX_MESSAGES.c.payload)).one()
    assert key == f"campaign:{run_id}:{member_id}"
    assert payload["content"]["subject"] in {"Hi Zoé", "Bonus points inside"}


def test_template_lint_failure_refuses(programme: Programme, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "templates", templates)
    for html in (templates / "offers" / "bonus_500").rglob("email.html"):
        html.write_text("{{ member.no_such_field }}", encoding="utf-8")
    rt = _runtime(None, programme, templates)  # type: ignore[arg-type]  # lint needs no database
    spec = CampaignSpec.model_validate({**SPEC, "name": "test_lint"})
    with pytest.raises(cr.CampaignTemplateError, match="test_lint"):
        cr.check_templates(cr.template_library(rt), spec)
    cr.check_templates(cr.template_library(_runtime(None, programme)), spec)  # type: ignore[arg-type]


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_campaign_flow_sends_once_per_slot(app_env: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.campaign import campaign_run

    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(REPO_ROOT / "templates"))
    for edge in ("START", "END"):  # no quiet hours: the test must send whatever the hour
        monkeypatch.setenv(f"LOYALFLOW_POLICY__QUIET_HOURS_{edge}", "10:00")
    with Session(app_env) as session:
        for _ in range(30):
            add_contactable_member(session, channels=("email",), joined_at=utcnow() - timedelta(days=1))
        session.commit()
    slot = utcnow()
    first = campaign_run("new_member_bonus", slot=slot, chunk_size=10)
    sent = _count(app_env, OUTBOX_MESSAGES, OUTBOX_MESSAGES.c.status == OutboxStatus.SENT)
    assert first["audience"] == 30 and first["chunks"] == 3
    assert sent == first["queued"] == first["treated"] == first["sent:email"] > 0
    second = campaign_run("new_member_bonus", slot=slot, chunk_size=10)
    assert second["run_id"] == first["run_id"] and second.get("queued", 0) == 0
    assert "sent:email" not in second
    assert _count(app_env, OUTBOX_MESSAGES) == sent
