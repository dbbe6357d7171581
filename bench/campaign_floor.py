"""Baselines for ``bench/campaign_throughput.py``: the bare floor loop and the per-member-task design.

The floor is the campaign's irreducible work for one chunk after another, in one plain loop and one
process, with no Prefect and no per-member objects beyond what the work needs:

* the same SQL reads (:func:`loyalty.audience.audience_ids`, the render data of
  :func:`loyalty.render_context.build_contexts`, consents and addresses of
  :func:`loyalty.trigger_channels.choose_channel`);
* the same holdout/variant hashes, and the offers of :func:`loyalty.campaign_offers.choose` (eligibility
  and cooldown reads, the feature rows of :func:`loyalty.features_query.load_member_rows`, one
  vectorised ``predict`` and the policy on arrays per chunk);
* Jinja: each (message, channel, language) template compiled once by a plain, non-sandboxed
  environment over the library's own compiled sources (CSS inlined, text part made), the variant
  subject compiled once, variables from :meth:`TemplateLibrary.variables` (unsubscribe tokens signed);
* one ``executemany`` insert of the chunk's assignments and outbox rows, committed per chunk.

The per-member design is the one the chunked flow replaced: one Prefect task per audience member,
each calling :func:`loyalty.campaign_run.process_chunk` on a one-member id range.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import jinja2
import sqlalchemy as sa
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.utilities.annotations import unmapped
from sqlmodel import Session

from loyalty import campaign_offers, jobs
from loyalty import campaign_run as cr
from loyalty.audience import audience_ids
from loyalty.campaigns import CampaignSpec, Variant
from loyalty.models import CAMPAIGN_ASSIGNMENTS, OUTBOX_MESSAGES
from loyalty.render_context import build_contexts, offer_view
from loyalty.rendering import CHANNEL_FILES, TemplateLibrary, _autoescape
from loyalty.rendering_filters import LOCALE_FILTERS
from loyalty.rendering_source import TEXT, join_name
from loyalty.rendering_types import CampaignView, RenderContext
from loyalty.trigger_channels import choose_channel
from loyalty.types import OutboxStatus, utcnow

#: The files rendered per channel by the floor (email: subject, HTML, and the text part made from it).
_FLOOR_FILES = {"email": ("email.subject.txt", "email.html", f"email.html#{TEXT}"), "sms": CHANNEL_FILES["sms"]}


class _FloorEnvironment(jinja2.Environment):
    """A plain Jinja environment resolving the library's ``language:name/file`` names."""

    def join_path(self, template: str, parent: str) -> str:
        return join_name(template, parent)


@dataclass
class Floor:
    """What the floor loop needs, built once: spec, library, compiled templates."""

    rt: jobs.Runtime
    spec: CampaignSpec
    library: TemplateLibrary
    slot: datetime
    env: _FloorEnvironment = field(init=False)
    templates: dict[tuple[str, str, str], list[jinja2.Template]] = field(default_factory=dict)
    subjects: dict[str, jinja2.Template] = field(default_factory=dict)

    def __post_init__(self) -> None:
        library = self.library
        self.env = _FloorEnvironment(loader=library.loader, autoescape=_autoescape, trim_blocks=True,
                                     lstrip_blocks=True)
        self.env.filters.update(LOCALE_FILTERS)
        self.env.globals.update(link=library.link, site_url=library.site_url)
        self.subjects = {v.name: self.env.from_string(v.subject) for v in self.spec.variants if v.subject}

    def compiled(self, name: str, channel: str, language: str) -> list[jinja2.Template]:
        """The channel's templates of message ``name`` in ``language``, compiled on first use."""
        key = (name, channel, language)
        if key not in self.templates:
            self.templates[key] = [self.env.get_template(f"{language}:{name}/{f}") for f in _FLOOR_FILES[channel]]
        return self.templates[key]


def _offers(floor: Floor, session: Session, treated: list[int]) -> dict[int, str]:
    """Offers by :func:`loyalty.campaign_offers.choose`: its SQL reads, one predict, the policy on arrays.

    Already one vectorised call per chunk, so the floor takes it whole: it then renders for exactly
    the members the campaign does, whatever eligibility, cooldowns and the model decide.
    """
    return campaign_offers.choose(session, floor.rt, floor.spec, treated, floor.slot).offers


