"""On the seeded synthetic programme (known true effects): features from the database match the seed's,
training saves a versioned artifact that refuses another schema, and the policy comes close to the oracle."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from loyalty.features_query import load_member_rows
from loyalty.programme import Programme
from loyalty.seed import SeedReport, seed_programme
from loyalty.seed_campaign import OFFER_CODES, campaign_slot_us
from loyalty.seed_io import from_us, to_us
from loyalty.training import DEFAULT_PARAMS, TrainingData, train, training_data
from recommenders import registry
from recommenders.features import FeatureSchema, SchemaMismatchError, build_features
from recommenders.policy import NO_OFFER, OfferBook, choose_offers, eligibility, expected_value, realised_value
from recommenders.uplift import UpliftRecommender
from tests.conftest import BACKENDS, database_url
from tests.test_seed import fresh_engine

AS_OF = datetime(2026, 6, 25, tzinfo=UTC)
MARGIN_CENTS = 3_000  # margin of one incremental purchase


def read_truth(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as handle:
        return pd.DataFrame(list(csv.DictReader(handle))).astype({"member_id": int}).set_index("member_id")


@pytest.fixture(scope="module", params=BACKENDS)
def small(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          programme: Programme) -> Iterator[tuple[Engine, SeedReport]]:
    folder = tmp_path_factory.mktemp(f"rec_small_{request.param}")
    with fresh_engine(request.param, folder, programme) as engine:
        yield engine, seed_programme(engine, programme, members=2_000, seed=11, as_of=AS_OF, truth_dir=folder)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory,
          programme: Programme) -> Iterator[tuple[TrainingData, pd.DataFrame]]:
    """60,000 members on SQLite (about 40,000 in the campaign): enough data for the policy to near the oracle."""
    folder = tmp_path_factory.mktemp("rec_large")
    with fresh_engine("sqlite", folder, programme) as engine:
        report = seed_programme(engine, programme, members=60_000, seed=7, as_of=AS_OF, truth_dir=folder)
        yield training_data(engine, programme), read_truth(report.truth_path)


def test_features_from_the_database_match_the_seeds(small: tuple[Engine, SeedReport], programme: Programme) -> None:
    engine, report = small
    slot = from_us(campaign_slot_us(to_us(AS_OF)))
    raw = load_member_rows(engine, programme, id_range=(1, 2_001), as_of=slot)
    features, schema = build_features(raw, categories=list(programme.earn.category_multipliers))
    truth = read_truth(report.truth_path)
    seeded = truth[["recency_days", "frequency_12m", "monetary_12m", "grocery_share"]].astype(float)
    both = features.join(seeded.rename(columns={"recency_days": "seed_recency"}), how="inner")
    assert len(both) == report.assigned
    np.testing.assert_allclose(both["frequency_365d"], both["frequency_12m"])
    np.testing.assert_allclose(both["monetary_365d"], both["monetary_12m"])
    np.testing.assert_allclose(both["share_grocery"], both["grocery_share"], atol=1e-5)
    np.testing.assert_allclose(both["recency_days"], both["seed_recency"], atol=1e-4)
    assert features["offers_received"].sum() == 0  # the campaign's own exposure is not known at its slot
    assert schema.names == tuple(features.columns)


def test_training_saves_an_artifact_that_refuses_another_schema(small: tuple[Engine, SeedReport],
                                                               programme: Programme, tmp_path: Path) -> None:
    engine, report = small
    data = training_data(engine, programme)
    assert data.arm.size == report.assigned and (data.arm == "holdout").sum() == report.holdout
    params = {"max_iter": 20, "min_samples_leaf": 40}
    path = registry.save(train(data, method="t", params=params), tmp_path)
    artifact = registry.load(path, expected=data.schema)
    assert artifact.card.arms == sorted(OFFER_CODES) and artifact.card.data_window["rows"] == report.assigned
    assert set(artifact.card.metrics) >= {"test_rows", *OFFER_CODES} and artifact.card.code_version
    scores = registry.score(artifact, data.features.iloc[:50])
    assert scores.conversion.shape == (50, 4) and scores.spend is not None
    with pytest.raises(SchemaMismatchError):
        registry.score(artifact, data.features.drop(columns=["locale_fr_FR"]).iloc[:50])
    with pytest.raises(SchemaMismatchError):
        registry.load(path, expected=FeatureSchema(data.schema.names[:-1], data.schema.dtypes[:-1]))
    assert [c.version for c in registry.list_cards(tmp_path)] == [artifact.card.version]


def test_train_and_models_commands(small: tuple[Engine, SeedReport], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from loyalty import training
    from loyalty.cli import app

    engine, _ = small
    monkeypatch.setenv("LOYALFLOW_DATABASE_URL", database_url(engine))
    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path))
    monkeypatch.setattr(training, "DEFAULT_PARAMS", {"max_iter": 10, "min_samples_leaf": 40})
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--method", "t", "--name", "nbo"])
    assert trained.exit_code == 0, trained.output
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "nbo" in listed.output
    shown = runner.invoke(app, ["models", "show", "nbo"])
    assert shown.exit_code == 0 and "spring_reactivation" in shown.output and "data_window" in shown.output
    assert runner.invoke(app, ["models", "show", "nope"]).exit_code == 1


def true_values(truth: pd.DataFrame, book: OfferBook) -> np.ndarray:
    tau = truth[[f"tau_{c}" for c in book.codes]].to_numpy(dtype=float)
    redeem = np.clip(truth["p_base"].to_numpy(dtype=float)[:, None] + tau, 0, 1)
    return expected_value(tau, margin_per_conversion=MARGIN_CENTS, cost_cents=book.cost_cents,
                          redeem_probability=redeem)


def test_policy_is_within_ten_percent_of_the_oracle(large: tuple[TrainingData, pd.DataFrame],
                                                    programme: Programme) -> None:
    data, truth = large
    book = OfferBook.from_specs(programme.offers, [t.code for t in programme.tiers.tiers], sorted(OFFER_CODES))
    # The production defaults (X-learner, regularised trees), without the spend models the policy here ignores.
    model = UpliftRecommender(method="x", control="holdout", **DEFAULT_PARAMS).fit(
        data.features.to_numpy(), data.converted, treatment=data.arm)
    assert model.arms_ == book.codes
    X = data.features.to_numpy()
    lift, redeem = model.predict_conversion(X)
    value = expected_value(lift, margin_per_conversion=MARGIN_CENTS, cost_cents=book.cost_cents,
                           redeem_probability=redeem)
    everyone = np.ones(value.shape, dtype=bool)
    decision = choose_offers(value, everyone)
    truth_value = true_values(truth.loc[data.features.index], book)
    oracle = realised_value(choose_offers(truth_value, everyone), truth_value)
    achieved = realised_value(decision, truth_value)
    send_all = max(truth_value[:, j].sum() for j in range(len(book.codes)))  # the best single offer to everyone
    print(f"policy / oracle = {achieved / oracle:.3f}, best send-to-all / oracle = {send_all / oracle:.3f}")
    assert achieved >= 0.9 * oracle, (achieved, oracle)
    assert achieved > 2 * send_all, (achieved, send_all)
    assert 0 < (decision == NO_OFFER).mean() < 0.2  # it does hold back where nothing pays
    # A budget for a fifth of the audience's offers goes to the most valuable members first.
    cost = np.broadcast_to(book.cost_cents, value.shape)
    budget = 0.2 * (decision >= 0).sum() * float(book.cost_cents.mean())
    capped = choose_offers(value, everyone, cost=cost, budget=budget)
    assert cost[capped >= 0, capped[capped >= 0]].sum() <= budget
    assert (capped >= 0).sum() < (decision >= 0).sum()
    assert realised_value(capped, truth_value) / max((capped >= 0).sum(), 1) > achieved / (decision >= 0).sum()
    mask = eligibility(book, tier_rank=np.zeros(len(X), dtype=int), consent=np.ones(len(X), dtype=bool))
    assert (choose_offers(value, mask) == decision).all()  # no tier limit on these four offers
