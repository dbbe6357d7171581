"""``POST /events/transactions`` over the real app and database: auth, validation, idempotency, refunds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from loyalty.db import session_scope
from loyalty.models import MEMBERS, TIER_CHANGES, TRANSACTIONS
from loyalty.settings import Settings, WebSettings
from loyalty.types import utcnow
from loyalty.web.app import create_app
from loyalty.web.events import EVENTS_PATH, events_token
from tests.conftest import REPO_ROOT
from tests.factories import add_member

SETTINGS = Settings(config_dir=REPO_ROOT / "config",
                    web=WebSettings(public_base_url="https://rewards.example.com", secret_key=SecretStr("s3cret")))
AUTH = {"Authorization": f"Bearer {events_token(SETTINGS)}"}


@pytest.fixture
def client(engine: Engine) -> TestClient:
    return TestClient(create_app(SETTINGS, engine))


@pytest.fixture
def member(engine: Engine) -> str:
    """A member's external id."""
    with session_scope(engine) as session:
        return add_member(session).external_id


def txn(member: str, external_id: str = "T-1", amount_cents: int = 2_500, **fields: Any) -> dict[str, Any]:
    return {"external_id": external_id, "member_external_id": member, "amount_cents": amount_cents,
            "currency": "CAD", "category": "general", "occurred_at": utcnow().isoformat()} | fields


def balance(engine: Engine, external_id: str) -> int:
    with engine.connect() as connection:
        query = sa.select(MEMBERS.c.points_balance).where(MEMBERS.c.external_id == external_id)
        return int(connection.execute(query).scalar_one())


def count(engine: Engine, table: sa.Table) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_the_token_is_an_hmac_of_the_secret_key() -> None:
    import hashlib
    import hmac

    assert events_token(SETTINGS) == hmac.new(b"s3cret", b"events", hashlib.sha256).hexdigest()


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {events_token(SETTINGS)}", "Bearer "])
def test_requests_without_the_token_are_refused(client: TestClient, engine: Engine, member: str,
                                                header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.post(EVENTS_PATH, json=txn(member), headers=headers)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert count(engine, TRANSACTIONS) == 0


def test_a_purchase_is_recorded_once_and_credits_points(client: TestClient, engine: Engine, member: str) -> None:
    first = client.post(EVENTS_PATH, json=txn(member), headers=AUTH)
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["recorded"], body["duplicates"], body["tier_upgrades"]) == (1, 0, 0) and body["points"] > 0
    credited = balance(engine, member)
    assert credited == body["points"]

    again = client.post(EVENTS_PATH, json=[txn(member)], headers=AUTH)  # a client retry, as a list
    assert again.json() == {"recorded": 0, "duplicates": 1, "tier_upgrades": 0, "points": 0}
    assert balance(engine, member) == credited and count(engine, TRANSACTIONS) == 1


def test_a_refund_claws_points_back(client: TestClient, engine: Engine, member: str) -> None:
    earned = client.post(EVENTS_PATH, json=txn(member, amount_cents=10_000), headers=AUTH).json()["points"]
    refund = client.post(EVENTS_PATH, json=txn(member, "T-2", amount_cents=-4_000), headers=AUTH)
    assert refund.status_code == 200, refund.text
    assert refund.json()["recorded"] == 1 and refund.json()["points"] < 0
    assert balance(engine, member) == earned + refund.json()["points"] >= 0


def test_crossing_silver_counts_one_tier_upgrade(client: TestClient, engine: Engine, member: str) -> None:
    response = client.post(EVENTS_PATH, json=txn(member, amount_cents=120_000), headers=AUTH)
    assert response.json()["tier_upgrades"] == 1
    with engine.connect() as connection:
        to_tier = connection.execute(sa.select(TIER_CHANGES.c.to_tier)).scalar_one()
    assert to_tier == "silver"


def _locs(response: Any) -> set[tuple[Any, ...]]:
    assert response.status_code == 422, response.text
    return {tuple(error["loc"]) for error in response.json()["detail"]}


def test_bad_fields_are_named_and_nothing_is_recorded(client: TestClient, engine: Engine, member: str) -> None:
    bad = txn(member, "T-3", amount_cents=12.5, currency="USD", occurred_at="2024-05-01T10:00:00")
    assert _locs(client.post(EVENTS_PATH, json=bad, headers=AUTH)) == {
        ("body", "amount_cents"), ("body", "currency"), ("body", "occurred_at")}
    batch = [txn(member), txn(member, "T-4", amount_cents=0), {"member_external_id": member}]
    locs = _locs(client.post(EVENTS_PATH, json=batch, headers=AUTH))
    assert ("body", 1, "amount_cents") in locs and ("body", 2, "external_id") in locs
    future = txn(member, occurred_at=(utcnow() + timedelta(hours=1)).isoformat())
    assert _locs(client.post(EVENTS_PATH, json=future, headers=AUTH)) == {("body", "occurred_at")}
    assert count(engine, TRANSACTIONS) == 0  # the good row of the bad batch was not recorded either


def test_unknown_members_and_malformed_bodies_are_422(client: TestClient, engine: Engine, member: str) -> None:
    batch = [txn(member), txn("NOBODY", "T-5")]
    assert _locs(client.post(EVENTS_PATH, json=batch, headers=AUTH)) == {("body", 1, "member_external_id")}
    assert _locs(client.post(EVENTS_PATH, content=b"{not json", headers=AUTH)) == {("body",)}
    assert _locs(client.post(EVENTS_PATH, json=[], headers=AUTH)) == {("body",)}
    assert count(engine, TRANSACTIONS) == 0