def _render(floor: Floor, context: RenderContext, channel: str, variant: Variant | None) -> dict[str, str]:
    """The message's parts rendered by bare ``Template.render`` (subject replaced by the variant's)."""
    name = floor.spec.template
    language = floor.library.language_for(context.member)
    variables = floor.library.variables(context, channel)
    files = _FLOOR_FILES[channel]
    content = {f: t.render(variables) for f, t in zip(files, floor.compiled(name, channel, language), strict=True)}
    if channel == "email" and variant is not None and variant.name in floor.subjects:
        content["email.subject.txt"] = floor.subjects[variant.name].render(variables)
    return content


def floor_chunk(floor: Floor, session: Session, run_id: int, id_range: jobs.IdRange) -> Counter[str]:
    """One chunk of the floor: read, hash, predict, render, insert (the caller commits)."""
    spec, slot, counts = floor.spec, floor.slot, Counter[str]()
    ids = audience_ids(session.connection(), spec, id_range, as_of=slot)
    holdout, variants = cr.split_arms(spec, ids)
    treated = sorted(variants)
    counts.update(audience=len(ids), holdout=len(holdout))
    if not treated:
        return counts
    offers = _offers(floor, session, treated)
    contexts = build_contexts(session, floor.rt.programme, treated, now=slot,
                              campaign=CampaignView(code=spec.name, name=spec.description or spec.name))
    views = {o.code: offer_view(o) for o in floor.rt.programme.offers if o.code in spec.offers}
    choice = choose_channel(session.connection(), treated, spec.channels)
    now = utcnow()
    outbox, assigned = [], [_assignment(run_id, mid, None, None, now) for mid in holdout]
    for mid in treated:
        recipient, context, offer = choice.recipients.get(mid), contexts.get(mid), offers.get(mid)
        if recipient is None or context is None or offer is None:
            continue
        variant = variants[mid]
        content = _render(floor, replace(context, offer=views[offer]), recipient.channel, variant)
        outbox.append({"key": f"floor:{run_id}:{mid}", "member_id": mid, "channel": recipient.channel,
                       "template": spec.template, "run_id": run_id, "offer_code": offer,
                       "payload": {"to": recipient.to, "content": content}, "status": OutboxStatus.PENDING,
                       "attempts": 0, "created_at": now, "updated_at": now})
        assigned.append(_assignment(run_id, mid, offer, variant, now))
    session.execute(sa.insert(CAMPAIGN_ASSIGNMENTS), assigned)
    session.execute(sa.insert(OUTBOX_MESSAGES), outbox)
    counts.update(queued=len(outbox))
    return counts


def _assignment(run_id: int, member_id: int, offer: str | None, variant: Variant | None,
                now: datetime) -> dict[str, Any]:
    return {"run_id": run_id, "member_id": member_id, "arm": offer or cr.HOLDOUT, "offer_code": offer,
            "variant": variant.name if variant else None, "assigned_at": now}


def run_floor(floor: Floor, run_id: int, ranges: Sequence[jobs.IdRange]) -> Counter[str]:
    """The whole floor: every chunk in turn, one transaction each. Returns the summed counts."""
    totals: Counter[str] = Counter()
    for id_range in ranges:
        with Session(floor.rt.engine) as session:
            totals.update(floor_chunk(floor, session, run_id, id_range))
            session.commit()
    return totals


# -- the per-member design, for contrast ---------------------------------------------------------------------------

@task(name="campaign-member", cache_policy=NONE)
def member_task(run_id: int, member_id: int) -> dict[str, int]:
    """The replaced design's unit of work: one member, as a one-member id range."""
    return cr.process_chunk(run_id, (member_id, member_id + 1))


@flow(name="campaign-per-member", log_prints=False)
def per_member_flow(run_id: int, member_ids: list[int]) -> dict[str, int]:
    """One Prefect task per member (the design the chunked flow replaced); returns the summed counts."""
    totals: Counter[str] = Counter()
    for counts in member_task.map(unmapped(run_id), member_ids).result():
        totals.update(counts)
    return dict(totals)


def per_member_plain(run_id: int, member_ids: Sequence[int],
                     work: Callable[[int, jobs.IdRange], dict[str, int]] = cr.process_chunk) -> Counter[str]:
    """The same one-member calls in a plain loop: what the per-member flow costs without Prefect."""
    totals: Counter[str] = Counter()
    for mid in member_ids:
        totals.update(work(run_id, (mid, mid + 1)))
    return totals
