"""``loyalflow attribute``: attribute purchases to completed campaign runs, in this process.

The same chunks as the ``attribute-campaigns`` flow (:mod:`flows.attribution`), run one after the
other without Prefect, then one line per run attributed: members, final rows, and the treated and
holdout conversion (intent-to-treat means; the measurement with intervals reads the same table).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loyalty.cli_support import app_context as _app
from loyalty.cli_support import as_of_option
from loyalty.types import utcnow

if TYPE_CHECKING:
    pass

attribution_app = typer.Typer(help="Attribute purchases to campaign runs.")  # merged into the top level
console = Console()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _table(summaries: list[dict[str, Any]]) -> Table:
    table = Table("run", "campaign", "slot", "window end", "members", "final", "treated", "conv. treated",
                  "conv. holdout")
    for row in summaries:
        table.add_row(str(row["run_id"]), str(row["campaign"]), f"{row['slot']:%Y-%m-%d %H:%M}",
                      f"{row['window_end']:%Y-%m-%d %H:%M}", f"{row['members']:,}", f"{row['final']:,}",
                      f"{row['treated']:,}", _percent(row["treated_conversion"]), _percent(row["holdout_conversion"]))
    return table


@attribution_app.command("attribute")
def attribute_command(
    ctx: typer.Context,
    as_of: Annotated[datetime | None, typer.Option(help="Count purchases up to this UTC time (default: now).")] = None,
    chunk_size: Annotated[int | None, typer.Option(min=1, help="Assignments per chunk (default: settings).")] = None,
) -> None:
    """Attribute purchases within each completed run's window to its treated members and holdout."""
    from loyalty import attribution

    app_ctx = _app(ctx)
    when = as_of_option(as_of) or utcnow()
    engine = app_ctx.engine
    run_ids = attribution.runs_needing_attribution(engine, as_of=when)
    totals = attribution.attribute_all(engine, as_of=when, chunk_size=chunk_size or app_ctx.settings.chunk_size)
    console.print(f"attributed {len(run_ids)} runs as of {when:%Y-%m-%d %H:%M} UTC: "
                  f"{totals.get('inserted', 0):,} rows added, {totals.get('updated', 0):,} updated, "
                  f"{totals.get('final', 0):,} final")
    if run_ids:
        console.print(_table(attribution.run_summaries(engine, run_ids)))
