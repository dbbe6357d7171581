"""One measurement of ``bench/campaign_throughput.py``, in its own process: prints one JSON line.

    python -m bench.campaign_worker flow|floor|per-member --slot ISO [--contrast 2000]

Run by the bench with ``LOYALFLOW_*`` pointing at its database and ``var/bench``; not meant to be
run by hand. A fresh process per measurement makes peak RSS a per-phase figure. RSS is sampled
every 0.2 s (this process, and apart the Prefect API server started as a child process).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from campaign_floor import Floor, per_member_flow, per_member_plain, run_floor  # noqa: E402
from campaign_setup import CAMPAIGN  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402

from flows.campaign import campaign_run  # noqa: E402
from loyalty import campaign_offers, jobs  # noqa: E402
from loyalty import campaign_run as cr  # noqa: E402
from loyalty.audience import audience_ids, audience_ranges  # noqa: E402
from loyalty.models import CAMPAIGN_RUNS  # noqa: E402
from loyalty.types import as_utc  # noqa: E402

MB = 1024 * 1024


class RssSampler(threading.Thread):
    """Samples (wall time, own RSS, children's RSS) every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.interval, self.samples = interval, list[tuple[float, int, int]]()
        self._stop_event, self._process = threading.Event(), psutil.Process()

    def run(self) -> None:
        while not self._stop_event.is_set():
            children = 0
            for child in self._process.children(recursive=True):
                try:
                    children += child.memory_info().rss
                except psutil.Error:  # a child that just exited
                    continue
            self.samples.append((time.time(), self._process.memory_info().rss, children))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_event.set()
        self.join()

    def peak_mb(self, start: float = 0.0, end: float = float("inf"), *, children: bool = False) -> float:
        """Peak RSS in MB between ``start`` and ``end`` (wall time), of this process or of its children."""
        values = [c if children else own for t, own, c in self.samples if start <= t <= end]
        return round(max(values, default=0) / MB, 1)


@flow(name="bench-warm-up")
def warm_up() -> None:
    """Nothing: calling it starts Prefect's temporary API server before anything is timed."""


def _finished_at(run_id: int) -> float:
    """When the run's ``finish_run`` stamped it (every chunk queued), as a wall-clock timestamp."""
    query = sa.select(CAMPAIGN_RUNS.c.finished_at).where(CAMPAIGN_RUNS.c.id == run_id)
    with jobs.runtime().engine.connect() as connection:
        return as_utc(connection.execute(query).scalar_one()).timestamp()


def measure_flow(slot: datetime, sampler: RssSampler) -> dict[str, Any]:
    """The whole campaign flow with dispatch; plan→outbox and dispatch split at the run's ``finished_at``."""
    warm_up()
    started = time.time()
    summary = campaign_run(CAMPAIGN, slot=slot, dispatch=True)
    ended = time.time()
    planned = _finished_at(int(summary["run_id"]))
    members = int(summary.get("audience", 0))
    sent = sum(v for k, v in summary.items() if k.startswith("sent:"))
    plan_s, dispatch_s = planned - started, ended - planned
    return {"members": members, "queued": int(summary.get("queued", 0)), "chunks": int(summary["chunks"]),
            "plan_s": round(plan_s, 2), "members_per_s": members / plan_s, "sent": sent,
            "dispatch_s": round(dispatch_s, 2), "sent_per_s": sent / dispatch_s,
            "rss_plan_mb": sampler.peak_mb(started, planned), "rss_dispatch_mb": sampler.peak_mb(planned, ended),
            "server_rss_mb": sampler.peak_mb(started, ended, children=True), "summary": summary}


def measure_floor(slot: datetime, sampler: RssSampler) -> dict[str, Any]:
    """The bare floor loop over the same chunks (setup included, as the flow's plan→outbox includes it)."""
    started = time.perf_counter()
    rt = jobs.runtime()
    spec = cr.load_spec(rt, CAMPAIGN)
    if campaign_offers.latest_artifact(rt) is None:  # loaded here once, as the flow's first chunk does
        raise SystemExit("no uplift model under var/bench/models")
    floor = Floor(rt, spec, cr.template_library(rt), slot)
    run_id = cr.plan_run(rt.engine, spec, slot)
    ranges = audience_ranges(rt.engine, spec, as_of=slot, chunk_size=rt.settings.chunk_size)
    totals = run_floor(floor, run_id, ranges)
    seconds = time.perf_counter() - started
    return {"members": totals["audience"], "queued": totals["queued"], "seconds": round(seconds, 2),
            "members_per_s": totals["audience"] / seconds, "rss_mb": sampler.peak_mb()}


def measure_per_member(slot: datetime, contrast: int) -> dict[str, Any]:
    """``contrast`` members as one Prefect task each, then a tenth of that many other members in a plain loop."""
    warm_up()
    rt = jobs.runtime()
    spec = cr.load_spec(rt, CAMPAIGN)
    run_id = cr.plan_run(rt.engine, spec, slot)
    first, second = audience_ranges(rt.engine, spec, as_of=slot, chunk_size=contrast)[:2]
    with rt.engine.connect() as connection:
        ids = audience_ids(connection, spec, first, as_of=slot)
        others = audience_ids(connection, spec, second, as_of=slot)[: max(1, contrast // 10)]
    started = time.perf_counter()
    per_member_flow(run_id, ids)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    per_member_plain(run_id, others)
    plain = time.perf_counter() - started
    return {"members": len(ids), "seconds": round(seconds, 2), "members_per_s": len(ids) / seconds,
            "plain_members": len(others), "plain_members_per_s": len(others) / plain,
            "prefect_ms_per_task": 1000 * (seconds / len(ids) - plain / len(others))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["flow", "floor", "per-member"])
    parser.add_argument("--slot", required=True, type=datetime.fromisoformat)
    parser.add_argument("--contrast", type=int, default=2000)
    args = parser.parse_args(argv)
    sampler = RssSampler()
    sampler.start()
    # The heartbeat thread's ~1 s join at the end of each flow run is not the campaign's work.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        if args.kind == "flow":
            result = measure_flow(args.slot, sampler)
        elif args.kind == "floor":
            result = measure_floor(args.slot, sampler)
        else:
            result = measure_per_member(args.slot, args.contrast)
    sampler.stop()
    result["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
