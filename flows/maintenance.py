"""Nightly programme maintenance: expire old points, then re-evaluate tiers.

One task per member id range (thousands of members each), never one per member: a Prefect
task run costs milliseconds of bookkeeping and kilobytes in its database. Expiry runs
before tier evaluation so the evaluation sees the day's balances.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from loyalty import jobs
from loyalty.types import as_utc, utcnow


@task(name="expire-points", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def expire_points_task(id_range: jobs.IdRange, as_of: datetime) -> dict[str, int]:
    """Expire due points for one id range (idempotent: a retry expires nothing twice)."""
    return jobs.expire_chunk(id_range, as_of)


@task(name="evaluate-tiers", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def evaluate_tiers_task(id_range: jobs.IdRange, as_of: datetime) -> dict[str, int]:
    """Re-evaluate tiers for one id range."""
    return jobs.evaluate_chunk(id_range, as_of)


@flow(name="nightly-maintenance", log_prints=False)
def nightly_maintenance(as_of: datetime | None = None, chunk_size: int | None = None) -> dict[str, int]:
    """Expire points and re-evaluate tiers for every member; returns the totals."""
    rt = jobs.runtime()
    when = as_utc(as_of) if as_of else utcnow()
    ranges = jobs.member_id_ranges(rt.engine, chunk_size or rt.settings.chunk_size)
    totals: Counter[str] = Counter(chunks=len(ranges))
    for stage in (expire_points_task, evaluate_tiers_task):
        for counts in stage.map(ranges, as_of=when).result():
            totals.update(counts)
    get_run_logger().info("maintenance done: %s", dict(totals))
    return dict(totals)
