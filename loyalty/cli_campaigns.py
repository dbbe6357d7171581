"""``loyalflow campaigns ...``: list the campaign specs, check them, run one slot now."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from loyalty.cli_support import app_context as _app
from loyalty.types import as_utc, utcnow

if TYPE_CHECKING:
    from loyalty.campaigns import CampaignSpec
    from loyalty.cli import AppContext

campaigns_app = typer.Typer(help="Campaigns in config/campaigns: list, check, run.", no_args_is_help=True)
console = Console()


def _specs(app_ctx: AppContext) -> dict[str, CampaignSpec]:
    from loyalty.campaigns import load_campaigns
    from loyalty.programme import ConfigError, load_programme

    settings = app_ctx.settings
    try:
        return load_campaigns(settings.config_dir / "campaigns", load_programme(settings.config_dir),
                              settings.templates_dir)
    except ConfigError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1) from None


def _when(spec: CampaignSpec) -> tuple[str, str]:
    """(the schedule as written, the next slot in UTC)."""
    if spec.schedule.member_local is not None:
        return f"{spec.schedule.member_local:%H:%M} member-local", "daily"
    upcoming = spec.next_slots(utcnow(), 1)
    return f"{spec.schedule.cron} {spec.schedule.timezone}", f"{upcoming[0]:%Y-%m-%d %H:%MZ}" if upcoming else "-"


@campaigns_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """Every campaign with its schedule, audience size today, offers and channels."""
    from loyalty.audience import audience_size

    app_ctx = _app(ctx)
    table = Table("campaign", "schedule", "next slot", "audience now", "offers", "recommender", "holdout",
                  "channels")
    for name, spec in _specs(app_ctx).items():
        size = audience_size(app_ctx.engine, spec, as_of=utcnow())
        table.add_row(name, *_when(spec), f"{size:,}", ", ".join(spec.offers) or "-", spec.recommender.value,
                      f"{spec.holdout_share:.0%}", " > ".join(c.value for c in spec.channels))
    console.print(table)


@campaigns_app.command("check")
def check_command(ctx: typer.Context) -> None:
    """Validate every campaign file and lint the templates each one uses; exit 1 on any error."""
    from loyalty import campaign_run, jobs
    from loyalty.programme import load_programme
    from loyalty.template_lint import ERROR

    app_ctx = _app(ctx)
    rt = jobs.Runtime(app_ctx.settings, app_ctx.engine, load_programme(app_ctx.settings.config_dir))
    library, failed = campaign_run.template_library(rt), False
    for name, spec in _specs(app_ctx).items():
        errors = [str(f) for f in campaign_run.lint_campaign(library, spec) if f.severity == ERROR]
        try:
            campaign_run.check_supported(spec)
        except ValueError as exc:
            errors.append(str(exc))
        failed |= bool(errors)
        console.print(f"{'[red]FAIL' if errors else '[green]ok'}[/] {name}")
        for error in errors:
            console.print(f"    {error}")
    if failed:
        raise typer.Exit(1)


@campaigns_app.command("run")
def run_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Campaign name (its file's stem).")],
    slot: Annotated[datetime | None, typer.Option(help="The slot (ISO time, UTC if naive); default now. "
                                                       "Running a slot again resumes it.")] = None,
    chunk_size: Annotated[int | None, typer.Option(min=1, help="Members per chunk task.")] = None,
    dispatch: Annotated[bool, typer.Option(help="Send what the run queued.")] = True,
) -> None:
    """Run one slot of a campaign as a Prefect flow (Prefect's temporary server when none is configured)."""
    from loyalty.cli import prefect_environment

    app_ctx = _app(ctx)
    prefect_environment(app_ctx.settings)
    if name not in _specs(app_ctx):
        console.print(f"[red]no campaign {name!r}[/]; known: {', '.join(sorted(_specs(app_ctx)))}")
        raise typer.Exit(1)
    from flows.campaign import campaign_run

    totals = campaign_run(name, slot=as_utc(slot) if slot else None, dispatch=dispatch, chunk_size=chunk_size)
    table = Table("metric", "value")
    for key, value in sorted(totals.items()):
        table.add_row(key, f"{value:,}")
    console.print(table)
