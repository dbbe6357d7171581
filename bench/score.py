"""Benchmark: member x offer uplift scores per second, next to a bare ``predict_proba`` floor.

    .venv/bin/python bench/score.py [--members 200000] [--offers 4] [--repeat 5] [--method x]

Fits :class:`recommenders.uplift.UpliftRecommender` (the training defaults of
:mod:`loyalty.training`) on a generated randomised campaign with the production feature
count, then for each repeat scores ``--members`` members against every offer (conversion lift
and P(convert | offer), what the policy needs), and, as the floor, one bare
``HistGradientBoostingClassifier.predict_proba`` with the same settings over the same rows.
Prints medians and whether the model reaches the target of 200,000 member x offer scores/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

import numpy as np  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from loyalty.training import DEFAULT_PARAMS  # noqa: E402
from recommenders.uplift import UpliftRecommender  # noqa: E402

TARGET = 200_000
FEATURES = 33  # what recommenders.features builds for the shipped config


def campaign(rows: int, offers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, arms (holdout + offers) and outcomes with a different planted effect per offer."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, FEATURES))
    arm = rng.integers(-1, offers, rows)
    effect = 0.15 * (X[np.arange(rows), np.clip(arm, 0, None)] > 0) * (arm >= 0)
    y = (rng.random(rows) < 0.1 + 0.05 * (X[:, -1] > 0) + effect).astype(int)
    labels = np.where(arm < 0, "holdout", np.char.add("offer_", arm.astype(str)))
    return X, labels, y


def timed(fn: object, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--offers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--method", default="x", choices=["t", "x", "ct"])
    args = parser.parse_args()
    X, arm, y = campaign(40_000, args.offers)
    model = UpliftRecommender(method=args.method, control="holdout", **DEFAULT_PARAMS).fit(X, y, treatment=arm)
    floor = HistGradientBoostingClassifier(early_stopping=False, **DEFAULT_PARAMS)
    members = np.random.default_rng(1).normal(size=(args.members, FEATURES))

    model_s = timed(lambda: model.predict_conversion(members), args.repeat)
    with threadpool_limits(limits=model.n_threads, user_api="openmp"):  # the same threads as the model
        floor = floor.fit(X, y)
        floor_s = timed(lambda: floor.predict_proba(members), args.repeat)
    scores = args.members * args.offers
    rate, floor_rate = scores / model_s, args.members / floor_s
    print(f"uplift model ({args.method}-learner, {args.offers} offers): {model_s:.3f} s for {scores:,} member x offer "
          f"scores, median {rate:,.0f} scores/s")
    print(f"floor (one predict_proba, same trees' settings): {floor_s:.3f} s for {args.members:,} rows, "
          f"median {floor_rate:,.0f} rows/s; model / floor = {rate / floor_rate:.2f}")
    ok = rate >= TARGET
    print(f"{'PASS' if ok else 'FAIL'} target {TARGET:,} member x offer scores/s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
