"""Offline evaluation of uplift models and offer policies on a randomised campaign.

Metrics follow scikit-uplift's definitions so figures compare with published ones:

* :func:`uplift_at_k` — response rate of treated minus control among the top ``k`` by score
  (``by_group``: the top k of each group; ``overall``: the top k of everyone);
* :func:`qini_curve` / :func:`qini_auc` — incremental responders as the audience grows, and
  the area between it and random targeting, normalised by the perfect model's;
* :func:`uplift_curve` / :func:`uplift_auc` (AUUC) — the same with rates scaled to the audience;
* :func:`policy_value` — a decision rule's value per member by inverse propensity weighting
  (Horvitz-Thompson over the logged arms), with a bootstrap confidence interval.

Cross-fitting (:func:`cross_fit`) gives every row a score from a model that never saw it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

NONE = -1  # the "no offer" decision, as returned by recommenders.policy


def _arrays(y: Any, score: Any, treatment: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_, s, w = (np.asarray(a, dtype=float) for a in (y, score, treatment))
    if not (y_.shape == s.shape == w.shape) or y_.ndim != 1:
        raise ValueError("y, score and treatment must be 1-d arrays of one length")
    return y_, s, w


def uplift_at_k(y: Any, score: Any, treatment: Any, k: float = 0.3, strategy: str = "by_group") -> float:
    """Treated minus control response rate among the top ``k`` (fraction) ranked by ``score``."""
    y_, s, w = _arrays(y, score, treatment)
    if not 0 < k <= 1:
        raise ValueError("k must be a fraction in (0, 1]")
    order = np.argsort(-s, kind="mergesort")  # stable: ties keep their input order, as sklift does
    y_, w = y_[order], w[order]
    if strategy == "overall":
        top = slice(0, int(np.ceil(k * y_.size)))
        yt, wt = y_[top], w[top]
        return float(yt[wt == 1].mean() - yt[wt == 0].mean())
    if strategy != "by_group":
        raise ValueError("strategy must be 'by_group' or 'overall'")
    treated, control = y_[w == 1], y_[w == 0]
    return float(treated[: int(np.ceil(k * treated.size))].mean() - control[: int(np.ceil(k * control.size))].mean())


def _cumulative(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cumulative counts at each distinct score threshold (ties move together)."""
    order = np.argsort(-s, kind="mergesort")
    y, s, w = y[order], s[order], w[order]
    cut = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    n_t, n_c = np.cumsum(w)[cut], np.cumsum(1 - w)[cut]
    y_t, y_c = np.cumsum(y * w)[cut], np.cumsum(y * (1 - w))[cut]
    return cut + 1, n_t, n_c, y_t, y_c


def qini_curve(y: Any, score: Any, treatment: Any) -> tuple[np.ndarray, np.ndarray]:
    """(audience size, incremental responders) points, starting at (0, 0)."""
    n, n_t, n_c, y_t, y_c = _cumulative(*_arrays(y, score, treatment))
    gain = y_t - np.divide(y_c * n_t, n_c, out=np.zeros_like(y_c), where=n_c > 0)
    return np.r_[0, n], np.r_[0, gain]


def uplift_curve(y: Any, score: Any, treatment: Any) -> tuple[np.ndarray, np.ndarray]:
    """(audience size, (treated rate - control rate) * audience size) points, starting at (0, 0)."""
    n, n_t, n_c, y_t, y_c = _cumulative(*_arrays(y, score, treatment))
    rate_t = np.divide(y_t, n_t, out=np.zeros_like(y_t), where=n_t > 0)
    rate_c = np.divide(y_c, n_c, out=np.zeros_like(y_c), where=n_c > 0)
    return np.r_[0, n], np.r_[0, (rate_t - rate_c) * n]


def _normalised_area(curve: Callable[..., tuple[np.ndarray, np.ndarray]], y: Any, score: Any,
                     treatment: Any) -> float:
    y_, s, w = _arrays(y, score, treatment)
    x, g = curve(y_, s, w)
    random_area = g[-1] * x[-1] / 2
    px, pg = curve(y_, y_ * w - y_ * (1 - w), w)  # perfect: treated responders first, control responders last
    perfect = np.trapezoid(pg, px) - random_area
    return float((np.trapezoid(g, x) - random_area) / perfect) if perfect else 0.0


def qini_auc(y: Any, score: Any, treatment: Any) -> float:
    """Area between the Qini curve and random targeting, as a share of the perfect model's."""
    return _normalised_area(qini_curve, y, score, treatment)


def uplift_auc(y: Any, score: Any, treatment: Any) -> float:
    """AUUC: area between the uplift curve and random targeting, as a share of the perfect model's."""
    return _normalised_area(uplift_curve, y, score, treatment)


