"""A campaign run as plain functions: plan the run, process one chunk of its audience, finish it.

The flow (:mod:`flows.campaign`) only orchestrates these. :func:`plan_run` opens one
``CampaignRun`` per (campaign, slot): a re-run of the slot gets the same run back and resumes it.
:func:`process_chunk` takes a run id and an id range, never rows: it selects the audience in the
range, splits it into holdout and treated by a stable hash of (campaign, member), picks a variant
by a second hash and an offer (rules, or the latest uplift artifact), chooses each member's
channel, renders, and writes assignments and outbox rows in ONE transaction. Both inserts skip
rows already there (``ON CONFLICT DO NOTHING`` on ``(run_id, member_id)`` and on the outbox key
``campaign:{run_id}:{member_id}``), so a retried or re-run chunk adds nothing twice.

Offers are chosen by :mod:`loyalty.campaign_offers` (eligibility, recommender, the chunk's share
of the budget). A ``member_local`` schedule gives each message a ``not_before`` at that wall-clock
time in the member's own zone. Quiet hours and the frequency cap are the send policy's, applied at
dispatch time. Behavioural ``audience.segments`` are not applied yet: a spec using them is refused.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty import campaign_offers, jobs
from loyalty.audience import audience_ids
from loyalty.campaigns import CampaignSpec, Variant, load_campaigns
from loyalty.models import CAMPAIGN_ASSIGNMENTS, CAMPAIGN_RUNS, CAMPAIGNS
from loyalty.outbox import NewMessage, enqueue
from loyalty.render_context import build_contexts, offer_view
from loyalty.rendering import TemplateError, TemplateLibrary
from loyalty.rendering_sandbox import end_budget, start_budget
from loyalty.rendering_types import CampaignView, RenderContext, Rendered
from loyalty.send_policy import member_zone
from loyalty.template_lint import ERROR, Finding, has_errors, message_findings
from loyalty.trigger_channels import UNKNOWN_MEMBER, choose_channel
from loyalty.types import RunStatus, as_utc, utcnow

log = logging.getLogger(__name__)

HOLDOUT = "holdout"
#: The arm of a treated member when the campaign has neither an offer nor variants.
MESSAGE = "message"
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


_LIBRARIES: dict[tuple[Path, int, tuple[tuple[str, int], ...]], TemplateLibrary] = {}


def _fingerprint(root: Path) -> tuple[tuple[str, int], ...]:
    """Every template file with its mtime: a cached library is reused only while nothing changed."""
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()))


def template_library(rt: jobs.Runtime) -> TemplateLibrary:
    """The template library of ``rt``'s settings, compiled once per process and template edit.

    Chunks reuse it (compiling every template per chunk costs more than rendering a chunk), and
    the fingerprint makes an edit between runs visible to a long-lived worker.
    """
    root = rt.settings.templates_dir
    key = (root, id(rt.programme), _fingerprint(root))
    if key not in _LIBRARIES:
        _LIBRARIES.clear()  # only the current version is worth keeping
        _LIBRARIES[key] = TemplateLibrary.from_settings(rt.settings, rt.programme)
    return _LIBRARIES[key]


def check_supported(spec: CampaignSpec) -> None:
    """Refuse what a run cannot honour yet, rather than silently widening the audience."""
    if spec.audience.segments:
        raise ValueError(f"campaign {spec.name!r}: audience.segments is not supported by campaign runs yet; "
                         "remove it or express the audience with tiers, activity windows, locales and points")


# -- planning and lint ---------------------------------------------------------------------------------------------

def plan_run(engine: Engine, spec: CampaignSpec, slot: datetime, *, audience: int | None = None) -> int:
    """Get or create the campaign and its run for ``slot``; returns the run id (the same one on a re-run).

    ``audience`` (the members the run will cover) is recorded so each chunk can take its share of the budget.
    """
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
        planned = {"stats": {"planned_audience": audience}} if audience is not None else {}
        connection.execute(sa.update(CAMPAIGN_RUNS).where(r.id == run_id)
                           .values(status=RunStatus.RUNNING, started_at=sa.func.coalesce(r.started_at, now),
                                   **planned))
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


# -- one chunk -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunInfo:
    campaign: str
    slot: datetime
    planned_audience: int | None


def _run_info(engine: Engine, run_id: int) -> RunInfo:
    """What a chunk needs to know about its run."""
    r, c = CAMPAIGN_RUNS.c, CAMPAIGNS.c
    with engine.connect() as connection:
        name, slot, stats = connection.execute(sa.select(c.name, r.slot, r.stats)
                                               .join(CAMPAIGNS, c.id == r.campaign_id).where(r.id == run_id)).one()
    planned = stats.get("planned_audience") if isinstance(stats, dict) else None
    return RunInfo(str(name), as_utc(slot), int(planned) if planned else None)


def member_local_time(spec: CampaignSpec, zone_name: str, slot: datetime) -> datetime | None:
    """For a ``member_local`` schedule, the first time at that wall clock in the member's zone at or after
    ``slot`` (UTC); None for a shared cron slot."""
    at = spec.schedule.member_local
    if at is None:
        return None
    zone = member_zone(zone_name)
    local = slot.astimezone(zone)
    candidate = datetime.combine(local.date(), at, tzinfo=zone)
    if candidate.astimezone(slot.tzinfo) < slot:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=zone)
    return as_utc(candidate)


@lru_cache(maxsize=64)
def _compiled_subject(environment: jinja2.Environment, source: str) -> jinja2.Template:
    """A variant's subject line compiled once (compiling per member cost more than rendering)."""
    return environment.from_string(source)


