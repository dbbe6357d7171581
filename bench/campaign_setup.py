"""The campaign benchmark's data: seeded databases per size, the config copy, the uplift model, resets.

Everything lives under ``var/bench/``: SQLite files ``campaign_<N>.sqlite`` (or PostgreSQL schemas
``bench_campaign_<N>``) seeded by :func:`loyalty.seed.seed_programme` and reused while the member
count matches (a JSON file beside them records the seed's ``as_of``, which is the campaign slot),
``config/`` (the shipped config plus ``campaigns/bench_campaign.yaml``), ``models/`` (the uplift
artifact the campaign scores with) and ``sandbox/`` (what the emulator accepted, wiped per run).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from loyalty.db import create_db_engine, session_scope, upgrade
from loyalty.models import CAMPAIGN_ASSIGNMENTS, CAMPAIGN_RUNS, CAMPAIGNS, DELIVERY_EVENTS, MEMBERS, OUTBOX_MESSAGES
from loyalty.programme import load_programme, sync_catalogue
from loyalty.seed import default_as_of, seed_programme
from loyalty.training import train_and_save

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "var" / "bench"
CAMPAIGN = "bench_campaign"
#: Offers the seeded past campaign tried, so the uplift model scores each of them; none needs a tier.
SPEC = """\
# Written by bench/campaign_throughput.py: a large audience, uplift-chosen offers, an A/B subject test.
description: Campaign throughput benchmark.
kind: marketing
audience:
  active_within_days: 365
offers: [ten_percent_off, free_coffee, double_points]
recommender: uplift
holdout_share: 0.1
channels: [email, sms]
template: win_back
variants:
  - name: A
    weight: 0.5
    subject: "{{ member.first_name }}, something for your next visit"
  - name: B
    weight: 0.5
    subject: "We saved you an offer"
schedule:
  cron: "0 11 * * tue"
  timezone: America/Toronto
quiet_hours:          # none: every message is due whatever the hour the bench runs
  start: "00:00"
  end: "00:00"
frequency_cap:        # none: repeated runs are not capped by the previous ones
  count: 0
  window_hours: 1
attribution_days: 7
"""


@dataclass(frozen=True)
class Target:
    """One seeded database: its size, URL, label for the report, and the campaign slot (the seed's as_of)."""

    members: int
    url: str
    label: str
    slot: datetime


def ensure_config() -> Path:
    """``var/bench/config``: a fresh copy of ``config/`` plus the bench campaign's file."""
    config = BENCH_DIR / "config"
    shutil.rmtree(config, ignore_errors=True)
    shutil.copytree(REPO / "config", config)
    (config / "campaigns" / f"{CAMPAIGN}.yaml").write_text(SPEC, encoding="utf-8")
    return config


def _postgres_url(base: str, schema: str) -> str:
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


def _member_count(url: str) -> int | None:
    """Members in the database at ``url`` (None when it has no members table)."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("members"):
                return None
            return int(connection.execute(sa.select(sa.func.count()).select_from(MEMBERS)).scalar_one())
    finally:
        engine.dispose()


def _locate(members: int, database_url: str | None) -> tuple[str, str, Path]:
    """(url, label, metadata file) of the database for ``members``."""
    if database_url is None:
        path = BENCH_DIR / f"campaign_{members}.sqlite"
        return f"sqlite:///{path}", f"SQLite {path.relative_to(REPO)}", BENCH_DIR / f"campaign_{members}.json"
    schema = f"bench_campaign_{members}"
    return _postgres_url(database_url, schema), f"PostgreSQL schema {schema}", BENCH_DIR / f"pg_{schema}.json"


def _make_empty(members: int, database_url: str | None) -> None:
    """Drop the bench's old database for ``members`` (its own file or schema) and leave an empty one."""
    if database_url is None:
        for stale in BENCH_DIR.glob(f"campaign_{members}.sqlite*"):
            stale.unlink()
        return
    schema = f"bench_campaign_{members}"
    engine = create_db_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()


def ensure_seeded(members: int, database_url: str | None) -> Target:
    """The seeded database for ``members``, reused when its member count matches, else (re)seeded."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    url, label, meta = _locate(members, database_url)
    if meta.exists() and _member_count(url) == members:
        return Target(members, url, label, datetime.fromisoformat(json.loads(meta.read_text())["as_of"]))
    _make_empty(members, database_url)
    print(f"seeding {members:,} members into {label} (once; reused by later runs)...", flush=True)
    engine = create_db_engine(url)
    upgrade(engine)
    programme = load_programme(REPO / "config")
    with session_scope(engine) as session:
        sync_catalogue(session, programme)
    as_of, started = default_as_of(), time.perf_counter()
    seed_programme(engine, programme, members=members, as_of=as_of, truth_dir=BENCH_DIR / "seed")
    elapsed = time.perf_counter() - started
    engine.dispose()
    meta.write_text(json.dumps({"members": members, "as_of": as_of.isoformat(), "seed_seconds": round(elapsed, 1)}))
    print(f"  seeded in {elapsed:,.0f} s", flush=True)
    return Target(members, url, label, as_of)


def ensure_model(target: Target) -> Path:
    """The newest uplift artifact under ``var/bench/models``, trained from ``target``'s past campaign if none."""
    directory = BENCH_DIR / "models"
    existing = sorted(directory.glob("*.joblib"))
    if existing:
        return existing[-1]
    print(f"training the uplift model from {target.label} (once)...", flush=True)
    engine = create_db_engine(target.url)
    try:
        return train_and_save(engine, load_programme(REPO / "config"), directory)
    finally:
        engine.dispose()


def reset_campaign(target: Target) -> None:
    """Delete the bench campaign's runs, assignments, outbox rows and their delivery events."""
    engine = create_db_engine(target.url)
    runs = (sa.select(CAMPAIGN_RUNS.c.id).join(CAMPAIGNS, CAMPAIGNS.c.id == CAMPAIGN_RUNS.c.campaign_id)
            .where(CAMPAIGNS.c.name == CAMPAIGN))
    outbox = sa.select(OUTBOX_MESSAGES.c.id).where(OUTBOX_MESSAGES.c.run_id.in_(runs))
    try:
        with engine.begin() as connection:
            connection.execute(sa.delete(DELIVERY_EVENTS).where(DELIVERY_EVENTS.c.outbox_id.in_(outbox)))
            connection.execute(sa.delete(OUTBOX_MESSAGES).where(OUTBOX_MESSAGES.c.run_id.in_(runs)))
            connection.execute(sa.delete(CAMPAIGN_ASSIGNMENTS).where(CAMPAIGN_ASSIGNMENTS.c.run_id.in_(runs)))
            connection.execute(sa.delete(CAMPAIGN_RUNS).where(CAMPAIGN_RUNS.c.id.in_(runs)))
            connection.execute(sa.delete(CAMPAIGNS).where(CAMPAIGNS.c.name == CAMPAIGN))
    finally:
        engine.dispose()
