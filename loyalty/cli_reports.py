"""``loyalflow report campaign NAME`` and ``loyalflow report programme``: HTML reports and terminal tables.

Each command measures (:mod:`loyalty.measurement`, :mod:`loyalty.kpis`), writes one self-contained
HTML file (default under ``var/reports/``; open it in any browser, attach it to an email), prints the
key table and the file's path. The web app serves the same pages at ``/reports``.
:func:`write_campaign_report` and :func:`write_programme_report` do the measuring and writing without
printing, for other callers (``loyalflow demo``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from loyalty.cli_support import app_context as _app
from loyalty.cli_support import as_of_option, fail
from loyalty.programme import Programme
from loyalty.types import utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from loyalty.measurement_types import ProgrammeKpis, RunMeasurement

report_app = typer.Typer(help="Campaign and programme reports: an HTML file and a table.", no_args_is_help=True)
console = Console()

AsOf = Annotated[datetime | None, typer.Option(help="Measure as of this UTC time (default: now).")]
Out = Annotated[Path | None, typer.Option(help="Where to write the HTML (default: under var/reports/).")]




def _write(path: Path, html: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")


def write_campaign_report(engine: Engine, programme: Programme, name: str, *, reports_dir: Path,
                          run_id: int | None = None, as_of: datetime | None = None, out: Path | None = None
                          ) -> tuple[RunMeasurement, Path]:
    """Measure a run of campaign ``name`` (default: its latest completed run) and write its HTML report.

    The file is ``out``, or ``reports_dir/campaign-<name>-run-<id>.html``. Returns the measurement and the
    path. Raises ``LookupError`` (with a message for people) when there is no such run or it belongs to
    another campaign.
    """
    from loyalty import measurement, reports

    found = run_id if run_id is not None else measurement.latest_run_id(engine, name)
    if found is None:
        raise LookupError(f"campaign {name!r} has no completed run to report on (loyalflow campaigns run {name}, "
                          "then loyalflow attribute)")
    try:
        m = measurement.measure_run(engine, found, as_of=as_of or utcnow(), programme=programme)
    except LookupError:
        raise LookupError(f"no run {found}") from None
    if m.campaign != name:
        raise LookupError(f"run {found} belongs to campaign {m.campaign!r}, not {name!r}")
    path = out or reports_dir / f"campaign-{name}-run-{found}.html"
    _write(path, reports.campaign_report_html(m, currency=programme.currency))
    return m, path


def write_programme_report(engine: Engine, programme: Programme, *, reports_dir: Path, as_of: datetime | None = None,
                           out: Path | None = None, period_days: int = 90, months: int = 12
                           ) -> tuple[ProgrammeKpis, Path]:
    """Compute the programme KPIs and write their HTML report to ``out`` or ``reports_dir/programme.html``."""
    from loyalty import kpis, reports

    k = kpis.programme_kpis(engine, as_of=as_of or utcnow(), period_days=period_days, months=months)
    path = out or reports_dir / "programme.html"
    _write(path, reports.programme_report_html(k, name=programme.name, currency=programme.currency))
    return k, path


@report_app.command("campaign")
def campaign_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The campaign (its file name in config/campaigns/).")],
    run: Annotated[int | None, typer.Option(help="The run id (default: the latest completed run).")] = None,
    as_of: AsOf = None,
    out: Out = None,
) -> None:
    """Lift, conversions over time and ROI of one campaign run."""
    from loyalty import reports

    app_ctx = _app(ctx)
    try:
        m, path = write_campaign_report(app_ctx.engine, app_ctx.programme, name, run_id=run, as_of=as_of_option(as_of),
                                        out=out, reports_dir=app_ctx.settings.var_dir / "reports")
    except LookupError as exc:
        fail(str(exc))
    if m.caution:  # first, before any figure: early numbers overstate certainty
        console.print(f"[bold yellow]Caution:[/] {escape(m.caution)}")
    console.print(reports.campaign_table(m, currency=app_ctx.programme.currency))
    console.print(f"report written to [bold]{path}[/]")


@report_app.command("programme")
def programme_command(
    ctx: typer.Context,
    as_of: AsOf = None,
    out: Out = None,
    period_days: Annotated[int, typer.Option(min=1, help="Length of a KPI period in days.")] = 90,
    months: Annotated[int, typer.Option(min=1, help="Months of trend.")] = 12,
) -> None:
    """Programme KPIs by tier, segment and locale, their monthly trend, tiers and predicted value."""
    from loyalty import reports

    app_ctx = _app(ctx)
    k, path = write_programme_report(app_ctx.engine, app_ctx.programme, as_of=as_of_option(as_of), out=out,
                                     period_days=period_days, months=months,
                                     reports_dir=app_ctx.settings.var_dir / "reports")
    console.print(reports.programme_table(k, currency=app_ctx.programme.currency))
    console.print(f"report written to [bold]{path}[/]")