def _subject(library: TemplateLibrary, variant: Variant | None, context: RenderContext) -> str | None:
    """The variant's subject line rendered for ``context`` (None when it keeps the template's)."""
    if variant is None or variant.subject is None:
        return None
    token = start_budget(library.limits.timeout_seconds)
    try:
        variables = library.variables(context, "email", links=frozenset())
        return " ".join(_compiled_subject(library.environment, variant.subject).render(variables).split())
    finally:
        end_budget(token)


def message_key(run_id: int, member_id: int) -> str:
    """The outbox key of a run's message to a member (a survey's invitation key)."""
    return f"campaign:{run_id}:{member_id}"


def _template(spec: CampaignSpec, item: Treated) -> str:
    return (item.variant.template if item.variant else None) or spec.template


def _message(library: TemplateLibrary, spec: CampaignSpec, run: tuple[int, datetime], item: Treated,
             recipient: Any, context: RenderContext, rendered: Rendered) -> NewMessage:
    """One treated member's message from its render (the subject variant raises jinja2.TemplateError)."""
    template = _template(spec, item)
    content = dict(rendered.content)
    subject = _subject(library, item.variant, context) if recipient.channel == "email" else None
    if subject:
        content["subject"] = subject
    run_id, slot = run
    tags = {"campaign": spec.name, "run_id": str(run_id), "variant": item.variant.name if item.variant else ""}
    return NewMessage(key=message_key(run_id, item.member_id), member_id=item.member_id,
                      channel=recipient.channel, template=template, run_id=run_id, offer_code=item.offer,
                      payload=recipient.payload(content, rendered.headers, tags),
                      not_before=member_local_time(spec, context.member.time_zone, slot))


def _contexts(session: Session, rt: jobs.Runtime, spec: CampaignSpec, run_id: int, treated: Sequence[Treated],
              as_of: datetime) -> dict[int, RenderContext]:
    """Render contexts carrying the campaign and each member's own offer."""
    expiring = _EXPIRY_DAYS if _EXPIRY_TEMPLATE in campaign_templates(spec) else None
    campaign = CampaignView(code=spec.name, name=spec.description or spec.name)
    contexts = build_contexts(session, rt.programme, [t.member_id for t in treated], campaign=campaign,
                              expiring_within_days=expiring, now=as_of)
    views = {o.code: offer_view(o) for o in rt.programme.offers if o.code in spec.offers}
    offers = {t.member_id: t.offer for t in treated}
    return {mid: replace(c, offer=views.get(offers[mid] or ""), message_key=message_key(run_id, mid))
            for mid, c in contexts.items()
            if expiring is None or c.points_expiring > 0}


