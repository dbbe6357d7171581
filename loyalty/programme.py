"""The programme's rules as files: ``config/programme.yaml``, ``tiers.yaml`` and ``offers.yaml``.

Each file is validated by a pydantic model; a mistake is reported as a :class:`ConfigError`
naming the file and the field. :func:`sync_catalogue` copies tiers and offers into their
tables so other rows can refer to them.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, SQLModel

from loyalty.models import OFFERS, TIERS
from loyalty.types import Channel, OfferKind

#: Cost of sending one message, in cents, per channel (floats: an e-mail costs a fraction of a cent).
MessageCosts = dict[Channel, Annotated[float, Field(ge=0, allow_inf_nan=False)]]


class ConfigError(ValueError):
    """A configuration file is missing or invalid; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EarnRules(_Strict):
    points_per_unit: float = Field(gt=0)
    category_multipliers: dict[str, float] = Field(default_factory=dict)


class ExpiryRules(_Strict):
    months: int = Field(gt=0)


class TierSpec(_Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32)
    name: str
    threshold: int = Field(ge=0)
    earn_multiplier: float = Field(default=1.0, gt=0)
    perks: list[str] = Field(default_factory=list)


class TierBasis(StrEnum):
    POINTS = "points"
    SPEND = "spend"


class TierRules(_Strict):
    basis: TierBasis = TierBasis.POINTS
    window_months: int = Field(default=12, gt=0)
    allow_downgrade: bool = True
    tiers: list[TierSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> TierRules:
        thresholds = [t.threshold for t in self.tiers]
        if thresholds[0] != 0:
            raise ValueError("the first tier must have threshold 0 (every member has a tier)")
        if thresholds != sorted(set(thresholds)):
            raise ValueError("tiers must be listed lowest first with strictly increasing thresholds")
        if len({t.code for t in self.tiers}) != len(self.tiers):
            raise ValueError("tier codes must be unique")
        return self

    @property
    def entry_tier(self) -> str:
        return self.tiers[0].code

    def rank(self, code: str) -> int:
        """Position of tier ``code``, lowest first; KeyError for a tier not configured."""
        for position, tier in enumerate(self.tiers):
            if tier.code == code:
                return position
        raise KeyError(f"unknown tier {code!r}")


class OfferSpec(_Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    name: str
    kind: OfferKind
    value: float = Field(ge=0)
    cost_cents: int = Field(ge=0)
    min_tier: str | None = None
    cooldown_days: int = Field(default=0, ge=0)
    active: bool = True
    description: str = ""


class _OfferFile(_Strict):
    offers: list[OfferSpec] = Field(min_length=1)


class _ProgrammeFile(_Strict):
    name: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    point_value_cents: float = Field(gt=0)
    margin_per_conversion_cents: float = Field(default=3000, gt=0)
    message_cost_cents: MessageCosts = Field(default_factory=dict)
    earn: EarnRules
    expiry: ExpiryRules


class Programme(_Strict):
    """Everything in ``config/`` that defines the loyalty programme."""

    name: str
    currency: str
    point_value_cents: float
    #: Gross margin of one incremental purchase: what the offer policy weighs an offer's cost against.
    margin_per_conversion_cents: float = 3000
    #: What one sent message costs per channel (channels not listed cost nothing): campaign ROI counts it.
    message_cost_cents: MessageCosts = Field(default_factory=dict)
    earn: EarnRules
    expiry: ExpiryRules
    tiers: TierRules
    offers: list[OfferSpec]

    @model_validator(mode="after")
    def _offer_tiers_exist(self) -> Programme:
        codes = {t.code for t in self.tiers.tiers}
        for offer in self.offers:
            if offer.min_tier is not None and offer.min_tier not in codes:
                raise ValueError(f"offer {offer.code!r}: min_tier {offer.min_tier!r} is not a tier")
        return self

    def points_for(self, amount_cents: int, category: str, tier: str) -> int:
        """Points earned by spending ``amount_cents`` in ``category`` at ``tier`` (floored)."""
        if amount_cents <= 0:
            return 0
        multiplier = self.earn.category_multipliers.get(category, 1.0)
        tier_multiplier = self.tiers.tiers[self.tiers.rank(tier)].earn_multiplier
        return math.floor(amount_cents / 100 * self.earn.points_per_unit * multiplier * tier_multiplier)


def read_yaml(path: Path) -> Any:
    """The parsed YAML of a config file, or a ConfigError naming the file (missing, or not YAML)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _read(path: Path, model: type[SQLModel] | type[BaseModel]) -> Any:
    data = read_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """Every error of ``exc`` as ``field.path: message``, joined: what a config file's author needs."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def load_programme(config_dir: Path) -> Programme:
    """Read and validate the programme files in ``config_dir``."""
    base = _read(config_dir / "programme.yaml", _ProgrammeFile)
    tiers = _read(config_dir / "tiers.yaml", TierRules)
    offers = _read(config_dir / "offers.yaml", _OfferFile)
    try:
        return Programme(**base.model_dump(), tiers=tiers, offers=offers.offers)
    except ValidationError as exc:
        raise ConfigError(f"{config_dir}/offers.yaml: " + describe_validation_error(exc)) from None


def sync_catalogue(session: Session, programme: Programme) -> None:
    """Upsert the configured tiers and offers into their tables (offers no longer listed are deactivated)."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    tier_rows = [
        {**spec.model_dump(), "rank": rank} for rank, spec in enumerate(programme.tiers.tiers)
    ]
    # Ranks are unique: park existing ranks out of the way so a reordering cannot collide.
    session.execute(TIERS.update().values(rank=-1 - TIERS.c.rank))
    for table, rows, key in ((TIERS, tier_rows, "code"), (OFFERS, [o.model_dump() for o in programme.offers], "code")):
        stmt = insert(table).values(rows)
        updates = {c: stmt.excluded[c] for c in rows[0] if c != key}
        session.execute(stmt.on_conflict_do_update(index_elements=[key], set_=updates))
    listed = [o.code for o in programme.offers]
    session.execute(OFFERS.update().where(OFFERS.c.code.not_in(listed)).values(active=False))
