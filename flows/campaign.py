"""A scheduled campaign: plan the run, lint its templates, fan out over audience chunks, dispatch, report.

Orchestration only (ids in, counts out): the work is in :mod:`loyalty.campaign_run`. One task per
audience chunk of ``chunk_size`` members, never one per member; tasks get the run id and id bounds.
Re-running a slot resumes its run: chunk inserts skip assignments and outbox keys already there,
so nothing is queued or sent twice. Sending tasks use ``cache_policy=NONE`` (a cached result would
hide a send that never happened; the outbox is what makes a retry safe).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.utilities.annotations import unmapped

from loyalty import campaign_offers, jobs, reports
from loyalty import campaign_run as cr
from loyalty.audience import audience_ranges, audience_size
from loyalty.delivery import open_channels
from loyalty.dispatch import dispatch
from loyalty.send_policy import SendPolicy
from loyalty.types import as_utc, utcnow


@task(name="campaign-chunk", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def process_chunk_task(run_id: int, id_range: jobs.IdRange) -> dict[str, int]:
    """Assign, render and queue one audience chunk (idempotent: a retry queues nothing twice)."""
    return cr.process_chunk(run_id, id_range)


@task(name="campaign-dispatch", cache_policy=NONE)
def dispatch_task(campaign: str, channels: list[str]) -> dict[str, int]:
    """Drain the pending outbox of ``channels`` through the adapters, gated by the campaign's send policy."""
    rt = jobs.runtime()
    settings = rt.settings
    policy = SendPolicy(cr.load_spec(rt, campaign).policy(settings.policy))
    with open_channels(settings) as opened:
        stats = dispatch(rt.engine, [opened.adapters[c] for c in channels], settings=settings.dispatch,
                         policy=policy, until_idle=True,
                         idle_horizon=timedelta(seconds=settings.dispatch.reconcile_grace_seconds + 5))
    totals: Counter[str] = Counter()
    for channel, s in stats.items():
        totals.update({f"sent:{channel}": s.sent, f"deferred:{channel}": s.deferred, f"failed:{channel}": s.failed})
        totals.update({f"send_skipped:{reason}": n for reason, n in s.skipped.items()})
    return {k: v for k, v in totals.items() if v}


def _default_slot() -> datetime:
    """The flow run's scheduled time: a scheduled run's slot, and stable across retries of that run."""
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time
    return as_utc(datetime.fromisoformat(str(scheduled))) if scheduled else utcnow()


@flow(name="campaign-run", log_prints=False)
def campaign_run(campaign: str, slot: datetime | None = None, dispatch: bool = True,
                 chunk_size: int | None = None) -> dict[str, int]:
    """Run ``campaign`` for ``slot`` (default: this flow run's scheduled time); returns the totals."""
    rt = jobs.runtime()
    spec = cr.load_spec(rt, campaign)
    cr.check_supported(spec)
    campaign_offers.check_model(campaign_offers.latest_artifact(rt), spec)
    cr.check_templates(cr.template_library(rt), spec)  # refuse before anything is planned or queued
    when = as_utc(slot) if slot else _default_slot()
    planned = audience_size(rt.engine, spec, as_of=when)
    run_id = cr.plan_run(rt.engine, spec, when, audience=planned)
    ranges = audience_ranges(rt.engine, spec, as_of=when, chunk_size=chunk_size or rt.settings.chunk_size)
    totals: Counter[str] = Counter(run_id=run_id, chunks=len(ranges), planned_audience=planned)
    # In waves: all chunks at once would queue on the database's locks (SQLite has one writer) until
    # its busy timeout fails them, and hold every chunk's memory at the same time.
    wave = 1 if rt.engine.dialect.name == "sqlite" else rt.settings.chunk_workers
    for start in range(0, len(ranges), wave):
        for counts in process_chunk_task.map(unmapped(run_id), ranges[start:start + wave]).result():
            totals.update(counts)
    cr.finish_run(rt.engine, run_id, dict(totals))
    if dispatch:
        totals.update(dispatch_task(campaign, [str(c) for c in spec.channels]))
    summary = dict(totals)
    create_table_artifact(key=f"campaign-{campaign.replace('_', '-')}",
                          table=[{"metric": k, "value": v} for k, v in sorted(summary.items())],
                          description=f"Campaign {campaign}, slot {when.isoformat()}")
    # Where its lift will be once `attribute-campaigns` has run (the page says so while the window is open).
    create_link_artifact(key=reports.artifact_key(campaign, "report"), link_text=f"{campaign} run {run_id} report",
                         link=reports.report_url(rt.settings.web.public_base_url, campaign, run_id),
                         description="Lift per arm, conversions over time and ROI (web app, /reports)")
    get_run_logger().info("campaign %s done: %s", campaign, summary)
    return summary
