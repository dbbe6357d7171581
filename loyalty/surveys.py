"""NPS surveys: signed survey links, answers recorded once per invitation, SMS replies, the NPS itself.

An *invitation* is the outbox message that asked the question; its outbox key is the
``survey_responses.invitation_key``, so every way of answering the same invitation (a click on a
score in the email, the comment form, an SMS reply, Twilio retrying the webhook) lands on one row.
:func:`record_response` is one ``INSERT ... ON CONFLICT`` on that key: a repeated identical answer
writes nothing, a changed score or comment updates the row and keeps ``responded_at``.

Survey links are member tokens (:mod:`loyalty.tokens`) for the purpose ``survey:<invitation key>``:
the signature covers the key, which travels in front of the token, base64url-encoded, so a token
cannot be replayed against another invitation. Nothing is stored to issue a link.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from loyalty.db import fetch_rows
from loyalty.models import MEMBERS, OUTBOX_MESSAGES
from loyalty.models_measurement import SURVEY_RESPONSES
from loyalty.settings import WebSettings
from loyalty.tokens import InvalidToken, make_token, read_token
from loyalty.types import NPS_SCORES, NpsCategory, OutboxStatus, as_utc, utcnow

SURVEY = "survey"
NPS = "nps"
#: Message folders whose messages are survey invitations (an SMS reply can answer them).
SURVEY_TEMPLATES = ("nps_survey",)
#: How long after an SMS invitation a numeric reply still counts as its answer.
SMS_ANSWER_DAYS = 7
VERBATIM_MAX = 2000
_SENT = (OutboxStatus.SENT, OutboxStatus.DELIVERED)
NEW, UPDATED, UNCHANGED, AUTOMATED = "new", "updated", "unchanged", "automated"
#: How an answer came: a score clicked in the email, the survey form, an SMS reply.
BY_LINK, BY_FORM, BY_SMS = "link", "web", "sms"
#: Two different scores clicked on one invitation's links within this time: a mail scanner following every
#: link (it fetches all eleven within seconds of delivery), not a member correcting a click.
SCANNER_BURST = timedelta(seconds=30)


@dataclass(frozen=True)
class SurveyLink:
    """What a valid survey token says: whose answer it carries, to which invitation."""

    member_id: int
    invitation_key: str


@dataclass(frozen=True)
class Invitation:
    """An open survey invitation: its outbox key, the member, and their locale (for the reply)."""

    key: str
    member_id: int
    locale: str


@dataclass(frozen=True)
class NpsSummary:
    """Net Promoter Score over members' latest answers: % promoters (9-10) minus % detractors (0-6)."""

    promoters: int
    passives: int
    detractors: int

    @property
    def responses(self) -> int:
        return self.promoters + self.passives + self.detractors

    @property
    def score(self) -> float | None:
        """-100..100; None without responses."""
        if not self.responses:
            return None
        return 100.0 * (self.promoters - self.detractors) / self.responses


def nps_category(score: int) -> str:
    """``promoter`` (9-10), ``passive`` (7-8) or ``detractor`` (0-6); ValueError outside 0-10."""
    if not 0 <= score <= 10:
        raise ValueError(f"an NPS score is 0-10, not {score}")
    return next(str(category) for category, (low, high) in NPS_SCORES.items() if low <= score <= high)


# -- links -----------------------------------------------------------------------------------------------------------

def _purpose(invitation_key: str) -> str:
    return f"{SURVEY}:{invitation_key}"


def survey_token(web: WebSettings, member_id: int, invitation_key: str, *, now: datetime | None = None) -> str:
    """``<base64url key>.<member token signed for survey:<key>>``: the path segment of a survey link."""
    encoded = base64.urlsafe_b64encode(invitation_key.encode()).decode().rstrip("=")
    return f"{encoded}.{make_token(web, member_id, _purpose(invitation_key), now=now)}"


def read_survey_token(web: WebSettings, token: str, *, now: datetime | None = None) -> SurveyLink:
    """Check a survey token; raises :class:`~loyalty.tokens.ExpiredToken` or :class:`InvalidToken`."""
    encoded, dot, signed = token.partition(".")
    if not dot or not encoded:
        raise InvalidToken("token invalid")
    try:
        key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidToken("token invalid") from None
    member = read_token(web, signed, _purpose(key), now=now)
    return SurveyLink(member.member_id, key)


def survey_url(web: WebSettings, member_id: int, invitation_key: str, *, score: int | None = None,
               now: datetime | None = None) -> str:
    """The survey page for this invitation; with ``score``, the one-click answer link for that score."""
    url = f"{web.public_base_url.rstrip('/')}/survey/{survey_token(web, member_id, invitation_key, now=now)}"
    return url if score is None else f"{url}?score={int(score)}"


# -- answers ---------------------------------------------------------------------------------------------------------

def _insert(connection: sa.Connection) -> Any:
    return pg_insert if connection.dialect.name == "postgresql" else sqlite_insert


