"""Campaign specs: one ``config/campaigns/NAME.yaml`` per campaign, the file's stem being its name.

A spec says who gets the campaign (audience), what it may offer and how an offer is chosen,
the experiment around it (holdout share, A/B variants), how it reaches members (channels in
priority order, the first that works winning) and when (a cron schedule in a time zone, or a
wall-clock time in each member's own zone). Validation follows :mod:`loyalty.programme`: a
mistake is a :class:`~loyalty.programme.ConfigError` naming the file and the field, and
:func:`load_campaigns` reports every broken file at once rather than the first.

Offer codes and tiers are checked against the :class:`~loyalty.programme.Programme` given to the
loader, and template folders against the templates directory when one is given.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from loyalty.programme import ConfigError, Programme, describe_validation_error, read_yaml
from loyalty.rendering import CHANNEL_FILES
from loyalty.settings import PolicySettings
from loyalty.types import Channel, NpsCategory

#: How far ahead a cron expression is searched for its next slot: 8 years covers every leap-day rule.
_CRON_HORIZON_DAYS = 8 * 366
_MONTHS = {name.lower(): n for n, name in enumerate(calendar.month_abbr) if name}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_TEMPLATE_NAME = r"^[a-z0-9][a-z0-9_]*(/[a-z0-9][a-z0-9_]*)*$"


def _wall_clock(value: Any) -> Any:
    # YAML 1.1 reads an unquoted 10:00 as the number 600 (base 60): refuse it rather than guess.
    if not isinstance(value, str | time):
        raise ValueError('write times as quoted "HH:MM" (YAML reads 10:00 unquoted as a number)')
    return value


WallClock = Annotated[time, BeforeValidator(_wall_clock)]


class Recommender(StrEnum):
    UPLIFT = "uplift"
    PROPENSITY = "propensity"
    RULES = "rules"


class CampaignKind(StrEnum):
    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _programme(info: ValidationInfo) -> Programme | None:
    context = info.context or {}
    programme = context.get("programme")
    return programme if isinstance(programme, Programme) else None


def _check_template(name: str, info: ValidationInfo, channels: list[Channel] | None = None) -> str:
    """``name`` must be a message folder under the templates dir (when the loader was given one)."""
    root = (info.context or {}).get("templates_dir")
    if root is None:
        return name
    folder = Path(root) / name
    if not folder.is_dir():
        raise ValueError(f"no message folder {name!r} under {root}")
    for channel in channels or []:
        wanted = CHANNEL_FILES[channel.value][-1]
        if not (folder / wanted).is_file() and not any(folder.glob(f"*/{wanted}")):
            raise ValueError(f"message folder {name!r} has no {wanted} for channel {channel.value}")
    return name


class Audience(_Strict):
    """Who a campaign is for. Empty lists and missing bounds mean "no restriction"."""

    tiers: list[str] = Field(default_factory=list)
    segments: list[str] = Field(default_factory=list, description="Behavioural segment labels (not SQL: scored).")
    active_within_days: int | None = Field(default=None, gt=0, description="Last purchase within this many days.")
    inactive_for_days: int | None = Field(default=None, gt=0, description="No purchase for at least this many days.")
    locales: list[Annotated[str, Field(pattern=r"^[a-z]{2}(_[A-Z]{2})?$")]] = Field(default_factory=list)
    min_points: int | None = Field(default=None, ge=0)
    max_points: int | None = Field(default=None, ge=0)
    joined_within_days: int | None = Field(default=None, gt=0)
    birthday_within_days: int | None = Field(
        default=None, gt=0, le=31, description="Birthday (month and day) within this many days from the slot's date.")
    min_p_alive: float | None = Field(default=None, ge=0, le=1, description="Lifetime fit: P(alive) at least this.")
    max_p_alive: float | None = Field(default=None, ge=0, le=1, description="Lifetime fit: P(alive) at most this.")
    min_clv_12m_cents: int | None = Field(default=None, ge=0, description="Lifetime fit: 12-month CLV at least this.")
    nps_categories: list[NpsCategory] = Field(
        default_factory=list, description="Latest survey answer: promoter (9-10), passive (7-8), detractor (0-6).")
    nps_within_days: int | None = Field(default=None, gt=0, description="That answer given within this many days.")

    @field_validator("tiers")
    @classmethod
    def _known_tiers(cls, tiers: list[str], info: ValidationInfo) -> list[str]:
        programme = _programme(info)
        known = [t.code for t in programme.tiers.tiers] if programme else tiers
        unknown = [t for t in tiers if t not in known]
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown}; the programme's tiers are {known}")
        return tiers

    @model_validator(mode="after")
    def _windows(self) -> Audience:
        if self.active_within_days and self.inactive_for_days and self.inactive_for_days >= self.active_within_days:
            raise ValueError("inactive_for_days must be less than active_within_days (nobody could match)")
        if self.min_points is not None and self.max_points is not None and self.min_points > self.max_points:
            raise ValueError("min_points must not exceed max_points")
        if self.min_p_alive is not None and self.max_p_alive is not None and self.min_p_alive > self.max_p_alive:
            raise ValueError("min_p_alive must not exceed max_p_alive")
        if self.nps_within_days is not None and not self.nps_categories:
            raise ValueError("nps_within_days needs nps_categories (which answers to keep)")
        return self


class Variant(_Strict):
    """One arm of an A/B test: a template and/or an email subject line replacing the campaign's."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=32)
    weight: float = Field(gt=0, le=1)
    template: str | None = Field(default=None, pattern=_TEMPLATE_NAME)
    subject: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _overrides_something(self) -> Variant:
        if self.template is None and self.subject is None:
            raise ValueError("a variant needs a template or a subject")
        return self


