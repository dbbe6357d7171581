"""SendGridAdapter against the provider emulator over loopback, with the real sendgrid client (nothing patched)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from channels.base import Outcome, OutgoingMessage, SendResult
from channels.email_sendgrid import SendGridAdapter
from channels.emulator import Faults, ProviderEmulator
from loyalty.settings import SendGridSettings

API_KEY = "SG.secret-test-key-do-not-leak"


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(seed=3) as emu:
        yield emu


def adapter(emu: ProviderEmulator, **kwargs: object) -> SendGridAdapter:
    options: dict[str, object] = {
        "host": emu.url,
        "from_email": "club@example.com",
        "from_name": "Rewards",
        "timeout": 5.0,
        "unsubscribe_url_for": lambda m: f"https://club.example.com/u/{m.key}",
        **kwargs,
    }
    return SendGridAdapter(API_KEY, **options)  # type: ignore[arg-type]


def message(i: int, subject: str = "Your offer", html: str = "<p>Hi</p>", **tags: str) -> OutgoingMessage:
    return OutgoingMessage(
        message_id=i,
        key=f"k-{i}",
        channel="email",
        to=f"member{i}@example.com",
        content={"subject": subject, "html": html, "text": "Hi"},
        tags=tags or {"campaign": "spring", "category": "tier-upgrade"},
    )


def assert_no_key(results: list[SendResult]) -> None:
    for r in results:
        assert API_KEY not in (r.reason or "") and API_KEY not in (r.provider_id or "")


def test_groups_by_content_and_sets_custom_args_headers_categories(emulator: ProviderEmulator) -> None:
    messages = [message(i, subject="A" if i % 2 else "B") for i in range(5)]
    results = adapter(emulator).send_batch(messages)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 5
    assert len(emulator.requests) == 2
    assert sorted(len(json.loads(r.body)["personalizations"]) for r in emulator.requests) == [2, 3]
    by_outbox = {e.custom_args["outbox_id"]: e for e in emulator.emails}
    assert sorted(by_outbox) == [str(i) for i in range(5)]
    for r in results:
        email = by_outbox[str(r.message_id)]
        assert email.to == (f"member{r.message_id}@example.com",)
        assert email.subject == ("A" if r.message_id % 2 else "B")
        assert email.custom_args == {
            "campaign": "spring",
            "category": "tier-upgrade",
            "outbox_id": str(r.message_id),
            "key": f"k-{r.message_id}",
        }
        assert email.headers["List-Unsubscribe"] == f"<https://club.example.com/u/k-{r.message_id}>"
        assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert email.categories == ("spring", "tier-upgrade")
        assert r.provider_id == email.x_message_id  # shared per request; match webhooks on outbox_id
    assert_no_key(results)


def test_unsubscribe_from_message_headers_and_none_for_transactional(emulator: ProviderEmulator) -> None:
    marketing = OutgoingMessage(
        1,
        "k-1",
        "email",
        "a@example.com",
        {"subject": "s", "text": "t"},
        headers={"List-Unsubscribe": "<https://x/u/1>, <mailto:u@x>"},
    )
    receipt = OutgoingMessage(2, "k-2", "email", "b@example.com", {"subject": "s", "text": "t"})
    adapter(emulator, unsubscribe_url_for=None).send_batch([marketing, receipt])
    first, second = sorted(emulator.emails, key=lambda e: e.custom_args["outbox_id"])
    assert first.headers == {
        "List-Unsubscribe": "<https://x/u/1>, <mailto:u@x>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert second.headers == {}


def test_sandbox_mode_accepts_and_delivers_nothing(emulator: ProviderEmulator) -> None:
    results = adapter(emulator, sandbox_mode=True).send_batch([message(1), message(2)])
    assert [(r.outcome, r.provider_id) for r in results] == [
        (Outcome.ACCEPTED, "sandbox:1"),
        (Outcome.ACCEPTED, "sandbox:2"),
    ]
    assert emulator.emails == [] and emulator.requests[0].status == 200


def test_rate_limit_is_transient_with_retry_after(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after_s=7)
    results = adapter(emulator).send_batch([message(1), message(2)])
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] * 2
    assert all(r.retry_after == 7.0 for r in results)
    assert "429" in (results[0].reason or "")
    assert_no_key(results)


def test_server_error_is_transient(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(error_5xx_rate=1.0)
    results = adapter(emulator).send_batch([message(1)])
    assert results[0].outcome is Outcome.TRANSIENT and results[0].retry_after is None
    assert emulator.emails == []


@pytest.mark.parametrize("fault", ["drop_rate", "drop_after_accept_rate"])
def test_dropped_connection_is_unknown(emulator: ProviderEmulator, fault: str) -> None:
    # The client cannot tell a drop before processing from one after acceptance: both must be UNKNOWN.
    emulator.faults = Faults(**{fault: 1.0})  # type: ignore[arg-type]
    results = adapter(emulator).send_batch([message(1), message(2)])
    assert [r.outcome for r in results] == [Outcome.UNKNOWN] * 2
    assert_no_key(results)
    if fault == "drop_after_accept_rate":
        assert emulator.find_email("outbox_id", "1")  # it did leave: the outbox must reconcile, not resend
    else:
        assert emulator.emails == []


def test_read_timeout_is_unknown(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(delay_s=0.3)
    results = adapter(emulator, timeout=0.1).send_batch([message(1)])
    assert results[0].outcome is Outcome.UNKNOWN and "Timeout" in (results[0].reason or "")


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sg = SendGridAdapter(API_KEY, host=f"http://127.0.0.1:{port}", from_email="club@example.com", timeout=2.0)
    results = sg.send_batch([message(1)])
    assert results[0].outcome is Outcome.TRANSIENT and "unreachable" in (results[0].reason or "")
    assert_no_key(results)


def test_bad_request_is_permanent_with_field_errors(emulator: ProviderEmulator) -> None:
    no_content = OutgoingMessage(1, "k-1", "email", "a@example.com", {"subject": "s"})
    ok = message(2)
    results = adapter(emulator).send_batch([no_content, ok])
    assert results[0].outcome is Outcome.PERMANENT
    assert "content:" in (results[0].reason or "")
    assert results[1].outcome is Outcome.ACCEPTED  # a separate request: one group's failure does not spill over


def test_bad_key_is_permanent_and_never_echoed(emulator: ProviderEmulator) -> None:
    emulator.sendgrid_api_keys = {"SG.other"}
    results = adapter(emulator).send_batch([message(1)])
    assert results[0].outcome is Outcome.PERMANENT and "bad credentials" in (results[0].reason or "")
    assert_no_key(results)


def test_1001_messages_of_one_content_take_two_requests(emulator: ProviderEmulator) -> None:
    results = adapter(emulator).send_batch([message(i) for i in range(1001)])
    assert {r.outcome for r in results} == {Outcome.ACCEPTED}
    assert [len(json.loads(r.body)["personalizations"]) for r in emulator.requests] == [1000, 1]
    assert len(emulator.emails) == 1001
    # Personalizations keep input order (the helper would insert each at 0 without index=).
    assert [e.custom_args["outbox_id"] for e in emulator.emails[:3]] == ["0", "1", "2"]


def test_non_ascii_subject_and_sender_name_round_trip(emulator: ProviderEmulator) -> None:
    subject = "Ваш бонус — 500 points ✨ für Sie"
    adapter(emulator, from_name="Récompenses Café").send_batch([message(1, subject=subject, html="<p>Grüße 🎉</p>")])
    assert emulator.emails[0].subject == subject
    assert ("text/html", "<p>Grüße 🎉</p>") in emulator.emails[0].content
    assert json.loads(emulator.requests[0].body)["from"] == {"email": "club@example.com", "name": "Récompenses Café"}


def test_categories_capped_at_ten_and_255_chars(emulator: ProviderEmulator) -> None:
    tags = {f"t{i}": f"v{i}" for i in range(12)} | {"long": "x" * 300}
    adapter(emulator).send_batch([message(1, **tags)])
    categories = emulator.emails[0].categories
    assert len(categories) == 10 and all(len(c) <= 255 for c in categories)
    assert emulator.emails[0].custom_args["t11"] == "v11"  # every tag still travels as a custom arg


def test_from_settings_and_missing_key(emulator: ProviderEmulator) -> None:
    settings = SendGridSettings(
        api_key=SecretStr(API_KEY),
        host=emulator.url,
        from_email="s@example.com",
        sandbox_mode=True,
        messages_per_second=42.0,
    )
    sg = SendGridAdapter.from_settings(settings)
    assert (sg.rate_per_second, sg.sandbox_mode, sg.from_email) == (42.0, True, "s@example.com")
    assert API_KEY not in repr(sg)
    assert sg.send_batch([message(1)])[0].outcome is Outcome.ACCEPTED
    with pytest.raises(ValueError, match="API key"):
        SendGridAdapter.from_settings(SendGridSettings())


def test_client_debug_log_never_shows_the_key(emulator: ProviderEmulator, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="python_http_client.client"):
        adapter(emulator).send_batch([message(1)])
    assert "HEADERS" in caplog.text and "Bearer [redacted]" in caplog.text
    assert API_KEY not in caplog.text


def test_requests_match_the_official_description(emulator: ProviderEmulator) -> None:
    from tests.test_emulator_contract import SPECS, _sendgrid_document, _validator

    if not SPECS.is_dir():
        pytest.skip(f"official API descriptions not found in {SPECS}")
    pointer = ("components", "requestBodies", "PostMailSend", "content", "application/json", "schema")
    validator = _validator(_sendgrid_document(), *pointer)
    adapter(emulator).send_batch([message(1), message(2, subject="B"), message(3)])
    adapter(emulator, sandbox_mode=True).send_batch([message(4)])
    for request in emulator.requests:
        errors = [e.message for e in validator.iter_errors(json.loads(request.body))]
        assert errors == [], errors


def test_find_accepted_asks_the_email_activity_feed(emulator: ProviderEmulator) -> None:
    sendgrid = adapter(emulator)
    emulator.faults = Faults(drop_after_accept_rate=1.0)  # SendGrid takes it; the answer is lost
    lost, never = message(7), message(8)
    (result,) = sendgrid.send_batch([lost])
    assert result.outcome is Outcome.UNKNOWN
    emulator.faults = Faults()
    since = datetime.now(UTC) - timedelta(minutes=1)
    found = sendgrid.find_accepted(lost, since=since)
    assert found is not None and emulator.find_email("outbox_id", "7")[0].x_message_id == found
    assert sendgrid.find_accepted(never, since=since) is None
    assert API_KEY not in str(emulator.requests[-1].path)