def clean_verbatim(text: str | None) -> str | None:
    """The member's words trimmed to the column's width; None when there are none."""
    text = (text or "").strip()
    return text[:VERBATIM_MAX] or None


def record_response(connection: sa.Connection, *, invitation_key: str, member_id: int, score: int, channel: str,
                    verbatim: str | None = None, survey: str = NPS, now: datetime | None = None) -> str:
    """Record an answer to an invitation; returns ``new``, ``updated``, ``unchanged`` or ``automated``.

    One upsert on ``invitation_key``: the same answer again writes nothing; another score, or a new
    comment, updates the row (``responded_at`` stays the first answer's). ``verbatim=None`` means "no
    comment given" and keeps an earlier one, so clicking a score again does not erase a comment.

    Mail scanners fetch every link of an email, so a clicked score (``channel=BY_LINK``) that differs from
    a clicked score recorded less than :data:`SCANNER_BURST` before is taken for a scanner: the row is
    set aside (``automated_at``, not counted) and further clicks change nothing, until the member
    answers through the form or by SMS. Decided inside the upsert, so concurrent clicks cannot race it.
    """
    nps_category(score)  # validates the range before the CHECK-less column sees it
    at, text = as_utc(now or utcnow()), clean_verbatim(verbatim)
    table, old = SURVEY_RESPONSES, SURVEY_RESPONSES.c
    stmt = _insert(connection)(table).values(invitation_key=invitation_key, member_id=member_id, survey=survey,
                                             channel=channel, score=int(score), verbatim=text, responded_at=at,
                                             updated_at=at, automated_at=None)
    new = stmt.excluded
    click = new.channel == BY_LINK
    burst = sa.and_(click, old.channel == BY_LINK, old.automated_at.is_(None), old.verbatim.is_(None),
                    old.score != new.score, old.updated_at > at - SCANNER_BURST)
    held = sa.or_(burst, sa.and_(click, old.automated_at.is_not(None)))
    new_verbatim = sa.func.coalesce(new.verbatim, old.verbatim)
    changed = sa.or_(old.score != new.score, old.verbatim.is_distinct_from(new_verbatim),
                     old.automated_at.is_not(None))
    stmt = stmt.on_conflict_do_update(
        index_elements=["invitation_key"], where=sa.or_(burst, sa.and_(sa.not_(held), changed)),
        set_={"score": sa.case((held, old.score), else_=new.score),
              "verbatim": sa.case((held, old.verbatim), else_=new_verbatim),
              "channel": sa.case((held, old.channel), else_=new.channel),
              "automated_at": sa.case((burst, new.updated_at), (held, old.automated_at), else_=sa.null()),
              "updated_at": new.updated_at})
    rows = fetch_rows(connection, stmt.returning(old.responded_at, old.updated_at, old.automated_at))
    if not rows:
        return AUTOMATED if set_aside(connection, invitation_key) else UNCHANGED
    responded, updated, automated = rows[0]
    if automated is not None:
        return AUTOMATED
    return NEW if as_utc(responded) == as_utc(updated) else UPDATED


def set_aside(connection: sa.Connection, invitation_key: str) -> bool:
    """Whether the invitation's answer was set aside as a scanner's clicks (see :func:`record_response`)."""
    r = SURVEY_RESPONSES.c
    query = sa.select(r.id).where(r.invitation_key == invitation_key, r.automated_at.is_not(None))
    return bool(fetch_rows(connection, query))


def counted() -> sa.ColumnElement[bool]:
    """The answers NPS, KPIs and audiences count: all but those set aside as a mail scanner's clicks."""
    return SURVEY_RESPONSES.c.automated_at.is_(None)


def invitation_of(connection: sa.Connection, invitation_key: str, member_id: int) -> bool:
    """Whether ``invitation_key`` is an outbox message to ``member_id`` (a link's invitation must exist)."""
    o = OUTBOX_MESSAGES.c
    query = sa.select(o.id).where(o.key == invitation_key, o.member_id == member_id)
    return bool(fetch_rows(connection, query))


def recorded_answer(connection: sa.Connection, invitation_key: str) -> tuple[int, str | None] | None:
    """The score and comment already recorded for an invitation, or None."""
    r = SURVEY_RESPONSES.c
    rows = fetch_rows(connection, sa.select(r.score, r.verbatim).where(r.invitation_key == invitation_key))
    return (int(rows[0][0]), rows[0][1]) if rows else None


def response_score(connection: sa.Connection, invitation_key: str) -> int | None:
    """The score already recorded for an invitation, or None."""
    answer = recorded_answer(connection, invitation_key)
    return None if answer is None else answer[0]


