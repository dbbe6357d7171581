"""One-click unsubscribe and the preference page over the real app and database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from loyalty.models import MEMBERS
from loyalty.tokens import PREFERENCES, make_token, preferences_url, unsubscribe_url
from loyalty.types import utcnow
from loyalty.web.app import create_app
from tests.test_delivery_events import consent, new_member
from tests.test_web_webhooks import PUBLIC, make_settings

SETTINGS = make_settings()
WEB = SETTINGS.web


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS, engine)) as test_client:
        yield test_client


def path(url: str) -> str:
    assert url.startswith(PUBLIC)
    return url[len(PUBLIC):]


def csrf_field(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "the form carries a csrf field"
    return match.group(1)


def test_unsubscribe_get_confirms_without_acting(client: TestClient, engine: Engine) -> None:
    member_id, _ = new_member(engine)
    response = client.get(path(unsubscribe_url(WEB, member_id, "sms")))
    assert response.status_code == 200
    assert "You will no longer receive text (SMS) messages" in response.text
    assert '<form method="post">' in response.text and "/preferences/" in response.text
    assert consent(engine, member_id, "sms") == (True, "import")
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("body", [b"List-Unsubscribe=One-Click", b""])
def test_one_click_bare_post_unsubscribes_idempotently(client: TestClient, engine: Engine, body: bytes) -> None:
    member_id, _ = new_member(engine)
    url = path(unsubscribe_url(WEB, member_id, "email"))
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    for _ in range(2):
        response = client.post(url, content=body, headers=headers)
        assert response.status_code == 200 and "You are unsubscribed" in response.text
        assert consent(engine, member_id, "email") == (False, "unsubscribe_link")
    assert consent(engine, member_id, "sms") == (True, "import")


def test_tampered_and_expired_links_are_refused(client: TestClient, engine: Engine) -> None:
    member_id, _ = new_member(engine)
    url = path(unsubscribe_url(WEB, member_id, "email"))
    tampered = url[:-6] + ("aaaaaa" if not url.endswith("aaaaaa") else "bbbbbb")
    for method in (client.get, client.post):
        bad = method(tampered)
        assert bad.status_code == 400 and "not valid" in bad.text
    expired = path(unsubscribe_url(WEB, member_id, "email", now=utcnow() - timedelta(days=61)))
    for method in (client.get, client.post):
        old = method(expired)
        assert old.status_code == 410 and "more recent message" in old.text
    # A preference token cannot unsubscribe, and vice versa.
    assert client.post("/unsubscribe/" + make_token(WEB, member_id, PREFERENCES)).status_code == 400
    assert client.get("/preferences/" + url.rsplit("/", 1)[1]).status_code == 400
    assert consent(engine, member_id, "email") == (True, "import")


def test_preferences_round_trip(client: TestClient, engine: Engine) -> None:
    member_id, _ = new_member(engine)
    with engine.begin() as connection:  # (the factory fixes first_name)
        connection.execute(MEMBERS.update().where(MEMBERS.c.id == member_id).values(first_name="Ada <b>"))
    url = path(preferences_url(WEB, member_id))
    page = client.get(url)
    assert page.status_code == 200
    assert "Hi Ada &lt;b&gt;" in page.text  # autoescaped
    assert page.text.count("checked") == 3
    assert '<label class="choice" for="channel-sms">' in page.text
    # What a browser sends for our own form under Referrer-Policy: no-referrer.
    saved = client.post(url, data={"email": "on", "push": "on", "csrf": csrf_field(page.text)},
                        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
    assert saved.status_code == 200 and "Saved" in saved.text
    assert saved.text.count("checked") == 2
    assert consent(engine, member_id, "email") == (True, "preference_page")
    assert consent(engine, member_id, "sms") == (False, "preference_page")
    assert consent(engine, member_id, "push") == (True, "preference_page")


def test_preferences_refuse_forged_posts(client: TestClient, engine: Engine) -> None:
    member_id, _ = new_member(engine)
    other, _ = new_member(engine)
    url = path(preferences_url(WEB, member_id))
    good = csrf_field(client.get(url).text)
    others = csrf_field(client.get(path(preferences_url(WEB, other))).text)  # genuine, for another token
    attempts = [({}, {}),  # no csrf field at all
                ({"csrf": "0" * 64}, {}),
                ({"csrf": others}, {}),
                ({"csrf": good}, {"Origin": "https://evil.example"}),
                ({"csrf": good}, {"Sec-Fetch-Site": "cross-site"}),
                ({"csrf": good}, {"Sec-Fetch-Site": "same-site", "Origin": "null"})]
    for data, headers in attempts:
        response = client.post(url, data=data, headers=headers)
        assert response.status_code == 403 and "not saved" in response.text
    assert consent(engine, member_id, "email") == (True, "import")


def test_members_that_no_longer_exist_get_the_invalid_page(client: TestClient) -> None:
    assert client.get(path(preferences_url(WEB, 987_654))).status_code == 400
    assert client.post(path(unsubscribe_url(WEB, 987_654, "email"))).status_code == 400