def _render_all(library: TemplateLibrary, spec: CampaignSpec,
                ready: Sequence[tuple[Treated, Any, RenderContext]]) -> list[Rendered | TemplateError]:
    """Every ready member's render, batched per (template, channel) with :meth:`TemplateLibrary.render_many`."""
    groups: dict[tuple[str, str], list[int]] = {}
    for position, (item, recipient, _) in enumerate(ready):
        groups.setdefault((_template(spec, item), recipient.channel), []).append(position)
    results: list[Rendered | TemplateError | None] = [None] * len(ready)
    for (template, channel), positions in groups.items():
        batch = library.render_many(template, channel, [ready[p][2] for p in positions])
        for position, rendered in zip(positions, batch, strict=True):
            results[position] = rendered
    return [r for r in results if r is not None]


def _treat(session: Session, rt: jobs.Runtime, library: TemplateLibrary, spec: CampaignSpec, run_id: int,
           treated: Sequence[Treated], as_of: datetime, counts: Counter[str]) -> list[NewMessage]:
    """Messages for the treated members; the others are counted under the reason they got none."""
    contexts = _contexts(session, rt, spec, run_id, treated, as_of)
    choice = choose_channel(session.connection(), [t.member_id for t in treated], spec.channels)
    ready = []
    for item in treated:
        recipient, context = choice.recipients.get(item.member_id), contexts.get(item.member_id)
        if recipient is None or context is None:
            reason = NO_POINTS_EXPIRING if recipient else choice.skipped.get(item.member_id, UNKNOWN_MEMBER)
            counts[f"skipped:{reason}"] += 1
            continue
        ready.append((item, recipient, context))
    renders = _render_all(library, spec, ready)
    messages = []
    for (item, recipient, context), rendered in zip(ready, renders, strict=True):
        try:
            if isinstance(rendered, TemplateError):
                raise rendered
            messages.append(_message(library, spec, (run_id, as_of), item, recipient, context, rendered))
        except (TemplateError, jinja2.TemplateError) as exc:  # left unassigned: a re-run after the fix sends it
            log.warning("campaign %s, member %s: not rendered: %s", spec.name, item.member_id, exc)
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


def _budget_share(spec: CampaignSpec, run: RunInfo, chunk_audience: int) -> float | None:
    """This chunk's share of the run's budget: proportional to its part of the planned audience."""
    if spec.budget_cents is None:
        return None
    if not run.planned_audience:
        return float(spec.budget_cents)  # planned without a count (a direct call): the chunk is the run
    return spec.budget_cents * chunk_audience / run.planned_audience


def process_chunk(run_id: int, id_range: jobs.IdRange, *, rt: jobs.Runtime | None = None,
                  spec: CampaignSpec | None = None) -> dict[str, int]:
    """Assign, choose, render and queue the run's audience in ``[lo, hi)``; one transaction. Returns counts."""
    rt = rt or jobs.runtime()
    run = _run_info(rt.engine, run_id)
    spec = spec or load_spec(rt, run.campaign)
    check_supported(spec)
    counts: Counter[str] = Counter()
    with Session(rt.engine, expire_on_commit=False) as session:
        ids = audience_ids(session.connection(), spec, id_range, as_of=run.slot)
        holdout, variants = split_arms(spec, ids)
        choice = campaign_offers.choose(session, rt, spec, sorted(variants), run.slot,
                                        budget_cents=_budget_share(spec, run, len(ids)))
        treated = [Treated(mid, variants[mid], choice.offers.get(mid)) for mid in sorted(variants)
                   if mid in choice.offers or not spec.offers]
        counts.update(audience=len(ids), holdout=len(holdout), treated=len(variants))
        counts.update({f"skipped:{reason}": n for reason, n in choice.dropped.items()})
        counts.update(f"offer:{t.offer}" for t in treated if t.offer)
        messages = _treat(session, rt, template_library(rt), spec, run_id, treated, run.slot, counts)
        _write(session, _assignments(run_id, holdout, messages, variants, utcnow()), messages, counts)
        session.commit()
    return {k: v for k, v in counts.items() if v}


def finish_run(engine: Engine, run_id: int, counts: dict[str, int]) -> None:
    """Mark the run completed with its totals (a re-run of the slot overwrites them with its own)."""
    with engine.begin() as connection:
        connection.execute(sa.update(CAMPAIGN_RUNS).where(CAMPAIGN_RUNS.c.id == run_id)
                           .values(status=RunStatus.COMPLETED, finished_at=utcnow(), stats=dict(counts)))
