"""Twilio 2010-04-01 Messages for the provider emulator.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form post, HTTP basic auth) and
``GET .../Messages/{Sid}.json``. Errors use Twilio's ``{"code", "message", "more_info",
"status"}`` shape, which the ``twilio`` client turns into ``TwilioRestException(.status, .code)``.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from channels.emulator_records import EmulatorRequest, EmulatorResponse, RecordedSms, Route

if TYPE_CHECKING:
    from channels.emulator import ProviderEmulator

API_VERSION = "2010-04-01"
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_MAX_BODY = 1600


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> EmulatorResponse:
    payload = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return EmulatorResponse.json(status, payload, headers)


def fault_response(status: int, retry_after_s: int) -> EmulatorResponse:
    """Twilio's answer for an injected fault (429 is code 20429 with Retry-After)."""
    if status == 429:
        return _error(429, 20429, "Too Many Requests", {"Retry-After": str(retry_after_s)})
    return _error(status, 20500, "Internal Server Error" if status == 500 else "Service Unavailable")


def num_segments(body: str) -> int:
    """Approximate SMS segment count: GSM-7 if ASCII (160, or 153 per part), else UCS-2 (70/67).

    Approximation: ASCII characters that GSM-7 lacks or counts double (``^{}[]~|\\`` and the
    backtick) and non-ASCII GSM characters (``£ é``...) are not special-cased; characters
    outside the BMP count as two UTF-16 units. ``channels/segments.py`` is the exact counter.
    """
    if body.isascii():
        units, single, multi = len(body), 160, 153
    else:
        units, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    if units <= single:
        return 1
    return -(-units // multi)


def _authorised(emu: ProviderEmulator, req: EmulatorRequest, account_sid: str) -> bool:
    auth = req.headers.get("authorization", "")
    if not auth.startswith("Basic "):
        return False
    try:
        user, _, token = base64.b64decode(auth[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return user == account_sid and emu.twilio_accounts.get(user) == token


def _unauthorised() -> EmulatorResponse:
    return _error(401, 20003, "Authenticate")


def create_message(emu: ProviderEmulator, req: EmulatorRequest, match: re.Match[str]) -> EmulatorResponse:
    """``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``."""
    account_sid = match["account"]
    if not _authorised(emu, req, account_sid):
        return _unauthorised()
    form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    to, sender, service = form.get("To", ""), form.get("From") or None, form.get("MessagingServiceSid") or None
    body = form.get("Body", "")
    if not to:
        return _error(400, 21604, "A 'To' phone number is required.")
    if not _E164.fullmatch(to):
        return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
    if sender is None and service is None:
        return _error(400, 21603, "A 'From' phone number is required.")
    if not body and not form.get("MediaUrl"):
        return _error(400, 21602, "Message body is required.")
    if len(body) > _MAX_BODY:
        return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
    if to in emu.opted_out:
        return _error(400, 21610, "Attempt to send to unsubscribed recipient")
    sid = "SM" + uuid.uuid4().hex
    now = formatdate(usegmt=True)
    segments = num_segments(body)
    resource: dict[str, Any] = {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": sender,
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": str(segments),  # Twilio sends it as a string
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        # Real Twilio answers "accepted" when a Messaging Service picks the sender later.
        "status": "queued" if sender else "accepted",
        "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media.json"},
        "to": to,
        "uri": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}.json",
    }
    emu.record_sms(
        RecordedSms(
            sid=sid,
            account_sid=account_sid,
            to=to,
            from_=sender,
            messaging_service_sid=service,
            body=body,
            status_callback=form.get("StatusCallback") or None,
            num_segments=segments,
            resource=resource,
            accepted_at=time.time(),
        )
    )
    return EmulatorResponse.json(201, resource)


def fetch_message(emu: ProviderEmulator, req: EmulatorRequest, match: re.Match[str]) -> EmulatorResponse:
    """``GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json``."""
    account_sid = match["account"]
    if not _authorised(emu, req, account_sid):
        return _unauthorised()
    sms = emu.get_sms(match["sid"])
    if sms is None or sms.account_sid != account_sid:
        return _error(404, 20404, f"The requested resource {req.path} was not found")
    return EmulatorResponse.json(200, dict(sms.resource))


def list_messages(emu: ProviderEmulator, req: EmulatorRequest, match: re.Match[str]) -> EmulatorResponse:
    """``GET .../Messages.json?To=&DateSent>=``: one page of an account's messages, newest first.

    Enough for reconciliation (was a message whose outcome we lost really accepted?).
    ``DateSent>`` compares with the time the emulator accepted the message.
    """
    account_sid = match["account"]
    if not _authorised(emu, req, account_sid):
        return _unauthorised()
    to = req.query["To"][0] if req.query.get("To") else None
    since = _since(req.query.get("DateSent>") or req.query.get("DateSent>=") or [])
    found = [s.resource for s in reversed(emu.sms) if s.account_sid == account_sid
             and (to is None or s.to == to) and s.accepted_at >= since]
    size = int((req.query.get("PageSize") or ["50"])[0])
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
    return EmulatorResponse.json(200, {
        "messages": found[:size], "page": 0, "page_size": size, "start": 0, "end": max(0, min(size, len(found)) - 1),
        "uri": uri, "first_page_uri": uri, "next_page_uri": None, "previous_page_uri": None,
    })


def _since(values: list[str]) -> float:
    if not values:
        return 0.0
    stamp = values[0].replace("Z", "+00:00")
    parsed = datetime.fromisoformat(stamp if "T" in stamp else stamp + "T00:00:00+00:00")
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


_ACCOUNT = rf"/{API_VERSION}/Accounts/(?P<account>[^/]+)"
def lookup_sms(emu: ProviderEmulator, req: EmulatorRequest, _: re.Match[str]) -> EmulatorResponse:
    """Emulator-only ``GET /_emulator/sms?to=NUMBER[&body=TEXT]``: recorded SMS, no faults."""
    to = req.query.get("to", [""])[0]
    body = req.query.get("body", [None])[0]
    return EmulatorResponse.json(200, [asdict(s) for s in emu.find_sms(to, body)])


ROUTES = [
    Route("GET", re.compile(r"/_emulator/sms"), lookup_sms),
    Route("POST", re.compile(_ACCOUNT + r"/Messages\.json"), create_message, fault_response),
    Route("GET", re.compile(_ACCOUNT + r"/Messages\.json"), list_messages, fault_response),
    Route(
        "GET", re.compile(_ACCOUNT + r"/Messages/(?P<sid>[A-Z]{2}[0-9a-fA-F]{32})\.json"), fetch_message, fault_response
    ),
]
