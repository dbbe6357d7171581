"""Survey answers on the real databases: links, idempotent recording, SMS parsing and invitations, NPS."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.audience import audience_ids
from loyalty.campaigns import load_campaign
from loyalty.db import fetch_rows
from loyalty.models import MEMBERS, OUTBOX_MESSAGES
from loyalty.models_measurement import SURVEY_RESPONSES
from loyalty.outbox import NewMessage, enqueue
from loyalty.programme import Programme
from loyalty.settings import WebSettings
from loyalty.surveys import (
    AUTOMATED,
    BY_FORM,
    BY_LINK,
    NEW,
    UNCHANGED,
    UPDATED,
    latest_sms_invitation,
    nps,
    nps_category,
    parse_sms_answer,
    read_survey_token,
    record_response,
    survey_token,
    survey_url,
)
from loyalty.tokens import PREFERENCES, ExpiredToken, InvalidToken, make_token
from loyalty.types import utcnow
from tests.conftest import REPO_ROOT
from tests.factories import add_contactable_member

WEB = WebSettings(public_base_url="https://rewards.example.com/", secret_key=SecretStr("survey-tests"))
_keys = itertools.count(1)


def members(engine: Engine, count: int, **fields: object) -> list[int]:
    """``count`` committed members with phones, opted in everywhere."""
    with Session(engine) as session:
        ids = [int(add_contactable_member(session, **fields).id or 0) for _ in range(count)]
        session.commit()
    return ids


def invitation(engine: Engine, member_id: int, *, channel: str = "sms", template: str = "nps_survey",
               sent_at: datetime | None = None, status: str = "sent") -> str:
    """An outbox message asking ``member_id`` the question, settled as ``status`` at ``sent_at``."""
    key = f"campaign:{next(_keys)}:{member_id}"
    with Session(engine) as session:
        enqueue(session, [NewMessage(key=key, member_id=member_id, channel=channel, template=template,
                                     payload={"content": {"body": "How likely...?"}})])
        session.commit()
    with engine.begin() as connection:
        connection.execute(OUTBOX_MESSAGES.update().where(OUTBOX_MESSAGES.c.key == key)
                           .values(status=status, sent_at=sent_at or utcnow()))
    return key


def responses(engine: Engine) -> list[tuple[object, ...]]:
    r = SURVEY_RESPONSES.c
    with engine.connect() as connection:
        return fetch_rows(connection, sa.select(r.invitation_key, r.member_id, r.channel, r.score, r.verbatim,
                                                r.responded_at, r.updated_at).order_by(r.id))


def record(engine: Engine, key: str, member_id: int, score: int, verbatim: str | None = None,
           now: datetime | None = None, channel: str = BY_FORM) -> str:
    with engine.begin() as connection:
        return record_response(connection, invitation_key=key, member_id=member_id, score=score, channel=channel,
                               verbatim=verbatim, now=now)


def test_survey_token_names_member_and_invitation_and_nothing_else() -> None:
    token = survey_token(WEB, 42, "campaign:7:42")
    assert read_survey_token(WEB, token).invitation_key == "campaign:7:42"
    assert read_survey_token(WEB, token).member_id == 42
    assert survey_url(WEB, 42, "campaign:7:42", score=9).startswith("https://rewards.example.com/survey/")
    assert survey_url(WEB, 42, "campaign:7:42", score=9).endswith("?score=9")
    other_key = survey_token(WEB, 42, "campaign:8:42").split(".", 1)[0]
    forged = [other_key + "." + token.split(".", 1)[1],  # the signature covers the key
              token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "", "nodot", "%%%." + token.split(".", 1)[1],
              "Y2FtcGFpZ246NzQy." + make_token(WEB, 42, PREFERENCES)]  # another purpose's token
    for bad in forged:
        with pytest.raises(InvalidToken):
            read_survey_token(WEB, bad)
    old = survey_token(WEB, 42, "campaign:7:42", now=utcnow() - timedelta(days=WEB.token_max_age_days + 1))
    with pytest.raises(ExpiredToken):
        read_survey_token(WEB, old)


def test_record_is_idempotent_updates_and_keeps_the_first_answer_time(engine: Engine) -> None:
    (member,) = members(engine, 1)
    key, t0 = invitation(engine, member), utcnow() - timedelta(hours=2)
    assert record(engine, key, member, 9, now=t0) == NEW
    assert record(engine, key, member, 9, now=t0 + timedelta(minutes=1)) == UNCHANGED  # a double click
    ((_, _, channel, score, verbatim, responded, updated),) = responses(engine)
    assert (channel, score, verbatim, responded, updated) == ("web", 9, None, t0, t0)
    assert record(engine, key, member, 9, "  Friendly staff  ", now=t0 + timedelta(minutes=2)) == UPDATED
    assert record(engine, key, member, 6, now=t0 + timedelta(minutes=3)) == UPDATED  # a corrected score
    assert record(engine, key, member, 6, now=t0 + timedelta(minutes=4)) == UNCHANGED
    ((_, _, _, score, verbatim, responded, updated),) = responses(engine)
    # The score changed, the comment given earlier stayed (no comment this time is not "delete it").
    assert (score, verbatim, responded, updated) == (6, "Friendly staff", t0, t0 + timedelta(minutes=3))
    with pytest.raises(ValueError, match="0-10"):
        record(engine, key, member, 11)
    assert len(responses(engine)) == 1



def test_a_scanner_clicking_every_score_link_is_set_aside_until_the_member_answers(engine: Engine,
                                                                                  programme: Programme) -> None:
    (member,) = members(engine, 1)
    key, t0 = invitation(engine, member, channel="email"), utcnow() - timedelta(hours=1)
    assert record(engine, key, member, 0, now=t0, channel=BY_LINK) == NEW  # a scanner fetches the links in order
    assert nps(engine).detractors == 1
    assert record(engine, key, member, 1, now=t0 + timedelta(seconds=1), channel=BY_LINK) == AUTOMATED
    for score in range(2, 11):
        assert record(engine, key, member, score, now=t0 + timedelta(seconds=2), channel=BY_LINK) == AUTOMATED
    assert nps(engine).responses == 0  # set aside: not an answer
    spec = load_campaign(REPO_ROOT / "config" / "campaigns" / "service_recovery.yaml", programme)
    with engine.connect() as connection:
        assert list(audience_ids(connection, spec, (member, member + 1), as_of=utcnow())) == []
    # The member's own click later is not taken either (the page asks to confirm); the form's answer is.
    assert record(engine, key, member, 9, now=t0 + timedelta(minutes=5), channel=BY_LINK) == AUTOMATED
    assert record(engine, key, member, 9, now=t0 + timedelta(minutes=6)) == UPDATED
    summary = nps(engine)
    assert (summary.promoters, summary.responses) == (1, 1)
    assert [row[2:4] for row in responses(engine)] == [(BY_FORM, 9)]


def test_a_member_correcting_a_click_after_the_burst_window_is_an_answer(engine: Engine) -> None:
    (member,) = members(engine, 1)
    key, t0 = invitation(engine, member, channel="email"), utcnow() - timedelta(hours=1)
    assert record(engine, key, member, 7, now=t0, channel=BY_LINK) == NEW
    assert record(engine, key, member, 7, now=t0 + timedelta(seconds=1), channel=BY_LINK) == UNCHANGED  # double click
    assert record(engine, key, member, 9, now=t0 + timedelta(seconds=45), channel=BY_LINK) == UPDATED
    assert (nps(engine).promoters, nps(engine).responses) == (1, 1)
    # A comment given through the form makes the row a member's answer: later clicks never count as a burst.
    assert record(engine, key, member, 9, "Great staff", now=t0 + timedelta(seconds=50)) == UPDATED
    assert record(engine, key, member, 8, now=t0 + timedelta(seconds=52), channel=BY_LINK) == UPDATED

def test_nps_counts_each_members_latest_answer_in_the_window(engine: Engine) -> None:
    ids = members(engine, 11)
    start = utcnow() - timedelta(days=10)
    scores = [10, 9, 9, 10, 9, 8, 7, 7, 6, 0]  # 5 promoters, 3 passives, 2 detractors
    for n, (member, score) in enumerate(zip(ids, scores, strict=False)):
        record(engine, invitation(engine, member, channel="email"), member, score, now=start + timedelta(hours=n))
    summary = nps(engine)
    assert (summary.promoters, summary.passives, summary.detractors, summary.responses) == (5, 3, 2, 10)
    assert summary.score == pytest.approx(30.0)
    # A later answer of the first promoter replaces theirs: 4 promoters, 3 detractors.
    record(engine, invitation(engine, ids[0], channel="email"), ids[0], 3, now=start + timedelta(days=5))
    after = nps(engine)
    assert (after.promoters, after.detractors, after.responses) == (4, 3, 10)
    assert after.score == pytest.approx(10.0)
    # Before that answer, the first one counts; an empty window has no score.
    assert nps(engine, until=start + timedelta(days=1)).score == pytest.approx(30.0)
    with engine.connect() as connection:
        assert nps(connection, since=start + timedelta(days=1)).responses == 1
    assert nps(engine, since=utcnow()).score is None


def test_nps_categories() -> None:
    assert [nps_category(s) for s in (0, 6, 7, 8, 9, 10)] == ["detractor", "detractor", "passive", "passive",
                                                               "promoter", "promoter"]
    for bad in (-1, 11):
        with pytest.raises(ValueError, match="0-10"):
            nps_category(bad)


@pytest.mark.parametrize(("body", "expected"), [
    ("9", (9, None)), (" 10! ", (10, None)), ("0", (0, None)), ("9 great staff", (9, "great staff")),
    ("8/10 - slow checkout", (8, "slow checkout")), ("7 out of 10", (7, None)),
    ("6 sur 10, trop cher", (6, "trop cher")), ("5 \u2013 meh", (5, "meh")),
    ("10\nLove it", (10, "Love it")), ("nine", (9, None)), ("Dix.", (10, None)), ("zéro", (0, None)),
])
def test_sms_answers_that_count(body: str, expected: tuple[int, str | None]) -> None:
    assert parse_sms_answer(body) == expected


@pytest.mark.parametrize("body", ["11", "-1", "100", "7.5", "7,5", "STOP", "", "   ", "one more question",
                                  "I'd say 9", "twelve", "x10"])
def test_sms_texts_that_are_not_answers(body: str) -> None:
    assert parse_sms_answer(body) is None


def test_latest_sms_invitation_is_the_newest_sent_survey_sms_to_that_phone(engine: Engine) -> None:
    member, other = members(engine, 2)
    with engine.connect() as connection:
        phone = str(connection.execute(sa.select(MEMBERS.c.phone).where(MEMBERS.c.id == member)).scalar_one())
    now = utcnow()
    invitation(engine, member, sent_at=now - timedelta(days=3))
    newest = invitation(engine, member, sent_at=now - timedelta(days=1))
    invitation(engine, member, sent_at=now - timedelta(hours=1), template="win_back")  # not a survey
    invitation(engine, member, sent_at=now - timedelta(hours=1), status="pending")  # never sent
    invitation(engine, member, sent_at=now - timedelta(hours=1), channel="email")  # not an SMS
    invitation(engine, other, sent_at=now - timedelta(minutes=5))  # another number
    with engine.connect() as connection:
        found = latest_sms_invitation(connection, phone, 7, now=now)
        assert found is not None and (found.key, found.member_id, found.locale) == (newest, member, "en_CA")
        assert latest_sms_invitation(connection, phone, 7, now=now + timedelta(days=7)) is None  # too old now
        assert latest_sms_invitation(connection, "+15145550199", 7, now=now) is None


def test_recent_detractors_are_the_service_recovery_audience(engine: Engine, programme: Programme) -> None:
    spec = load_campaign(REPO_ROOT / "config" / "campaigns" / "service_recovery.yaml", programme)
    detractor, promoter, old_detractor, recovered, silent = members(engine, 5)
    now = utcnow()
    for member, score, days_ago in [(detractor, 3, 2), (promoter, 10, 2), (old_detractor, 0, 45), (recovered, 2, 20),
                                    (recovered, 9, 1)]:  # a later promoter answer replaces the detractor one
        record(engine, invitation(engine, member, channel="email"), member, score, now=now - timedelta(days=days_ago))
    csat = invitation(engine, detractor, channel="email")
    with engine.begin() as connection:  # a later answer to another survey is not an NPS answer
        record_response(connection, invitation_key=csat, member_id=detractor, score=10, channel=BY_FORM,
                        survey="csat", now=now - timedelta(days=1))
    with engine.connect() as connection:
        found = audience_ids(connection, spec, (detractor, silent + 1), as_of=now)
    assert list(found) == [detractor]
