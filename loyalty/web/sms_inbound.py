"""Inbound SMS: the opt-out keywords carriers require, survey answers, and nothing for anything else.

Twilio's default opt-out handling already answers STOP and START itself (and blocks sends to a
number that said STOP), so we record the choice and reply nothing to those; HELP gets our text.
Keywords are matched on the whole trimmed body, case-insensitively, as carriers do.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loyalty.consent import AddressFact, Fact, apply_fact, lift_suppression, members_with_phone, set_consent
from loyalty.surveys import answer_by_sms
from loyalty.types import Channel

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})
HELP_TEXT = ("Rewards programme alerts. Msg & data rates may apply. Reply STOP to unsubscribe, "
             "START to subscribe again.")


def handle_inbound_sms(engine: Engine, phone: str, body: str) -> str | None:
    """Act on an SMS from ``phone``; returns the reply to send, or None to send nothing."""
    keyword = body.strip().upper()
    if keyword in HELP_WORDS:
        return HELP_TEXT
    with engine.begin() as connection:
        if keyword in STOP_WORDS:
            opt_out(connection, phone)
            return None
        if keyword in START_WORDS:
            opt_in(connection, phone)
            return None
        return handle_other_inbound(connection, phone, body)


def opt_out(connection: sa.Connection, phone: str) -> None:
    """STOP: withdraw SMS consent of every member with this number and suppress the number."""
    members: list[int | None] = list(members_with_phone(connection, phone)) or [None]  # unknown: still suppress
    for member_id in members:
        apply_fact(connection, AddressFact(channel=Channel.SMS, address=phone, fact=Fact.OPT_OUT_SMS,
                                           member_id=member_id, source="sms_stop"))


def opt_in(connection: sa.Connection, phone: str) -> None:
    """START: consent again for every member with this number; lift only a STOP suppression."""
    for member_id in members_with_phone(connection, phone):
        set_consent(connection, member_id, Channel.SMS, True, source="sms_start")
    # An invalid-number suppression stays: START does not make a landline receive texts.
    lift_suppression(connection, Channel.SMS, phone, reasons=["sms_stop"])


def handle_other_inbound(connection: sa.Connection, phone: str, body: str) -> str | None:
    """Any other inbound text: an answer to an open SMS survey invitation, or nothing.

    Runs inside the request's transaction; returns a reply to send, or None. A reply to a survey
    ("9", "10 great staff", "nine") is recorded against the newest survey SMS sent to the number
    (:func:`loyalty.surveys.answer_by_sms`); Twilio retrying the webhook records it only once.
    Any other text with no open invitation: store nothing and reply nothing.
    """
    return answer_by_sms(connection, phone, body)
