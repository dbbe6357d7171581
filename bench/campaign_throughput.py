"""Benchmark: campaign members/s, plan→outbox and dispatch, against a bare floor in the same run; peak RSS.

    .venv/bin/python bench/campaign_throughput.py [--members 100000] [--reference 100000] [--repeats 3]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--chunk-size N] [--contrast 2000]

Data. A realistic programme from :func:`loyalty.seed.seed_programme` (members, two years of purchases,
consents, push subscriptions, one past campaign with a holdout), seeded once per size and reused while
the member count matches: SQLite files ``var/bench/campaign_<N>.sqlite``, or on PostgreSQL one schema
``bench_campaign_<N>`` per size (``search_path`` set in the URL). The uplift model is trained once from
the smallest database's past campaign into ``var/bench/models``. The campaign is ``bench_campaign``,
written into a copy of ``config/`` under ``var/bench/config``: everyone who bought within 365 days,
three offers chosen by the uplift model, 10% holdout, an A/B subject test, email then SMS, the win-back
template, no quiet hours and no frequency cap (so every message is due at dispatch, whatever the hour).

Each measurement runs in a fresh subprocess (so ``ru_maxrss`` and the sampled RSS are per phase
and comparable across sizes), after the bench campaign's previous runs, outbox rows and sandbox
files were deleted:

* flow: ``flows.campaign.campaign_run(bench_campaign, slot, dispatch=True)`` on Prefect's temporary
  server (started by a warm-up flow first, not timed), dispatch through the real SendGrid/Twilio
  clients to the in-process emulator and the sandbox mailbox. plan→outbox = from the call to the
  run's ``finished_at`` (lint, plan, audience ranges, every chunk task); dispatch = from
  ``finished_at`` to the flow's return. Members/s = audience members / plan→outbox seconds; dispatch
  = messages sent / dispatch seconds. Peak RSS of the process is sampled every 0.2 s per phase
  (the Prefect API server is a separate process and is reported apart);
* floor: :mod:`bench.campaign_floor` (the same SQL reads, hashes, one predict per chunk, bare Jinja
  renders and one ``executemany`` insert per chunk, one plain loop), same chunks, same database;
* contrast (once, on the reference size): the per-member-task design on ``--contrast`` members,
  and the same one-member calls in a plain loop on a tenth of them.

Prints medians over ``--repeats`` and PASS/FAIL: plan→outbox >= 20,000 members/s, flow/floor time
ratio <= 1.5, peak RSS at ``--members`` <= 1.5 x peak at ``--reference``. Exit 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

from campaign_setup import (  # noqa: E402
    BENCH_DIR,
    Target,
    ensure_config,
    ensure_model,
    ensure_seeded,
    reset_campaign,
)

MIN_RATE = 20_000.0
MAX_FLOOR_RATIO = 1.5
MAX_RSS_RATIO = 1.5


def worker_env(target: Target, chunk_size: int | None, task_workers: int) -> dict[str, str]:
    """The environment of a measuring subprocess: the bench's database, config copy, var dir and Prefect home."""
    env = dict(os.environ, LOYALFLOW_DATABASE_URL=target.url, LOYALFLOW_CONFIG_DIR=str(BENCH_DIR / "config"),
               LOYALFLOW_VAR_DIR=str(BENCH_DIR), PREFECT_HOME=str(BENCH_DIR / "prefect"),
               PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")  # a loaded machine starts it slowly
    if chunk_size:
        env["LOYALFLOW_CHUNK_SIZE"] = str(chunk_size)
    if task_workers:
        # Prefect's default thread pool runs every chunk at once: memory grows with the audience and,
        # on SQLite, chunks queue on the write lock past its 30 s busy timeout (see docs/performance.md).
        env["PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS"] = str(task_workers)
    return env


def measure(kind: str, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Run one ``bench.campaign_worker`` measurement in a fresh process; its last stdout line is JSON."""
    reset_campaign(target)
    shutil.rmtree(BENCH_DIR / "sandbox", ignore_errors=True)
    command = [sys.executable, str(REPO / "bench" / "campaign_worker.py"), kind, "--slot", target.slot.isoformat(),
               "--contrast", str(args.contrast)]
    env = worker_env(target, args.chunk_size, args.task_workers)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {kind:<10} {_brief(result)}", flush=True)
    return result


def _brief(result: dict[str, Any]) -> str:
    keys = ("members", "plan_s", "members_per_s", "sent", "dispatch_s", "sent_per_s", "rss_plan_mb",
            "rss_dispatch_mb", "rss_mb", "server_rss_mb")
    return " ".join(f"{k}={result[k]:,.1f}" if isinstance(result[k], float) else f"{k}={result[k]}"
                    for k in keys if k in result)


def med(results: list[dict[str, Any]], key: str) -> float:
    """The median of ``key`` over ``results``."""
    return float(statistics.median(r[key] for r in results))


def run_size(target: Target, args: argparse.Namespace) -> dict[str, float]:
    """Flow and floor, alternating which goes first, ``--repeats`` times; medians and paired ratios."""
    flows: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = ("flow", "floor") if repeat % 2 == 0 else ("floor", "flow")
        for kind in order:
            (flows if kind == "flow" else floors).append(measure(kind, target, args))
    ratios = [fl["plan_s"] / fo["seconds"] for fl, fo in zip(flows, floors, strict=True)]
    return {"members": med(flows, "members"), "plan_rate": med(flows, "members_per_s"),
            "floor_rate": med(floors, "members_per_s"), "ratio": statistics.median(ratios),
            "sent_rate": med(flows, "sent_per_s"), "sent": med(flows, "sent"),
            "rss_plan": med(flows, "rss_plan_mb"), "rss_dispatch": med(flows, "rss_dispatch_mb"),
            "rss_floor": med(floors, "rss_mb"), "server_rss": med(flows, "server_rss_mb")}


def report(sizes: dict[int, dict[str, float]], args: argparse.Namespace) -> bool:
    """Print the table and the verdicts; True when everything passes."""
    print(f"\n{'members':>9}{'audience':>10}{'plan/s':>9}{'floor/s':>9}{'flow/floor':>11}{'sent/s':>8}"
          f"{'RSS plan':>10}{'RSS disp':>10}{'RSS floor':>10}{'API srv':>9}")
    for n, s in sorted(sizes.items()):
        print(f"{n:>9,}{s['members']:>10,.0f}{s['plan_rate']:>9,.0f}{s['floor_rate']:>9,.0f}{s['ratio']:>10.2f}x"
              f"{s['sent_rate']:>8,.0f}{s['rss_plan']:>8,.0f}MB{s['rss_dispatch']:>8,.0f}MB"
              f"{s['rss_floor']:>8,.0f}MB{s['server_rss']:>7,.0f}MB")
    main = sizes[args.members]
    checks = [(f"plan→outbox {main['plan_rate']:,.0f} members/s >= {MIN_RATE:,.0f}", main["plan_rate"] >= MIN_RATE),
              (f"plan→outbox within {MAX_FLOOR_RATIO}x of the floor: {main['ratio']:.2f}x",
               main["ratio"] <= MAX_FLOOR_RATIO)]
    if args.reference in sizes and args.reference != args.members:
        peak = max(main["rss_plan"], main["rss_dispatch"])
        ref = sizes[args.reference]
        ratio = peak / max(ref["rss_plan"], ref["rss_dispatch"])
        checks.append((f"peak RSS at {args.members:,} within {MAX_RSS_RATIO}x of {args.reference:,}: {ratio:.2f}x",
                       ratio <= MAX_RSS_RATIO))
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in checks)


def contrast(target: Target, args: argparse.Namespace) -> None:
    """The per-member-task design, for contrast (printed, not gated)."""
    result = measure("per-member", target, args)
    print(f"\nper-member tasks: {result['members']:,} members in {result['seconds']:.1f} s = "
          f"{result['members_per_s']:,.0f} members/s; the same calls without Prefect: "
          f"{result['plain_members_per_s']:,.0f} members/s; Prefect per task ≈ {result['prefect_ms_per_task']:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--reference", type=int, default=100_000, help="size whose peak RSS is the yardstick")
    parser.add_argument("--repeats", type=int, default=3, help="flow/floor pairs per size")
    parser.add_argument("--database-url", help="PostgreSQL server URL (default: SQLite files under var/bench)")
    parser.add_argument("--chunk-size", type=int, help="members per chunk task (default: the settings')")
    parser.add_argument("--task-workers", type=int, default=2,
                        help="chunk tasks at once (Prefect's thread pool; 0: Prefect's default, unbounded)")
    parser.add_argument("--contrast", type=int, default=2000, help="members for the per-member design (0: skip)")
    args = parser.parse_args(argv)
    ensure_config()
    targets = {n: ensure_seeded(n, args.database_url) for n in sorted({args.reference, args.members})}
    ensure_model(targets[min(targets)])
    sizes = {}
    for n, target in targets.items():
        print(f"{n:,} members ({target.label}):", flush=True)
        sizes[n] = run_size(target, args)
    ok = report(sizes, args)
    if args.contrast:
        contrast(targets[min(targets)], args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
