"""A campaign run as plain functions: plan the run, process one chunk of its audience, finish it.

The flow (:mod:`flows.campaign`) only orchestrates these. :func:`plan_run` opens one
``CampaignRun`` per (campaign, slot): a re-run of the slot gets the same run back and resumes it.
:func:`process_chunk` takes a run id and an id range, never rows: it selects the audience in the
range, splits it into holdout and treated by a stable hash of (campaign, member), picks a variant
by a second hash and an offer (rules, or the latest uplift artifact), chooses each member's
channel, renders, and writes assignments and outbox rows in ONE transaction. Both inserts skip
rows already there (``ON CONFLICT DO NOTHING`` on ``(run_id, member_id)`` and on the outbox key
``campaign:{run_id}:{member_id}``), so a retried or re-run chunk adds nothing twice.

Deliberately simple in this first version (see the issue): behavioural ``audience.segments`` and
``budget_cents`` are not applied; ``member_local`` schedules get no per-member ``not_before``;
offer cooldowns are not checked; quiet hours and the frequency cap are left to the send policy
at dispatch time.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import jinja2
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty import jobs
from loyalty.audience import audience_ids
from loyalty.campaigns import CampaignSpec, Recommender, Variant, load_campaigns
from loyalty.db import fetch_rows
from loyalty.features_query import load_member_rows
from loyalty.models import CAMPAIGN_ASSIGNMENTS, CAMPAIGN_RUNS, CAMPAIGNS, MEMBERS
from loyalty.outbox import NewMessage, enqueue
from loyalty.render_context import build_contexts, offer_view
from loyalty.rendering import TemplateError, TemplateLibrary
from loyalty.rendering_sandbox import end_budget, start_budget
from loyalty.rendering_types import CampaignView, RenderContext
from loyalty.template_lint import ERROR, Finding, has_errors, message_findings
from loyalty.trigger_channels import UNKNOWN_MEMBER, choose_channel
from loyalty.types import RunStatus, as_utc, utcnow
from recommenders import registry
from recommenders.features import build_features

HOLDOUT = "holdout"
#: The arm of a treated member when the campaign has neither an offer nor variants.
MESSAGE = "message"
NO_ELIGIBLE_OFFER = "no_eligible_offer"
NO_POINTS_EXPIRING = "no_points_expiring"
#: This template talks about points expiring: members with none expiring are dropped (see its campaign file).
_EXPIRY_TEMPLATE = "points_expiring"
_EXPIRY_DAYS = 30


class CampaignTemplateError(ValueError):
    """A campaign's template fails the lint: the run must not start."""


@dataclass(frozen=True)
class Treated:
    """A treated member's decisions: variant (or None) and offer code (or None)."""

    member_id: int
    variant: Variant | None
    offer: str | None


def _insert(bind: Session | sa.Connection) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind.engine
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def load_spec(rt: jobs.Runtime, campaign: str) -> CampaignSpec:
    """The validated spec of ``campaign`` from ``config/campaigns`` (KeyError naming the known ones)."""
    specs = load_campaigns(rt.settings.config_dir / "campaigns", rt.programme, rt.settings.templates_dir)
    if campaign not in specs:
        raise KeyError(f"no campaign {campaign!r}; known: {sorted(specs)}")
    return specs[campaign]


def template_library(rt: jobs.Runtime) -> TemplateLibrary:
    """The template library of ``rt``'s settings."""
    return TemplateLibrary.from_settings(rt.settings, rt.programme)


# -- planning and lint ---------------------------------------------------------------------------------------------

def plan_run(engine: Engine, spec: CampaignSpec, slot: datetime) -> int:
    """Get or create the campaign and its run for ``slot``; returns the run id (the same one on a re-run)."""
    slot, now = as_utc(slot), utcnow()
    with engine.begin() as connection:
        insert = _insert(connection)
        connection.execute(insert(CAMPAIGNS).values(name=spec.name, description=spec.description, created_at=now)
                           .on_conflict_do_nothing(index_elements=["name"]))
        campaign_id: int = connection.execute(sa.select(CAMPAIGNS.c.id)
                                              .where(CAMPAIGNS.c.name == spec.name)).scalar_one()
        connection.execute(insert(CAMPAIGN_RUNS).values(
            campaign_id=campaign_id, slot=slot, status=RunStatus.PLANNED, holdout_share=spec.holdout_share,
            attribution_days=spec.attribution_days, stats={}).on_conflict_do_nothing(
            index_elements=["campaign_id", "slot"]))
        r = CAMPAIGN_RUNS.c
        run_id: int = connection.execute(sa.select(r.id)
                                         .where(r.campaign_id == campaign_id, r.slot == slot)).scalar_one()
        connection.execute(sa.update(CAMPAIGN_RUNS).where(r.id == run_id)
                           .values(status=RunStatus.RUNNING, started_at=sa.func.coalesce(r.started_at, now)))
    return int(run_id)


