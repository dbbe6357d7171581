"""The synthetic programme: deterministic, consistent with the ledger and tier rules, and a
past campaign whose observed lifts agree with the true effects it was generated from."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import phonenumbers
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.db import session_scope
from loyalty.models import (
    CAMPAIGN_ASSIGNMENTS,
    CAMPAIGN_RUNS,
    CAMPAIGNS,
    CHANNEL_CONSENTS,
    DELIVERY_EVENTS,
    MEMBERS,
    OUTBOX_MESSAGES,
    POINTS_ENTRIES,
    PUSH_SUBSCRIPTIONS,
    TIER_CHANGES,
    TRANSACTIONS,
)
from loyalty.models_measurement import SURVEY_RESPONSES
from loyalty.programme import Programme, sync_catalogue
from loyalty.seed import SeedError, SeedReport, seed_programme
from loyalty.seed_campaign import FEATURES, OFFER_CODES, true_effects
from loyalty.seed_campaign_io import TRUTH_COLUMNS
from loyalty.seed_surveys import ACTIVE_DAYS, MAX_DELAY_DAYS, RESPONSE_RATE, VERBATIMS, draw_scores, survey_time
from loyalty.surveys import nps
from loyalty.tiers import evaluate_tiers, qualifying_query, tier_for
from tests.conftest import BACKENDS, make_engine
from tests.factories import add_member

AS_OF = datetime(2026, 6, 25, tzinfo=UTC)  # the campaign's window then spans a month end
SMALL = 3_000
TABLES = (MEMBERS, TRANSACTIONS, POINTS_ENTRIES, CHANNEL_CONSENTS, PUSH_SUBSCRIPTIONS, CAMPAIGNS, CAMPAIGN_RUNS,
          CAMPAIGN_ASSIGNMENTS, OUTBOX_MESSAGES, DELIVERY_EVENTS, TIER_CHANGES, SURVEY_RESPONSES)


@contextmanager
def fresh_engine(backend: str, folder: Path, programme: Programme) -> Iterator[Engine]:
    """A migrated, catalogue-synced, empty database, dropped afterwards even if the test fails."""
    engines = make_engine(backend, folder)
    try:
        engine = next(engines)
        with session_scope(engine) as session:
            sync_catalogue(session, programme)
        yield engine
    finally:
        next(engines, None)  # runs make_engine to its end: dispose, and drop the PostgreSQL schema


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           programme: Programme) -> Iterator[tuple[Engine, SeedReport, list[tuple[str, int, int]]]]:
    """One small programme per backend, shared by the read-only tests below."""
    folder = tmp_path_factory.mktemp(f"seed_{request.param}")
    with fresh_engine(request.param, folder, programme) as engine:
        calls: list[tuple[str, int, int]] = []
        report = seed_programme(engine, programme, members=SMALL, seed=7, as_of=AS_OF, truth_dir=folder / "truth",
                                progress=lambda *call: calls.append(call))
        yield engine, report, calls


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory, programme: Programme) -> Iterator[tuple[Engine, SeedReport]]:
    """20,000 members on SQLite: enough for the statistical checks."""
    folder = tmp_path_factory.mktemp("seed_large")
    with fresh_engine("sqlite", folder, programme) as engine:
        yield engine, seed_programme(engine, programme, members=20_000, seed=42, as_of=AS_OF, truth_dir=folder)


def _scalar(engine: Engine, query: sa.Executable) -> Any:
    with engine.connect() as connection:
        return connection.execute(query).scalar()


def _rows(engine: Engine, query: sa.Executable) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def _digest(engine: Engine) -> str:
    """A hash of every seeded row, with values normalised so backends compare equal."""
    def norm(value: Any) -> Any:
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, dict | list):
            return json.dumps(value, sort_keys=True)
        return value

    digest = hashlib.sha256()
    for table in TABLES:
        for row in _rows(engine, sa.select(table).order_by(table.c.id)):
            digest.update(repr((table.name, *map(norm, row))).encode())
    return digest.hexdigest()


def _truth(report: SeedReport) -> list[dict[str, str]]:
    with gzip.open(report.truth_path, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


# -- determinism ----------------------------------------------------------------------------


def test_same_seed_same_rows_in_any_chunking_and_another_seed_differs(
        seeded: tuple[Engine, SeedReport, Any], programme: Programme, tmp_path: Path) -> None:
    engine, report, _ = seeded
    backend = engine.dialect.name
    digests = []
    for seed, name in ((7, "again"), (8, "other")):
        with fresh_engine(backend, tmp_path / name, programme) as other:
            again = seed_programme(other, programme, members=SMALL, seed=seed, as_of=AS_OF,
                                   truth_dir=tmp_path / name, chunk_size=777)  # chunking must not change a row
            digests.append((_digest(other), again.truth_path.read_bytes()))
    assert digests[0] == (_digest(engine), report.truth_path.read_bytes())
    assert digests[1][0] != digests[0][0]


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs LOYALFLOW_TEST_POSTGRES_URL")
def test_sqlite_and_postgresql_get_identical_rows(programme: Programme, tmp_path: Path) -> None:
    digests = []
    for backend in ("sqlite", "postgresql"):
        with fresh_engine(backend, tmp_path / backend, programme) as engine:
            seed_programme(engine, programme, members=800, seed=3, as_of=AS_OF, truth_dir=tmp_path / backend)
            digests.append(_digest(engine))
    assert digests[0] == digests[1]


# -- ledger and tiers ----------------------------------------------------------------------


def test_balances_equal_the_ledger_and_never_go_negative(seeded: tuple[Engine, SeedReport, Any]) -> None:
    engine, _, _ = seeded
    sums = (sa.select(POINTS_ENTRIES.c.member_id, sa.func.sum(POINTS_ENTRIES.c.points).label("total"))
            .group_by(POINTS_ENTRIES.c.member_id).subquery())
    wrong = (sa.select(sa.func.count()).select_from(MEMBERS.outerjoin(sums, sums.c.member_id == MEMBERS.c.id))
             .where(MEMBERS.c.points_balance != sa.func.coalesce(sums.c.total, 0)))
    assert _scalar(engine, wrong) == 0
    assert _scalar(engine, sa.select(sa.func.min(MEMBERS.c.points_balance))) >= 0
    # Running balances, entry by entry: no redemption ever took more than was there.
    running: dict[int, int] = {}
    for member_id, points in _rows(engine, sa.select(POINTS_ENTRIES.c.member_id, POINTS_ENTRIES.c.points)
                                   .order_by(POINTS_ENTRIES.c.created_at, POINTS_ENTRIES.c.id)):
        running[member_id] = running.get(member_id, 0) + points
        assert running[member_id] >= 0
    kinds = dict(_rows(engine, sa.select(POINTS_ENTRIES.c.kind, sa.func.count()).group_by(POINTS_ENTRIES.c.kind)))
    assert set(kinds) == {"earn", "redeem", "adjust", "expire"}


def test_every_reference_points_at_a_row(seeded: tuple[Engine, SeedReport, Any]) -> None:
    engine, _, _ = seeded
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL checked every foreign key as the rows went in")
    with engine.connect() as connection:
        # The seeder loads SQLite with foreign-key checks off; this is the check it skipped.
        assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # and they are back on


def test_every_member_sits_in_the_tier_their_value_earns(seeded: tuple[Engine, SeedReport, Any],
                                                        programme: Programme) -> None:
    engine, report, _ = seeded
    rows = _rows(engine, qualifying_query(programme.tiers, AS_OF))
    assert len(rows) == SMALL
    assert all(tier == tier_for(int(value), programme.tiers) for _, tier, value in rows)
    assert all(count > 0 for count in report.tier_counts.values()), report.tier_counts
    with Session(engine) as session:
        assert evaluate_tiers(session, programme, as_of=AS_OF) == []  # the seeder left nothing to do
        session.rollback()


def test_every_recorded_tier_move_matches_the_tier_rules_at_that_time(seeded: tuple[Engine, SeedReport, Any],
                                                                      programme: Programme) -> None:
    engine, _, _ = seeded
    changes = _rows(engine, sa.select(TIER_CHANGES.c.member_id, TIER_CHANGES.c.changed_at,
                                      TIER_CHANGES.c.qualifying_value, TIER_CHANGES.c.to_tier,
                                      TIER_CHANGES.c.direction, TIER_CHANGES.c.handled_at))
    assert changes and all(handled == changed for _, changed, _, _, _, handled in changes)  # history: no messages
    by_time: dict[datetime, dict[int, int]] = {}
    for member_id, changed_at, value, to_tier, direction, _ in changes:
        by_time.setdefault(changed_at, {})[member_id] = value
        assert to_tier == tier_for(value, programme.tiers)
        if direction == "down":  # only at the 1 January reviews and at as_of
            assert (changed_at.month, changed_at.day) == (1, 1) or changed_at == AS_OF, changed_at
    for changed_at, expected in by_time.items():
        found = {m: int(v) for m, _, v in _rows(engine, qualifying_query(
            programme.tiers, changed_at, member_ids=list(expected)))}
        assert found == expected, changed_at


def test_purchases_earn_by_the_rules_at_the_tier_held_when_buying(seeded: tuple[Engine, SeedReport, Any],
                                                                  programme: Programme) -> None:
    engine, _, _ = seeded
    moves: dict[int, list[tuple[datetime, str]]] = {}
    for member_id, changed_at, to_tier in _rows(engine, sa.select(
            TIER_CHANGES.c.member_id, TIER_CHANGES.c.changed_at, TIER_CHANGES.c.to_tier).order_by(TIER_CHANGES.c.id)):
        moves.setdefault(member_id, []).append((changed_at, to_tier))
    query = (sa.select(TRANSACTIONS.c.member_id, TRANSACTIONS.c.amount_cents, TRANSACTIONS.c.category,
                       TRANSACTIONS.c.occurred_at, POINTS_ENTRIES.c.points, POINTS_ENTRIES.c.idempotency_key,
                       TRANSACTIONS.c.external_id)
             .join(POINTS_ENTRIES, POINTS_ENTRIES.c.transaction_id == TRANSACTIONS.c.id)
             .where(POINTS_ENTRIES.c.source == "transaction"))
    checked = 0
    for member_id, amount, category, occurred_at, points, key, external_id in _rows(engine, query):
        tier = "member"
        for changed_at, to_tier in moves.get(member_id, []):
            if changed_at < occurred_at:
                tier = to_tier
        assert points == programme.points_for(amount, category, tier)
        assert key == f"txn:{external_id}"
        checked += 1
    assert checked > 10 * SMALL


def test_history_is_consistent_with_members(seeded: tuple[Engine, SeedReport, Any]) -> None:
    engine, report, _ = seeded
    buyers = TRANSACTIONS.join(MEMBERS, MEMBERS.c.id == TRANSACTIONS.c.member_id)
    early = (sa.select(sa.func.count()).select_from(buyers).where(TRANSACTIONS.c.occurred_at < MEMBERS.c.joined_at))
    assert _scalar(engine, early) == 0
    first, last = _rows(engine, sa.select(sa.func.min(TRANSACTIONS.c.occurred_at),
                                          sa.func.max(TRANSACTIONS.c.occurred_at)))[0]
    assert AS_OF - timedelta(days=731) < first and last < AS_OF
    latest = (sa.select(sa.func.max(TRANSACTIONS.c.occurred_at)).where(TRANSACTIONS.c.member_id == MEMBERS.c.id)
              .scalar_subquery())
    stale = sa.select(sa.func.count()).select_from(MEMBERS).where(
        sa.func.coalesce(MEMBERS.c.last_purchase_at, AS_OF) != sa.func.coalesce(latest, AS_OF))
    assert _scalar(engine, stale) == 0
    counts = {t.name: _scalar(engine, sa.select(sa.func.count()).select_from(t)) for t in TABLES}
    assert (counts["members"], counts["transactions"], counts["points_entries"], counts["channel_consents"],
            counts["push_subscriptions"], counts["campaign_assignments"], counts["survey_responses"]) == (
        report.members, report.transactions, report.points_entries, report.consents, report.push_subscriptions,
        report.assigned, report.survey_responses)
    assert sum(report.tier_counts.values()) == SMALL


def test_progress_reports_every_stage_to_completion(seeded: tuple[Engine, SeedReport, Any]) -> None:
    _, _, calls = seeded
    last = {stage: (done, total) for stage, done, total in calls}
    assert list(last) == ["members", "consents & push", "purchase history", "indexes, expiry & tiers"]
    assert all(done == total for done, total in last.values())


# -- members and reachability ---------------------------------------------------------------


def test_members_look_like_the_designed_population(seeded: tuple[Engine, SeedReport, Any]) -> None:
    engine, _, _ = seeded
    members = _rows(engine, sa.select(MEMBERS.c.external_id, MEMBERS.c.locale, MEMBERS.c.time_zone,
                                      MEMBERS.c.email, MEMBERS.c.phone, MEMBERS.c.birthday, MEMBERS.c.joined_at)
                    .order_by(MEMBERS.c.id))
    assert members[0][0] == "S0000001"
    locales = [m[1] for m in members]
    for locale, share in (("en_CA", 0.40), ("fr_CA", 0.35), ("en_US", 0.15), ("fr_FR", 0.10)):
        assert abs(locales.count(locale) / SMALL - share) < 0.04, locale
    zones = {"fr_CA": {"America/Toronto"}, "fr_FR": {"Europe/Paris"},
             "en_US": {"America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"},
             "en_CA": {"America/Toronto", "America/Vancouver", "America/Edmonton", "America/Winnipeg",
                       "America/Halifax"}}
    assert all(zone in zones[locale] for _, locale, zone, *_ in members)
    emails = [m[3] for m in members if m[3] is not None]
    assert abs(1 - len(emails) / SMALL - 0.05) < 0.02 and len(set(emails)) == len(emails)
    assert all(e.split("@")[1] in {"example.com", "example.org", "example.net"} and e.isascii() for e in emails)
    phones = [(m[4], m[1]) for m in members if m[4] is not None]
    assert abs(1 - len(phones) / SMALL - 0.30) < 0.04
    for phone, locale in phones[::10]:
        parsed = phonenumbers.parse(phone)
        assert phonenumbers.is_valid_number(parsed), phone
        assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == phone
        assert phonenumbers.region_code_for_number(parsed) == {"CA": "CA", "US": "US", "FR": "FR"}[locale[3:]]
    ages = [(AS_OF.date() - m[5]).days / 365.25 for m in members]
    assert min(ages) >= 18 and max(ages) <= 85.1
    assert all(AS_OF - timedelta(days=4 * 366) < m[6] < AS_OF for m in members)


def test_consents_and_push_subscriptions(seeded: tuple[Engine, SeedReport, Any]) -> None:
    engine, _, _ = seeded
    reachable = dict(_rows(engine, sa.select(sa.literal("email"), sa.func.count(MEMBERS.c.email))))
    reachable["sms"] = _scalar(engine, sa.select(sa.func.count(MEMBERS.c.phone)))
    subscribers = _scalar(engine, sa.select(sa.func.count(sa.distinct(PUSH_SUBSCRIPTIONS.c.member_id))))
    reachable["push"] = subscribers
    consents = _rows(engine, sa.select(CHANNEL_CONSENTS.c.channel, CHANNEL_CONSENTS.c.opted_in, sa.func.count())
                     .group_by(CHANNEL_CONSENTS.c.channel, CHANNEL_CONSENTS.c.opted_in))
    opted = {(channel, bool(flag)): n for channel, flag, n in consents}
    for channel, share in (("email", 0.75), ("sms", 0.40), ("push", 0.90)):
        assert abs(opted[(channel, True)] / reachable[channel] - share) < 0.05, channel
        assert opted[(channel, False)] > 0  # explicit opt-outs too
    assert abs(subscribers / SMALL - 0.15) < 0.03
    assert _scalar(engine, sa.select(sa.func.count(sa.distinct(CHANNEL_CONSENTS.c.source)))) == 1
    subs = _rows(engine, sa.select(PUSH_SUBSCRIPTIONS.c.kind, PUSH_SUBSCRIPTIONS.c.endpoint,
                                   PUSH_SUBSCRIPTIONS.c.p256dh, PUSH_SUBSCRIPTIONS.c.auth))
    assert len({s[1] for s in subs}) == len(subs)
    assert {s[0] for s in subs} == {"webpush", "fcm"}
    for kind, endpoint, p256dh, auth in subs:
        if kind == "webpush":
            assert endpoint.startswith("https://push.example.net/wp/")
            key = base64.urlsafe_b64decode(p256dh + "=" * (-len(p256dh) % 4))
            assert len(key) == 65 and key[0] == 4
            assert len(base64.urlsafe_b64decode(auth + "=" * (-len(auth) % 4))) == 16
        else:
            assert ":APA91b" in endpoint and p256dh is None and auth is None


# -- the past NPS survey ----------------------------------------------------------------------


def test_recent_buyers_answered_a_past_nps_survey(seeded: tuple[Engine, SeedReport, Any]) -> None:
    engine, report, _ = seeded
    sent = survey_time(AS_OF)
    t, r, m = TRANSACTIONS.c, SURVEY_RESPONSES.c, MEMBERS.c
    recent = sa.and_(t.occurred_at >= sent - timedelta(days=ACTIVE_DAYS), t.occurred_at < sent, t.amount_cents > 0)
    eligible = _scalar(engine, sa.select(sa.func.count(sa.distinct(t.member_id))).where(recent))
    rows = _rows(engine, sa.select(r.invitation_key, r.member_id, r.survey, r.channel, r.verbatim, r.responded_at,
                                   r.updated_at, m.phone, m.locale).join(MEMBERS, m.id == r.member_id))
    assert len(rows) == report.survey_responses and abs(len(rows) / eligible - RESPONSE_RATE) < 0.03
    lazy = sa.select(sa.func.count()).select_from(SURVEY_RESPONSES).where(
        ~sa.exists().where(t.member_id == r.member_id, recent))
    assert _scalar(engine, lazy) == 0  # only members who had bought in the 90 days before it
    comments = {lang: {text for texts in by_category.values() for text in texts}
                for lang, by_category in VERBATIMS.items()}
    for key, member_id, survey, channel, verbatim, responded, updated, phone, locale in rows:
        assert (key, survey) == (f"seed:nps:{member_id}", "nps") and channel in ("web", "sms")
        assert phone is not None or channel == "web"
        assert sent <= responded == updated <= sent + timedelta(days=MAX_DELAY_DAYS, seconds=1)
        assert verbatim is None or verbatim in comments["fr" if locale.startswith("fr") else "en"]
    assert {row[3] for row in rows} == {"web", "sms"} and sum(row[4] is not None for row in rows) > len(rows) / 5
    score = nps(engine, since=sent, until=AS_OF)
    assert score.responses == len(rows) and score.score is not None and -10 < score.score < 50, score


def test_nps_scores_rise_with_tier_and_activity() -> None:
    rng = np.random.default_rng(3)
    size = 20_000

    def net(tier: float, purchases: int) -> float:
        scores = draw_scores(rng, np.full(size, tier), np.full(size, purchases))
        assert scores.min() >= 0 and scores.max() <= 10
        return 100 * float((scores >= 9).mean() - (scores <= 6).mean())

    occasional, regular, top = net(0.0, 1), net(0.0, 12), net(1.0, 12)
    assert -25 < occasional < 15 < regular < top and top > 50


# -- the past campaign -----------------------------------------------------------------------


def test_the_campaign_is_stored_like_a_real_completed_run(seeded: tuple[Engine, SeedReport, Any]) -> None:
    engine, report, _ = seeded
    (run_id, slot, status, holdout_share, days, stats), = _rows(engine, sa.select(
        CAMPAIGN_RUNS.c.id, CAMPAIGN_RUNS.c.slot, CAMPAIGN_RUNS.c.status, CAMPAIGN_RUNS.c.holdout_share,
        CAMPAIGN_RUNS.c.attribution_days, CAMPAIGN_RUNS.c.stats))
    assert (status, holdout_share, days) == ("completed", 0.2, 14)
    assert timedelta(days=89) < AS_OF - slot < timedelta(days=91)
    arms = dict(_rows(engine, sa.select(CAMPAIGN_ASSIGNMENTS.c.arm, sa.func.count())
                      .group_by(CAMPAIGN_ASSIGNMENTS.c.arm)))
    assigned = sum(arms.values())
    assert assigned == report.assigned == stats["audience"]
    assert _scalar(engine, sa.select(sa.func.count(sa.distinct(CAMPAIGN_ASSIGNMENTS.c.member_id)))) == assigned
    assert abs(arms.pop("holdout") - 0.2 * assigned) <= 1 and report.holdout == stats["holdout"]
    assert set(arms) == set(OFFER_CODES) and max(arms.values()) - min(arms.values()) <= 1
    # The audience: opted in to e-mail before the slot, joined before it.
    audience = {m for (m,) in _rows(engine, sa.select(CHANNEL_CONSENTS.c.member_id)
                                    .join(MEMBERS, MEMBERS.c.id == CHANNEL_CONSENTS.c.member_id)
                                    .where(CHANNEL_CONSENTS.c.channel == "email", CHANNEL_CONSENTS.c.opted_in,
                                           CHANNEL_CONSENTS.c.recorded_at < slot, MEMBERS.c.joined_at < slot))}
    assert audience == {m for (m,) in _rows(engine, sa.select(CAMPAIGN_ASSIGNMENTS.c.member_id))}
    messages = _rows(engine, sa.select(OUTBOX_MESSAGES.c.key, OUTBOX_MESSAGES.c.member_id, OUTBOX_MESSAGES.c.status,
                                       OUTBOX_MESSAGES.c.template, OUTBOX_MESSAGES.c.offer_code,
                                       OUTBOX_MESSAGES.c.sent_at, OUTBOX_MESSAGES.c.payload))
    assert len(messages) == assigned - report.holdout == stats["sent"]
    for key, member_id, status, template, offer, sent_at, payload in messages:
        assert (key, status, template, sent_at) == (f"seed:{run_id}:{member_id}", "delivered", f"offers/{offer}", slot)
        assert payload["subject"]
    events = dict(_rows(engine, sa.select(DELIVERY_EVENTS.c.event, sa.func.count()).group_by(DELIVERY_EVENTS.c.event)))
    assert events["delivered"] == len(messages) > events["open"] > events["click"] > 0


def test_the_truth_file_matches_the_database_and_the_effect_function(
        seeded: tuple[Engine, SeedReport, Any], programme: Programme) -> None:
    engine, report, _ = seeded
    rows = _truth(report)
    assert tuple(rows[0]) == TRUTH_COLUMNS
    assert report.truth_path.name == "spring_reactivation_truth.csv.gz"
    stored = dict(_rows(engine, sa.select(CAMPAIGN_ASSIGNMENTS.c.member_id, CAMPAIGN_ASSIGNMENTS.c.arm)))
    assert {int(r["member_id"]): r["arm"] for r in rows} == stored
    slot = _scalar(engine, sa.select(CAMPAIGN_RUNS.c.slot))
    window = (sa.select(TRANSACTIONS.c.member_id).where(TRANSACTIONS.c.occurred_at >= slot,
                                                        TRANSACTIONS.c.occurred_at < slot + timedelta(days=14)))
    buyers = [m for (m,) in _rows(engine, window)]
    converted = {int(r["member_id"]) for r in rows if r["converted"] == "1"}
    assert converted == set(buyers) & set(stored) and all(buyers.count(m) == 1 for m in converted)
    features = {name: np.array([float(r[name]) for r in rows]) for name in FEATURES}
    for code, tau in true_effects(features).items():
        assert np.allclose(tau, [float(r[f"tau_{code}"]) for r in rows], atol=1e-5), code
    _features_are_what_the_database_says(engine, programme, rows, slot)


def _features_are_what_the_database_says(engine: Engine, programme: Programme, rows: list[dict[str, str]],
                                         slot: datetime) -> None:
    """The documented feature definitions, recomputed from the rows: the truth file agrees."""
    history = (sa.select(TRANSACTIONS.c.member_id, sa.func.count(), sa.func.sum(TRANSACTIONS.c.amount_cents))
               .where(TRANSACTIONS.c.occurred_at >= slot - timedelta(days=365), TRANSACTIONS.c.occurred_at < slot)
               .group_by(TRANSACTIONS.c.member_id))
    recent = {m: (n, total) for m, n, total in _rows(engine, history)}
    last = dict(_rows(engine, sa.select(TRANSACTIONS.c.member_id, sa.func.max(TRANSACTIONS.c.occurred_at))
                      .where(TRANSACTIONS.c.occurred_at < slot).group_by(TRANSACTIONS.c.member_id)))
    joined = dict(_rows(engine, sa.select(MEMBERS.c.id, MEMBERS.c.joined_at)))
    qualifying = {m: v for m, _, v in _rows(engine, qualifying_query(programme.tiers, slot))}
    held = dict(_rows(engine, sa.select(TIER_CHANGES.c.member_id, TIER_CHANGES.c.to_tier)
                      .where(TIER_CHANGES.c.changed_at <= slot).order_by(TIER_CHANGES.c.id)))  # the last move wins
    for row in rows:
        member_id = int(row["member_id"])
        assert (int(row["frequency_12m"]), int(row["monetary_12m"])) == recent.get(member_id, (0, 0))
        since = slot - (last.get(member_id) or joined[member_id])
        assert float(row["recency_days"]) == pytest.approx(since / timedelta(days=1), abs=1e-5)
        rank = programme.tiers.rank(held.get(member_id, programme.tiers.entry_tier))
        upper = [t.threshold for t in programme.tiers.tiers[rank + 1:]]
        progress = float(row["tier_progress"])
        expected = qualifying[member_id] / upper[0] if upper else math.nan
        assert progress == pytest.approx(expected, abs=1e-6, nan_ok=True)


def test_observed_lifts_agree_with_the_true_effects(large: tuple[Engine, SeedReport]) -> None:
    engine, report = large
    rows = _truth(report)
    arms = np.array([r["arm"] for r in rows])
    slot = _scalar(engine, sa.select(CAMPAIGN_RUNS.c.slot))
    bought = {m for (m,) in _rows(engine, sa.select(TRANSACTIONS.c.member_id).where(
        TRANSACTIONS.c.occurred_at >= slot, TRANSACTIONS.c.occurred_at < slot + timedelta(days=14)))}
    converted = np.array([int(r["member_id"]) in bought for r in rows], dtype=float)  # observed in the database
    holdout = converted[arms == "holdout"]
    for code in OFFER_CODES:
        tau = np.array([float(r[f"tau_{code}"]) for r in rows])
        treated = converted[arms == code]
        observed = treated.mean() - holdout.mean()
        se = math.sqrt(treated.var() / treated.size + holdout.var() / holdout.size)
        expected = tau[arms == code].mean()
        assert abs(observed - expected) < 4 * se, (code, observed, expected, se)
        assert 0.02 < tau.mean() < 0.06, code  # a few points on average...
        assert tau.std() > 0.02 and tau.min() < 0 < tau.max(), code  # ...and heterogeneous
    taus = np.array([[float(r[f"tau_{c}"]) for c in OFFER_CODES] for r in rows])
    assert (taus.max(axis=1) <= 0).any()  # for some members no offer is best
    assert (taus.argmax(axis=1)[:, None] == np.arange(4)).any(axis=0).all()  # each offer is best for someone


def test_tier_mix_looks_like_a_real_programme(large: tuple[Engine, SeedReport]) -> None:
    _, report = large
    shares = {tier: n / report.members for tier, n in report.tier_counts.items()}
    assert 0.55 <= shares["member"] <= 0.65 and 0.20 <= shares["silver"] <= 0.30, shares
    assert 0.08 <= shares["gold"] <= 0.15 and 0.02 <= shares["platinum"] <= 0.05, shares


# -- refusals ------------------------------------------------------------------------------


def test_a_database_with_members_is_refused(engine: Engine, programme: Programme, tmp_path: Path) -> None:
    with session_scope(engine) as session:
        add_member(session)
    with pytest.raises(SeedError, match="already has 1 member:"):
        seed_programme(engine, programme, members=10, as_of=AS_OF, truth_dir=tmp_path)
    with pytest.raises(SeedError, match="at least 1"):
        seed_programme(engine, programme, members=0, truth_dir=tmp_path)


def test_a_tiny_programme_still_seeds(engine: Engine, programme: Programme, tmp_path: Path) -> None:
    report = seed_programme(engine, programme, members=3, seed=1, as_of=AS_OF, truth_dir=tmp_path)
    assert report.members == 3 and report.truth_path.exists()
    assert len(_truth(report)) == report.assigned
