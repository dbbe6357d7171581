"""Provider webhooks: SendGrid's event webhook and Twilio's status and inbound-SMS callbacks.

Every request is authenticated before anything is read into the database:

- SendGrid signs ``timestamp + raw body`` with ECDSA P-256. We verify the raw bytes (never
  re-serialised JSON) and accept a timestamp at most 10 minutes old or 5 minutes ahead, so a
  captured request cannot be replayed later; inside the window a replay is harmless because
  events are deduplicated on ``sg_event_id``. With no key configured we refuse (503): unsigned
  events would let anyone mark mail delivered or unsubscribe members.
- Twilio signs the exact public URL it called plus the form fields. Behind a proxy ``request.url``
  is not that URL, so we rebuild it from ``web.public_base_url``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sendgrid.helpers.eventwebhook import EventWebhook
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator

from loyalty.delivery_events import record_events, sendgrid_events, twilio_status_event
from loyalty.web.context import Ctx, WebContext
from loyalty.web.sms_inbound import handle_inbound_sms

SENDGRID_PATH = "/webhooks/sendgrid/events"
TWILIO_STATUS_PATH = "/webhooks/twilio/status"
TWILIO_INBOUND_PATH = "/webhooks/twilio/inbound"
SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_EVENT_AGE_SECONDS = 600  # SendGrid posts within seconds; retries re-sign with a fresh timestamp
MAX_CLOCK_SKEW_SECONDS = 300
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

router = APIRouter()


def sendgrid_signature_problem(verifier: EventWebhook, body: bytes, headers: Mapping[str, str],
                               now: float | None = None) -> str | None:
    """Why this SendGrid request must be refused, or None when it is genuine and fresh."""
    signature, timestamp = headers.get(SENDGRID_SIGNATURE_HEADER), headers.get(SENDGRID_TIMESTAMP_HEADER)
    if not signature or not timestamp:
        return "missing signature headers"
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return "malformed timestamp"
    if age > MAX_EVENT_AGE_SECONDS:
        return "timestamp too old"
    if -age > MAX_CLOCK_SKEW_SECONDS:
        return "timestamp in the future"
    try:
        genuine = verifier.verify_signature(body.decode("utf-8"), signature, timestamp)
    except ValueError:  # undecodable body or signature (binascii.Error is a ValueError)
        genuine = False
    return None if genuine else "signature does not verify"


@router.post(SENDGRID_PATH)
async def sendgrid_event_webhook(request: Request, ctx: Ctx) -> Response:
    """Record a signed SendGrid event batch."""
    if ctx.sendgrid is None:
        return JSONResponse({"detail": "SendGrid webhook verification key not configured "
                                       "(sendgrid.webhook_public_key); refusing unsigned events"}, status_code=503)
    body = await request.body()
    problem = sendgrid_signature_problem(ctx.sendgrid, body, request.headers)
    if problem:
        return JSONResponse({"detail": problem}, status_code=403)
    batch = _json_array(body)
    if batch is None:
        return JSONResponse({"detail": "expected a JSON array of event objects"}, status_code=400)
    recorded = await run_in_threadpool(record_events, ctx.engine, sendgrid_events(batch))
    return JSONResponse({"stored": recorded.stored, "duplicates": recorded.duplicates})


def _json_array(body: bytes) -> list[dict[str, Any]] | None:
    try:
        batch = json.loads(body)
    except ValueError:
        return None
    if not isinstance(batch, list) or not all(isinstance(item, dict) for item in batch):
        return None
    return batch


async def _verified_twilio_form(request: Request, ctx: WebContext, path: str) -> FormData | Response:
    """The request's form if Twilio signed it, else the response refusing it."""
    token = ctx.settings.twilio.auth_token
    if token is None or not token.get_secret_value():
        return JSONResponse({"detail": "Twilio auth token not configured (twilio.auth_token); "
                                       "refusing unsigned callbacks"}, status_code=503)
    form = await request.form()
    if any(not isinstance(value, str) for _, value in form.multi_items()):
        return JSONResponse({"detail": "unexpected file upload"}, status_code=400)
    # Twilio signed the URL it called: the public one, not what the proxy handed us.
    url = ctx.base_url + path + (f"?{request.url.query}" if request.url.query else "")
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature or not RequestValidator(token.get_secret_value()).validate(url, form, signature):
        return JSONResponse({"detail": "invalid Twilio signature"}, status_code=403)
    return form


@router.post(TWILIO_STATUS_PATH)
async def twilio_status_callback(request: Request, ctx: Ctx) -> Response:
    """Record a signed Twilio message status callback."""
    form = await _verified_twilio_form(request, ctx, TWILIO_STATUS_PATH)
    if isinstance(form, Response):
        return form
    fields = {key: str(value) for key, value in form.items()}
    if not (fields.get("MessageSid") or fields.get("SmsSid")):
        return JSONResponse({"detail": "MessageSid missing"}, status_code=400)
    await run_in_threadpool(record_events, ctx.engine, [twilio_status_event(fields)])
    return Response(status_code=204)


@router.post(TWILIO_INBOUND_PATH)
async def twilio_inbound_sms(request: Request, ctx: Ctx) -> Response:
    """Act on a signed inbound SMS (STOP, START, HELP...) and answer TwiML."""
    form = await _verified_twilio_form(request, ctx, TWILIO_INBOUND_PATH)
    if isinstance(form, Response):
        return form
    phone, body = str(form.get("From") or ""), str(form.get("Body") or "")
    reply = await run_in_threadpool(handle_inbound_sms, ctx.engine, phone, body) if phone else None
    return Response(twiml(reply), media_type="application/xml")


def twiml(message: str | None) -> str:
    """A TwiML answer sending ``message`` back, or sending nothing."""
    if not message:
        return EMPTY_TWIML
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Message>{escape(message)}</Message></Response>'