def campaign_templates(spec: CampaignSpec) -> list[str]:
    """Every message folder the campaign may render (its own and its variants')."""
    return sorted({spec.template, *(v.template for v in spec.variants if v.template)})


def lint_campaign(library: TemplateLibrary, spec: CampaignSpec) -> list[Finding]:
    """Lint findings for the campaign's templates (rendered with the sample personas) and subject lines."""
    assert library.programme is not None, "lint needs the programme (for offers and tiers)"
    found = [f for name in campaign_templates(spec) for f in message_findings(library, library.programme, name)]
    for variant in spec.variants:
        if variant.subject is not None:
            try:
                library.environment.from_string(variant.subject)
            except jinja2.TemplateSyntaxError as exc:
                found.append(Finding(f"campaigns/{spec.name}.yaml", None, ERROR,
                                     f"variant {variant.name} subject: {exc.message}"))
    return found


def check_templates(library: TemplateLibrary, spec: CampaignSpec) -> None:
    """Raise :class:`CampaignTemplateError` listing every lint error of the campaign's templates."""
    findings = lint_campaign(library, spec)
    if has_errors(findings):
        errors = "\n".join(f"  {f}" for f in findings if f.severity == ERROR)
        raise CampaignTemplateError(f"campaign {spec.name!r} refused: its templates fail the lint:\n{errors}")


# -- arms, variants, offers ----------------------------------------------------------------------------------------

