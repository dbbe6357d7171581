"""Triggered messages as Prefect flows: welcomes and points about to expire, and the parts every
triggered flow shares (tier upgrades are in :mod:`flows.tier_upgrade`).

Each flow queues in a task, then dispatches the channels it queued on (plus any of its trigger's
messages still pending from an earlier run that stopped between queueing and sending), and
returns a summary dict that is also published as a table artifact. Tasks take ids and id
ranges, never rows; sending tasks use ``cache_policy=NONE`` so a retry re-checks the outbox.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from loyalty import jobs
from loyalty.campaign_run import template_library
from loyalty.delivery import open_channels
from loyalty.dispatch import dispatch
from loyalty.models import OUTBOX_MESSAGES
from loyalty.rendering import TemplateLibrary
from loyalty.send_policy import SendPolicy
from loyalty.triggers import (
    POINTS_EXPIRING,
    WELCOME,
    queue_points_expiring,
    queue_welcome,
)
from loyalty.types import OutboxStatus, as_utc, utcnow

#: A triggered flow sends what is due now and returns; anything deferred further (quiet hours,
#: provider back-off) is left to the next sweep or the long-running dispatcher.
IDLE_HORIZON = timedelta(seconds=5)
# Counts summed when a trigger is queued in several batches or chunks.
_SUMMED = ("considered", "queued", "already_queued", "handled")


def _library() -> TemplateLibrary:
    """The process's compiled template library (recompiled only when a template file changes)."""
    return template_library(jobs.runtime())


def _merge(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Add one queueing report (``TriggerReport.as_dict()``) into a running total."""
    for name in _SUMMED:
        total[name] = total.get(name, 0) + part[name]
    for name in ("by_channel", "skipped"):
        total[name] = dict(Counter(total.get(name, {})) + Counter(part[name]))
    total["errors"] = {**total.get("errors", {}), **part["errors"]}
    total["trigger"] = part["trigger"]
    return total


@task(name="queue-welcome", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def queue_welcome_task(member_ids: list[int]) -> dict[str, Any]:
    """Queue welcome messages for ``member_ids``."""
    rt = jobs.runtime()
    return queue_welcome(rt.engine, rt.programme, _library(), member_ids).as_dict()


@task(name="queue-points-expiring", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def queue_points_expiring_task(id_range: jobs.IdRange, within_days: int, as_of: datetime) -> dict[str, Any]:
    """Queue points-expiring reminders for members in ``id_range``."""
    rt = jobs.runtime()
    return queue_points_expiring(rt.engine, rt.programme, _library(), within_days=within_days, as_of=as_of,
                                 id_range=id_range).as_dict()


def pending_channels(template: str) -> set[str]:
    """Channels with messages of ``template`` still pending and due (left by an interrupted run)."""
    c = OUTBOX_MESSAGES.c
    query = (sa.select(c.channel).distinct()
             .where(c.template == template, c.status == OutboxStatus.PENDING,
                    sa.or_(c.not_before.is_(None), c.not_before <= utcnow())))
    with jobs.runtime().engine.connect() as connection:
        return {str(getattr(channel, "value", channel)) for (channel,) in connection.execute(query)}


@task(name="dispatch-triggered", cache_policy=NONE)
def dispatch_task(channels: list[str]) -> dict[str, dict[str, Any]]:
    """Send what is due on ``channels`` through the policy gate; the sandbox stands in for missing keys."""
    if not channels:
        return {}
    rt = jobs.runtime()
    with open_channels(rt.settings) as opened:
        adapters = [opened.adapters[name] for name in sorted(channels) if name in opened.adapters]
        stats = dispatch(rt.engine, adapters, settings=rt.settings.dispatch, policy=SendPolicy(rt.settings.policy),
                         until_idle=True, idle_horizon=IDLE_HORIZON, poll_seconds=0.2)
    return {channel: s.as_dict() for channel, s in stats.items()}


def _finish(queued: dict[str, Any], template: str, artifact_key: str) -> dict[str, Any]:
    """Dispatch the channels ``queued`` used (and leftovers), then publish and return the summary."""
    channels = set(queued.get("by_channel", {})) | pending_channels(template)
    sent = dispatch_task(sorted(channels))
    summary = {**queued, "dispatch": sent, "sent": sum(int(s.get("sent", 0)) for s in sent.values())}
    create_table_artifact(table=_table(summary), key=artifact_key,
                          description=f"Triggered `{template}` messages: queued, skipped and sent")
    get_run_logger().info("%s: %s", template, {k: summary.get(k) for k in (*_SUMMED, "sent")})
    return summary


def _table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary as artifact rows: one per count, channel and skip reason."""
    rows = [{"measure": name, "value": summary.get(name, 0)} for name in (*_SUMMED, "sent")]
    rows += [{"measure": f"queued on {ch}", "value": n} for ch, n in sorted(summary.get("by_channel", {}).items())]
    rows += [{"measure": f"skipped: {why}", "value": n} for why, n in sorted(summary.get("skipped", {}).items())]
    rows += [{"measure": "render errors", "value": len(summary.get("errors", {}))}]
    return rows


@flow(name="send-welcome", log_prints=False)
def send_welcome(member_ids: list[int]) -> dict[str, Any]:
    """Welcome new members (once each: the outbox key is ``welcome:{member_id}``) and send it."""
    return _finish(queue_welcome_task(sorted(set(member_ids))), WELCOME, "welcome")


@flow(name="send-points-expiring", log_prints=False)
def send_points_expiring(within_days: int = 30, as_of: datetime | None = None,
                         chunk_size: int | None = None) -> dict[str, Any]:
    """Remind members whose points expire within ``within_days``, one task per member id range."""
    rt = jobs.runtime()
    when = as_utc(as_of) if as_of else utcnow()
    ranges = jobs.member_id_ranges(rt.engine, chunk_size or rt.settings.chunk_size)
    parts = queue_points_expiring_task.map(ranges, within_days=within_days, as_of=when).result()
    return _finish(_merged(parts, POINTS_EXPIRING), POINTS_EXPIRING, "points-expiring")


def _merged(parts: Iterable[dict[str, Any]], trigger: str) -> dict[str, Any]:
    """One summary from per-chunk reports (an empty programme still names its trigger)."""
    total: dict[str, Any] = {"trigger": trigger, **dict.fromkeys(_SUMMED, 0), "by_channel": {}, "skipped": {},
                             "errors": {}}
    for part in parts:
        _merge(total, part)
    return total


__all__: Sequence[str] = ("send_points_expiring", "send_welcome")
