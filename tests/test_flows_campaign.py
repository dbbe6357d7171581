"""Campaign runs: the plain functions on every backend, and the flow end to end on a temporary Prefect API."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
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
    assert variants[None] == totals["holdout"] and variants["A"] + variants["B"] == totals["treated"], totals
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


FLOW_SPEC = """
description: Flow test campaign
offers: [bonus_500]
holdout_share: 0.2
channels: [email]
template: offers/bonus_500
variants:
  - {name: A, weight: 0.5, subject: "Hi {{ member.first_name }}"}
  - {name: B, weight: 0.5, subject: "Bonus points inside"}
schedule: {cron: "0 10 * * mon", timezone: America/Toronto}
quiet_hours: {start: "%s", end: "%s"}
frequency_cap: {count: 1, window_hours: 168}
"""


def _config_with(tmp_path: Path, name: str, spec: str) -> Path:
    """A copy of the shipped config/ with one more campaign file."""
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    (config / "campaigns" / f"{name}.yaml").write_text(spec, encoding="utf-8")
    return config


def _quiet_in_tokyo() -> tuple[str, str]:
    """Quiet hours around Tokyo's current time: Tokyo members are deferred, Toronto ones (13-14 h behind) are not."""
    from zoneinfo import ZoneInfo

    here = utcnow().astimezone(ZoneInfo("Asia/Tokyo"))
    return f"{(here - timedelta(hours=1)):%H:%M}", f"{(here + timedelta(hours=1)):%H:%M}"


def _mark_recently_messaged(engine: Engine, member_ids: list[int]) -> None:
    """A marketing message sent to each of ``member_ids`` a day ago (by another campaign's run)."""
    other = cr.plan_run(engine, CampaignSpec.model_validate({**SPEC, "name": "earlier"}), utcnow() - timedelta(days=1))
    sent = utcnow() - timedelta(days=1)
    with engine.begin() as connection:
        connection.execute(sa.insert(OUTBOX_MESSAGES), [
            {"key": f"earlier:{i}", "run_id": other, "member_id": i, "channel": Channel.EMAIL, "template": "x",
             "payload": {}, "status": OutboxStatus.SENT, "attempts": 1, "created_at": sent, "updated_at": sent,
             "sent_at": sent} for i in member_ids])


def _outcomes(engine: Engine, run_id: int) -> dict[tuple[str, str | None], int]:
    """(status, skip reason) → messages of the run."""
    o = OUTBOX_MESSAGES.c
    with engine.connect() as connection:
        rows = connection.execute(sa.select(o.status, o.skip_reason, sa.func.count()).where(o.run_id == run_id)
                                  .group_by(o.status, o.skip_reason)).all()
    return {(str(status), reason): int(n) for status, reason, n in rows}