def stable_unit(campaign: str, member_id: int, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (campaign, member, salt): the same on every run and machine."""
    digest = hashlib.blake2b(f"{campaign}:{salt}:{member_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick_variant(variants: Sequence[Variant], unit: float) -> Variant | None:
    """The variant whose cumulative weight band holds ``unit`` (None without an A/B test)."""
    edge = 0.0
    for variant in variants:
        edge += variant.weight
        if unit < edge:
            return variant
    return variants[-1] if variants else None  # weights sum to 1 up to rounding


def split_arms(spec: CampaignSpec, ids: Sequence[int]) -> tuple[list[int], dict[int, Variant | None]]:
    """(holdout ids, treated id → variant); independent hashes so the variant split ignores the holdout."""
    holdout = [i for i in ids if stable_unit(spec.name, i, HOLDOUT) < spec.holdout_share]
    held = set(holdout)
    treated = {i: pick_variant(spec.variants, stable_unit(spec.name, i, "variant")) for i in ids if i not in held}
    return holdout, treated


def eligible_offers(session: Session, rt: jobs.Runtime, spec: CampaignSpec, ids: Sequence[int]) -> dict[int, list[str]]:
    """Per member, the campaign's offers their tier qualifies for, in the spec's order."""
    offers = {o.code: o for o in rt.programme.offers}
    tiers = rt.programme.tiers
    rows = fetch_rows(session, sa.select(MEMBERS.c.id, MEMBERS.c.tier).where(MEMBERS.c.id.in_(list(ids))))
    floor = {c: tiers.rank(offers[c].min_tier or tiers.tiers[0].code) for c in spec.offers}
    return {int(mid): [c for c in spec.offers if tiers.rank(tier) >= floor[c]] for mid, tier in rows}


def latest_artifact(rt: jobs.Runtime) -> registry.ModelArtifact | None:
    """The newest uplift artifact under ``var/models``, or None when nothing was trained yet."""
    directory = rt.settings.var_dir / "models"
    cards = registry.list_cards(directory) if directory.is_dir() else []
    if not cards:
        return None
    return registry.load(directory / f"{cards[-1].name}-{cards[-1].version}.joblib")


def uplift_offers(session: Session, rt: jobs.Runtime, artifact: registry.ModelArtifact,
                  eligible: dict[int, list[str]], as_of: datetime) -> dict[int, str | None]:
    """Per member, the eligible offer of highest predicted conversion lift (first eligible if none scored)."""
    ids = sorted(eligible)
    raw = load_member_rows(session.connection(), rt.programme, id_range=(ids[0], ids[-1] + 1), as_of=as_of)
    categories = list(rt.programme.earn.category_multipliers)
    features, _ = build_features(raw[raw["member_id"].isin(ids)], categories=categories)
    lifts = registry.score(artifact, features)
    column = {arm: k for k, arm in enumerate(lifts.arms)}
    chosen: dict[int, str | None] = {mid: (codes[0] if codes else None) for mid, codes in eligible.items()}
    for row, mid in enumerate(int(i) for i in features.index):
        scored = [(float(lifts.conversion[row, column[c]]), c) for c in eligible.get(mid, []) if c in column]
        if scored:
            chosen[mid] = max(scored)[1]
    return chosen


def choose_offers(session: Session, rt: jobs.Runtime, spec: CampaignSpec, ids: Sequence[int],
                  as_of: datetime) -> dict[int, str | None]:
    """Per treated member, the offer to send: uplift when an artifact exists, else rules (first eligible)."""
    if not spec.offers or not ids:
        return dict.fromkeys(ids)
    eligible = eligible_offers(session, rt, spec, ids)
    artifact = latest_artifact(rt) if spec.recommender is Recommender.UPLIFT else None
    if artifact is not None:
        return uplift_offers(session, rt, artifact, eligible, as_of)
    return {mid: (codes[0] if codes else None) for mid, codes in eligible.items()}


# -- one chunk -----------------------------------------------------------------------------------------------------

def _run_info(engine: Engine, run_id: int) -> tuple[str, datetime]:
    """(campaign name, slot) of run ``run_id``."""
    r, c = CAMPAIGN_RUNS.c, CAMPAIGNS.c
    with engine.connect() as connection:
        name, slot = connection.execute(sa.select(c.name, r.slot).join(CAMPAIGNS, c.id == r.campaign_id)
                                        .where(r.id == run_id)).one()
    return str(name), as_utc(slot)


def _subject(library: TemplateLibrary, variant: Variant | None, context: RenderContext) -> str | None:
    """The variant's subject line rendered for ``context`` (None when it keeps the template's)."""
    if variant is None or variant.subject is None:
        return None
    token = start_budget(library.limits.timeout_seconds)
    try:
        variables = library.variables(context, "email", links=frozenset())
        return " ".join(library.environment.from_string(variant.subject).render(variables).split())
    finally:
        end_budget(token)


def _message(library: TemplateLibrary, spec: CampaignSpec, run_id: int, item: Treated, recipient: Any,
             context: RenderContext) -> NewMessage:
    """Render one treated member's message (raises TemplateError or jinja2.TemplateError)."""
    template = (item.variant.template if item.variant else None) or spec.template
    rendered = library.render(template, recipient.channel, context)
    content = dict(rendered.content)
    subject = _subject(library, item.variant, context) if recipient.channel == "email" else None
    if subject:
        content["subject"] = subject
    tags = {"campaign": spec.name, "run_id": str(run_id), "variant": item.variant.name if item.variant else ""}
    return NewMessage(key=f"campaign:{run_id}:{item.member_id}", member_id=item.member_id,
                      channel=recipient.channel, template=template, run_id=run_id, offer_code=item.offer,
                      payload=recipient.payload(content, rendered.headers, tags))


def _contexts(session: Session, rt: jobs.Runtime, spec: CampaignSpec, treated: Sequence[Treated],
              as_of: datetime) -> dict[int, RenderContext]:
    """Render contexts carrying the campaign and each member's own offer."""
    expiring = _EXPIRY_DAYS if _EXPIRY_TEMPLATE in campaign_templates(spec) else None
    campaign = CampaignView(code=spec.name, name=spec.description or spec.name)
    contexts = build_contexts(session, rt.programme, [t.member_id for t in treated], campaign=campaign,
                              expiring_within_days=expiring, now=as_of)
    views = {o.code: offer_view(o) for o in rt.programme.offers if o.code in spec.offers}
    offers = {t.member_id: t.offer for t in treated}
    return {mid: replace(c, offer=views.get(offers[mid] or "")) for mid, c in contexts.items()
            if expiring is None or c.points_expiring > 0}


