"""Signed delivery webhooks fired by the provider emulator, exactly as the providers sign them.

- SendGrid Event Webhook: a JSON array POSTed with ``X-Twilio-Email-Event-Webhook-Signature``
  = base64(DER ECDSA-P256-SHA256 over ``timestamp + raw body``) and
  ``X-Twilio-Email-Event-Webhook-Timestamp``; verifiable with
  ``sendgrid.helpers.eventwebhook.EventWebhook.verify_signature``.
- Twilio status callback: a form post of ``MessageSid``, ``MessageStatus`` (+ ``ErrorCode``)
  with ``X-Twilio-Signature`` from ``twilio.request_validator.RequestValidator``.

Outgoing posts use ``urllib.request`` (stdlib). Non-2xx answers are returned, not raised.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from channels.emulator_records import RecordedEmail

__all__ = [
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "fire_sendgrid_events",
    "fire_twilio_status",
    "generate_sendgrid_webhook_keypair",
    "sendgrid_event_payload",
]

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def generate_sendgrid_webhook_keypair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key pair: (private key, public key as base64 DER SubjectPublicKeyInfo).

    The public string is what SendGrid shows as the "verification key" and what
    ``EventWebhook(public_key)`` takes.
    """
    private_key = ec.generate_private_key(ec.SECP256R1())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, base64.b64encode(der).decode()


def sendgrid_event_payload(
    events: Iterable[tuple[RecordedEmail, str]], *, extra: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """SendGrid event objects, one per (email, event name) pair and recipient in ``to``.

    Each carries ``event``, ``email``, ``timestamp``, a unique ``sg_event_id``,
    ``sg_message_id`` and the message's custom_args at top level (as SendGrid does), plus
    ``categories`` as ``category`` and any ``extra`` fields (e.g. ``reason`` for a bounce).
    """
    now = int(time.time())
    out: list[dict[str, Any]] = []
    for email, name in events:
        for recipient in email.to:
            event: dict[str, Any] = dict(email.custom_args)
            event.update(
                event=name,
                email=recipient,
                timestamp=now,
                sg_event_id=base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
                sg_message_id=email.message_id,
            )
            if email.categories:
                event["category"] = list(email.categories)
            event.update(extra or {})
            out.append(event)
    return out


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def fire_sendgrid_events(
    url: str,
    events: Iterable[tuple[RecordedEmail, str]],
    private_key: ec.EllipticCurvePrivateKey,
    *,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 5.0,
) -> int:
    """POST a signed SendGrid event batch to ``url``; returns the receiver's HTTP status."""
    body = json.dumps(sendgrid_event_payload(events, extra=extra)).encode()
    timestamp = str(int(time.time()))
    # SendGrid signs the timestamp followed by the exact bytes sent.
    signature = private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {
        "Content-Type": "application/json",
        SENDGRID_SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        SENDGRID_TIMESTAMP_HEADER: timestamp,
    }
    return _post(url, body, headers, timeout)


def fire_twilio_status(
    url: str,
    message_sid: str,
    status: str,
    auth_token: str,
    *,
    error_code: int | str | None = None,
    extra: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> int:
    """Form-POST a Twilio status callback signed with ``X-Twilio-Signature``; returns the HTTP status.

    ``url`` must be the exact URL the receiver validates against (Twilio signs the public URL).
    """
    from twilio.request_validator import RequestValidator  # lazy: keeps the emulator import light

    params = {"MessageSid": message_sid, "SmsSid": message_sid, "MessageStatus": status, "SmsStatus": status}
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    params.update(extra or {})
    signature = RequestValidator(auth_token).compute_signature(url, params)
    body = urllib.parse.urlencode(params).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
    return _post(url, body, headers, timeout)
