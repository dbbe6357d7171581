"""The dispatcher: drains the outbox through the channel adapters, one loop per channel.

Each round of :meth:`ChannelDispatcher.step` claims a batch of due messages (so two dispatchers
never take the same row), passes it through the policy gate (skip with a reason, or defer past
quiet hours), then sends what is left in provider-sized chunks paced by :class:`SendPacer` (SMS by
segments) and records each chunk's results before sending the next. A process killed mid-batch
therefore loses at most the answers of one chunk: those rows stay ``sending`` until their lease
expires, become ``unknown`` and are reconciled by asking the provider (:meth:`reconcile`), never
blindly resent.

Provider facts in the answers (Twilio 21610, a dead push subscription) are applied to consent
and suppressions as they arrive. This module knows adapters only through the seam in
:mod:`channels.base`; building them from settings lives in :mod:`loyalty.delivery`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from channels.base import ChannelAdapter, ChannelError, LookupUnsupported, Outcome, OutgoingMessage, SendResult
from channels.ratelimit import SendPacer
from loyalty import outbox
from loyalty.consent import AddressFact, Fact, apply_facts
from loyalty.db import fetch_rows
from loyalty.models import OUTBOX_MESSAGES
from loyalty.send_policy import SendPolicy
from loyalty.settings import DispatchSettings
from loyalty.types import OutboxStatus, utcnow

log = logging.getLogger(__name__)
_KNOWN_FACTS = {f.value for f in Fact}
#: Chunks per second when paced: small chunks keep every one-second window at or under the rate.
_CHUNKS_PER_SECOND = 10
_RECORD_EVERY = 50


def _paced_chunk(rate: float) -> int:
    """Messages per paced chunk: about a tenth of a second's worth, dividing the rate so that one-second
    windows fill exactly (a chunk of 2 at 21/s would leave a unit of every second unused)."""
    whole = max(1, int(rate))
    return max(d for d in range(1, max(1, whole // _CHUNKS_PER_SECOND) + 1) if whole % d == 0)


def outgoing(message: outbox.ClaimedMessage) -> OutgoingMessage:
    """The adapter's view of a claimed message; the payload holds ``to``, ``content``, ``headers``, ``tags``."""
    payload = message.payload
    tags = {"outbox_id": str(message.id), **{k: str(v) for k, v in (payload.get("tags") or {}).items()}}
    return OutgoingMessage(message_id=message.id, key=message.key, channel=message.channel,
                           to=str(payload.get("to") or ""), content=payload.get("content") or {},
                           headers=payload.get("headers") or {}, tags=tags, push_keys=payload.get("push_keys"))


