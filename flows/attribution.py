"""Attribute purchases to campaign runs: one task per chunk of a run's not-yet-final assignments.

Orchestration only (ids in, counts out): the set-based SQL is in :mod:`loyalty.attribution`. Every
completed run with an open window, or with outcomes never attributed, is chunked on its pending
assignments; tasks get a run id and member id bounds. Re-running is harmless: final rows are left
alone and unchanged rows are not rewritten, so a retry or a second run the same day writes nothing.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from loyalty import attribution, jobs, measurement, reports
from loyalty.types import as_utc, utcnow


@task(name="attribute-chunk", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def attribute_chunk_task(run_id: int, id_range: jobs.IdRange, as_of: datetime) -> dict[str, int]:
    """Attribute one chunk of run ``run_id`` (one transaction; idempotent)."""
    return attribution.attribute_run(jobs.runtime().engine, run_id, id_range, as_of=as_of)


def _artifact_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summaries with readable dates (artifact tables are JSON)."""
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()} for row in summaries]


def _lift_artifacts(run_ids: list[int], when: datetime) -> None:
    """One markdown artifact per attributed run, keyed by campaign: verdict, lift per arm, a unicode bar chart.

    Markdown rather than an SVG image: the Prefect UI renders tables and text, and a data-URI image may not show.
    """
    rt = jobs.runtime()
    for run_id in run_ids:
        m = measurement.measure_run(rt.engine, run_id, as_of=when, programme=rt.programme)
        link = reports.report_url(rt.settings.web.public_base_url, m.campaign, run_id)
        markdown = reports.campaign_markdown(m, currency=rt.programme.currency) + f"\nFull report: <{link}>\n"
        create_markdown_artifact(key=reports.artifact_key(m.campaign), markdown=markdown,
                                 description=f"Lift of {m.campaign} run {run_id} as of {when.isoformat()}")


@flow(name="attribute-campaigns", log_prints=False)
def attribute_campaigns(as_of: datetime | None = None, chunk_size: int | None = None) -> dict[str, int]:
    """Attribute every completed run still needing it, as of ``as_of`` (default now); returns the totals."""
    rt = jobs.runtime()
    when = as_utc(as_of) if as_of else utcnow()
    size = chunk_size or rt.settings.chunk_size
    run_ids = attribution.runs_needing_attribution(rt.engine, as_of=when)
    work = [(run_id, id_range) for run_id in run_ids
            for id_range in attribution.pending_ranges(rt.engine, run_id, size)]
    totals: Counter[str] = Counter(runs=len(run_ids), chunks=len(work))
    if work:
        runs, ranges = zip(*work, strict=True)
        for counts in attribute_chunk_task.map(list(runs), list(ranges), as_of=when).result():
            totals.update(counts)
    summaries = attribution.run_summaries(rt.engine, run_ids)
    create_table_artifact(key="campaign-attribution", table=_artifact_rows(summaries),
                          description=f"Attribution as of {when.isoformat()}: {dict(totals)}")
    _lift_artifacts(run_ids, when)
    get_run_logger().info("attribution as of %s done: %s", when.isoformat(), dict(totals))
    return dict(totals)
