"""The sandbox mailbox: what members would have received, as files a person can open.

With no provider keys configured, loyalflow sends through the in-process provider emulator
(:mod:`channels.emulator`) and this writer listens to it: every accepted email becomes one
``.eml`` file (open it in any mail client: subject, HTML and text parts, List-Unsubscribe
headers), every SMS and push notification one JSON line in ``sms.jsonl`` / ``push.jsonl``.
Only the emulator's *accepted* messages are written, so the mailbox shows exactly what a
provider would have delivered — retries and failures included in their true effect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from channels.emulator_records import RecordedEmail, RecordedPush, RecordedSms

#: Turns an encrypted Web Push body into its plain payload when the sandbox holds the browser's keys.
PushDecrypter = Callable[[RecordedPush], "bytes | None"]
#: The sandbox delivers nowhere, so it is not paced like a real sender (a demo must not take hours).
SANDBOX_RATE_PER_SECOND = 10_000.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


# One "sandbox browser": seeded Web Push subscriptions carry its public key and auth secret, so the
# sandbox can decrypt what members' browsers would show. Derived from a fixed label: it is public
# by design and must never protect anything real.
_SANDBOX_SCALAR = int.from_bytes(hashlib.sha256(b"loyalflow sandbox browser").digest(), "big") % (2**255)
_SANDBOX_KEY = ec.derive_private_key(_SANDBOX_SCALAR, ec.SECP256R1())
_SANDBOX_AUTH = hashlib.sha256(b"loyalflow sandbox auth").digest()[:16]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sandbox_browser_keys() -> tuple[str, str]:
    """(p256dh, auth) of the sandbox browser, base64url, as a Web Push subscription carries them."""
    point = _SANDBOX_KEY.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint)
    return _b64url(point), _b64url(_SANDBOX_AUTH)


def decrypt_for_sandbox_browser(push: RecordedPush) -> bytes | None:
    """The plain payload of a Web Push message encrypted for the sandbox browser; None for anyone else's."""
    if not isinstance(push.body, bytes):
        return None
    try:
        return bytes(http_ece.decrypt(push.body, private_key=_SANDBOX_KEY, auth_secret=_SANDBOX_AUTH,
                                      version="aes128gcm"))
    except Exception:  # http_ece raises bare ECE errors for someone else's key: not ours to read
        return None


@dataclass
class MailboxCounts:
    """How many files/lines the sandbox wrote, per channel."""

    email: int = 0
    sms: int = 0
    push: int = 0


class SandboxMailbox:
    """Writes accepted messages under ``directory``; pass :meth:`listen` to ``ProviderEmulator.add_listener``."""

    def __init__(self, directory: Path, *, decrypt_push: PushDecrypter | None = decrypt_for_sandbox_browser) -> None:
        self.directory = directory
        self.email_dir = directory / "email"
        self.email_dir.mkdir(parents=True, exist_ok=True)
        self.decrypt_push = decrypt_push
        self.counts = MailboxCounts()
        self._lock = threading.Lock()  # the emulator records from one thread per connection

    @property
    def sms_file(self) -> Path:
        """JSON lines, one per accepted SMS."""
        return self.directory / "sms.jsonl"

    @property
    def push_file(self) -> Path:
        """JSON lines, one per accepted push notification."""
        return self.directory / "push.jsonl"

    def listen(self, kind: str, record: object) -> None:
        """The emulator listener: route one accepted record to its writer."""
        if isinstance(record, RecordedEmail):
            self._write_email(record)
        elif isinstance(record, RecordedSms):
            self._append(self.sms_file, _sms_line(record), "sms")
        elif isinstance(record, RecordedPush):
            self._append(self.push_file, self._push_line(record), "push")

    def _write_email(self, email: RecordedEmail) -> None:
        name = f"{_stamp(email.accepted_at)}-{_UNSAFE.sub('_', email.to[0] if email.to else 'nobody')}"
        path = self.email_dir / f"{name}-{_UNSAFE.sub('_', email.message_id)}.eml"
        path.write_bytes(eml_bytes(email))
        with self._lock:
            self.counts.email += 1

    def _append(self, path: Path, line: Mapping[str, Any], kind: str) -> None:
        text = json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock, path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            setattr(self.counts, kind, getattr(self.counts, kind) + 1)

    def _push_line(self, push: RecordedPush) -> dict[str, Any]:
        line: dict[str, Any] = {"kind": push.kind, "id": push.id, "to": push.to, "accepted_at": _iso(push.accepted_at),
                                "headers": {k: v for k, v in push.headers.items() if k.lower() in _PUSH_HEADERS}}
        if isinstance(push.body, bytes):
            plain = self.decrypt_push(push) if self.decrypt_push else None
            if plain is None:
                line["encrypted_bytes"] = len(push.body)
            else:
                line["payload"] = _json_or_text(plain)
        else:
            line["message"] = dict(push.body)
        return line