def cross_fit(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], n_rows: int, strata: np.ndarray,
              folds: int = 5, random_state: int = 0) -> np.ndarray:
    """Out-of-fold predictions: ``fit_predict(train_rows, test_rows)`` returns scores for the test rows."""
    out: np.ndarray | None = None
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    for train, test in splitter.split(np.zeros(n_rows), strata):
        scores = np.asarray(fit_predict(train, test), dtype=float)
        if out is None:
            out = np.zeros((n_rows, *scores.shape[1:]))
        out[test] = scores
    assert out is not None
    return out


@dataclass(frozen=True)
class PolicyValue:
    """A decision rule's estimated value per member, with its bootstrap confidence interval."""

    name: str
    value: float
    low: float
    high: float


def arm_propensities(arm: np.ndarray, n_arms: int) -> np.ndarray:
    """Logged share of each decision (index 0 = no offer, then arms 0..k-1), as in a randomised campaign."""
    counts = np.bincount(arm + 1, minlength=n_arms + 1).astype(float)
    return counts / counts.sum()


def ipw_values(decision: np.ndarray, arm: np.ndarray, reward: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    """Per-row IPW contributions: reward / P(logged arm) where the decision matches the log, else 0."""
    match = decision == arm
    return np.where(match, reward / propensity[arm + 1], 0.0)


def _bootstrap(name: str, contributions: np.ndarray, n_boot: int, random_state: int, alpha: float) -> PolicyValue:
    """Mean of per-row ``contributions`` with a percentile bootstrap interval (resamples fixed by the seed)."""
    rng = np.random.default_rng(random_state)
    n = contributions.size
    boots = np.array([contributions[rng.integers(0, n, n)].mean() for _ in range(n_boot)])
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return PolicyValue(name, float(contributions.mean()), float(low), float(high))


def policy_value(name: str, decision: np.ndarray, arm: np.ndarray, reward: np.ndarray, *, n_arms: int,
                 n_boot: int = 500, random_state: int = 0, alpha: float = 0.05) -> PolicyValue:
    """IPW value per member of ``decision`` (-1 none, else arm index) on a log of ``arm`` and ``reward``."""
    contributions = ipw_values(decision, arm, reward, arm_propensities(arm, n_arms))
    return _bootstrap(name, contributions, n_boot, random_state, alpha)


def policy_gain(name: str, decision: np.ndarray, baseline: np.ndarray, arm: np.ndarray, reward: np.ndarray, *,
                n_arms: int, n_boot: int = 500, random_state: int = 0, alpha: float = 0.05) -> PolicyValue:
    """IPW value of ``decision`` minus ``baseline``'s, with a paired bootstrap (both on the same resamples).

    Pairing cancels the rows where the two policies agree, so the interval is much narrower than
    the two separate intervals suggest.
    """
    propensity = arm_propensities(arm, n_arms)
    difference = ipw_values(decision, arm, reward, propensity) - ipw_values(baseline, arm, reward, propensity)
    return _bootstrap(name, difference, n_boot, random_state, alpha)


def reference_policies(n_rows: int, arms: Sequence[str], random_state: int = 0) -> dict[str, np.ndarray]:
    """Send-to-none, random (uniform over none and every arm) and send-to-all for each arm."""
    rng = np.random.default_rng(random_state)
    policies = {"send to none": np.full(n_rows, NONE), "random": rng.integers(-1, len(arms), n_rows)}
    for j, a in enumerate(arms):
        policies[f"send all: {a}"] = np.full(n_rows, j)
    return policies


def compare_policies(model_decision: np.ndarray, arm: np.ndarray, reward: np.ndarray, arms: Sequence[str],
                     *, n_boot: int = 500, random_state: int = 0) -> list[PolicyValue]:
    """The model's policy next to the reference policies, best single arm included, all by IPW."""
    policies = {"model policy": model_decision, **reference_policies(arm.size, arms, random_state)}
    return [policy_value(name, d, arm, reward, n_arms=len(arms), n_boot=n_boot, random_state=random_state)
            for name, d in policies.items()]


def best_single_arm(values: Sequence[PolicyValue]) -> PolicyValue:
    """The best policy that gives everyone the same decision: one arm for all, or none (an arm too)."""
    return max((v for v in values if v.name.startswith("send all: ") or v.name == "send to none"),
               key=lambda v: v.value)


def gain_over_best_arm(model_decision: np.ndarray, arm: np.ndarray, reward: np.ndarray, arms: Sequence[str],
                       values: Sequence[PolicyValue], *, n_boot: int = 500, random_state: int = 0) -> PolicyValue:
    """The model policy minus the best single arm of ``values`` (paired bootstrap; see :func:`policy_gain`)."""
    best = best_single_arm(values)
    j = NONE if best.name == "send to none" else list(arms).index(best.name.removeprefix("send all: "))
    return policy_gain(f"model policy - {best.name}", model_decision, np.full(arm.size, j), arm, reward,
                       n_arms=len(arms), n_boot=n_boot, random_state=random_state)
