"""Web Push and FCM HTTP v1 for the provider emulator, plus helpers that play the other ends.

Web Push: ``POST /webpush/{subscription_id}`` plays a push service (RFC 8030/8291/8292). It checks
the VAPID header ``Authorization: vapid t=<JWT>, k=<key>`` (ES256 by ``k``, ``aud`` = this origin,
``exp`` in the future, ``sub`` present; 401 when missing or malformed, 403 when it does not verify
or ``k`` is not the key the subscription was made with), requires ``Content-Encoding: aes128gcm``
and a ``TTL`` header, and answers 201 with a ``Location``; endpoints in
``emu.gone_push_endpoints`` answer 410. :func:`make_browser_subscription` plays the browser.

FCM: ``POST /token`` is the OAuth2 token endpoint google-auth posts its JWT-bearer assertion to;
the assertion must be RS256-signed by a service account registered with the emulator, which
:func:`make_fcm_service_account` does (a registered key, not "any well-formed assertion": a
wrong key must fail as it does at Google). ``POST /v1/projects/{project}/messages:send`` needs a
bearer token the emulator issued for that project; tokens in ``emu.unregistered_fcm_tokens``
answer 404 UNREGISTERED. Faults apply to both send routes, never to ``/token``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from channels.emulator_records import EmulatorRequest, EmulatorResponse, RecordedPush, Route

if TYPE_CHECKING:
    from channels.emulator import ProviderEmulator

WEBPUSH_MAX_BODY = 4096  # RFC 8030 push services must accept at least 4096 bytes of encrypted payload
_URGENCIES = frozenset({"very-low", "low", "normal", "high"})
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_VAPID = re.compile(r"vapid\s+(?P<params>.+)", re.IGNORECASE)
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FCM_TOKEN = re.compile(r"[\w:.-]{1,4096}")  # registration tokens are url-safe text
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_FCM_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def b64url(data: bytes) -> str:
    """Unpadded base64url, as Web Push encodes keys."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _origin(req: EmulatorRequest) -> str:
    return f"http://{req.headers.get('host', '')}"


# -- Web Push ------------------------------------------------------------------------------------


def _webpush_error(status: int, message: str, headers: dict[str, str] | None = None) -> EmulatorResponse:
    # Mozilla autopush's error shape.
    payload = {"code": status, "errno": 999, "error": message.split(":")[0], "message": message}
    return EmulatorResponse.json(status, payload, headers)


def webpush_fault_response(status: int, retry_after_s: int) -> EmulatorResponse:
    """A push service's answer for an injected fault (429 carries Retry-After)."""
    if status == 429:
        return _webpush_error(429, "Too Many Requests", {"Retry-After": str(retry_after_s)})
    return _webpush_error(status, "Internal Server Error" if status == 500 else "Service Unavailable")


def _vapid_problem(emu: ProviderEmulator, req: EmulatorRequest, endpoint: str) -> EmulatorResponse | None:
    """None when the VAPID header verifies; else the 401/403 a push service answers."""
    match = _VAPID.fullmatch(req.headers.get("authorization", "").strip())
    params = dict(p.strip().partition("=")[::2] for p in match["params"].split(",")) if match else {}
    token, key = params.get("t"), params.get("k")
    if not token or not key:
        return _webpush_error(401, "Unauthorized: missing or malformed VAPID authorization")
    expected = emu.webpush_server_keys.get(endpoint)
    if expected is not None and expected.rstrip("=") != key.rstrip("="):
        return _webpush_error(403, "Forbidden: VAPID key does not match the subscription's applicationServerKey")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64url(key))
        claims = jwt.decode(token, public, algorithms=["ES256"], audience=_origin(req), options={"require": ["exp"]})
    except (ValueError, jwt.PyJWTError) as exc:
        return _webpush_error(403, f"Forbidden: VAPID token does not verify ({type(exc).__name__})")
    if not claims.get("sub"):
        return _webpush_error(403, "Forbidden: VAPID token has no sub claim")
    return None


