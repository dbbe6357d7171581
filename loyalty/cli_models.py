"""``loyalflow evaluate``, ``loyalflow train`` and ``loyalflow models list|show``.

``evaluate`` works on any randomised campaign table in a CSV file (no database); ``train``
learns from the database's past campaigns and writes a versioned artifact under
``<var_dir>/models``; ``models`` lists and shows those artifacts without loading them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from loyalty.cli_support import app_context as _app
from loyalty.cli_support import fail as _fail

if TYPE_CHECKING:
    pass

evaluate_app = typer.Typer(help="Evaluate and train recommenders.")  # merged into the top level
models_app = typer.Typer(help="Trained model artifacts.", no_args_is_help=True)
console = Console()


def _shrinkage(text: str) -> str | float | None:
    """``auto`` / ``none`` / a number in [0, 1], as UpliftRecommender's ``shrinkage``."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        slope = float(text)
    except ValueError:
        slope = -1.0
    if not 0.0 <= slope <= 1.0:
        raise typer.BadParameter("--shrinkage must be auto, none or a number in [0, 1]")
    return slope


@evaluate_app.command("evaluate")
def evaluate_command(
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="CSV of a randomised campaign.")],
    treatment: Annotated[str, typer.Option(help="Column holding each row's arm.")],
    control: Annotated[str, typer.Option(help="The arm value of the control (holdout).")],
    outcome: Annotated[str, typer.Option(help="Binary outcome column (0/1).")],
    spend: Annotated[str | None, typer.Option(help="Spend column (valued at --margin).")] = None,
    cost: Annotated[float, typer.Option(help="Cost of treating one member, in outcome value units.")] = 0.0,
    value: Annotated[float, typer.Option(help="Value of one conversion.")] = 1.0,
    margin: Annotated[float, typer.Option(help="Share of spend that is margin.")] = 1.0,
    exclude: Annotated[list[str] | None, typer.Option(help="Columns that are not features (other outcomes).")] = None,
    arm: Annotated[list[str] | None, typer.Option(help="Keep only these arms (and the control).")] = None,
    method: Annotated[list[str] | None, typer.Option(help="Meta-learners: t, x, ct (default all).")] = None,
    k: Annotated[float, typer.Option(min=0.01, max=1.0, help="Fraction for uplift@k.")] = 0.3,
    test_size: Annotated[float | None, typer.Option(help="Fit/score split instead of cross-fitting.")] = None,
    folds: Annotated[int, typer.Option(min=2)] = 5,
    seed: Annotated[int, typer.Option(help="random_state of splits and bootstrap.")] = 42,
    shrinkage: Annotated[str, typer.Option(help="Pull lifts toward each arm's average: auto, none, or 0..1.")] = "auto",
    policy_method: Annotated[str | None, typer.Option(help="Method whose policy is reported (default: best "
                                                            "uplift@k).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the PNG plots and summary.json.")] = Path("var/evaluation"),
) -> None:
    """Cross-fitted uplift@k, Qini, AUUC and IPW policy values (with bootstrap CIs) against references."""
    import pandas as pd

    from recommenders.campaign_eval import campaign_table, evaluate_campaign, summary_lines
    from recommenders.plots import plot_policies, plot_qini

    frame = pd.read_csv(data)
    if arm and treatment in frame.columns:
        frame = frame[frame[treatment].astype(str).isin([*arm, control])]
    try:
        table = campaign_table(frame, treatment=treatment, control=control, outcome=outcome,
                               spend=spend, exclude=exclude or [])
        report = evaluate_campaign(table, methods=method or ("t", "x", "ct"), k=k, value=value, cost=cost,
                                   margin=margin, test_size=test_size, folds=folds, random_state=seed,
                                   params={"shrinkage": _shrinkage(shrinkage)}, policy_method=policy_method)
    except ValueError as exc:
        _fail(str(exc), 2)
    for line in summary_lines(report):
        console.print(line, highlight=False, markup=False)
    best = report.policy_of()
    plots = [plot_qini(report, out / "qini.png"), plot_policies(report, best, out / "policy_value.png")]
    summary = {"rows": report.n_rows, "arms": list(report.arms), "protocol": report.protocol, "k": k,
               "metrics": {m.method: m.metrics for m in report.methods}, "best": best,
               "policies": {m: [vars(v) for v in values] for m, values in report.policies.items()},
               "gain_over_best_arm": {m: vars(v) for m, v in report.gains.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"plots: {', '.join(str(p) for p in plots)}")


@evaluate_app.command("train")
def train_command(
    ctx: typer.Context,
    campaign: Annotated[str | None, typer.Option(help="Only this campaign's runs (default: all).")] = None,
    method: Annotated[str, typer.Option(help="t, x or ct.")] = "x",
    name: Annotated[str, typer.Option(help="Artifact name.")] = "uplift",
) -> None:
    """Learn offer uplift from past campaigns (exposures, holdouts, attributed outcomes); save an artifact."""
    from loyalty.programme import load_programme
    from loyalty.training import train_and_save

    app_ctx = _app(ctx)
    try:
        path = train_and_save(app_ctx.engine, load_programme(app_ctx.settings.config_dir),
                              app_ctx.settings.var_dir / "models", campaign=campaign, method=method, name=name)
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"saved [bold]{path}[/]")


@models_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """Every trained artifact, oldest first."""
    from recommenders.registry import list_cards

    directory = _app(ctx).settings.var_dir / "models"
    table = Table("name", "version", "method", "arms", "rows", "data window", "code")
    for card in list_cards(directory) if directory.exists() else []:
        window = card.data_window
        table.add_row(card.name, card.version, card.method, str(len(card.arms)), f"{window.get('rows', 0):,}",
                      f"{window.get('from', '')[:10]} .. {window.get('to', '')[:10]}", card.code_version)
    console.print(table)


@models_app.command("show")
def show_command(ctx: typer.Context, model: Annotated[str, typer.Argument(help="Version, or name (newest).")]) -> None:
    """An artifact's card: schema, data window, metrics, code version."""
    from recommenders.registry import find

    directory = _app(ctx).settings.var_dir / "models"
    try:
        path = find(directory, model)
    except FileNotFoundError as exc:
        _fail(str(exc))
    card = json.loads(path.with_suffix(".json").read_text())
    card["schema"] = {"features": len(card["schema"]["names"]), "names": card["schema"]["names"]}
    console.print_json(json.dumps(card))
