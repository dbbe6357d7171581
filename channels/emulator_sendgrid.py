"""SendGrid v3 ``POST /v3/mail/send`` for the provider emulator.

Validates what the real API rejects and the ``sendgrid`` client does not check (at most 1000
personalizations and 1000 recipients, string-only ``custom_args``), answers 202 with
``X-Message-Id``, or 200 and records nothing in sandbox mode. Error bodies follow SendGrid's
``{"errors": [{"message", "field", "help"}]}`` shape.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from channels.emulator_records import EmulatorRequest, EmulatorResponse, RecordedEmail, Route

if TYPE_CHECKING:
    from channels.emulator import ProviderEmulator

MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000


def _error(status: int, *errors: tuple[str | None, str], headers: dict[str, str] | None = None) -> EmulatorResponse:
    payload = {"errors": [{"message": message, "field": fld, "help": None} for fld, message in errors]}
    return EmulatorResponse.json(status, payload, headers)


def fault_response(status: int, retry_after_s: int) -> EmulatorResponse:
    """SendGrid's answer for an injected fault (429 carries Retry-After and X-RateLimit-Reset)."""
    if status == 429:
        headers = {
            "Retry-After": str(retry_after_s),
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time()) + retry_after_s),
        }
        return _error(429, (None, "too many requests"), headers=headers)
    return _error(status, (None, "internal server error" if status == 500 else "service unavailable"))


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _emails(items: Any) -> tuple[str, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(str(i.get("email", "")) for i in items if isinstance(i, dict))


def _check_custom_args(value: Any, fld: str, errors: list[tuple[str | None, str]]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append((fld, f"Invalid type. Expected: object, given: {_type_name(value)}."))
        return {}
    for key, item in value.items():
        if not isinstance(item, str):
            errors.append((f"{fld}.{key}", f"Invalid type. Expected: string, given: {_type_name(item)}."))
    return value


def _validate(mail: Any) -> list[tuple[str | None, str]]:
    errors: list[tuple[str | None, str]] = []
    if not isinstance(mail, dict):
        return [(None, "Bad Request")]
    sender = mail.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        errors.append(("from.email", "The from email does not contain a valid address."))
    pers = mail.get("personalizations")
    if not isinstance(pers, list) or not pers:
        errors.append(
            ("personalizations", "The personalizations field is required and must have at least one personalization.")
        )
        pers = []
    elif len(pers) > MAX_PERSONALIZATIONS:
        errors.append(("personalizations", f"You may not have more than {MAX_PERSONALIZATIONS} personalizations."))
    recipients = 0
    templated = bool(mail.get("template_id"))
    for i, p in enumerate(pers):
        if not isinstance(p, dict) or not _emails(p.get("to")):
            errors.append(
                (
                    f"personalizations.{i}.to",
                    "The to array is required for all personalization objects, and must have at least one email "
                    "object with a valid email address.",
                )
            )
            continue
        recipients += len(_emails(p.get("to"))) + len(_emails(p.get("cc"))) + len(_emails(p.get("bcc")))
        _check_custom_args(p.get("custom_args"), f"personalizations.{i}.custom_args", errors)
    if recipients > MAX_RECIPIENTS:
        errors.append(("personalizations", f"The total number of recipients must be no more than {MAX_RECIPIENTS}."))
    has_subject = bool(mail.get("subject")) or (
        bool(pers) and all(isinstance(p, dict) and p.get("subject") for p in pers)
    )
    if not has_subject and not templated:
        errors.append(
            (
                "subject",
                "The subject is required. You can get around this requirement if you use a template with a "
                "subject defined or if every personalization has a subject defined.",
            )
        )
    if not mail.get("content") and not templated:
        errors.append(("content", "Unless a valid template_id is provided, the content parameter is required."))
    _check_custom_args(mail.get("custom_args"), "custom_args", errors)
    return errors


def _new_message_id() -> str:
    # Real X-Message-Id values are 22 url-safe base64 characters.
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")


def mail_send(emu: ProviderEmulator, req: EmulatorRequest, _: re.Match[str]) -> EmulatorResponse:
    """``POST /v3/mail/send``."""
    auth = req.headers.get("authorization", "")
    key = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
    if not key or (emu.sendgrid_api_keys is not None and key not in emu.sendgrid_api_keys):
        return _error(401, (None, "The provided authorization grant is invalid, expired, or revoked"))
    try:
        mail = json.loads(req.body)
    except ValueError:
        return _error(400, (None, "Bad Request"))
    errors = _validate(mail)
    if errors:
        return _error(400, *errors)
    if (mail.get("mail_settings") or {}).get("sandbox_mode", {}).get("enable") is True:
        return EmulatorResponse(200)  # validated, delivers nothing
    x_message_id = _new_message_id()
    now = time.time()
    top_args = mail.get("custom_args") or {}
    top_headers = mail.get("headers") or {}
    content = tuple((str(c.get("type", "")), str(c.get("value", ""))) for c in mail.get("content") or [])
    for i, p in enumerate(mail["personalizations"]):
        emu.record_email(
            RecordedEmail(
                message_id=f"{x_message_id}.{i}",
                x_message_id=x_message_id,
                index=i,
                from_email=mail["from"]["email"],
                to=_emails(p.get("to")),
                cc=_emails(p.get("cc")),
                bcc=_emails(p.get("bcc")),
                subject=p.get("subject") or mail.get("subject"),
                content=content,
                template_id=mail.get("template_id"),
                headers={**top_headers, **(p.get("headers") or {})},
                custom_args={**top_args, **(p.get("custom_args") or {})},
                categories=tuple(mail.get("categories") or ()),
                accepted_at=now,
            )
        )
    return EmulatorResponse(202, headers={"X-Message-Id": x_message_id})


_QUERY = re.compile(r"""\s*(?:unique_args\['(?P<arg>[^']+)'\]|(?P<field>to_email|msg_id))"""
                    r"""\s*=\s*"(?P<value>[^"]*)"\s*""")


def _matches(email: RecordedEmail, query: str) -> bool:
    """One clause of the Email Activity query language: ``unique_args['k']="v"``, ``to_email=``, ``msg_id=``."""
    found = _QUERY.fullmatch(query)
    if found is None:
        raise ValueError(query)
    value = found["value"]
    if found["arg"]:
        return email.custom_args.get(found["arg"]) == value
    if found["field"] == "to_email":
        return value in email.to
    return email.message_id == value


def activity_messages(emu: ProviderEmulator, req: EmulatorRequest, _: re.Match[str]) -> EmulatorResponse:
    """``GET /v3/messages?query=...&limit=N`` — the Email Activity Feed, for reconciling lost answers."""
    if not req.headers.get("authorization", "").startswith("Bearer "):
        return _error(401, (None, "authorization required"))
    query = req.query.get("query", [""])[0]
    limit = int(req.query.get("limit", ["10"])[0])
    with emu._lock:
        emails = list(emu.emails)
    try:
        found = [e for e in emails if _matches(e, query)][:limit]
    except ValueError:
        return _error(400, ("query", f"unsupported query: {query}"))
    messages = [{"msg_id": e.message_id, "from_email": e.from_email, "subject": e.subject or "",
                 "to_email": e.to[0] if e.to else "", "status": "processed", "opens_count": 0, "clicks_count": 0,
                 "last_event_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.accepted_at))}
                for e in found]
    return EmulatorResponse.json(200, {"messages": messages})


def lookup_emails(emu: ProviderEmulator, req: EmulatorRequest, _: re.Match[str]) -> EmulatorResponse:
    """Emulator-only ``GET /_emulator/emails?custom_arg=NAME&value=VALUE``: recorded emails, no faults."""
    name = req.query.get("custom_arg", [""])[0]
    value = req.query.get("value", [""])[0]
    return EmulatorResponse.json(200, [asdict(e) for e in emu.find_email(name, value)])


ROUTES = [
    Route("POST", re.compile(r"/v3/mail/send"), mail_send, fault_response),
    Route("GET", re.compile(r"/v3/messages"), activity_messages, fault_response),
    Route("GET", re.compile(r"/_emulator/emails"), lookup_emails),
]
