"""``loyalflow clv``: fit the lifetime-value models and look at a member's prediction.

``clv fit`` runs :func:`loyalty.clv.fit_lifetime` in this process (BG/NBD + Gamma-Gamma on every member
with a purchase, rows written to ``member_lifetime``) and prints the parameters and CLV bands;
``clv show MEMBER_ID`` prints one member's stored summary and prediction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loyalty.cli_support import app_context as _app
from loyalty.cli_support import as_of_option, fail
from loyalty.clv_models import PARAM_NAMES

clv_app = typer.Typer(help="Member lifetime value (BG/NBD + Gamma-Gamma).", no_args_is_help=True)
console = Console()



def _money(cents: float | None) -> str:
    return "-" if cents is None else f"{cents / 100:,.2f}"


def _params_table(params: dict[str, Any]) -> Table:
    table = Table("parameter", "value", title="parameters (time in days)")
    for name in PARAM_NAMES:
        if name in params:
            table.add_row(name, f"{params[name]:.4f}")
    return table


def _bands_table(bands: list[dict[str, Any]]) -> Table:
    table = Table("CLV band", "members", "mean P(alive)", "mean purchases 12m", "mean CLV 12m", "total CLV 12m",
                  title="members by predicted 12-month value (undiscounted)")
    for row in bands:
        table.add_row(f"{row['band']}", f"{row['members']:,}", f"{row['mean_p_alive']:.3f}",
                      f"{row['mean_purchases']:.2f}", _money(row["mean_clv_cents"]), _money(row["total_clv_cents"]))
    return table


@clv_app.command("fit")
def fit_command(
    ctx: typer.Context,
    as_of: Annotated[datetime | None, typer.Option(help="Use purchases before this UTC time (default: now).")] = None,
) -> None:
    """Fit BG/NBD and Gamma-Gamma on every member's purchases and store each member's prediction."""
    from loyalty import clv

    app_ctx = _app(ctx)
    when = as_of_option(as_of)
    try:
        result = clv.fit_lifetime(app_ctx.engine, as_of=when, chunk_size=app_ctx.settings.chunk_size)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    console.print(f"fit {result.fit_id} as of {result.as_of:%Y-%m-%d %H:%M} UTC: {result.members:,} members "
                  f"({result.repeat_members:,} with repeat purchases), {result.members:,} rows written, "
                  f"{result.rows_deleted:,} stale rows removed, {result.seconds:.1f} s")
    console.print(_params_table(result.params))
    console.print(_bands_table(clv.value_bands(app_ctx.engine)))


@clv_app.command("show")
def show_command(ctx: typer.Context, member_id: Annotated[int, typer.Argument(help="Member id.")]) -> None:
    """One member's purchase summary, P(alive), expected purchases and CLV over the next 12 months."""
    from loyalty import clv

    row = clv.member_lifetime(_app(ctx).engine, member_id)
    if row is None:
        fail(f"no lifetime value for member {member_id} (no purchase before the last fit, or no fit yet)")
    table = Table("field", "value", title=f"member {member_id} (fit {row['fit_id']})")
    table.add_row("repeat purchase days (x)", f"{row['frequency']}")
    table.add_row("first to last purchase (days)", f"{row['recency_days']:.0f}")
    table.add_row("first purchase to as_of (days)", f"{row['age_days']:.1f}")
    table.add_row("mean repeat-day spend", _money(row["monetary_cents"]))
    table.add_row("P(alive)", f"{row['p_alive']:.3f}")
    table.add_row("expected purchases, 12 months", f"{row['expected_purchases_12m']:.2f}")
    table.add_row("CLV, 12 months (undiscounted)", _money(row["clv_12m_cents"]))
    table.add_row("computed at", f"{row['computed_at']:%Y-%m-%d %H:%M} UTC")
    console.print(table)
