"""``POST /events/transactions``: purchases and refunds pushed by a till or a shop, as they happen.

Body: one JSON object or a list of at most :data:`MAX_BATCH`, each with ``external_id`` (the
transaction id, ≤ 64 characters), ``member_external_id``, ``amount_cents`` (an integer: positive
for a purchase, negative for a refund, never 0), ``currency`` (the programme's), ``category``
(default ``general``), ``channel`` (store/online/app, default ``store``) and ``occurred_at`` (ISO
datetime *with* a UTC offset, not in the future). A bad field, an unknown member or a wrong
currency answers 422 naming each field (``loc`` like ``["body", 2, "amount_cents"]``), and nothing
of the request is recorded.

Recording is :func:`loyalty.ledger.record_purchases`, exactly as ``loyalflow import transactions``
does it: the transaction row, its points and the tier evaluation in one database transaction,
skipping transaction ids already stored, so a re-post (a client retry) credits nothing twice. The
answer counts ``recorded``, ``duplicates``, ``tier_upgrades`` and ``points``. Each upgrade is then
announced as a Prefect event after the response, best effort (:func:`flows.tier_upgrade.announce_tier_upgrade`):
the recorded change row is what the sweeper messages, whatever becomes of the event.

Authentication: ``Authorization: Bearer <token>`` where the token is
``HMAC-SHA256(key=web.secret_key, msg="events")`` in hex (:func:`events_token`; in a shell:
``printf events | openssl dgst -sha256 -hmac "$SECRET" -hex``). Rotating ``web.secret_key``
rotates it. Anything else answers 401.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from loyalty.ledger import Purchase, record_purchases
from loyalty.models import MEMBERS
from loyalty.programme import Programme, load_programme
from loyalty.settings import Settings
from loyalty.types import TierDirection, utcnow
from loyalty.web.context import Ctx

EVENTS_PATH = "/events/transactions"
MAX_BATCH = 1000
#: Tills' clocks drift: a few minutes ahead of ours is still "now", not a future transaction.
CLOCK_SKEW = timedelta(minutes=5)
MAX_AMOUNT_CENTS = 10**12  # as the CSV import: anything bigger is a data error

log = logging.getLogger(__name__)
router = APIRouter()


def events_token(settings: Settings) -> str:
    """The bearer token this endpoint accepts: HMAC-SHA256(web.secret_key, "events"), hex."""
    key = settings.web.secret_key.get_secret_value().encode("utf-8")
    return hmac.new(key, b"events", hashlib.sha256).hexdigest()


def authorised(header: str | None, settings: Settings) -> bool:
    """Whether an ``Authorization`` header carries the events token (compared in constant time)."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), events_token(settings).encode("utf-8"))


class TransactionEvent(BaseModel):
    """One posted transaction; validation context carries the programme's ``currency`` and ``now``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: str = Field(min_length=1, max_length=64)
    member_external_id: str = Field(min_length=1, max_length=64)
    amount_cents: StrictInt = Field(ge=-MAX_AMOUNT_CENTS, le=MAX_AMOUNT_CENTS)
    currency: str = Field(min_length=3, max_length=3)
    category: str = Field(default="general", min_length=1, max_length=32)
    channel: Literal["store", "online", "app"] = "store"
    occurred_at: AwareDatetime

    @field_validator("amount_cents")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be positive for a purchase or negative for a refund, not 0")
        return value

    @field_validator("currency")
    @classmethod
    def _programme_currency(cls, value: str, info: ValidationInfo) -> str:
        expected = (info.context or {}).get("currency")
        if expected and value.upper() != expected:
            raise ValueError(f"must be the programme's currency ({expected})")
        return value.upper()

    @field_validator("occurred_at")
    @classmethod
    def _not_future(cls, value: Any, info: ValidationInfo) -> Any:
        now = (info.context or {}).get("now") or utcnow()
        if value > now + CLOCK_SKEW:
            raise ValueError("is in the future")
        return value

    @field_validator("category")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


_BATCH: TypeAdapter[list[TransactionEvent]] = TypeAdapter(
    Annotated[list[TransactionEvent], Field(min_length=1, max_length=MAX_BATCH)])  # type: ignore[arg-type,unused-ignore]


class InvalidEvents(ValueError):
    """The body failed validation; ``errors`` are FastAPI-style ``{loc, msg, type}`` dicts."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