@pytest.mark.usefixtures("prefect_api")
def test_campaign_flow_end_to_end(flow_env: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Holdout, variants, quiet hours and the frequency cap through the real flow; a re-run sends nothing new."""
    from flows.campaign import campaign_run
    from loyalty import jobs

    monkeypatch.setenv("LOYALFLOW_CONFIG_DIR", str(_config_with(tmp_path, "flow_test", FLOW_SPEC % _quiet_in_tokyo())))
    jobs.runtime.cache_clear()
    _members(flow_env, 400)
    with flow_env.begin() as connection:  # the last 100 members live in Tokyo
        connection.execute(sa.update(MEMBERS).where(MEMBERS.c.id > 300).values(time_zone="Asia/Tokyo"))
    capped = list(range(1, 61))
    _mark_recently_messaged(flow_env, capped)
    slot = utcnow()
    first = campaign_run("flow_test", slot=slot, chunk_size=150)
    run_id = first["run_id"]
    assert first["audience"] == first["planned_audience"] == 400 and first["chunks"] == 3
    assert abs(first["holdout"] - 80) < 4 * math.sqrt(400 * 0.2 * 0.8)
    with flow_env.connect() as connection:
        a = CAMPAIGN_ASSIGNMENTS.c
        treated = {int(i): v for i, v in connection.execute(
            sa.select(a.member_id, a.variant).where(a.run_id == run_id, a.arm != "holdout")).all()}
    assert len(treated) == first["treated"] == first["queued"]
    assert abs(sum(v == "A" for v in treated.values()) - len(treated) / 2) < 4 * math.sqrt(len(treated) / 4)
    tokyo = sum(i > 300 for i in treated)
    over_cap = sum(i in capped for i in treated)
    outcomes = _outcomes(flow_env, run_id)
    assert outcomes[("pending", None)] == tokyo == first["deferred:email"]  # quiet hours: later, not dropped
    assert outcomes[("skipped", "frequency_cap")] == over_cap == first["send_skipped:frequency_cap"]
    assert outcomes[("sent", None)] == len(treated) - tokyo - over_cap == first["sent:email"]
    eml = list((tmp_path / "var" / "sandbox").rglob("*.eml"))
    assert len(eml) == first["sent:email"]
    second = campaign_run("flow_test", slot=slot, chunk_size=150)
    assert second["run_id"] == run_id and second.get("queued", 0) == 0 and "sent:email" not in second
    assert _outcomes(flow_env, run_id) == outcomes
    assert len(list((tmp_path / "var" / "sandbox").rglob("*.eml"))) == len(eml)


RESUME_SPEC = """
description: Resume test campaign
offers: [bonus_500]
holdout_share: 0.1
channels: [email]
template: offers/bonus_500
schedule: {cron: "0 10 * * mon", timezone: America/Toronto}
"""


def _kill_midway(command: list[str], env: dict[str, str], engine: Engine, audience: int) -> int:
    """Start ``command``, SIGKILL it once some but not all chunks are committed; the assignments it left."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            done = _count(engine, CAMPAIGN_ASSIGNMENTS)
            if done > 0:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    left = _count(engine, CAMPAIGN_ASSIGNMENTS)
    assert 0 < left < audience, "the run must be killed part-way through its chunks"
    return left


@pytest.mark.usefixtures("prefect_api")
def test_a_killed_run_resumes_without_duplicates(flow_env: Engine, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL ``loyalflow campaigns run`` mid-way; running the slot again completes it, each member once."""
    from prefect.settings import PREFECT_API_URL

    from flows.campaign import campaign_run
    from loyalty import jobs

    monkeypatch.setenv("LOYALFLOW_CONFIG_DIR", str(_config_with(tmp_path, "resume_test", RESUME_SPEC)))
    jobs.runtime.cache_clear()
    _members(flow_env, 1200)
    slot = utcnow().replace(microsecond=0)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = [str(REPO_ROOT / ".venv" / "bin" / "loyalflow"), "campaigns", "run", "resume_test",
               "--slot", slot.isoformat(), "--chunk-size", "30"]
    if not Path(command[0]).exists():
        command[0] = shutil.which("loyalflow") or pytest.skip("the loyalflow script is not installed")
    left = _kill_midway(command, env, flow_env, 1200)
    totals = campaign_run("resume_test", slot=slot, chunk_size=30)
    assert totals["audience"] == 1200 and totals["assigned"] == 1200 - left
    with flow_env.connect() as connection:
        a, o = CAMPAIGN_ASSIGNMENTS.c, OUTBOX_MESSAGES.c
        per_member = connection.execute(sa.select(a.member_id, sa.func.count()).group_by(a.member_id)).all()
        sent = connection.execute(sa.select(sa.func.count()).where(o.status == OutboxStatus.SENT)).scalar_one()
        treated = connection.execute(sa.select(sa.func.count()).where(a.arm != "holdout")).scalar_one()
    assert len(per_member) == 1200 and {n for _, n in per_member} == {1}
    assert sent == treated == _count(flow_env, OUTBOX_MESSAGES)
    assert len(list((tmp_path / "var" / "sandbox").rglob("*.eml"))) == sent
