"""Survey answers through the real web app: email link clicks, the comment form, SMS replies to Twilio."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from loyalty import campaign_run as cr
from loyalty.campaigns import CampaignSpec
from loyalty.jobs import Runtime
from loyalty.models import MEMBERS, OUTBOX_MESSAGES
from loyalty.programme import Programme
from loyalty.render_context import personas
from loyalty.rendering import TemplateLibrary
from loyalty.rendering_types import MemberView
from loyalty.settings import load_settings
from loyalty.surveys import nps, survey_token, survey_url
from loyalty.types import utcnow
from loyalty.web import webhooks
from loyalty.web.app import create_app
from tests.conftest import REPO_ROOT
from tests.template_helpers import TEMPLATES
from tests.test_surveys import invitation, members, responses
from tests.test_web_preferences import csrf_field, path
from tests.test_web_webhooks import make_settings, twilio_post

SETTINGS = make_settings()
WEB = SETTINGS.web
INBOUND = webhooks.TWILIO_INBOUND_PATH



@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS, engine)) as test_client:
        yield test_client


def phone_of(engine: Engine, member_id: int) -> str:
    with engine.connect() as connection:
        return str(connection.execute(sa.select(MEMBERS.c.phone).where(MEMBERS.c.id == member_id)).scalar_one())


def scores(engine: Engine) -> list[tuple[Any, ...]]:
    """(invitation key, member, channel, score, verbatim) of every response."""
    return [row[:5] for row in responses(engine)]


def test_email_link_click_records_and_a_second_click_writes_nothing(client: TestClient, engine: Engine) -> None:
    (member,) = members(engine, 1)
    key = invitation(engine, member, channel="email")
    page = client.get(path(survey_url(WEB, member, key, score=9)))
    assert page.status_code == 200 and "9 out of 10" in page.text and 'name="verbatim"' in page.text
    first = responses(engine)
    assert client.get(path(survey_url(WEB, member, key, score=9))).status_code == 200
    assert responses(engine) == first == [(key, member, "link", 9, None, first[0][5], first[0][5])]


def test_other_scores_clicked_seconds_later_ask_to_confirm_through_the_form(client: TestClient,
                                                                             engine: Engine) -> None:
    (member,) = members(engine, 1)
    key = invitation(engine, member, channel="email")
    client.get(path(survey_url(WEB, member, key, score=0)))  # a mail scanner fetching every link
    page = client.get(path(survey_url(WEB, member, key, score=4)))
    assert page.status_code == 200 and 'id="confirm"' in page.text and "Thank you" not in page.text
    assert re.search(r'id="score-4"[^>]*checked', page.text)  # the clicked score, preselected
    assert nps(engine).responses == 0
    url = path(survey_url(WEB, member, key))
    saved = client.post(url, data={"score": "4", "csrf": csrf_field(page.text)})
    assert saved.status_code == 200 and "4 out of 10" in saved.text
    assert scores(engine) == [(key, member, "web", 4, None)] and nps(engine).responses == 1


def test_comment_post_stores_the_verbatim_and_refuses_forgeries(client: TestClient, engine: Engine) -> None:
    (member,) = members(engine, 1)
    key = invitation(engine, member, channel="email")
    url = path(survey_url(WEB, member, key))
    question = client.get(url)
    assert question.status_code == 200 and question.text.count('type="radio"') == 11 and not responses(engine)
    csrf = csrf_field(question.text)
    for data, headers in [({"score": "3", "verbatim": "x"}, {}),
                          ({"score": "3", "csrf": "0" * 64}, {}),
                          ({"score": "3", "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
                          ({"score": "3", "csrf": csrf}, {"Origin": "https://evil.example"})]:
        assert client.post(url, data=data, headers=headers).status_code == 403
    assert not responses(engine)
    assert client.post(url, data={"score": "12", "csrf": csrf}).status_code == 400 and not responses(engine)
    saved = client.post(url, data={"score": "3", "verbatim": " The queue <b>was</b> long ", "csrf": csrf},
                        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
    assert saved.status_code == 200 and "3 out of 10" in saved.text and "Thank you for telling us" in saved.text
    assert scores(engine) == [(key, member, "web", 3, "The queue <b>was</b> long")]
    again = client.post(url, data={"score": "3", "verbatim": "The queue <b>was</b> long", "csrf": csrf})
    assert again.status_code == 200 and len(responses(engine)) == 1


def test_bad_links_write_nothing(client: TestClient, engine: Engine) -> None:
    member, other = members(engine, 2)
    key = invitation(engine, member, channel="email")
    good = survey_token(WEB, member, key)
    foreign = survey_token(WEB, other, key)  # genuine signature, but not this member's invitation
    unknown = survey_token(WEB, member, "campaign:999:1")  # no such message
    tampered = survey_token(WEB, member, "campaign:999:1").split(".", 1)[0] + "." + good.split(".", 1)[1]
    for token in ("garbage", foreign, unknown, tampered, good[:-3]):
        assert client.get(f"/survey/{token}?score=9").status_code == 400
        page = client.post(f"/survey/{token}", data={"score": "9", "csrf": "0" * 64})
        assert page.status_code == 400 and "not valid" in page.text
    expired = survey_url(WEB, member, key, score=9, now=utcnow() - timedelta(days=WEB.token_max_age_days + 1))
    assert client.get(path(expired)).status_code == 410
    for score in ("11", "-1", "abc", "9.5"):
        assert client.get(f"/survey/{good}?score={score}").status_code == 400
    assert not responses(engine)


def test_sms_reply_through_the_signed_webhook_is_recorded_once(client: TestClient, engine: Engine) -> None:
    member, french = members(engine, 1) + members(engine, 1, locale="fr_CA")
    key, key_fr = invitation(engine, member), invitation(engine, french)
    params = {"From": phone_of(engine, member), "Body": "9 great staff", "MessageSid": "SM1"}
    first = twilio_post(client, INBOUND, params)
    assert first.status_code == 200 and "<Message>Thank you for your answer!</Message>" in first.text
    recorded = responses(engine)
    assert twilio_post(client, INBOUND, params).status_code == 200  # Twilio retries the same webhook
    assert responses(engine) == recorded and scores(engine) == [(key, member, "sms", 9, "great staff")]
    # A sentence after the score adds to the comment (a retry adds nothing); the score stays.
    for _ in range(2):
        twilio_post(client, INBOUND, params | {"Body": "The new bakery is lovely", "MessageSid": "SM2"})
    assert scores(engine) == [(key, member, "sms", 9, "great staff\nThe new bakery is lovely")]
    reply = twilio_post(client, INBOUND, {"From": phone_of(engine, french), "Body": "dix", "MessageSid": "SM3"})
    assert "Merci" in reply.text and scores(engine)[1] == (key_fr, french, "sms", 10, None)


def test_a_number_that_is_no_score_gets_a_hint_and_writes_nothing(client: TestClient, engine: Engine) -> None:
    member, french = members(engine, 1) + members(engine, 1, locale="fr_CA")
    invitation(engine, member), invitation(engine, french)
    for phone, body, hint in [(phone_of(engine, member), "11", "number from 0 to 10"),
                              (phone_of(engine, french), "7.5", "nombre de 0 à 10")]:
        reply = twilio_post(client, INBOUND, {"From": phone, "Body": body, "MessageSid": f"SM-{body}"})
        assert reply.status_code == 200 and hint in reply.text
    assert not responses(engine)


def test_a_score_that_is_not_exactly_a_number_is_a_bad_request(client: TestClient, engine: Engine) -> None:
    (member,) = members(engine, 1)
    url = path(survey_url(WEB, member, invitation(engine, member, channel="email")))
    for score in ("²", "٣", " 9x", "-1"):
        assert client.get(url, params={"score": score}).status_code == 400
    assert not responses(engine)


def test_forged_or_unrelated_sms_writes_nothing(client: TestClient, engine: Engine) -> None:
    member, stranger = members(engine, 2)
    invitation(engine, member)
    params = {"From": phone_of(engine, member), "Body": "2", "MessageSid": "SM9"}
    assert twilio_post(client, INBOUND, params, token="not-the-auth-token").status_code == 403
    assert client.post(INBOUND, data=params).status_code == 403  # unsigned
    no_invitation = twilio_post(client, INBOUND, params | {"From": phone_of(engine, stranger)})
    assert no_invitation.status_code == 200 and "<Message>" not in no_invitation.text
    not_an_answer = twilio_post(client, INBOUND, params | {"Body": "what is my balance"})
    assert "<Message>" not in not_an_answer.text
    assert not responses(engine)


def test_the_shipped_email_links_answer_with_one_click(client: TestClient, engine: Engine,
                                                       programme: Programme) -> None:
    (member,) = members(engine, 1)
    key = invitation(engine, member, channel="email")
    library = TemplateLibrary(TEMPLATES, web=WEB, programme=programme)  # signs links with the app's secret
    for persona in ("olivia", "camille"):  # English and French
        sample = personas(programme, name="nps_survey")[persona]
        view = MemberView(member, sample.member.first_name, "", "a@example.com", None, sample.member.locale)
        # The library's own survey_url() signs the invitation's outbox key, as a campaign render passes it.
        variables = sample.variables() | {"member": view, "message_key": key}
        html = library.render("nps_survey", "email", variables).content["html"]
        links = re.findall(r'href="(https://rewards\.example\.com/survey/[^"?]+)\?score=(\d+)"', html)
        assert [int(score) for _, score in links] == list(range(11))
        assert client.get(path(f"{links[7][0]}?score=7")).status_code == 200
    assert scores(engine) == [(key, member, "link", 7, None)]


def test_a_campaign_run_invites_by_email_and_sms_and_both_answers_land(client: TestClient, engine: Engine,
                                                                       programme: Programme) -> None:
    by_email, by_sms = members(engine, 1) + members(engine, 1, email=None)
    settings = load_settings(config_dir=REPO_ROOT / "config", templates_dir=REPO_ROOT / "templates", web=WEB)
    spec = CampaignSpec.model_validate({"name": "nps_test", "channels": ["email", "sms"], "template": "nps_survey",
                                        "schedule": {"cron": "0 11 15 * *", "timezone": "America/Toronto"}})
    run_id = cr.plan_run(engine, spec, utcnow())
    counts = cr.process_chunk(run_id, (by_email, by_sms + 1), rt=Runtime(settings, engine, programme), spec=spec)
    assert counts["channel:email"] == counts["channel:sms"] == 1
    o = OUTBOX_MESSAGES.c
    with engine.begin() as connection:
        sent = dict(connection.execute(sa.select(o.channel, o.key).where(o.run_id == run_id)).all())
        connection.execute(OUTBOX_MESSAGES.update().values(status="sent", sent_at=utcnow()))
        (payload,) = connection.execute(sa.select(o.payload).where(o.key == sent["email"])).scalars()
    link = re.search(r'href="(https://rewards\.example\.com/survey/[^"?]+)\?score=8"', payload["content"]["html"])
    assert link and client.get(path(link.group(1)) + "?score=8").status_code == 200
    twilio_post(client, INBOUND, {"From": phone_of(engine, by_sms), "Body": "2 - never any stock", "MessageSid": "S"})
    assert sorted(scores(engine)) == sorted([(sent["email"], by_email, "link", 8, None),
                                             (sent["sms"], by_sms, "sms", 2, "never any stock")])
