"""Shrink each arm's per-member lift toward the arm's average lift, by how much signal the model has.

A meta-learner's per-member lifts mix signal with noise; where an arm's lift barely varies between
members (Hillstrom's Mens e-mail), acting on that noise makes a policy worse than treating on the
arm's average. Per arm ``a`` the calibrated lift is

    center_a + slope_a * (raw_a(x) - offset_a)

where ``center_a`` is the arm's average lift on the training data (difference in means, unbiased
in a randomised campaign), ``offset_a`` the average raw prediction and ``slope_a`` in [0, 1] the
least-squares slope of the transformed outcome on the centred *cross-fitted* lift:

    Y* = y * (W - p) / (p (1 - p)),   E[Y* | x] = tau_a(x)   (Athey & Imbens 2015)

so ``slope_a`` minimises the out-of-fold error of the calibrated lift against the true lift. A
slope of 0 means the ranking carries no signal: the arm's lift is its average for everyone (and a
policy falls back to the best single arm); 1 keeps the raw model. A monotone map with a positive
slope keeps every ranking metric (uplift@k, Qini) unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shrinkage:
    """Per arm (columns in the model's ``arms_`` order): calibrated = center + slope * (raw - offset)."""

    center: np.ndarray
    offset: np.ndarray
    slope: np.ndarray

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated lifts ``(n, k)`` from raw ones."""
        return self.center[None, :] + self.slope[None, :] * (raw - self.offset[None, :])


def arm_mean_lift(target: np.ndarray, arm: np.ndarray, arms: tuple[str, ...], is_control: np.ndarray) -> np.ndarray:
    """Difference in means of each arm against the control: the average lift of a randomised campaign."""
    base = float(target[is_control].mean())
    return np.array([float(target[arm == a].mean()) - base if (arm == a).any() else 0.0 for a in arms])


def transformed_outcome(target: np.ndarray, treated: np.ndarray) -> np.ndarray:
    """``y (W - p) / (p (1 - p))`` over treated and control rows: its expectation given x is the lift."""
    w = treated.astype(float)
    p = float(w.mean())
    return target * (w - p) / (p * (1 - p))


def fit_slope(raw: np.ndarray, target: np.ndarray, treated: np.ndarray) -> tuple[float, float]:
    """(offset, slope in [0, 1]) of the transformed outcome regressed on out-of-fold lifts ``raw``.

    ``raw`` and ``target`` cover one arm's treated rows and the control rows (``treated`` says which).
    """
    offset = float(raw.mean())
    centred = raw - offset
    spread = float(np.dot(centred, centred))
    if spread <= 0 or treated.all() or not treated.any():
        return offset, 0.0  # constant predictions: nothing to rank by
    slope = float(np.dot(transformed_outcome(target, treated), centred)) / spread
    return offset, float(np.clip(slope, 0.0, 1.0))


def fitted_shrinkage(oof: np.ndarray, target: np.ndarray, arm: np.ndarray, arms: tuple[str, ...],
                     is_control: np.ndarray) -> Shrinkage:
    """Slopes chosen on cross-fitted lifts ``oof`` (n, k): every row scored by a model that never saw it."""
    offsets, slopes = np.zeros(len(arms)), np.zeros(len(arms))
    for j, a in enumerate(arms):
        rows = (arm == a) | is_control
        offsets[j], slopes[j] = fit_slope(oof[rows, j], target[rows], arm[rows] == a)
    return Shrinkage(arm_mean_lift(target, arm, arms, is_control), offsets, slopes)


def fixed_shrinkage(raw: np.ndarray, target: np.ndarray, arm: np.ndarray, arms: tuple[str, ...],
                    is_control: np.ndarray, slope: float) -> Shrinkage:
    """The same given ``slope`` for every arm (0 = arm mean only, 1 = raw model, re-centred on the mean)."""
    if not 0.0 <= slope <= 1.0:
        raise ValueError(f"shrinkage must be 'auto', None or a number in [0, 1], not {slope!r}")
    offsets = np.array([float(raw[(arm == a) | is_control, j].mean()) for j, a in enumerate(arms)])
    return Shrinkage(arm_mean_lift(target, arm, arms, is_control), offsets, np.full(len(arms), slope))