def _treat(session: Session, rt: jobs.Runtime, library: TemplateLibrary, spec: CampaignSpec, run_id: int,
           treated: Sequence[Treated], as_of: datetime, counts: Counter[str]) -> list[NewMessage]:
    """Messages for the treated members; the others are counted under the reason they got none."""
    contexts = _contexts(session, rt, spec, treated, as_of)
    choice = choose_channel(session.connection(), [t.member_id for t in treated], spec.channels)
    messages = []
    for item in treated:
        recipient, context = choice.recipients.get(item.member_id), contexts.get(item.member_id)
        if recipient is None or context is None:
            reason = NO_POINTS_EXPIRING if recipient else choice.skipped.get(item.member_id, UNKNOWN_MEMBER)
            counts[f"skipped:{reason}"] += 1
            continue
        try:
            messages.append(_message(library, spec, run_id, item, recipient, context))
        except (TemplateError, jinja2.TemplateError):  # left unassigned: a re-run after the fix sends it
            counts["render_errors"] += 1
            continue
        counts[f"channel:{recipient.channel}"] += 1
    return messages


def _assignments(run_id: int, holdout: Sequence[int], messages: Sequence[NewMessage],
                 variants: dict[int, Variant | None], now: datetime) -> list[dict[str, Any]]:
    """Assignment rows: every holdout member, and every treated member who has a message."""
    rows = [{"run_id": run_id, "member_id": mid, "arm": HOLDOUT, "offer_code": None, "variant": None,
             "assigned_at": now} for mid in holdout]
    for m in messages:
        variant = variants.get(m.member_id)
        rows.append({"run_id": run_id, "member_id": m.member_id, "offer_code": m.offer_code, "assigned_at": now,
                     "arm": m.offer_code or (variant.name if variant else MESSAGE),
                     "variant": variant.name if variant else None})
    return rows


def _write(session: Session, rows: list[dict[str, Any]], messages: list[NewMessage], counts: Counter[str]) -> None:
    """Insert assignments and outbox rows in the caller's transaction, skipping those already there."""
    if rows:
        stmt = (_insert(session)(CAMPAIGN_ASSIGNMENTS).on_conflict_do_nothing(index_elements=["run_id", "member_id"])
                .returning(CAMPAIGN_ASSIGNMENTS.c.id))
        counts["assigned"] += len(session.execute(stmt, rows).all())
    new = enqueue(session, messages)
    counts["queued"] += new
    counts["already_queued"] += len(messages) - new


def process_chunk(run_id: int, id_range: jobs.IdRange, *, rt: jobs.Runtime | None = None,
                  spec: CampaignSpec | None = None) -> dict[str, int]:
    """Assign, choose, render and queue the run's audience in ``[lo, hi)``; one transaction. Returns counts."""
    rt = rt or jobs.runtime()
    name, slot = _run_info(rt.engine, run_id)
    spec = spec or load_spec(rt, name)
    counts: Counter[str] = Counter()
    with Session(rt.engine, expire_on_commit=False) as session:
        ids = audience_ids(session.connection(), spec, id_range, as_of=slot)
        holdout, variants = split_arms(spec, ids)
        offers = choose_offers(session, rt, spec, sorted(variants), slot)
        treated = [Treated(mid, variants[mid], offers.get(mid)) for mid in sorted(variants)
                   if offers.get(mid) or not spec.offers]
        counts.update(audience=len(ids), holdout=len(holdout), treated=len(variants))
        counts[f"skipped:{NO_ELIGIBLE_OFFER}"] += len(variants) - len(treated)
        messages = _treat(session, rt, template_library(rt), spec, run_id, treated, slot, counts)
        _write(session, _assignments(run_id, holdout, messages, variants, utcnow()), messages, counts)
        session.commit()
    return {k: v for k, v in counts.items() if v}


def finish_run(engine: Engine, run_id: int, counts: dict[str, int]) -> None:
    """Mark the run completed with its totals (a re-run of the slot overwrites them with its own)."""
    with engine.begin() as connection:
        connection.execute(sa.update(CAMPAIGN_RUNS).where(CAMPAIGN_RUNS.c.id == run_id)
                           .values(status=RunStatus.COMPLETED, finished_at=utcnow(), stats=dict(counts)))