_PUSH_HEADERS = {"ttl", "urgency", "topic"}


def eml_bytes(email: RecordedEmail) -> bytes:
    """The ``.eml`` a mail client would show for a recorded SendGrid personalization (RFC 5322 + MIME).

    Written by hand rather than through :class:`email.message.EmailMessage`, whose header registry
    costs ~3.5 ms a message: the sandbox writes one file per accepted email inside the emulator's
    request handling, so that cost alone held a personalised campaign to ~110 emails/s. Headers are
    RFC 2047-encoded when not plain ASCII, bodies quoted-printable (C ``binascii``), the boundary
    starts with ``=_``, which quoted-printable text can never contain.
    """
    lines = [_header("From", email.from_email), _header("To", ", ".join(email.to))]
    if email.cc:
        lines.append(_header("Cc", ", ".join(email.cc)))
    lines += [_header("Subject", email.subject or ""),
              _header("Date", format_datetime(datetime.fromtimestamp(email.accepted_at, UTC))),
              _header("Message-ID", f"<{email.message_id}@sandbox.loyalflow>")]
    lines += [_header(name, value) for name, value in email.headers.items() if name.lower() not in _OWN_HEADERS]
    if email.custom_args:
        lines.append(_header("X-Loyalflow-Custom-Args", json.dumps(dict(email.custom_args), sort_keys=True)))
    lines.append("MIME-Version: 1.0")
    parts = dict(email.content)
    text = _text_part("plain", parts.get("text/plain", ""))
    if "text/html" not in parts:
        return ("\n".join(lines) + "\n").encode() + text
    boundary = f"=_loyalflow_{secrets.token_hex(12)}"
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = ("\n".join(lines) + f"\n\n--{boundary}\n").encode()
    html = _text_part("html", parts["text/html"])
    return head + text + f"\n--{boundary}\n".encode() + html + f"\n--{boundary}--\n".encode()


_OWN_HEADERS = {"from", "to", "cc", "subject", "date", "message-id", "mime-version", "content-type",
                "content-transfer-encoding"}


def _header(name: str, value: str) -> str:
    """One header line; line breaks in a value become spaces (no header injection from a request body)."""
    value = " ".join(str(value).splitlines())
    if value.isascii() and len(name) + len(value) < 900:  # RFC 5322 allows 998 characters a line
        return f"{name}: {value}"
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode()}"


def _text_part(subtype: str, body: str) -> bytes:
    """A text/<subtype> MIME part in UTF-8, quoted-printable, line breaks as ``\\n``."""
    encoded = binascii.b2a_qp("\n".join(body.splitlines()).encode(), istext=True)
    return (f'Content-Type: text/{subtype}; charset="utf-8"\nContent-Transfer-Encoding: quoted-printable\n\n'
            .encode() + encoded + b"\n")


def _sms_line(sms: RecordedSms) -> dict[str, Any]:
    return {"sid": sms.sid, "to": sms.to, "from": sms.from_ or sms.messaging_service_sid, "body": sms.body,
            "segments": sms.num_segments, "accepted_at": _iso(sms.accepted_at)}


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return base64.b64encode(raw).decode()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _stamp(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y%m%dT%H%M%S")
