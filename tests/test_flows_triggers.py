"""Triggered-message flows run for real on the temporary Prefect API: from a posted purchase to the sandbox."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from loyalty import jobs
from loyalty.db import session_scope
from loyalty.models import OUTBOX_MESSAGES, TIER_CHANGES
from loyalty.types import utcnow
from loyalty.web.app import create_app
from loyalty.web.events import EVENTS_PATH, events_token
from tests.factories import add_contactable_member

pytestmark = pytest.mark.usefixtures("prefect_api")


def _member(engine: Engine, **fields: object) -> tuple[int, str]:
    with session_scope(engine) as session:
        member = add_contactable_member(session, channels=("email",), **fields)
        assert member.id is not None
        return member.id, member.external_id


def _outbox(engine: Engine) -> list[tuple[str, str, str]]:
    o = OUTBOX_MESSAGES.c
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.select(o.key, o.channel, o.status).order_by(o.id))]


def test_a_posted_purchase_crossing_silver_sends_exactly_one_message(flow_env: Engine) -> None:
    from flows.tier_upgrade import send_tier_upgrades

    settings = jobs.runtime().settings
    member_id, external_id = _member(flow_env, first_name="Zoé")
    client = TestClient(create_app(settings, flow_env))
    posted = client.post(EVENTS_PATH, headers={"Authorization": f"Bearer {events_token(settings)}"},
                         json={"external_id": "POS-1", "member_external_id": external_id, "amount_cents": 120_000,
                               "currency": "CAD", "occurred_at": utcnow().isoformat()})
    assert posted.status_code == 200 and posted.json()["tier_upgrades"] == 1

    summary = send_tier_upgrades(member_id=f"loyalty.member.{member_id}")
    assert (summary["queued"], summary["handled"], summary["sent"]) == (1, 1, 1)
    with flow_env.connect() as connection:
        change_id = connection.execute(sa.select(TIER_CHANGES.c.id)).scalar_one()
    assert _outbox(flow_env) == [(f"tier_upgrade:{change_id}", "email", "sent")]
    (eml,) = (settings.sandbox_dir / "email").glob("*.eml")
    assert "Silver" in eml.read_text(encoding="utf-8", errors="replace")

    again = send_tier_upgrades()  # the sweeper after the event-triggered run: nothing new
    assert (again["considered"], again["queued"], again["sent"]) == (0, 0, 0)
    assert len(_outbox(flow_env)) == 1 and len(list((settings.sandbox_dir / "email").glob("*.eml"))) == 1


def test_a_lost_dispatch_is_sent_by_the_next_sweep(flow_env: Engine) -> None:
    from flows.tier_upgrade import send_tier_upgrades
    from loyalty.rendering import TemplateLibrary
    from loyalty.triggers import queue_tier_upgrades

    rt = jobs.runtime()
    _, external_id = _member(flow_env)
    client = TestClient(create_app(rt.settings, flow_env))
    client.post(EVENTS_PATH, headers={"Authorization": f"Bearer {events_token(rt.settings)}"},
                json={"external_id": "POS-2", "member_external_id": external_id, "amount_cents": 120_000,
                      "currency": "CAD", "occurred_at": utcnow().isoformat()})
    # A run that queued the message and died before dispatching it.
    library = TemplateLibrary(rt.settings.templates_dir, web=rt.settings.web, programme=rt.programme)
    assert queue_tier_upgrades(rt.engine, rt.programme, library).queued == 1
    summary = send_tier_upgrades()
    assert (summary["queued"], summary["sent"]) == (0, 1)
    assert [status for _, _, status in _outbox(flow_env)] == ["sent"]


def test_welcome_is_sent_once(flow_env: Engine) -> None:
    from flows.triggers import send_welcome

    member_id, _ = _member(flow_env)
    assert send_welcome([member_id])["sent"] == 1
    assert (again := send_welcome([member_id]))["already_queued"] == 1 and again["sent"] == 0


def test_points_expiring_flow_runs_over_id_ranges(flow_env: Engine) -> None:
    from flows.triggers import send_points_expiring

    _member(flow_env)
    summary = send_points_expiring(chunk_size=1)
    assert summary["trigger"] == "points_expiring" and (summary["considered"], summary["sent"]) == (0, 0)


def test_upgrade_events_reach_the_api_and_the_trigger_matches_them() -> None:
    from flows.tier_upgrade import TIER_UPGRADED_EVENT, announce_tier_upgrade, tier_upgrade_deployment_trigger

    assert announce_tier_upgrade(42, 7) is True  # PREFECT_API_URL points at the temporary API
    trigger = tier_upgrade_deployment_trigger()
    assert trigger.expect == {TIER_UPGRADED_EVENT}
    assert trigger.match.model_dump() == {"prefect.resource.id": "loyalty.member.*"}
    assert trigger.parameters == {"member_id": "{{ event.resource.id }}"}
