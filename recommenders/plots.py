"""PNG plots of an evaluation: Qini curves per arm and method, policy values with their intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt
import numpy as np

from recommenders.campaign_eval import EvaluationReport, qini_points


def plot_qini(report: EvaluationReport, path: Path) -> Path:
    """One panel per arm: each method's Qini curve and the random-targeting diagonal."""
    arms = report.arms
    fig, axes = plt.subplots(1, len(arms), figsize=(5.5 * len(arms), 4.2), squeeze=False)
    for j, arm in enumerate(arms):
        ax = axes[0, j]
        for method in report.methods:
            x, gain = qini_points(report, method, j)
            ax.plot(x, gain, label=f"{method.method} (qini {method.metrics[arm]['qini_auc']:+.3f})")
        ax.plot([0, x[-1]], [0, gain[-1]], "k--", linewidth=1, label="random")
        ax.set(title=f"Qini: {arm}", xlabel="members targeted (by score)", ylabel="incremental responders")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_policies(report: EvaluationReport, method: str, path: Path) -> Path:
    """Horizontal bars: IPW value per member of each policy, with its bootstrap 95 % interval."""
    values = report.policies[method]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(values) + 1.5))
    y = np.arange(len(values))
    centre = np.array([v.value for v in values])
    err = np.array([[v.value - v.low for v in values], [v.high - v.value for v in values]])
    colours = ["tab:green" if v.name == "model policy" else "tab:gray" for v in values]
    ax.barh(y, centre, xerr=err, color=colours, capsize=3)
    ax.set_yticks(y, [v.name for v in values])
    ax.invert_yaxis()
    ax.set(xlabel="value per member (IPW)", title=f"Policy value ({method}-learner)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
