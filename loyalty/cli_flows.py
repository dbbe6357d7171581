"""``loyalflow serve-flows``: serve every deployment with its schedule or trigger (or list them).

Merged into the top level of ``loyalflow`` (``app.add_typer(flows_app, name=None)``); settings come
from the app callback through ``ctx.obj``. Prefect and the flows are imported inside the command
so ``loyalflow --help`` stays instant.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.console import Console
from rich.table import Table

from loyalty.cli_support import app_context as _app
from loyalty.cli_support import fail as _fail
from loyalty.programme import ConfigError, load_programme

if TYPE_CHECKING:
    from flows.serve import DeploymentSpec


class RunnerChoice(StrEnum):
    """``--task-runner`` values (mirrors ``flows.serve.TaskRunnerKind``, which imports Prefect: slow for --help)."""

    THREAD = "thread"
    DASK = "dask"


flows_app = typer.Typer(help="Serve the Prefect deployments.")  # merged into the top level
console = Console()


def deployments_table(specs: list[DeploymentSpec], missing: dict[str, str]) -> Table:
    """The deployments as a Rich table; optional flows left out are listed in the caption."""
    from flows.serve import describe

    table = Table(title="Deployments", caption="; ".join(f"{n} not served: {why}" for n, why in missing.items()))
    for column in ("deployment", "flow", "schedule", "trigger", "parameters", "task runner"):
        table.add_column(column, overflow="fold")
    for spec in specs:
        row = describe(spec)
        table.add_row(row["name"], row["flow"], row["schedule"], row["trigger"], row["parameters"],
                      row["task_runner"])
    return table


@flows_app.command("serve-flows")
def serve_flows_command(
    ctx: typer.Context,
    list_only: Annotated[bool, typer.Option("--list", help="Print the deployments and exit without serving.")] = False,
    task_runner: Annotated[RunnerChoice, typer.Option(help="dask: chunk tasks on an existing Dask cluster.")
                           ] = RunnerChoice.THREAD,
    dask_address: Annotated[str | None, typer.Option(help="The Dask scheduler, e.g. tcp://10.0.0.5:8786.")] = None,
    timezone: Annotated[str, typer.Option(help="Zone of the programme-wide schedules (campaigns have their own).")
                        ] = "UTC",
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many flow runs at once.")] = None,
) -> None:
    """Serve every deployment (campaigns, maintenance, triggers, attribution, training) until interrupted."""
    from prefect.settings import PREFECT_API_URL

    from flows.serve import TaskRunnerKind, deployment_specs, optional_flows, serve_all

    settings = _app(ctx).settings
    try:
        ZoneInfo(timezone)
        specs = deployment_specs(settings, load_programme(settings.config_dir), timezone=timezone,
                                 task_runner=TaskRunnerKind(task_runner.value), dask_address=dask_address)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        _fail(f"unknown time zone {timezone!r}" if isinstance(exc, ZoneInfoNotFoundError) else str(exc), 2)
    except ConfigError as exc:
        _fail(str(exc), 2)
    console.print(deployments_table(specs, optional_flows()[1]))
    if list_only:
        return
    if PREFECT_API_URL.value() is None:  # a temporary server would start, schedule nothing and vanish with us
        _fail("PREFECT_API_URL is not set: start `prefect server start` and export PREFECT_API_URL first", 2)
    console.print(f"serving {len(specs)} deployments on {PREFECT_API_URL.value()} (Ctrl-C to stop)")
    serve_all(specs, limit=limit)