def parse_events(body: bytes, currency: str) -> list[TransactionEvent]:
    """Validate a body holding one transaction or a list of them; raises :class:`InvalidEvents`."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidEvents([_error(("body",), f"invalid JSON: {exc}", "json_invalid")]) from exc
    single = isinstance(data, dict)
    try:
        return _BATCH.validate_python([data] if single else data, context={"currency": currency, "now": utcnow()})
    except ValidationError as exc:
        # A single object's errors are named by field alone, not by a list index the client never sent.
        raise InvalidEvents([_error(("body", *(e["loc"][1:] if single else e["loc"])), e["msg"], e["type"])
                             for e in exc.errors(include_url=False)]) from exc


def _error(loc: tuple[Any, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


@dataclass
class Recorded:
    """What one request recorded; ``upgrades`` holds ``(member_id, tier_change_id)`` pairs."""

    recorded: int = 0
    duplicates: int = 0
    points: int = 0
    upgrades: list[tuple[int, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        """The response body."""
        return {"recorded": self.recorded, "duplicates": self.duplicates, "tier_upgrades": len(self.upgrades),
                "points": self.points}


def record_events(engine: Engine, programme: Programme, events: list[TransactionEvent]) -> Recorded:
    """Record the events in one transaction through the ledger, as the CSV import does.

    Raises :class:`InvalidEvents` (recording nothing) when a member is unknown.
    """
    with Session(engine, expire_on_commit=False) as session:
        wanted = sorted({e.member_external_id for e in events})
        known = dict(session.execute(sa.select(MEMBERS.c.external_id, MEMBERS.c.id)
                                     .where(MEMBERS.c.external_id.in_(wanted))).all())
        unknown = [_error(("body", i, "member_external_id"), f"unknown member {e.member_external_id!r}",
                          "unknown_member") for i, e in enumerate(events) if e.member_external_id not in known]
        if unknown:
            raise InvalidEvents(unknown)
        purchases = [Purchase(member_id=known[e.member_external_id], external_id=e.external_id,
                              amount_cents=e.amount_cents, occurred_at=e.occurred_at, currency=e.currency,
                              category=e.category, channel=e.channel) for e in events]
        batch = record_purchases(session, programme, purchases)
        session.commit()
    ups = [(c.member_id, c.id) for c in batch.tier_changes if c.direction is TierDirection.UP and c.id is not None]
    return Recorded(recorded=batch.inserted, duplicates=batch.duplicates, points=batch.points, upgrades=ups)


@lru_cache(maxsize=4)
def _programme(config_dir: Path) -> Programme:
    """The programme, read once per process (the web app never reloads its config)."""
    return load_programme(config_dir)


def announce(upgrades: list[tuple[int, int]]) -> None:
    """Emit one tier-upgraded event per change; never raises (the sweeper is the safety net)."""
    try:
        from flows.tier_upgrade import announce_tier_upgrade  # imported late: Prefect is heavy for the web app
        for member_id, change_id in upgrades:
            announce_tier_upgrade(member_id, change_id)
    except Exception:  # an event is an optimisation, never a failure
        log.warning("could not announce %d tier upgrade(s); the sweeper will message them", len(upgrades),
                    exc_info=True)


@router.post(EVENTS_PATH)
async def post_transactions(request: Request, ctx: Ctx) -> Response:
    """Record posted transactions (authenticated, validated, idempotent); answers the counts."""
    if not authorised(request.headers.get("authorization"), ctx.settings):
        return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    programme = _programme(ctx.settings.config_dir)
    try:
        events = parse_events(await request.body(), programme.currency)
        done = await run_in_threadpool(record_events, ctx.engine, programme, events)
    except InvalidEvents as exc:
        return JSONResponse({"detail": exc.errors}, status_code=422)
    background = BackgroundTask(announce, done.upgrades) if done.upgrades else None
    return JSONResponse(done.as_dict(), background=background)
