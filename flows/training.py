"""Retrain the uplift recommender from the database's past campaigns and save a versioned artifact.

Meant to run on a schedule after :mod:`flows.attribution`. Skips, with the reason logged and returned,
when there is too little to learn from: fewer than ``min_rows`` assigned members in completed runs, or
no holdout (uplift needs a randomised control). The work is one task: loading features for thousands
of members and fitting happen in one process, and nothing large crosses a task boundary.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from loyalty import jobs, training
from loyalty.attribution import HOLDOUT, completed_arm_counts
from recommenders import registry


def skip_reason(rows: int, holdout: int, min_rows: int) -> str | None:
    """Why training would be pointless on ``rows`` members of which ``holdout`` held out, or None."""
    if rows < min_rows:
        return f"only {rows} assigned members in completed campaign runs (min_rows={min_rows})"
    if holdout == 0:
        return "no holdout member in completed campaign runs: uplift cannot be measured"
    if holdout == rows:
        return "no treated member in completed campaign runs"
    return None


@task(name="train-recommender", cache_policy=NONE)
def train_task(method: str, min_rows: int) -> dict[str, Any]:
    """Load the training data, check it, fit, save; returns ``{"skipped": reason}`` or the artifact's facts."""
    rt = jobs.runtime()
    counts = completed_arm_counts(rt.engine)  # cheap: refuse before loading any feature
    reason = skip_reason(counts["rows"], counts["holdout"], min_rows)
    if reason is not None:
        return {"skipped": reason, **counts}
    data = training.training_data(rt.engine, rt.programme)
    reason = skip_reason(int(data.arm.size), int((data.arm == HOLDOUT).sum()), min_rows)
    if reason is not None:  # members without features (none today) are dropped by training_data
        return {"skipped": reason, **counts}
    # training_data + train + save is train_and_save without reading the data a second time.
    artifact = training.train(data, method=method)
    path = registry.save(artifact, rt.settings.var_dir / "models")
    card = artifact.card
    return {"path": str(path), "version": card.version, "method": card.method, "arms": card.arms,
            "data_window": card.data_window, "metrics": card.metrics}


def _markdown(result: dict[str, Any]) -> str:
    """The artifact card (or the skip reason) as markdown."""
    if "skipped" in result:
        return f"# Recommender training skipped\n\n{result['skipped']}.\n"
    window = result["data_window"]
    lines = [f"# Recommender `{result['version']}` ({result['method']})", "",
             f"Saved to `{result['path']}`: {window['rows']:,} rows from runs {window['runs']} "
             f"({window['from'][:10]} .. {window['to'][:10]}).", "",
             "| arm | uplift@30% | Qini AUC |", "|---|---|---|"]
    metrics = result["metrics"]
    lines += [f"| {arm} | {metrics[arm]['uplift_at_30']} | {metrics[arm]['qini_auc']} |"
              for arm in result["arms"] if arm in metrics]
    lines += ["", f"Test rows: {metrics.get('test_rows', 0):,}."]
    return "\n".join(lines) + "\n"


@flow(name="train-recommender", log_prints=False)
def train_recommender(method: str = "x", min_rows: int = 2000) -> dict[str, Any]:
    """Retrain from every completed campaign run; returns the artifact path and metrics, or why it skipped."""
    logger = get_run_logger()
    result = train_task(method, min_rows)
    create_markdown_artifact(key="recommender-training", markdown=_markdown(result),
                             description="Uplift recommender retraining")
    if "skipped" in result:
        logger.warning("training skipped: %s", result["skipped"])
    else:
        logger.info("trained %s: %s", result["path"], result["metrics"])
    return result