def _webpush_header_problem(req: EmulatorRequest) -> EmulatorResponse | None:
    if req.headers.get("content-encoding", "").lower() != "aes128gcm":
        return _webpush_error(400, "Bad Request: Content-Encoding must be aes128gcm")
    if not req.headers.get("ttl", "").isdigit():
        return _webpush_error(400, "Bad Request: missing or invalid TTL header")
    if req.headers.get("urgency", "normal") not in _URGENCIES:
        return _webpush_error(400, "Bad Request: invalid Urgency header")
    if "topic" in req.headers and not _TOPIC.fullmatch(req.headers["topic"]):
        return _webpush_error(400, "Bad Request: Topic must be at most 32 base64url characters")
    if len(req.body) > WEBPUSH_MAX_BODY:
        return _webpush_error(413, f"Payload Too Large: over {WEBPUSH_MAX_BODY} bytes")
    return None


def webpush_send(emu: ProviderEmulator, req: EmulatorRequest, match: re.Match[str]) -> EmulatorResponse:
    """``POST /webpush/{subscription_id}``: accept one encrypted push message."""
    endpoint = _origin(req) + req.path
    problem = _vapid_problem(emu, req, endpoint) or _webpush_header_problem(req)
    if problem is not None:
        return problem
    if endpoint in emu.gone_push_endpoints:
        return _webpush_error(410, "Gone: subscription expired or unsubscribed")
    push_id = uuid.uuid4().hex
    headers = {k: v for k, v in req.headers.items() if k != "authorization"}
    emu.record_push(RecordedPush("webpush", push_id, endpoint, headers, req.body, time.time()))
    return EmulatorResponse(201, b"", {"Location": f"{_origin(req)}/webpush/messages/{push_id}"})


def make_vapid_keypair() -> tuple[str, str]:
    """A fresh VAPID key pair: (private key as base64url raw 32 bytes, public key as base64url point)."""
    private = ec.generate_private_key(ec.SECP256R1())
    raw = private.private_numbers().private_value.to_bytes(32, "big")
    point = private.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64url(raw), b64url(point)


def make_browser_subscription(
    emu: ProviderEmulator | str, application_server_key: str | None = None
) -> tuple[dict[str, Any], Callable[[bytes], bytes]]:
    """Play a browser subscribing: (subscription_info, decrypt) for a new emulator endpoint.

    ``subscription_info`` is what ``PushManager.subscribe()`` hands the page
    (``{"endpoint", "keys": {"p256dh", "auth"}}``); ``decrypt`` opens a recorded aes128gcm body
    with the browser's private key and auth secret. Given ``application_server_key`` (the VAPID
    public key, base64url) and an emulator object, the endpoint accepts only that VAPID key.
    """
    base = emu if isinstance(emu, str) else emu.url
    private = ec.generate_private_key(ec.SECP256R1())
    auth_secret = os.urandom(16)
    point = private.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    endpoint = f"{base.rstrip('/')}/webpush/{uuid.uuid4().hex}"
    if application_server_key is not None:
        if isinstance(emu, str):
            raise ValueError("binding an application_server_key needs the ProviderEmulator, not its URL")
        emu.webpush_server_keys[endpoint] = application_server_key

    def decrypt(body: bytes) -> bytes:
        return bytes(http_ece.decrypt(body, private_key=private, auth_secret=auth_secret, version="aes128gcm"))

    info = {"endpoint": endpoint, "keys": {"p256dh": b64url(point), "auth": b64url(auth_secret)}}
    return info, decrypt


# -- FCM HTTP v1 -------------------------------------------------------------------------------


def _fcm_error(
    status: int, message: str, fcm_code: str | None = None, headers: dict[str, str] | None = None
) -> EmulatorResponse:
    error: dict[str, Any] = {"code": status, "message": message, "status": _FCM_STATUS.get(status, "UNKNOWN")}
    if fcm_code:
        error["details"] = [{"@type": _FCM_ERROR_TYPE, "errorCode": fcm_code}]
    return EmulatorResponse.json(status, {"error": error}, headers)


def fcm_fault_response(status: int, retry_after_s: int) -> EmulatorResponse:
    """FCM's answer for an injected fault (429 is QUOTA_EXCEEDED with Retry-After)."""
    if status == 429:
        return _fcm_error(429, "Quota exceeded", "QUOTA_EXCEEDED", {"Retry-After": str(retry_after_s)})
    if status == 500:
        return _fcm_error(500, "Internal error encountered.", "INTERNAL")
    return _fcm_error(status, "The service is currently unavailable.", "UNAVAILABLE")


def _oauth_error(description: str) -> EmulatorResponse:
    return EmulatorResponse.json(400, {"error": "invalid_grant", "error_description": description})