@dataclass
class DispatchStats:
    """What a dispatcher did; ``skipped`` counts by reason."""

    claimed: int = 0
    sent: int = 0
    transient: int = 0
    failed: int = 0
    unknown: int = 0
    deferred: int = 0
    ignored: int = 0
    facts: int = 0
    reconciled_sent: int = 0
    reconciled_resend: int = 0
    unreconcilable: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: DispatchStats) -> None:
        """Fold ``other`` into these totals."""
        for name, value in asdict(other).items():
            if name == "skipped":
                self.skipped.update(other.skipped)
            else:
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers, for logs, artifacts and JSON."""
        return asdict(self) | {"skipped": dict(self.skipped)}


class ChannelDispatcher:
    """Sends one channel's outbox messages through one adapter (see the module docstring).

    ``rate_per_second`` defaults to the adapter's configured rate (``rate_per_second`` attribute,
    else its class default); ``paced=False`` sends as fast as the provider answers.
    """

    def __init__(self, engine: Engine, adapter: ChannelAdapter, *, settings: DispatchSettings,
                 policy: SendPolicy | None = None, rate_per_second: float | None = None, paced: bool = True,
                 backoff: outbox.Backoff | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine, self.adapter, self.settings, self.policy = engine, adapter, settings, policy
        self.channel = adapter.channel
        rate = rate_per_second or getattr(adapter, "rate_per_second", None) or adapter.default_rate_per_second
        self.pacer = SendPacer(rate) if paced else None
        # Unpaced, results are recorded every provider batch, or every _RECORD_EVERY messages for providers
        # without batches (Twilio): one transaction per SMS would cost as much as the request itself.
        if not paced:
            per_chunk = max(adapter.max_batch, _RECORD_EVERY)
        else:  # one request per message (Twilio): pace each, since every message is its own request anyway
            per_chunk = 1 if adapter.max_batch == 1 else _paced_chunk(rate)
        self.chunk_size = min(settings.claim_size, per_chunk)
        self.backoff = backoff or outbox.Backoff(settings.backoff_base_seconds, settings.backoff_cap_seconds)
        self.clock = clock

    def step(self) -> DispatchStats:
        """Claim one batch of due messages, gate it, send it in paced chunks; ``claimed == 0`` when idle."""
        stats = DispatchStats()
        now = self.clock()
        claimed = outbox.claim(self.engine, self.channel, limit=self.settings.claim_size, now=now,
                               lease_seconds=self.settings.lease_seconds)
        stats.claimed = len(claimed)
        to_send = self._gate(claimed, now, stats) if self.policy else claimed
        for start in range(0, len(to_send), self.chunk_size):
            self._send_chunk(to_send[start : start + self.chunk_size], stats)
        return stats

    def _gate(self, claimed: list[outbox.ClaimedMessage], now: datetime,
              stats: DispatchStats) -> list[outbox.ClaimedMessage]:
        assert self.policy is not None
        with self.engine.connect() as connection:
            verdicts = self.policy.review(connection, claimed, now)
        outbox.skip(self.engine, verdicts.skip, now=now)
        outbox.defer(self.engine, verdicts.defer, now=now)
        stats.skipped.update(verdicts.skip.values())
        stats.deferred += len(verdicts.defer)
        return verdicts.send

    def _send_chunk(self, chunk: Sequence[outbox.ClaimedMessage], stats: DispatchStats) -> None:
        messages = [outgoing(m) for m in chunk]
        if self.pacer is not None:
            self.pacer.acquire(sum(self.adapter.cost_units(m) for m in messages))
        results = self.adapter.send_batch(messages)
        recorded = outbox.record_results(
            self.engine, results, backoff=self.backoff, now=self.clock(),
            deadline_for=outbox.max_age(timedelta(hours=self.settings.max_age_hours)),
            attempts={m.id: m.attempts for m in chunk})
        outcomes = Counter(r.outcome for r in results)
        stats.sent += outcomes[Outcome.ACCEPTED]
        stats.transient += outcomes[Outcome.TRANSIENT]
        stats.failed += outcomes[Outcome.PERMANENT]
        stats.unknown += outcomes[Outcome.UNKNOWN]
        stats.ignored += len(recorded.ignored)
        stats.facts += self._apply_facts(chunk, messages, results)

    def _apply_facts(self, chunk: Sequence[outbox.ClaimedMessage], messages: Sequence[OutgoingMessage],
                     results: Sequence[SendResult]) -> int:
        by_id = {m.id: (m.member_id, out.to) for m, out in zip(chunk, messages, strict=True)}
        facts = []
        for result in results:
            member_id, address = by_id[result.message_id]
            for effect in result.effects:
                if effect in _KNOWN_FACTS:
                    facts.append(AddressFact(self.channel, address, effect, member_id, self.adapter.provider))
                else:
                    log.warning("%s reported an effect loyalflow does not know: %s", self.adapter.provider, effect)
        return apply_facts(self.engine, facts)

    def reconcile(self) -> DispatchStats:
        """Ask the provider about ``unknown`` messages past the grace period: found → sent, absent → resend."""
        stats = DispatchStats()
        settled_before = self.clock() - timedelta(seconds=self.settings.reconcile_grace_seconds)
        for message in outbox.unknown_messages(self.engine, self.channel, settled_before=settled_before,
                                               limit=self.settings.claim_size):
            try:
                # A minute of slack: the provider's clock and ours disagree a little.
                found = self.adapter.find_accepted(outgoing(message), since=message.created_at - timedelta(minutes=1))
            except LookupUnsupported:
                stats.unreconcilable += 1
                continue
            except ChannelError as exc:
                log.warning("could not reconcile outbox message %s: %s", message.id, exc)
                continue
            except Exception:  # a library surprise must not stop the dispatcher: the row stays unknown
                log.exception("reconciling outbox message %s failed", message.id)
                continue
            outbox.resolve_unknown(self.engine, message.id, delivered=found is not None, provider_id=found)
            if found is None:
                stats.reconciled_resend += 1
            else:
                stats.reconciled_sent += 1
        return stats

    def has_work(self, horizon: timedelta, *, include_unknown: bool = True) -> bool:
        """Whether anything of this channel is due within ``horizon``, in flight, or (optionally) unknown."""
        c = OUTBOX_MESSAGES.c
        soon = self.clock() + horizon
        due = sa.and_(c.status == OutboxStatus.PENDING, sa.or_(c.not_before.is_(None), c.not_before <= soon))
        waiting = [OutboxStatus.SENDING, OutboxStatus.UNKNOWN] if include_unknown else [OutboxStatus.SENDING]
        query = sa.select(c.id).where(c.channel == self.channel, sa.or_(due, c.status.in_(waiting))).limit(1)
        with self.engine.connect() as connection:
            return bool(fetch_rows(connection, query))

    def run(self, *, until_idle: bool = True, idle_horizon: timedelta = timedelta(seconds=60),
            poll_seconds: float = 0.5, stop: threading.Event | None = None,
            max_seconds: float | None = None) -> DispatchStats:
        """Loop: recover dead leases, reconcile unknowns, send what is due.

        With ``until_idle`` it returns once nothing is due within ``idle_horizon`` and nothing is in
        flight; unknowns the provider cannot be asked about do not keep it running.
        """
        total = DispatchStats()
        started = time.monotonic()
        while not (stop and stop.is_set()):
            outbox.recover_expired_leases(self.engine, lease_seconds=self.settings.lease_seconds)
            total.add(self.reconcile())
            stats = self.step()
            total.add(stats)
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
            if stats.claimed:
                continue
            if until_idle and not self._busy(idle_horizon, total):
                break
            (stop.wait if stop else time.sleep)(poll_seconds)
        return total

    def _busy(self, horizon: timedelta, total: DispatchStats) -> bool:
        # Unknowns the provider cannot be asked about are not waited for: time cannot settle them, an operator must.
        return self.has_work(horizon, include_unknown=not total.unreconcilable)


def dispatch(engine: Engine, adapters: Iterable[ChannelAdapter], *, settings: DispatchSettings,
             policy: SendPolicy | None = None, rates: Mapping[str, float] | None = None, **run: Any,
             ) -> dict[str, DispatchStats]:
    """Run one :class:`ChannelDispatcher` per adapter, each in its own thread, so a slow SMS sender
    never holds up email; ``run`` goes to :meth:`ChannelDispatcher.run`. Returns stats per channel."""
    dispatchers = [ChannelDispatcher(engine, a, settings=settings, policy=policy,
                                     rate_per_second=(rates or {}).get(a.channel)) for a in adapters]
    results: dict[str, DispatchStats] = {}
    errors: list[BaseException] = []

    def work(dispatcher: ChannelDispatcher) -> None:
        try:
            results[dispatcher.channel] = dispatcher.run(**run)
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,), name=f"dispatch-{d.channel}") for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
