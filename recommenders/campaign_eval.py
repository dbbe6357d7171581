"""Evaluate uplift models and the offer policy on any randomised campaign table (a pandas frame).

Used by ``loyalflow evaluate`` and ``bench/hillstrom.py``. Each row is one member with their
features, the arm they were randomised to (``control`` = the holdout), a binary outcome and
optionally a spend. Scores are cross-fitted (every row scored by a model that never saw it),
or, with ``test_size``, fitted on one split and scored on the other (scikit-uplift's protocol).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from recommenders.evaluation import (
    PolicyValue,
    best_single_arm,
    compare_policies,
    cross_fit,
    gain_over_best_arm,
    qini_auc,
    qini_curve,
    uplift_at_k,
    uplift_auc,
)
from recommenders.policy import choose_offers
from recommenders.uplift import UpliftRecommender


@dataclass(frozen=True)
class CampaignTable:
    """A randomised campaign as arrays: features, arm index (-1 control), outcome, optional spend."""

    X: np.ndarray
    arm: np.ndarray
    y: np.ndarray
    spend: np.ndarray | None
    arms: tuple[str, ...]
    feature_names: tuple[str, ...]


def campaign_table(frame: pd.DataFrame, *, treatment: str, control: str, outcome: str, spend: str | None = None,
                   exclude: Sequence[str] = ()) -> CampaignTable:
    """Split ``frame`` into features (other columns, text one-hot encoded) and the experiment's columns."""
    for column in (treatment, outcome, *([spend] if spend else [])):
        if column not in frame.columns:
            raise ValueError(f"column {column!r} is not in the data (columns: {', '.join(frame.columns)})")
    labels = frame[treatment].astype(str).to_numpy()
    if not (labels == str(control)).any():
        raise ValueError(f"no row has {treatment} = {control!r}")
    arms = tuple(sorted(set(labels) - {str(control)}))
    index = {a: i for i, a in enumerate(arms)}
    arm = np.array([index.get(label, -1) for label in labels], dtype=np.int64)
    dropped = {treatment, outcome, *([spend] if spend else []), *exclude}
    features = pd.get_dummies(frame.drop(columns=[c for c in frame.columns if c in dropped]), dtype=float)
    y = frame[outcome].to_numpy(dtype=float)
    if not set(np.unique(y)) <= {0.0, 1.0}:
        raise ValueError(f"outcome {outcome!r} must be 0/1")
    money = frame[spend].to_numpy(dtype=float) if spend else None
    return CampaignTable(features.to_numpy(dtype=float), arm, y, money, arms, tuple(features.columns))


@dataclass
class MethodResult:
    """One meta-learner's out-of-sample lifts and metrics per arm."""

    method: str
    conversion: np.ndarray  # (n_eval, k) after shrinkage: what the policy acts on
    spend: np.ndarray | None
    raw: np.ndarray  # (n_eval, k) before shrinkage: what the ranking metrics use
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> metric -> value


@dataclass
class EvaluationReport:
    """Everything ``loyalflow evaluate`` prints and plots."""

    arms: tuple[str, ...]
    n_rows: int
    protocol: str
    k: float
    methods: list[MethodResult]
    policies: dict[str, list[PolicyValue]]  # method -> values (model policy first)
    eval_rows: np.ndarray
    table: CampaignTable
    gains: dict[str, PolicyValue]  # method -> model policy minus the best single arm (paired bootstrap)
    policy_method: str | None = None  # chosen before evaluation; None = the best by uplift@k

    def best(self) -> MethodResult:
        """The method with the highest mean uplift@k over arms."""
        return max(self.methods, key=lambda m: np.mean([v["uplift_at_k"] for v in m.metrics.values()]))

    def policy_of(self) -> str:
        """The method whose policy is reported: the one named in advance, else the best by uplift@k."""
        return self.policy_method or self.best().method


def _fit_predict(table: CampaignTable, method: str, train: np.ndarray, test: np.ndarray,
                 params: dict[str, Any]) -> np.ndarray:
    labels = np.where(table.arm[train] < 0, "__control__", np.array(table.arms, dtype=object)[table.arm[train]])
    model = UpliftRecommender(method=method, control="__control__", **params)
    spend = table.spend[train] if table.spend is not None else None
    model.fit(table.X[train], table.y[train], treatment=labels, spend=spend)
    order = [model.arms_.index(a) for a in table.arms]  # model sorts arm names; keep the table's order
    X = table.X[test]
    parts = [model.predict(X)[:, order], model.predict_raw(X)[:, order]]
    if spend is not None:
        parts.append(model.predict_spend(X)[:, order])
    return np.concatenate(parts, axis=1)  # shrunk conversion, raw conversion[, shrunk spend]


