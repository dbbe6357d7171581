"""Chaos: 20k messages through a failing provider while the dispatcher process is SIGKILLed 10 times.

The emulator fails 10% of requests with 5xx, 5% with 429 (Retry-After), drops 1% of connections
before reading them and 1% after accepting (the ambiguous case). The dispatcher runs as the real
``loyalflow outbox dispatch`` command in a subprocess, killed at random moments and restarted.
Afterwards every message must be settled (sent, or failed with a reason), nothing pending, in
flight or unknown, and the emulator must hold each accepted message exactly once. The providers'
delivery reports then move every sent message to delivered.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from channels.emulator import Faults, ProviderEmulator
from channels.emulator_webhooks import sendgrid_event_payload
from loyalty.db import session_scope
from loyalty.delivery_events import record_events, twilio_status_event
from loyalty.models import MEMBERS, OUTBOX_MESSAGES
from loyalty.outbox import NewMessage, counts_by_status, enqueue
from loyalty.types import utcnow
from loyalty.web.app import create_app
from tests.conftest import REPO_ROOT, database_url
from tests.test_web_webhooks import make_settings, signed

EMAILS, SMS = 16_000, 4_000
MEMBERS_COUNT = 2_000
KILLS = 10
CHAOS = Faults(error_5xx_rate=0.10, rate_limit_rate=0.05, retry_after_s=1, drop_rate=0.01,
               drop_after_accept_rate=0.01)


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(seed=11) as emu:
        yield emu


def _queue(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.execute(MEMBERS.insert(), [
            {"external_id": f"C{i:06d}", "first_name": "C", "last_name": str(i), "email": f"c{i}@example.com",
             "phone": f"+1416{i:07d}", "locale": "en_CA", "time_zone": "America/Toronto", "tier": "member",
             "joined_at": utcnow()} for i in range(MEMBERS_COUNT)])
        ids = session.execute(sa.select(MEMBERS.c.id, MEMBERS.c.email, MEMBERS.c.phone)).all()
        messages = []
        for n in range(EMAILS + SMS):
            member_id, email, phone = ids[n % MEMBERS_COUNT]
            channel = "email" if n < EMAILS else "sms"
            # Distinct content per message: SMS reconciliation matches on number and body.
            content = ({"subject": f"Offer {n}", "html": f"<p>Offer {n}</p>", "text": f"Offer {n}"}
                       if channel == "email" else {"body": f"Your code is {n}"})
            messages.append(NewMessage(key=f"chaos-{n}", member_id=member_id, channel=channel, template="chaos",
                                       payload={"to": email if channel == "email" else phone, "content": content}))
        enqueue(session, messages)


def _environment(engine: Engine, emu: ProviderEmulator) -> dict[str, str]:
    return os.environ | {
        "LOYALFLOW_DATABASE_URL": database_url(engine),
        "LOYALFLOW_CONFIG_FILE": os.devnull,
        "LOYALFLOW_SENDGRID__API_KEY": "SG.chaos-key", "LOYALFLOW_SENDGRID__HOST": emu.url,
        "LOYALFLOW_SENDGRID__MESSAGES_PER_SECOND": "1000000",
        "LOYALFLOW_TWILIO__ACCOUNT_SID": emu.TWILIO_ACCOUNT_SID, "LOYALFLOW_TWILIO__AUTH_TOKEN": emu.TWILIO_AUTH_TOKEN,
        "LOYALFLOW_TWILIO__BASE_URL": emu.url, "LOYALFLOW_TWILIO__FROM_NUMBER": "+15005550006",
        "LOYALFLOW_TWILIO__SEGMENTS_PER_SECOND": "1000000",
        "LOYALFLOW_DISPATCH__CLAIM_SIZE": "200", "LOYALFLOW_DISPATCH__LEASE_SECONDS": "3",
        "LOYALFLOW_DISPATCH__BACKOFF_BASE_SECONDS": "0.05", "LOYALFLOW_DISPATCH__BACKOFF_CAP_SECONDS": "0.5",
        "LOYALFLOW_DISPATCH__RECONCILE_GRACE_SECONDS": "0", "LOYALFLOW_DISPATCH__REQUEST_TIMEOUT_SECONDS": "5",
        "LOYALFLOW_VAR_DIR": str(REPO_ROOT / "var" / "chaos"),
    }


def _dispatcher(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "loyalty.cli", "outbox", "dispatch", "-c", "email", "-c", "sms", "--no-gate"]
    with log.open("ab") as sink:  # a file, not a pipe nobody reads: a full pipe would stall the dispatcher
        return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)


def _deliver(engine: Engine, emu: ProviderEmulator) -> None:
    """The providers report delivery: SendGrid through the signed event webhook, Twilio status callbacks
    through the function its webhook calls (4,000 signed HTTP posts would only slow the test down)."""
    events = sendgrid_event_payload((email, "delivered") for email in emu.emails)
    with TestClient(create_app(make_settings(), engine)) as client:
        for start in range(0, len(events), 1000):
            body, headers = signed(events[start : start + 1000])
            assert client.post("/webhooks/sendgrid/events", content=body, headers=headers).status_code < 300
    reports = [twilio_status_event({"MessageSid": sms.sid, "MessageStatus": "delivered"}) for sms in emu.sms]
    record_events(engine, reports)


def _settled(engine: Engine) -> int:
    counts = counts_by_status(engine)
    return counts["sent"] + counts["failed"]


def test_exactly_once_through_faults_and_kills(engine: Engine, emulator: ProviderEmulator, tmp_path: Path) -> None:
    _queue(engine)
    emulator.faults = CHAOS
    env, rng = _environment(engine, emulator), random.Random(7)
    started, log = time.monotonic(), tmp_path / "dispatcher.log"
    for _ in range(KILLS):
        process, before = _dispatcher(env, log), _settled(engine)
        # Kill it mid-work (not while importing), after a random share of the messages: spread over the run.
        target, deadline = before + rng.randint(100, 1500), time.monotonic() + 60
        while _settled(engine) < target and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = time.monotonic()
    print(f"\nkills done at {killed_at - started:.1f}s, settled {_settled(engine)}, {counts_by_status(engine)}")
    final = _dispatcher(env, log)
    final.wait(timeout=240)
    print(f"final run {time.monotonic() - killed_at:.1f}s")
    assert final.returncode == 0, log.read_text()[-3000:]

    counts = counts_by_status(engine)
    assert counts["pending"] == counts["sending"] == counts["unknown"] == 0, counts
    assert counts["sent"] + counts["failed"] == EMAILS + SMS
    with engine.connect() as connection:
        rows = connection.execute(sa.select(OUTBOX_MESSAGES.c.id, OUTBOX_MESSAGES.c.channel,
                                            OUTBOX_MESSAGES.c.status, OUTBOX_MESSAGES.c.last_error,
                                            OUTBOX_MESSAGES.c.payload)).all()
    assert all(r.last_error for r in rows if r.status == "failed")
    emails_at_provider = Counter(e.custom_args["outbox_id"] for e in emulator.emails)
    sms_at_provider = Counter(s.body for s in emulator.sms)
    for row in rows:
        seen = (emails_at_provider[str(row.id)] if row.channel == "email"
                else sms_at_provider[row.payload["content"]["body"]])
        assert seen == (1 if row.status == "sent" else 0), (row.id, row.status, seen)
    _deliver(engine, emulator)
    assert counts_by_status(engine)["delivered"] == counts["sent"]  # every send confirmed by its delivery report
    ambiguous = emulator.stats["drop"] + emulator.stats["drop_after_accept"]
    print(f"\nchaos: {counts['sent']:,} sent, {counts['failed']:,} failed; provider faults {dict(emulator.stats)}; "
          f"ambiguous (dropped connections) {ambiguous:,}, of which accepted before the drop "
          f"{emulator.stats['drop_after_accept']:,}; every one reconciled without a duplicate; all delivered")
