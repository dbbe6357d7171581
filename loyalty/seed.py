"""A realistic synthetic loyalty programme: ``loyalflow seed --members N --seed S``.

Members across locales and tiers, two years of seasonal, heavy-tailed purchases credited by
the programme's own rules, redemptions and expiry, consents, push subscriptions, and one past
campaign with a random holdout and known heterogeneous effects (:mod:`loyalty.seed_campaign`), and
answers to a past NPS survey (:mod:`loyalty.seed_surveys`).
The same ``seed``, ``members`` and ``as_of`` always produce the same rows, on every backend
and whatever the ``chunk_size``.

How it works. Attributes and latent behaviour are numpy arrays (:mod:`loyalty.seed_population`).
History is simulated calendar month by calendar month (:mod:`loyalty.seed_history`): a month's
purchases are priced at the tiers members held *that month*, written with their ledger lines,
and tiers are then evaluated at the month's end, upgrades only except at the 1 January reviews.
That evaluation replays :func:`loyalty.tiers.evaluate_tiers` in numpy (:mod:`loyalty.seed_tiers`,
which says why) and records the moves as already handled, so seeded history never queues
tier-upgrade messages. At the end the real ``expire_points`` and ``evaluate_tiers`` run at
``as_of``.

Speed: rows go through the DBAPI in bulk (:mod:`loyalty.seed_io`), the plain indexes of the
three big tables are dropped and rebuilt after the load, and balances, tiers and last purchases
are kept in arrays and written once. All of it is one transaction: a failed or interrupted
seed leaves the database as it was, and ``points_balance`` equals the ledger when it commits.
On PostgreSQL the dropped indexes lock those tables until then; seed before serving traffic.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.db import fetch_rows
from loyalty.expiry import expire_points, expiry_cutoff
from loyalty.models import CAMPAIGNS, MEMBERS, POINTS_ENTRIES, TIER_CHANGES, TIERS, TRANSACTIONS
from loyalty.programme import Programme
from loyalty.seed_campaign import CAMPAIGN_NAME, OFFER_CODES, FeatureWindow, campaign_slot_us
from loyalty.seed_campaign_io import CampaignStep
from loyalty.seed_history import (
    Entries,
    Period,
    build_periods,
    draw_purchases,
    draw_redemptions,
    earn_points,
    purchase_entries,
    write_entries,
    write_purchases,
)
from loyalty.seed_io import US_PER_DAY, US_PER_SECOND, BulkWriter, create_indexes, drop_indexes, from_us, to_us
from loyalty.seed_population import build_population, member_columns, stream, write_reachability
from loyalty.seed_surveys import seed_survey_responses
from loyalty.seed_tiers import TierTracker
from loyalty.tiers import evaluate_tiers

HISTORY_DAYS = 730
#: Tables whose plain indexes are built after the bulk load rather than row by row.
BULK_TABLES = (MEMBERS, TRANSACTIONS, POINTS_ENTRIES)
Progress = Callable[[str, int, int], None]


class SeedError(Exception):
    """Seeding was refused (a non-empty database, a missing offer, a bad argument)."""


@dataclass
class SeedReport:
    """What :func:`seed_programme` wrote, and where the campaign's truth is."""

    members: int
    transactions: int
    points_entries: int
    consents: int
    push_subscriptions: int
    campaign: str
    assigned: int
    holdout: int
    tier_counts: dict[str, int]
    truth_path: Path
    elapsed_s: float
    survey_responses: int = 0