def fcm_token(emu: ProviderEmulator, req: EmulatorRequest, _: re.Match[str]) -> EmulatorResponse:
    """``POST /token``: exchange a service account's signed JWT assertion for an access token."""
    form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
    if form.get("grant_type") != _JWT_BEARER or not form.get("assertion"):
        return EmulatorResponse.json(400, {"error": "unsupported_grant_type"})
    try:
        issuer = jwt.decode(form["assertion"], options={"verify_signature": False}).get("iss", "")
    except jwt.PyJWTError:
        return _oauth_error("Invalid JWT.")
    account = emu.fcm_service_accounts.get(issuer)
    if account is None:
        return _oauth_error("Invalid grant: account not found")
    try:
        # google-auth always signs for Google's token URL, whatever token_uri says; accept ours too.
        audience = [GOOGLE_TOKEN_URI, _origin(req) + req.path]
        jwt.decode(form["assertion"], account[0], algorithms=["RS256"], audience=audience)
    except jwt.PyJWTError:
        return _oauth_error("Invalid JWT Signature.")
    token = "ya29.emulator-" + uuid.uuid4().hex
    with emu._lock:
        emu.fcm_access_tokens[token] = account[1]
    return EmulatorResponse.json(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})


def fcm_send(emu: ProviderEmulator, req: EmulatorRequest, match: re.Match[str]) -> EmulatorResponse:
    """``POST /v1/projects/{project}/messages:send``: accept one FCM message."""
    auth = req.headers.get("authorization", "")
    granted = emu.fcm_access_tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
    if granted is None:
        return _fcm_error(401, "Request had invalid authentication credentials.")
    project = match["project"]
    if granted != project:
        return _fcm_error(403, f"Permission denied on project {project}.", "SENDER_ID_MISMATCH")
    try:
        request = json.loads(req.body)
        message = request["message"]
        token = message.get("token") or message.get("fid")  # firebase-admin 7.x also has `fid` targets
    except (ValueError, KeyError, TypeError, AttributeError):
        return _fcm_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
    if not isinstance(token, str) or not _FCM_TOKEN.fullmatch(token):
        return _fcm_error(400, "The registration token is not a valid FCM registration token", "INVALID_ARGUMENT")
    if token in emu.unregistered_fcm_tokens:
        return _fcm_error(404, "Requested entity was not found.", "UNREGISTERED")
    push_id = f"0:{time.time_ns() // 1000}%{uuid.uuid4().hex[:16]}"
    if not request.get("validate_only"):
        emu.record_push(RecordedPush("fcm", push_id, token, dict(req.headers), message, time.time()))
    return EmulatorResponse.json(200, {"name": f"projects/{project}/messages/{push_id}"})


def make_fcm_service_account(emu: ProviderEmulator, project_id: str = "loyalflow-test") -> dict[str, Any]:
    """A service-account JSON dict for a new local RSA key, registered with ``emu``.

    Its ``token_uri`` is the emulator's ``/token``, so ``firebase_admin.credentials.Certificate``
    fetches access tokens from the emulator; only registered keys are accepted there.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = f"firebase-adminsdk-{uuid.uuid4().hex[:5]}@{project_id}.iam.gserviceaccount.com"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with emu._lock:
        emu.fcm_service_accounts[email] = (public, project_id)
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem.decode(),
        "client_email": email,
        "client_id": str(uuid.uuid4().int)[:21],
        "token_uri": f"{emu.url}/token",
    }


def lookup_push(emu: ProviderEmulator, req: EmulatorRequest, _: re.Match[str]) -> EmulatorResponse:
    """``GET /_emulator/push?to=ENDPOINT_OR_TOKEN``: recorded pushes, Web Push bodies as base64url."""
    found = []
    for push in emu.find_push(req.query.get("to", [""])[0]):
        item = asdict(push)
        if isinstance(push.body, bytes):  # JSON cannot carry the raw encrypted bytes
            item["body"] = b64url(push.body)
        found.append(item)
    return EmulatorResponse.json(200, found)


ROUTES = [
    Route("POST", re.compile(r"/webpush/(?P<subscription>[A-Za-z0-9_-]+)"), webpush_send, webpush_fault_response),
    Route("POST", re.compile(r"/token"), fcm_token),
    Route("POST", re.compile(r"/v1/projects/(?P<project>[^/]+)/messages:send"), fcm_send, fcm_fault_response),
    Route("GET", re.compile(r"/_emulator/push"), lookup_push),  # emulator-only: no faults
]