def latest_sms_invitation(connection: sa.Connection, phone: str, within_days: int = SMS_ANSWER_DAYS, *,
                          now: datetime | None = None) -> Invitation | None:
    """The newest survey invitation sent by SMS to a member with ``phone`` in the last ``within_days`` days."""
    o, m = OUTBOX_MESSAGES.c, MEMBERS.c
    since = as_utc(now or utcnow()) - timedelta(days=within_days)
    query = (sa.select(o.key, o.member_id, m.locale)
             .join(MEMBERS, m.id == o.member_id)
             .where(m.phone == phone, o.channel == "sms", o.template.in_(SURVEY_TEMPLATES),
                    o.status.in_(_SENT), o.sent_at >= since)
             .order_by(o.sent_at.desc(), o.id.desc()).limit(1))
    rows = fetch_rows(connection, query)
    if not rows:
        return None
    key, member_id, locale = rows[0]
    return Invitation(str(key), int(member_id), str(locale or "en_CA"))


# -- SMS replies -----------------------------------------------------------------------------------------------------

#: A score first: "9", "10!", "9/10", "8 sur 10", "9 great staff"; never "11", "-1", "7.5" or "100".
_LEADING_SCORE = re.compile(r"^(10|[0-9])(?:\s*(?:/|out of|sur)\s*10)?(?![0-9]|[.,][0-9])(?P<rest>.*)$",
                            re.IGNORECASE | re.DOTALL)
#: A number word alone (English or French): "nine", "dix". Only alone: "one question..." is no answer.
_WORDS = {word: n for n, words in enumerate((
    "zero zéro", "one un une", "two deux", "three trois", "four quatre", "five cinq", "six", "seven sept",
    "eight huit", "nine neuf", "ten dix")) for word in words.split()}
_PUNCTUATION = " \t\r\n!.,;:?-)(*\u2013\u2014"  # and the en and em dashes phones type


def parse_sms_answer(body: str) -> tuple[int, str | None] | None:
    """(score, comment or None) from an SMS reply, or None when it is not an answer.

    Accepted: a leading whole number 0-10 (optionally "/10", "out of 10", "sur 10") followed by
    anything as the comment, or a number word alone in English or French. Everything else
    (keywords, 11, -1, decimals, a number later in the text) is not an answer.
    """
    text = body.strip()
    found = _LEADING_SCORE.match(text)
    if found:
        return int(found.group(1)), clean_verbatim(found.group("rest").lstrip(_PUNCTUATION))
    word = text.strip(_PUNCTUATION).lower()
    return (_WORDS[word], None) if word in _WORDS else None


THANKS = {"en": "Thank you for your answer!", "fr": "Merci pour votre réponse!"}
HINT = {"en": "Please reply with a number from 0 to 10.", "fr": "Veuillez répondre par un nombre de 0 à 10."}


def answer_by_sms(connection: sa.Connection, phone: str, body: str, *, now: datetime | None = None) -> str | None:
    """Record an SMS reply to the open survey invitation of ``phone``; the reply to send, or None.

    A text that is not a score is added to the comment once the invitation has a score (members often
    send "9" and then a sentence or two): appended, never replacing what the member said before. A number
    that is no score ("11", "7.5") before any score gets a hint. Idempotent: the same text again (Twilio
    retrying the webhook) changes nothing and is thanked again.
    """
    invitation = latest_sms_invitation(connection, phone, now=now)
    if invitation is None:
        return None
    language = "fr" if invitation.locale.lower().startswith("fr") else "en"
    answer = parse_sms_answer(body)
    if answer is None:
        recorded, comment = recorded_answer(connection, invitation.key), clean_verbatim(body)
        if recorded is None:
            return HINT[language] if body.strip()[:1].isdigit() else None
        if comment is None:
            return None
        earlier = recorded[1]
        added = earlier is None or comment not in earlier.split("\n")
        answer = (recorded[0], comment if earlier is None else f"{earlier}\n{comment}" if added else None)
    record_response(connection, invitation_key=invitation.key, member_id=invitation.member_id, score=answer[0],
                    verbatim=answer[1], channel=BY_SMS, now=now)
    return THANKS[language]


# -- the score -------------------------------------------------------------------------------------------------------

def nps(bind: Engine | sa.Connection, *, since: datetime | None = None, until: datetime | None = None,
        survey: str = NPS) -> NpsSummary:
    """The NPS over each member's latest answer given in ``[since, until)`` (by ``responded_at``)."""
    r = SURVEY_RESPONSES.c
    window = [r.survey == survey, counted()]
    if since is not None:
        window.append(r.responded_at >= as_utc(since))
    if until is not None:
        window.append(r.responded_at < as_utc(until))
    rank = sa.func.row_number().over(partition_by=r.member_id, order_by=(r.responded_at.desc(), r.id.desc()))
    latest = sa.select(r.score.label("score"), rank.label("rank")).where(*window).subquery()
    query = sa.select(*(sa.func.coalesce(sa.func.sum(sa.case((latest.c.score.between(*NPS_SCORES[c]), 1), else_=0)), 0)
                        for c in (NpsCategory.PROMOTER, NpsCategory.PASSIVE, NpsCategory.DETRACTOR))
                      ).where(latest.c.rank == 1)
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            promoters, passives, detractors = fetch_rows(connection, query)[0]
    else:
        promoters, passives, detractors = fetch_rows(bind, query)[0]
    return NpsSummary(int(promoters), int(passives), int(detractors))