def default_as_of() -> datetime:
    """Today at 00:00 UTC: seeds are reproducible for a given day."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def seed_programme(engine: Engine, programme: Programme, *, members: int, seed: int = 42,
                   as_of: datetime | None = None, truth_dir: Path = Path("var/seed"),
                   chunk_size: int = 10_000, progress: Progress | None = None) -> SeedReport:
    """Fill an empty, migrated, catalogue-synced database with a synthetic programme.

    ``progress(stage, done, total)`` is called as each stage advances. Raises
    :class:`SeedError` if the database already has members or the campaign's offers are not
    configured.
    """
    started = time.perf_counter()
    as_of = _check(programme, members, seed, as_of)
    with engine.connect() as connection, _sqlite_tuning(connection), \
            Session(bind=connection, expire_on_commit=False) as session:
        _refuse_non_empty(session, programme)
        seeder = _Seeder(session, programme, members, seed, as_of, chunk_size, progress or _quiet)
        report = seeder.run(truth_dir)
    report.elapsed_s = round(time.perf_counter() - started, 2)
    return report


def _quiet(stage: str, done: int, total: int) -> None:
    """The default progress callback: report nothing."""


def _check(programme: Programme, members: int, seed: int, as_of: datetime | None) -> datetime:
    if members < 1:
        raise SeedError(f"--members must be at least 1, not {members}")
    if seed < 0:
        raise SeedError(f"--seed must be zero or positive, not {seed}")
    missing = sorted(set(OFFER_CODES) - {o.code for o in programme.offers})
    if missing:
        raise SeedError(f"the seeded campaign needs these offers in offers.yaml: {', '.join(missing)}")
    if as_of is not None and as_of.tzinfo is None:
        raise SeedError("as_of must be timezone-aware")
    return (as_of or default_as_of()).astimezone(UTC)


def _refuse_non_empty(session: Session, programme: Programme) -> None:
    existing = session.scalar(sa.select(sa.func.count()).select_from(MEMBERS)) or 0
    if existing:
        plural = "s" if existing != 1 else ""
        raise SeedError(f"the database already has {existing:,} member{plural}: seed a new, empty database")
    tiers = {str(row[0]) for row in fetch_rows(session, sa.select(TIERS.c.code))}
    if not {t.code for t in programme.tiers.tiers} <= tiers:
        raise SeedError("the tiers table is not synced with tiers.yaml: run the migrations and sync the catalogue")
    if session.scalar(sa.select(CAMPAIGNS.c.id).where(CAMPAIGNS.c.name == CAMPAIGN_NAME)) is not None:
        raise SeedError(f"a campaign named {CAMPAIGN_NAME!r} already exists")


@contextmanager
def _sqlite_tuning(connection: sa.Connection) -> Iterator[None]:
    """SQLite settings for the bulk load, restored afterwards; then the write-ahead log is truncated.

    A 256 MiB page cache, and no foreign-key checks: every reference the seeder writes is an
    id it assigned itself (the tests run ``PRAGMA foreign_key_check`` on a seeded database,
    and PostgreSQL checks them all). This saves about a sixth of the load time.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.driver_connection
    before = int(raw.execute("PRAGMA cache_size").fetchone()[0])  # type: ignore[union-attr]
    # Both must be set outside a transaction: the session has not begun one yet.
    raw.execute("PRAGMA cache_size = -262144")  # type: ignore[union-attr]
    raw.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]
        raw.execute(f"PRAGMA cache_size = {before}")  # type: ignore[union-attr]
        # The seed is one transaction: give the log's gigabytes back once it is in the database.
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]


