"""Versioned model artifacts on disk: the fitted model with its feature schema, data window and metrics.

Each artifact is ``<dir>/<name>-<version>.joblib`` next to a ``.json`` card holding everything
but the model, so listing never unpickles anything. :func:`score` refuses a feature frame whose
schema differs from the one recorded at training time.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from recommenders.features import FeatureSchema, SchemaMismatchError, conform
from recommenders.uplift import LiftScores, UpliftRecommender

FORMAT = 1


@dataclass
class ModelCard:
    """What is known about an artifact without loading its model."""

    name: str
    version: str
    method: str
    arms: list[str]
    schema: dict[str, list[str]]
    data_window: dict[str, Any]
    metrics: dict[str, Any]
    code_version: str
    created_at: str
    format: int = FORMAT
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_schema(self) -> FeatureSchema:
        """The recorded schema as an object."""
        return FeatureSchema.from_dict(self.schema)


@dataclass
class ModelArtifact:
    """A card and its fitted model."""

    card: ModelCard
    model: UpliftRecommender


def code_version(repo: Path | None = None) -> str:
    """The git commit of the code (with ``+dirty`` when the tree has changes), or ``unknown``."""
    where = repo or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where, capture_output=True,
                                text=True, check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def new_card(name: str, model: UpliftRecommender, schema: FeatureSchema, *, data_window: dict[str, Any],
             metrics: dict[str, Any]) -> ModelCard:
    """A card for a freshly fitted model; the version is the UTC time of creation."""
    now = datetime.now(UTC)
    return ModelCard(name=name, version=now.strftime("%Y%m%dT%H%M%S%fZ"), method=model.method,
                     arms=list(model.arms_), schema=schema.to_dict(), data_window=data_window, metrics=metrics,
                     code_version=code_version(), created_at=now.isoformat(), params=model.get_params())


def save(artifact: ModelArtifact, directory: Path) -> Path:
    """Write ``<name>-<version>.joblib`` and its ``.json`` card; returns the joblib path."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{artifact.card.name}-{artifact.card.version}"
    joblib.dump({"format": FORMAT, "card": asdict(artifact.card), "model": artifact.model}, stem.with_suffix(".joblib"))
    stem.with_suffix(".json").write_text(json.dumps(asdict(artifact.card), indent=2, default=str))
    return stem.with_suffix(".joblib")


def load(path: Path, *, expected: FeatureSchema | None = None) -> ModelArtifact:
    """Load an artifact; with ``expected``, refuse one whose recorded schema differs."""
    data = joblib.load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SchemaMismatchError(f"{path}: not a loyalflow model artifact of format {FORMAT}")
    card = ModelCard(**data["card"])
    if expected is not None and card.feature_schema != expected:
        raise SchemaMismatchError(f"{path}: trained on a different feature schema than the one given")
    return ModelArtifact(card, data["model"])


def list_cards(directory: Path) -> list[ModelCard]:
    """Every artifact's card in ``directory``, oldest first."""
    cards = [ModelCard(**json.loads(p.read_text())) for p in sorted(directory.glob("*.json"))]
    return sorted(cards, key=lambda c: c.created_at)


def find(directory: Path, name_or_version: str) -> Path:
    """The artifact whose version or ``name-version`` stem matches, or the newest of that name."""
    cards = [c for c in list_cards(directory) if name_or_version in (c.version, c.name, f"{c.name}-{c.version}")]
    if not cards:
        raise FileNotFoundError(f"no model {name_or_version!r} in {directory}")
    card = cards[-1]
    return directory / f"{card.name}-{card.version}.joblib"


def score(artifact: ModelArtifact, features: pd.DataFrame) -> LiftScores:
    """Lifts for the members of ``features``; raises :class:`SchemaMismatchError` on a schema change."""
    matrix = conform(features, artifact.card.feature_schema)
    return artifact.model.predict_lift(matrix)