class QuietHours(_Strict):
    start: WallClock
    end: WallClock


class FrequencyCap(_Strict):
    count: int = Field(ge=0, description="Marketing messages per member per window (0: no cap).")
    window_hours: float = Field(gt=0)


class Schedule(_Strict):
    """Either ``cron`` + ``timezone`` (one slot for everybody) or ``member_local`` (each member's own clock)."""

    cron: str | None = None
    timezone: str | None = None
    member_local: WallClock | None = None

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {name!r} (use an IANA name such as America/Toronto)") from None
        return name

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, expression: str | None) -> str | None:
        if expression is not None and not _next_times(Cron.parse(expression), datetime(2000, 1, 1, tzinfo=UTC),
                                                      ZoneInfo("UTC"), 1):
            raise ValueError(f"cron {expression!r} never fires")
        return expression

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        if (self.cron is None) == (self.member_local is None):
            raise ValueError("give exactly one of cron (with timezone) or member_local")
        if self.cron is not None and self.timezone is None:
            raise ValueError("a cron schedule needs a timezone")
        if self.member_local is not None and self.timezone is not None:
            raise ValueError("member_local runs in each member's own time zone; remove timezone")
        return self


class CampaignSpec(_Strict):
    """One campaign, as written in ``config/campaigns/NAME.yaml``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    description: str = ""
    kind: CampaignKind = CampaignKind.MARKETING
    audience: Audience = Field(default_factory=Audience)
    offers: list[str] = Field(default_factory=list)
    recommender: Recommender = Recommender.RULES
    holdout_share: float = Field(default=0.0, ge=0, le=0.5)
    channels: list[Channel] = Field(min_length=1, description="Priority order; later ones are fallbacks.")
    template: str = Field(pattern=_TEMPLATE_NAME)
    variants: list[Variant] = Field(default_factory=list)
    schedule: Schedule
    quiet_hours: QuietHours | None = None
    frequency_cap: FrequencyCap | None = None
    budget_cents: int | None = Field(default=None, gt=0)
    attribution_days: int = Field(default=14, ge=0, le=365)

    @field_validator("offers")
    @classmethod
    def _known_offers(cls, offers: list[str], info: ValidationInfo) -> list[str]:
        if len(set(offers)) != len(offers):
            raise ValueError("offer codes must be unique")
        programme = _programme(info)
        if programme is not None:
            active = {o.code for o in programme.offers if o.active}
            unknown = [code for code in offers if code not in active]
            if unknown:
                raise ValueError(f"unknown or inactive offer(s) {unknown}; known: {sorted(active)}")
        return offers

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, channels: list[Channel]) -> list[Channel]:
        if len(set(channels)) != len(channels):
            raise ValueError("channels must be unique")
        return channels

    @field_validator("template")
    @classmethod
    def _template_exists(cls, template: str, info: ValidationInfo) -> str:
        return _check_template(template, info, info.data.get("channels"))

    @field_validator("variants")
    @classmethod
    def _variants_split(cls, variants: list[Variant], info: ValidationInfo) -> list[Variant]:
        if not variants:
            return variants
        if len(variants) < 2 or len({v.name for v in variants}) != len(variants):
            raise ValueError("an A/B test needs at least two variants with distinct names")
        if not math.isclose(sum(v.weight for v in variants), 1.0, abs_tol=1e-9):
            raise ValueError(f"variant weights must sum to 1 (they sum to {sum(v.weight for v in variants):g})")
        channels = info.data.get("channels") or []
        if any(v.subject for v in variants) and Channel.EMAIL not in channels:
            raise ValueError("subject variants need email among the channels")
        for variant in variants:
            if variant.template is not None:
                _check_template(variant.template, info, channels)
        return variants

    def policy(self, base: PolicySettings) -> PolicySettings:
        """``base`` with this campaign's quiet hours and frequency cap overrides applied."""
        changes: dict[str, Any] = {}
        if self.quiet_hours is not None:
            changes |= {"quiet_hours_start": self.quiet_hours.start, "quiet_hours_end": self.quiet_hours.end}
        if self.frequency_cap is not None:
            changes |= {"frequency_cap": self.frequency_cap.count,
                        "frequency_window_hours": self.frequency_cap.window_hours}
        return base.model_copy(update=changes)

    def next_slots(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` cron slots strictly after ``after`` (aware), as aware UTC datetimes.

        Evaluated on the wall clock of ``schedule.timezone``: a time skipped by a DST change
        fires at the same instant it would have under the old offset (02:30 → 03:30), and a
        time that occurs twice fires once, at its first occurrence.
        """
        if self.schedule.cron is None or self.schedule.timezone is None:
            raise ValueError(f"campaign {self.name!r} runs at member-local time; it has no shared slots")
        if after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        return _next_times(Cron.parse(self.schedule.cron), after, ZoneInfo(self.schedule.timezone), count)


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression: minute hour day-of-month month day-of-week."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        """Parse ``*``, numbers, names (``mon``, ``jan``), lists, ranges and ``/`` steps; ValueError if bad."""
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"cron {expression!r} needs 5 fields (minute hour day month weekday), got {len(fields)}")
        minute, hour, day, month, weekday = fields
        weekdays = {d % 7 for d in _field(weekday, 0, 7, _WEEKDAYS)}  # 7 is Sunday too
        return cls(frozenset(_field(minute, 0, 59)), frozenset(_field(hour, 0, 23)), frozenset(_field(day, 1, 31)),
                   frozenset(_field(month, 1, 12, _MONTHS)), frozenset(weekdays), day == "*", weekday == "*")

    def matches_day(self, day: date) -> bool:
        """Whether ``day`` is a firing day (classic cron: restricted day and weekday fields are OR-ed)."""
        if day.month not in self.months:
            return False
        in_days, in_weekdays = day.day in self.days, (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_days and in_weekdays
        return in_days or in_weekdays


def _number(text: str, names: dict[str, int]) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number")
    return int(text)


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int]:
    """The values of one cron field within [low, high]."""
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = _number(step_text, {}) if step_text else 1
        if span == "*":
            start, stop = low, high
        elif "-" in span:
            first, _, last = span.partition("-")
            start, stop = _number(first, names or {}), _number(last, names or {})
        else:
            start = _number(span, names or {})
            stop = high if step_text else start  # "5/15" means 5, 20, 35, 50
        if not low <= start <= stop <= high or step < 1:
            raise ValueError(f"cron field {text!r}: {part!r} is outside {low}-{high} or not increasing")
        values.update(range(start, stop + 1, step))
    return values


def _next_times(cron: Cron, after: datetime, zone: ZoneInfo, count: int) -> list[datetime]:
    """Walk local days from ``after`` and collect firing instants (UTC) later than it."""
    after_utc = after.astimezone(UTC)
    day = after_utc.astimezone(zone).date() - timedelta(days=1)  # a shifted DST slot may belong to the day before
    clock = sorted(time(h, m) for h in cron.hours for m in cron.minutes)
    slots: list[datetime] = []
    for _ in range(_CRON_HORIZON_DAYS):
        if cron.matches_day(day):
            # fold=0: an ambiguous time is its first occurrence; a skipped one keeps the old offset,
            # which can reorder it after later times of the day and collide with them (hence the set).
            instants = sorted({datetime.combine(day, at, tzinfo=zone).astimezone(UTC) for at in clock})
            slots += [i for i in instants if i > after_utc and (not slots or i > slots[-1])]
            if len(slots) >= count:
                return slots[:count]
        day += timedelta(days=1)
    return slots


def _read_spec(path: Path, programme: Programme, templates_dir: Path | None) -> CampaignSpec:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of campaign fields")
    if "name" in data:
        raise ConfigError(f"{path}: name: the file name is the campaign's name; remove this field")
    context = {"programme": programme, "templates_dir": templates_dir}
    try:
        return CampaignSpec.model_validate({**data, "name": path.stem}, context=context)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + describe_validation_error(exc)) from None


def load_campaign(path: Path, programme: Programme, templates_dir: Path | None = None) -> CampaignSpec:
    """Read and validate one campaign file; its name is the file's stem."""
    return _read_spec(Path(path), programme, templates_dir)


def load_campaigns(config_dir: Path, programme: Programme,
                   templates_dir: Path | None = None) -> dict[str, CampaignSpec]:
    """Every ``*.yaml`` in ``config_dir`` by campaign name; one ConfigError lists every broken file."""
    specs: dict[str, CampaignSpec] = {}
    problems: list[str] = []
    for path in sorted(Path(config_dir).glob("*.yaml")):
        try:
            specs[path.stem] = _read_spec(path, programme, templates_dir)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return specs