def _scores(table: CampaignTable, method: str, *, test_size: float | None, folds: int, random_state: int,
            params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(rows scored, their lifts): the test split, or every row cross-fitted."""
    strata = (table.arm + 1) * 2 + table.y.astype(int)
    if test_size is not None:
        rows = np.arange(table.y.size)
        train, test = train_test_split(rows, test_size=test_size, random_state=random_state, stratify=strata)
        return test, _fit_predict(table, method, train, test, params)
    scores = cross_fit(lambda tr, te: _fit_predict(table, method, tr, te, params), table.y.size, strata,
                       folds=folds, random_state=random_state)
    return np.arange(table.y.size), scores


def _metrics(table: CampaignTable, rows: np.ndarray, lifts: np.ndarray, k: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(table.arms):
        keep = (table.arm[rows] == j) | (table.arm[rows] < 0)
        y, w, s = table.y[rows][keep], (table.arm[rows][keep] == j).astype(float), lifts[keep, j]
        out[name] = {"uplift_at_k": uplift_at_k(y, s, w, k), "qini_auc": qini_auc(y, s, w),
                     "auuc": uplift_auc(y, s, w)}
    return out


def rewards(table: CampaignTable, rows: np.ndarray, *, value: float, cost: float, margin: float) -> np.ndarray:
    """Realised value of each logged row: value per conversion + margin * spend - cost when treated."""
    reward = value * table.y[rows] - cost * (table.arm[rows] >= 0)
    if table.spend is not None:
        reward = reward + margin * table.spend[rows]
    return reward


def evaluate_campaign(table: CampaignTable, *, methods: Sequence[str] = ("t", "x", "ct"), k: float = 0.3,
                      value: float = 1.0, cost: float = 0.0, margin: float = 1.0, test_size: float | None = None,
                      folds: int = 5, random_state: int = 42, n_boot: int = 500,
                      params: dict[str, Any] | None = None, policy_method: str | None = None) -> EvaluationReport:
    """Score every method, compute uplift@k / Qini / AUUC per arm, and value each method's policy by IPW.

    ``params`` go to :class:`~recommenders.uplift.UpliftRecommender` (its ``shrinkage`` included);
    ``policy_method`` names, before anything is measured, the method whose policy is reported.
    """
    if policy_method is not None and policy_method not in methods:
        raise ValueError(f"policy method {policy_method!r} is not among the methods {tuple(methods)}")
    results: list[MethodResult] = []
    rows = np.arange(table.y.size)
    n_arms = len(table.arms)
    for method in methods:
        rows, scores = _scores(table, method, test_size=test_size, folds=folds, random_state=random_state,
                               params=params or {})
        conversion, raw = scores[:, :n_arms], scores[:, n_arms:2 * n_arms]
        spend = scores[:, 2 * n_arms:] if table.spend is not None else None
        results.append(MethodResult(method, conversion, spend, raw, _metrics(table, rows, raw, k)))
    protocol = f"{test_size:.0%} held-out split" if test_size else f"{folds}-fold cross-fitting"
    report = EvaluationReport(table.arms, table.y.size, protocol, k, results, {}, rows, table, {}, policy_method)
    return revalue(report, value=value, cost=cost, margin=margin, n_boot=n_boot, random_state=random_state)


def revalue(report: EvaluationReport, *, value: float = 1.0, cost: float = 0.0, margin: float = 1.0,
            n_boot: int = 500, random_state: int = 42) -> EvaluationReport:
    """The same scores' policies valued at another ``value`` / ``cost`` / ``margin`` (no refit)."""
    policies: dict[str, list[PolicyValue]] = {}
    gains: dict[str, PolicyValue] = {}
    rows, table = report.eval_rows, report.table
    logged, reward = table.arm[rows], rewards(table, rows, value=value, cost=cost, margin=margin)
    for m in report.methods:
        expected = value * m.conversion + (margin * m.spend if m.spend is not None else 0.0) - cost
        decision = choose_offers(expected, np.ones_like(expected, dtype=bool))
        policies[m.method] = compare_policies(decision, logged, reward, table.arms, n_boot=n_boot,
                                              random_state=random_state)
        gains[m.method] = gain_over_best_arm(decision, logged, reward, table.arms, policies[m.method],
                                             n_boot=n_boot, random_state=random_state)
    return dataclasses.replace(report, policies=policies, gains=gains)


def summary_lines(report: EvaluationReport) -> list[str]:
    """Plain-text lines: the metrics per method and arm, then the policy values against the references."""
    lines = [f"{report.n_rows:,} rows, arms {', '.join(report.arms)}; {report.protocol}"]
    for m in report.methods:
        for arm, values in m.metrics.items():
            lines.append(f"{m.method:>3} {arm:<24} uplift@{report.k:.0%} {values['uplift_at_k']:+.4f}  "
                         f"qini {values['qini_auc']:+.4f}  auuc {values['auuc']:+.4f}")
    best = report.policy_of()
    for value in report.policies[best]:
        lines.append(f"policy [{best}] {value.name:<28} {value.value:+.4f}  (95% CI {value.low:+.4f} .. "
                     f"{value.high:+.4f})")
    single, gain = best_single_arm(report.policies[best]), report.gains[best]
    lines.append(f"model policy vs best single arm ({single.name}): {gain.value:+.4f} per member "
                 f"(paired 95% CI {gain.low:+.4f} .. {gain.high:+.4f})")
    return lines


def qini_points(report: EvaluationReport, method: MethodResult, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve of ``method`` for arm ``j`` on the evaluated rows (for plots)."""
    rows = report.eval_rows
    keep = (report.table.arm[rows] == j) | (report.table.arm[rows] < 0)
    w = (report.table.arm[rows][keep] == j).astype(float)
    return qini_curve(report.table.y[rows][keep], method.raw[keep, j], w)
