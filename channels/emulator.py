"""Provider emulator: one loopback HTTP server speaking the providers' wire protocols.

It is the test double for the *real* provider clients (``sendgrid``, ``twilio``) and the
default sandbox. It records everything it accepts, can be scripted to fail (5xx, 429 with
``Retry-After``, slow answers, dropped connections, and the ambiguous "accepted, then the
connection dropped" case) and can fire signed delivery webhooks back
(:mod:`channels.emulator_webhooks`).

Providers plug in as route tables: :mod:`channels.emulator_sendgrid` (SendGrid v3 mail send),
:mod:`channels.emulator_twilio` (Twilio 2010-04-01 Messages) and :mod:`channels.emulator_push`
(a Web Push service checking VAPID, and FCM HTTP v1 with its OAuth token endpoint).

Emulator-only endpoints (no real provider has them; used for reconciliation):

- ``GET /_emulator/emails?custom_arg=NAME&value=VALUE`` -> JSON list of recorded emails
- ``GET /_emulator/sms?to=NUMBER&body=TEXT`` -> JSON list of recorded SMS (``body`` optional)
- ``GET /_emulator/push?to=ENDPOINT_OR_TOKEN`` -> JSON list of recorded pushes (in
  :mod:`channels.emulator_push`; Web Push bodies as base64url)

:meth:`ProviderEmulator.add_listener` lets the sandbox watch everything accepted as it happens.

The server side is stdlib only, so it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, MutableSequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels import emulator_push, emulator_sendgrid, emulator_twilio
from channels.emulator_records import (
    EmulatorRequest,
    EmulatorResponse,
    Faults,
    RecordedEmail,
    RecordedPush,
    RecordedRequest,
    RecordedSms,
    Route,
)

__all__ = [
    "EmulatorRequest",
    "EmulatorResponse",
    "Faults",
    "ProviderEmulator",
    "RecordedEmail",
    "RecordedPush",
    "RecordedRequest",
    "RecordedSms",
    "Route",
]

log = logging.getLogger(__name__)
# Called with ("email", RecordedEmail), ("sms", RecordedSms) or ("push", RecordedPush).
Listener = Callable[[str, object], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default backlog of 5 drops SYNs under a parallel dispatcher, and the
    # client's SYN retry then costs a full second.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up before our (deliberately delayed) answer is
        # the scenario under test, not an emulator fault: don't print its traceback.
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return
        super().handle_error(request, client_address)


def _records(retain: int | None) -> MutableSequence[Any]:
    """A list keeping everything, or a deque keeping the last ``retain`` records."""
    return [] if retain is None else deque(maxlen=retain)


class _Drop(Exception):
    """Raised inside the request handler to close the socket without an answer."""


class ProviderEmulator:
    """Loopback HTTP server emulating SendGrid, Twilio, Web Push and FCM (see module docstring).

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``port=0`` picks a free
    port; :attr:`url` is the base URL to hand to the real clients.

    ``retain=None`` (tests) keeps every record in lists. A number keeps only the most recent that
    many of each kind, as a real provider's activity feed keeps recent history only: the sandbox
    runs whole campaigns through one emulator, and the bodies are already on disk in its mailbox.
    Reconciliation looks up a lost answer seconds after the send, well inside that window.
    """

    TWILIO_ACCOUNT_SID = "AC" + "0" * 32
    TWILIO_AUTH_TOKEN = "emulator-auth-token"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int = 0,
                 retain: int | None = None) -> None:
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.faults = Faults()
        self.stats: Counter[str] = Counter()
        self.emails: MutableSequence[RecordedEmail] = _records(retain)
        self.sms: MutableSequence[RecordedSms] = _records(retain)
        self.requests: MutableSequence[RecordedRequest] = _records(retain)
        self.sendgrid_api_keys: set[str] | None = None  # None: any non-empty bearer key is accepted
        self.twilio_accounts: dict[str, str] = {self.TWILIO_ACCOUNT_SID: self.TWILIO_AUTH_TOKEN}
        self.opted_out: set[str] = set()
        self.push: MutableSequence[RecordedPush] = _records(retain)
        self.gone_push_endpoints: set[str] = set()  # Web Push endpoints answering 410 Gone
        self.unregistered_fcm_tokens: set[str] = set()  # FCM tokens answering 404 UNREGISTERED
        # Web Push endpoint -> the only VAPID public key (base64url) it accepts; others accept any valid key.
        self.webpush_server_keys: dict[str, str] = {}
        # FCM service accounts: client_email -> (public key PEM, project_id); see emulator_push.
        self.fcm_service_accounts: dict[str, tuple[bytes, str]] = {}
        self.fcm_access_tokens: dict[str, str] = {}  # issued bearer token -> project_id
        self._listeners: list[Listener] = []
        self.routes: list[Route] = _provider_routes()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ProviderEmulator:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _make_handler(self))
        self._server = server
        # A short poll interval keeps stop() quick (shutdown waits for the poll loop).
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="provider-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ProviderEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("emulator not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- scripting and recording -----------------------------------------------------------

    def reset(self) -> None:
        """Forget everything recorded and every fault counter; faults go back to none."""
        with self._lock:
            self.emails.clear()
            self.sms.clear()
            self.requests.clear()
            self.stats.clear()
            self.opted_out.clear()
            self.push.clear()
            self.gone_push_endpoints.clear()
            self.unregistered_fcm_tokens.clear()
            self.faults = Faults()

    def opt_out(self, number: str) -> None:
        """Make Twilio refuse messages to ``number`` with error 21610 (recipient sent STOP)."""
        with self._lock:
            self.opted_out.add(number)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(kind, record)`` after each accepted email, SMS or push ("email", "sms", "push").

        It runs on the request's thread, outside the emulator's lock; an exception is logged and
        never fails the request.
        """
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, kind: str, record: object) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(kind, record)
            except Exception:
                log.exception("emulator listener %r failed on %s", listener, kind)

    def record_email(self, email: RecordedEmail) -> None:
        """Record an accepted email (used by the SendGrid routes)."""
        with self._lock:
            self.emails.append(email)
        self._notify("email", email)

    def record_sms(self, sms: RecordedSms) -> None:
        """Record an accepted SMS (used by the Twilio routes)."""
        with self._lock:
            self.sms.append(sms)
        self._notify("sms", sms)

    def record_push(self, push: RecordedPush) -> None:
        """Record an accepted Web Push or FCM message (used by the push routes)."""
        with self._lock:
            self.push.append(push)
        self._notify("push", push)

    def find_push(self, to: str) -> list[RecordedPush]:
        """Recorded pushes to a Web Push endpoint URL or an FCM registration token."""
        with self._lock:
            return [p for p in self.push if p.to == to]

    def find_email(self, custom_arg_name: str, value: str) -> list[RecordedEmail]:
        """Recorded emails whose merged custom_args have ``custom_arg_name == value``."""
        with self._lock:
            return [e for e in self.emails if e.custom_args.get(custom_arg_name) == value]

    def find_sms(self, to: str, body: str | None = None) -> list[RecordedSms]:
        """Recorded SMS to ``to`` (and with exactly ``body`` when given)."""
        with self._lock:
            return [s for s in self.sms if s.to == to and (body is None or s.body == body)]

    def get_sms(self, sid: str) -> RecordedSms | None:
        """The recorded SMS with this sid, if any."""
        with self._lock:
            return next((s for s in self.sms if s.sid == sid), None)

    # -- webhooks (signing lives in channels.emulator_webhooks) ----------------------------

    def fire_sendgrid_events(
        self,
        url: str,
        events: Iterable[tuple[RecordedEmail, str]],
        private_key: Any,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """POST signed SendGrid events for (recorded email, event name) pairs; returns the HTTP status.

        ``private_key`` comes from ``emulator_webhooks.generate_sendgrid_webhook_keypair()``.
        """
        from channels.emulator_webhooks import fire_sendgrid_events

        return fire_sendgrid_events(url, events, private_key, extra=extra)

    def fire_twilio_status(
        self,
        url: str,
        message_sid: str,
        status: str,
        auth_token: str | None = None,
        *,
        error_code: int | str | None = None,
    ) -> int:
        """POST a signed Twilio status callback for a message; returns the HTTP status.

        For a recorded message it adds ``AccountSid``, ``To`` and ``From`` as Twilio does, signs
        with that account's token unless ``auth_token`` is given, and updates the stored
        resource's ``status`` (so a later fetch agrees with the callback).
        """
        from channels.emulator_webhooks import fire_twilio_status

        extra: dict[str, str] = {}
        with self._lock:
            for i, sms in enumerate(self.sms):
                if sms.sid == message_sid:
                    extra = {"AccountSid": sms.account_sid, "To": sms.to}
                    if sms.from_:
                        extra["From"] = sms.from_
                    auth_token = auth_token or self.twilio_accounts.get(sms.account_sid)
                    resource = {**sms.resource, "status": status, "error_code": error_code}
                    self.sms[i] = replace(sms, resource=resource)
                    break
        if auth_token is None:
            raise ValueError(f"unknown message {message_sid}: pass auth_token")
        return fire_twilio_status(url, message_sid, status, auth_token, error_code=error_code, extra=extra)

    def _roll(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, req: EmulatorRequest) -> EmulatorResponse:
        """Route a request, applying the fault script; raises _Drop to close the socket."""
        route, match = self._match(req)
        if route is None or match is None:
            return EmulatorResponse.json(404, {"errors": [{"message": f"no route for {req.method} {req.path}"}]})
        faults = self.faults  # one consistent script for the whole request
        responder = route.fault_responder
        if responder is not None:
            if self._roll(faults.drop_rate):
                self._count("drop")
                raise _Drop
            if self._roll(faults.error_5xx_rate):
                self._count("error_5xx")
                with self._lock:
                    status = self._rng.choice((500, 503))
                return self._delayed(faults, responder(status, faults.retry_after_s))
            if self._roll(faults.rate_limit_rate):
                self._count("rate_limit")
                return self._delayed(faults, responder(429, faults.retry_after_s))
        response = route.handler(self, req, match)
        if responder is not None and response.status < 300 and self._roll(faults.drop_after_accept_rate):
            # The handler has already recorded the message: the provider "has it" but the
            # client sees a connection error. This is what outbox reconciliation is for.
            self._count("drop_after_accept")
            raise _Drop
        return self._delayed(faults, response)

    def _delayed(self, faults: Faults, response: EmulatorResponse) -> EmulatorResponse:
        if faults.delay_s > 0:
            self._count("delay")
            time.sleep(faults.delay_s)
        return response

    def _match(self, req: EmulatorRequest) -> tuple[Route | None, re.Match[str] | None]:
        for route in self.routes:
            if route.method == req.method:
                match = route.pattern.fullmatch(req.path)
                if match:
                    return route, match
        return None, None


def _make_handler(emulator: ProviderEmulator) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the requests-based Twilio client expects
        # Headers and body leave in separate writes; with Nagle on, a keep-alive client's delayed ACK
        # then costs 40 ms per request (measured: 44 ms per Twilio message instead of ~3).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # silence the default stderr access log

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = EmulatorRequest(self.command, parts.path, parse_qs(parts.query), headers, body)
            try:
                response: EmulatorResponse | None = emulator._dispatch(req)
            except _Drop:
                response = None
            except Exception as exc:  # a handler bug must not look like a dropped connection
                emulator._count("emulator_error")
                response = EmulatorResponse.json(500, {"emulator_error": repr(exc)})
            # Logged before answering, so a client that has seen the answer also sees the log.
            with emulator._lock:
                status = None if response is None else response.status
                emulator.requests.append(RecordedRequest(req.method, req.path, headers, body, status))
            if response is None:
                self.close_connection = True
                # Shut the socket down so the client sees EOF at once instead of waiting.
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    return _Handler


def _provider_routes() -> list[Route]:
    return [*emulator_sendgrid.ROUTES, *emulator_twilio.ROUTES, *emulator_push.ROUTES]
