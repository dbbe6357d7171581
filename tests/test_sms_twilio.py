"""TwilioSmsAdapter driven through the REAL twilio client against the provider emulator over loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from channels.base import Outcome, OutgoingMessage, PermanentError, SendResult
from channels.emulator import Faults, ProviderEmulator
from channels.sms_twilio import DEFAULT_RETRY_AFTER, TwilioSmsAdapter
from loyalty.settings import TwilioSettings

SID, TOKEN = ProviderEmulator.TWILIO_ACCOUNT_SID, ProviderEmulator.TWILIO_AUTH_TOKEN
FROM = "+15005550006"
TO = "+447700900123"
CALLBACK = "https://loyalty.example.com/hooks/twilio"


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(seed=3) as emu:
        yield emu


def make_adapter(emu: ProviderEmulator, token: str = TOKEN, **kwargs: Any) -> TwilioSmsAdapter:
    options: dict[str, Any] = {"from_number": FROM, "status_callback_url": CALLBACK, "timeout": 2.0, **kwargs}
    return TwilioSmsAdapter(SID, token, base_url=emu.url, **options)


def sms(message_id: int, body: str = "Your points are waiting", to: str = TO) -> OutgoingMessage:
    return OutgoingMessage(message_id, f"key-{message_id}", "sms", to, {"body": body})


def send_one(adapter: TwilioSmsAdapter, message: OutgoingMessage) -> SendResult:
    [result] = adapter.send_batch([message])
    return result


def test_sends_each_message_with_the_status_callback(emulator: ProviderEmulator) -> None:
    adapter = make_adapter(emulator)
    results = adapter.send_batch([sms(i, f"hello {i}", f"+4477009001{i:02d}") for i in range(3)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    assert [r.message_id for r in results] == [0, 1, 2]
    assert [r.provider_id for r in results] == [s.sid for s in emulator.sms]
    assert all(r.provider_id and r.provider_id.startswith("SM") for r in results)
    assert [(s.to, s.body, s.from_, s.status_callback) for s in emulator.sms] == [
        (f"+4477009001{i:02d}", f"hello {i}", FROM, CALLBACK) for i in range(3)
    ]
    assert len(emulator.requests) == 3  # no batch send: one request per message
    adapter.close()


def test_messaging_service_sender(emulator: ProviderEmulator) -> None:
    service = "MG" + "a" * 32
    adapter = make_adapter(emulator, from_number=None, messaging_service_sid=service, status_callback_url=None)
    assert send_one(adapter, sms(1)).outcome is Outcome.ACCEPTED
    [recorded] = emulator.sms
    assert (recorded.from_, recorded.messaging_service_sid, recorded.status_callback) == (None, service, None)


def test_cost_units_count_segments(emulator: ProviderEmulator) -> None:
    adapter = make_adapter(emulator)
    gsm, ucs2 = sms(1, "a" * 161), sms(2, "It\u2019s " + "a" * 66)  # one curly quote: 71 UCS-2 units
    assert adapter.cost_units(gsm) == 2 and adapter.cost_units(ucs2) == 2
    assert adapter.cost_units(sms(3, "")) == 1
    results = adapter.send_batch([gsm, ucs2])
    assert [r.cost_units for r in results] == [2, 2]
    assert [s.num_segments for s in emulator.sms] == [2, 2]  # Twilio agrees


def test_opted_out_recipient_sets_the_sms_opt_out(emulator: ProviderEmulator) -> None:
    emulator.opt_out(TO)
    result = send_one(make_adapter(emulator), sms(1))
    assert (result.outcome, result.effects) == (Outcome.PERMANENT, ("opt_out_sms",))
    assert "21610" in (result.reason or "")
    assert emulator.sms == []


def test_invalid_number_marks_the_address_invalid(emulator: ProviderEmulator) -> None:
    result = send_one(make_adapter(emulator), sms(1, to="0770 090 0123"))
    assert (result.outcome, result.effects) == (Outcome.PERMANENT, ("invalid_address",))
    assert "21211" in (result.reason or "")


def test_wrong_token_is_permanent_and_never_leaks(emulator: ProviderEmulator) -> None:
    secret = "wrong-secret-token"
    result = send_one(make_adapter(emulator, token=secret), sms(1))
    assert result.outcome is Outcome.PERMANENT
    assert "bad credentials" in (result.reason or "")
    assert secret not in (result.reason or "")


def test_token_echoed_by_twilio_is_scrubbed(emulator: ProviderEmulator) -> None:
    # Twilio echoes an invalid 'To' in its message: even a token pasted there must not reach the reason.
    result = send_one(make_adapter(emulator), sms(1, to=TOKEN))
    assert result.outcome is Outcome.PERMANENT
    assert TOKEN not in (result.reason or "") and "***" in (result.reason or "")


def test_rate_limit_is_transient_with_retry_after(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after_s=7)
    result = send_one(make_adapter(emulator), sms(1))
    assert (result.outcome, result.retry_after) == (Outcome.TRANSIENT, 7.0)
    assert "20429" in (result.reason or "")
    assert emulator.sms == []


def test_rate_limit_without_retry_after_uses_the_default(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(rate_limit_rate=1.0, retry_after_s=-1)  # a negative header is ignored
    result = send_one(make_adapter(emulator), sms(1))
    assert (result.outcome, result.retry_after) == (Outcome.TRANSIENT, DEFAULT_RETRY_AFTER)


def test_server_error_is_transient(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(error_5xx_rate=1.0)
    result = send_one(make_adapter(emulator), sms(1))
    assert result.outcome is Outcome.TRANSIENT
    assert emulator.sms == []


def test_drop_after_accept_is_unknown_and_the_message_was_sent(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(drop_after_accept_rate=1.0)
    result = send_one(make_adapter(emulator), sms(1, "only once"))
    assert result.outcome is Outcome.UNKNOWN
    assert len(emulator.find_sms(TO, "only once")) == 1


def test_read_timeout_is_unknown(emulator: ProviderEmulator) -> None:
    emulator.faults = Faults(delay_s=0.5)
    result = send_one(make_adapter(emulator, timeout=0.1), sms(1))
    assert result.outcome is Outcome.UNKNOWN
    assert "ReadTimeout" in (result.reason or "")


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = TwilioSmsAdapter(SID, TOKEN, from_number=FROM, base_url=f"http://127.0.0.1:{port}", timeout=1.0)
    result = send_one(adapter, sms(1))
    assert result.outcome is Outcome.TRANSIENT
    assert "not reached" in (result.reason or "")


def test_too_many_segments_is_refused_without_a_request(emulator: ProviderEmulator) -> None:
    adapter = make_adapter(emulator, max_segments=2)
    result = send_one(adapter, sms(1, "a" * 307))  # 3 GSM-7 segments
    assert result.outcome is Outcome.PERMANENT
    assert "too many segments" in (result.reason or "")
    over_limit = send_one(adapter, sms(2, "a" * 1601))  # Twilio's 1600-character Body limit
    assert over_limit.outcome is Outcome.PERMANENT
    assert emulator.requests == []


def test_reconciliation_finds_a_message_whose_answer_was_lost(emulator: ProviderEmulator) -> None:
    adapter = make_adapter(emulator)
    before = datetime.now(UTC) - timedelta(minutes=1)
    emulator.faults = Faults(drop_after_accept_rate=1.0)
    assert send_one(adapter, sms(1, "lost answer")).outcome is Outcome.UNKNOWN
    emulator.faults = Faults()
    found = adapter.find_sent(TO, "lost answer", since=before)
    assert found == emulator.find_sms(TO, "lost answer")[0].sid
    assert adapter.find_sent(TO, "never sent", since=before) is None
    assert adapter.find_sent(TO, "lost answer", since=datetime.now(UTC) + timedelta(days=1)) is None


def test_fetch_status(emulator: ProviderEmulator) -> None:
    adapter = make_adapter(emulator)
    sid = send_one(adapter, sms(1)).provider_id
    assert sid is not None
    assert adapter.fetch_status(sid) == "queued"
    with pytest.raises(PermanentError, match="20404"):
        adapter.fetch_status("SM" + "f" * 32)


def test_sender_must_be_exactly_one() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TwilioSmsAdapter(SID, TOKEN)
    with pytest.raises(ValueError, match="exactly one"):
        TwilioSmsAdapter(SID, TOKEN, from_number=FROM, messaging_service_sid="MG" + "a" * 32)


def test_from_settings(emulator: ProviderEmulator) -> None:
    settings = TwilioSettings(
        account_sid=SID, auth_token=SecretStr(TOKEN), from_number=FROM, base_url=emulator.url, segments_per_second=3
    )
    adapter = TwilioSmsAdapter.from_settings(settings, status_callback_url=CALLBACK)
    assert adapter.rate_per_second == 3.0
    assert send_one(adapter, sms(1)).outcome is Outcome.ACCEPTED
    assert emulator.sms[0].status_callback == CALLBACK
    with pytest.raises(ValueError, match="not configured"):
        TwilioSmsAdapter.from_settings(TwilioSettings(account_sid=SID, from_number=FROM))