class _Seeder:
    """The state of one seeding run: the population, tiers and balances as numpy arrays."""

    def __init__(self, session: Session, programme: Programme, size: int, seed: int, as_of: datetime,
                 chunk_size: int, progress: Progress) -> None:
        self.session, self.programme, self.seed, self.progress = session, programme, seed, progress
        self.as_of, self.as_of_us = as_of, to_us(as_of)
        self.writer = BulkWriter(session, chunk_size)
        self.categories = list(programme.earn.category_multipliers) or ["general"]
        self.pop = build_population(size, seed, self.as_of_us, self.categories)
        self.first_member = self.writer.next_id("members")
        self.tiers = TierTracker(programme, size, self.first_member)
        self.balance = np.zeros(size, dtype=np.int64)
        self.last_purchase_us = np.full(size, -1, dtype=np.int64)
        self.counts: Counter[str] = Counter()
        self.history_start_us = self.as_of_us - HISTORY_DAYS * US_PER_DAY
        cutoff = to_us(expiry_cutoff(programme, as_of))
        # Opening balances expire exactly at as_of when the history spans the expiry period.
        self.opening_us = min(self.history_start_us, cutoff) - 3600 * US_PER_SECOND
        grocery = self.categories.index("grocery") if "grocery" in self.categories else None
        window = FeatureWindow(size, campaign_slot_us(self.as_of_us), grocery)
        self.campaign = CampaignStep(session, self.writer, programme, self.pop, self.categories, self.first_member,
                                     seed, window)

    def run(self, truth_dir: Path) -> SeedReport:
        """Every stage in one transaction; returns the report (``elapsed_s`` is filled by the caller)."""
        deferred = drop_indexes(self.session, BULK_TABLES)
        self._members()
        self._reachability()
        self._opening_balances()
        periods = build_periods(self.history_start_us, self.as_of_us, self.campaign.span())
        for period in periods:
            self._period(period)
            self.progress("purchase history", period.index + 1, len(periods))
        self._finish(deferred)
        answers = seed_survey_responses(self.session, self.writer, self.programme, seed=self.seed, as_of=self.as_of)
        self.session.commit()
        plan = self.campaign.plan
        return SeedReport(
            members=self.pop.size, transactions=self.counts["transactions"],
            points_entries=self.counts["points_entries"], consents=self.counts["consents"],
            push_subscriptions=self.counts["push_subscriptions"], campaign=CAMPAIGN_NAME,
            assigned=0 if plan is None else int(plan.members.size),
            holdout=0 if plan is None else int((plan.arm < 0).sum()),
            tier_counts=self._tier_counts(), truth_path=self.campaign.write_truth(truth_dir), elapsed_s=0.0,
            survey_responses=answers,
        )

    def _members(self) -> None:
        size, step = self.pop.size, self.writer.chunk_size
        entry = self.programme.tiers.entry_tier
        for start in range(0, size, step):
            stop = min(size, start + step)
            self.writer.insert("members", member_columns(self.pop, self.writer, self.first_member, start, stop, entry))
            self.progress("members", stop, size)
        self.writer.sync_sequence("members")

    def _reachability(self) -> None:
        self.progress("consents & push", 0, 1)
        reach = write_reachability(self.pop, self.writer, self.first_member, self.seed, self.as_of_us)
        self.counts.update(consents=reach.consents, push_subscriptions=reach.push_subscriptions)
        self.campaign.email_opt_in_us = reach.email_opt_in_us
        self.progress("consents & push", 1, 1)

    def _opening_balances(self) -> None:
        """Points members earned before the simulated history, carried over (they expire first)."""
        rng = stream(self.seed, 3)
        pop = self.pop
        earn_rate = pop.preference @ np.array([self.programme.earn.category_multipliers.get(c, 1.0)
                                               for c in self.categories])
        yearly = 12 * pop.rate * pop.basket / 100 * self.programme.earn.points_per_unit * earn_rate
        points = np.floor(yearly * rng.uniform(0, 0.6, pop.size)).astype(np.int64)
        member = np.flatnonzero((pop.joined_us < self.opening_us) & (points > 0))
        keys = [f"opening:{m + self.first_member}" for m in member.tolist()]
        self._post(Entries.of(member, np.full(member.size, self.opening_us), points[member], kind="adjust",
                              reason="opening balance carried over", source="migration", key=keys))

    def _post(self, entries: Entries) -> None:
        self.counts["points_entries"] += write_entries(self.writer, entries, self.first_member)
        np.add.at(self.balance, entries.member, entries.points)

    def _period(self, period: Period) -> None:
        rng = stream(self.seed, 1000 + period.index)
        purchases = draw_purchases(rng, self.pop, period, self.categories)
        redemptions = draw_redemptions(rng, self.pop, period, self.balance, self.first_member)
        converters = self.campaign.start(period, self.tiers)
        if converters is not None:
            purchases = purchases.take(self.campaign.keep_organic(purchases)).plus(converters)
        points = earn_points(self.programme, self.categories, purchases.amount, purchases.category,
                             self.tiers.rank[purchases.member])
        txn_ids = write_purchases(self.writer, purchases, self.first_member, self.categories,
                                  self.programme.currency)
        self.counts["transactions"] += len(purchases)
        np.maximum.at(self.last_purchase_us, purchases.member, purchases.at)
        parts = [purchase_entries(purchases, points, txn_ids, self.categories), redemptions]
        if converters is not None:
            parts.append(self.campaign.offer_entries(purchases, points, txn_ids, len(converters)))
        entries = Entries.join(parts)
        self._post(entries)
        self.campaign.observe(period, purchases)
        if self.tiers.by_points:
            earned = entries.kind == "earn"
            self.tiers.add(entries.member[earned], entries.at[earned], entries.points[earned])
        else:
            self.tiers.add(purchases.member, purchases.at, purchases.amount)
        if period.end_us < self.as_of_us:  # as_of itself is handled by _finish
            self._expire_if_due(period.end_us)
        self.tiers.evaluate(self.writer, period.end_us, allow_downgrade=None if period.review else False)

    def _sync_members(self) -> None:
        """Write each member's balance, tier and last purchase (kept in arrays during the history)."""
        pop_ids = np.arange(self.first_member, self.first_member + self.pop.size)
        self.writer.update_rows("members", pop_ids, {
            "points_balance": self.balance, "tier": self.tiers.codes[self.tiers.rank].tolist(),
            "last_purchase_at": self.writer.optional_times(self.last_purchase_us, self.last_purchase_us >= 0),
            "updated_at": self.writer.times(np.full(self.pop.size, self.as_of_us)),
        })

    def _expire_if_due(self, at_us: int) -> None:
        """Expiry inside the history, for programmes whose points expire sooner than it spans."""
        if to_us(expiry_cutoff(self.programme, from_us(at_us))) <= self.opening_us:
            return  # nothing in the ledger is old enough yet
        self._sync_members()  # expire_points caps what expires by the stored balance
        result = expire_points(self.session, self.programme, as_of=from_us(at_us))
        self.counts["points_entries"] += result.members
        if result.members:
            rows = fetch_rows(self.session, sa.select(MEMBERS.c.id, MEMBERS.c.points_balance)
                              .where(MEMBERS.c.id >= self.first_member))
            for member_id, balance in rows:
                self.balance[int(member_id) - self.first_member] = int(balance)

    def _evaluate_officially(self) -> None:
        """The real :func:`evaluate_tiers` at ``as_of``: after an exact replay it has nothing to move."""
        first = self.writer.next_id("tier_changes")
        changes = evaluate_tiers(self.session, self.programme, as_of=self.as_of, handled=True)
        if changes:  # recorded like the replay's moves, stamped with as_of rather than the wall clock
            self.session.execute(TIER_CHANGES.update().where(TIER_CHANGES.c.id >= first)
                                 .values(changed_at=self.as_of, handled_at=self.as_of))

    def _finish(self, deferred: list[sa.Index]) -> None:
        stage = "indexes, expiry & tiers"
        self.progress(stage, 0, 4)
        self.tiers.evaluate(self.writer, self.as_of_us, allow_downgrade=None)
        self._sync_members()
        self.progress(stage, 1, 4)
        create_indexes(self.session, deferred)
        self.progress(stage, 2, 4)
        self.counts["points_entries"] += expire_points(self.session, self.programme, as_of=self.as_of).members
        self.progress(stage, 3, 4)
        self._evaluate_officially()
        # expire_points and evaluate_tiers stamp the wall clock; as_of keeps identical seeds identical.
        self.session.execute(MEMBERS.update().where(MEMBERS.c.updated_at > self.as_of).values(updated_at=self.as_of))
        self.progress(stage, 4, 4)

    def _tier_counts(self) -> dict[str, int]:
        found = dict(self.session.execute(sa.select(MEMBERS.c.tier, sa.func.count()).group_by(MEMBERS.c.tier)).all())
        return {tier.code: int(found.get(tier.code, 0)) for tier in self.programme.tiers.tiers}

