"""The ``loyalflow`` command line (Typer + Rich).

Settings and the programme are built once per invocation in the app callback and passed
to the commands through the Typer context. Heavy modules (Prefect, the seeder) are imported
inside the commands that need them so ``loyalflow --help`` stays instant.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy.engine import Engine

from loyalty.cli_attribution import attribution_app
from loyalty.cli_campaigns import campaigns_app
from loyalty.cli_clv import clv_app
from loyalty.cli_flows import flows_app
from loyalty.cli_models import evaluate_app, models_app
from loyalty.cli_outbox import outbox_app
from loyalty.cli_reports import report_app
from loyalty.cli_support import as_of_option, fail
from loyalty.cli_templates import templates_app
from loyalty.db import create_db_engine, current_revision, session_scope, upgrade
from loyalty.programme import ConfigError, Programme, load_programme, sync_catalogue
from loyalty.settings import Settings, load_settings

console = Console()

app = typer.Typer(help="loyalflow: run the customer-facing side of a loyalty programme.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
import_app = typer.Typer(help="Load members or transactions from CSV files.", no_args_is_help=True)
members_app = typer.Typer(help="Look up members.", no_args_is_help=True)
points_app = typer.Typer(help="Points ledger maintenance.", no_args_is_help=True)
tiers_app = typer.Typer(help="Tier evaluation.", no_args_is_help=True)
# evaluate_app, flows_app and attribution_app: `evaluate`, `train`, `serve-flows`, `attribute` at the top level.
for sub, name in ((db_app, "db"), (import_app, "import"), (members_app, "members"), (points_app, "points"),
                  (tiers_app, "tiers"), (outbox_app, "outbox"), (templates_app, "templates"), (evaluate_app, None),
                  (models_app, "models"), (campaigns_app, "campaigns"), (flows_app, None),
                  (attribution_app, None), (clv_app, "clv"), (report_app, "report")):
    app.add_typer(sub, name=name)


@dataclass
class AppContext:
    """Built once per invocation; commands reach it through ``ctx.obj``."""

    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return create_db_engine(self.settings.database_url)

    @cached_property
    def programme(self) -> Programme:
        return load_programme(self.settings.config_dir)


@app.callback()
def main_callback(ctx: typer.Context) -> None:
    """Load settings (environment, .env, config/loyalflow.toml)."""
    try:
        ctx.obj = AppContext(load_settings())
    except ValidationError as exc:  # lists every bad setting
        fail(f"invalid settings: {exc}", 2)


def _ctx(ctx: typer.Context) -> AppContext:
    obj = ctx.obj
    assert isinstance(obj, AppContext)
    return obj


def _programme(app_ctx: AppContext) -> Programme:
    try:
        return app_ctx.programme
    except ConfigError as exc:
        fail(str(exc), 2)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Apply schema migrations and sync tiers and offers from config/."""
    app_ctx = _ctx(ctx)
    programme = _programme(app_ctx)
    upgrade(app_ctx.engine, revision)
    with session_scope(app_ctx.engine) as session:
        sync_catalogue(session, programme)
    console.print(f"database at revision [bold]{current_revision(app_ctx.engine)}[/]; "
                  f"{len(programme.tiers.tiers)} tiers and {len(programme.offers)} offers synced")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the schema revision the database is at."""
    console.print(current_revision(_ctx(ctx).engine) or "empty (run `loyalflow db upgrade`)")


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar; yields a callback that advances it by n."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task_id = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task_id, n)


@app.command()
def seed(
    ctx: typer.Context,
    members: Annotated[int, typer.Option(min=1, help="How many members to create.")] = 20_000,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same programme.")] = 42,
) -> None:
    """Create a realistic synthetic programme (members, purchases, ledger, a past campaign)."""
    from loyalty.seed import SeedError, seed_programme

    app_ctx = _ctx(ctx)
    programme = _programme(app_ctx)
    upgrade(app_ctx.engine)
    with session_scope(app_ctx.engine) as session:
        sync_catalogue(session, programme)
    try:
        report = run_seed(app_ctx, programme, members, seed_value, seed_programme)
    except SeedError as exc:
        fail(str(exc))
    from loyalty.cli_show import print_seed_report

    print_seed_report(console, report)


def run_seed(app_ctx: AppContext, programme: Programme, members: int, seed_value: int,
             seed_programme: Callable[..., object]) -> object:
    """Run the seeder with one progress bar per stage."""
    columns = (SpinnerColumn(), TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        return seed_programme(app_ctx.engine, programme, members=members, seed=seed_value,
                              truth_dir=app_ctx.settings.var_dir / "seed", progress=on_progress)


CsvSource = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV file with a header row.")]
RejectsPath = Annotated[Path | None, typer.Option(help="Where to write rejected rows (default: FILE.rejects.csv).")]


def _run_import(ctx: typer.Context, kind: str, source: Path, rejects: Path | None) -> None:
    """Run one of the importers with a progress bar and print its report."""
    from loyalty.cli_show import print_import_report
    from loyalty.importing import ImportFileError, import_members, import_transactions

    app_ctx = _ctx(ctx)
    programme = _programme(app_ctx)
    chunk = app_ctx.settings.chunk_size
    try:
        with progress_bar(f"{kind} from {source.name}") as advance:
            if kind == "members":
                report = import_members(app_ctx.engine, source, entry_tier=programme.tiers.entry_tier,
                                        rejects_path=rejects, chunk_size=chunk, progress=advance)
            else:
                report = import_transactions(app_ctx.engine, source, programme=programme, rejects_path=rejects,
                                             chunk_size=chunk, progress=advance)
    except ImportFileError as exc:
        fail(str(exc))
    print_import_report(console, report)


@import_app.command("members")
def import_members_command(ctx: typer.Context, source: CsvSource, rejects: RejectsPath = None) -> None:
    """Import or update members from a CSV file (idempotent on external_id)."""
    _run_import(ctx, "members", source, rejects)


@import_app.command("transactions")
def import_transactions_command(ctx: typer.Context, source: CsvSource, rejects: RejectsPath = None) -> None:
    """Import purchases: credits points and records tier upgrades (idempotent on external_id)."""
    _run_import(ctx, "transactions", source, rejects)


@members_app.command("show")
def members_show(ctx: typer.Context, reference: Annotated[str, typer.Argument(help="External id or id.")],
                 limit: int = 20) -> None:
    """Show a member: profile, ledger, consent, messages, purchases and tier moves."""
    from loyalty.cli_show import print_profile
    from loyalty.members import MemberNotFound, member_profile

    app_ctx = _ctx(ctx)
    with session_scope(app_ctx.engine) as session:
        try:
            profile = member_profile(session, reference, limit=limit)
        except MemberNotFound as exc:
            fail(str(exc))
        print_profile(console, profile)


AsOf = Annotated[datetime | None, typer.Option(help="Evaluate as of this UTC time (default: now).")]




@points_app.command("expire")
def points_expire(ctx: typer.Context, as_of: AsOf = None) -> None:
    """Expire points older than the programme's validity, for every member."""
    from loyalty.expiry import expire_points

    app_ctx = _ctx(ctx)
    with session_scope(app_ctx.engine) as session:
        result = expire_points(session, _programme(app_ctx), as_of=as_of_option(as_of))
    console.print(f"expired [bold]{result.points:,}[/] points from {result.members:,} members")


@tiers_app.command("evaluate")
def tiers_evaluate(ctx: typer.Context, as_of: AsOf = None) -> None:
    """Re-evaluate every member's tier and record the moves."""
    from loyalty.tiers import evaluate_tiers

    app_ctx = _ctx(ctx)
    with session_scope(app_ctx.engine) as session:
        changes = evaluate_tiers(session, _programme(app_ctx), as_of=as_of_option(as_of))
    ups = sum(change.direction == "up" for change in changes)
    console.print(f"{ups:,} upgrades and {len(changes) - ups:,} downgrades recorded")


@app.command()
def serve(ctx: typer.Context,
          host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535)] = 8000) -> None:
    """Serve the web app: provider webhooks, one-click unsubscribe, the preference page."""
    from loyalty.web.server import serve as serve_app

    serve_app(_ctx(ctx).settings, host=host, port=port)


def prefect_environment(settings: Settings) -> None:
    """Prefect's home under var/ and a patient start for its temporary server, unless the user set them.

    Its first start migrates a fresh database, which on a busy 2-core machine outlasts Prefect's 20 s default.
    """
    os.environ.setdefault("PREFECT_HOME", str((settings.var_dir / "prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from a demo or a CLI run


@app.command()
def demo(ctx: typer.Context,
         members: Annotated[int, typer.Option(min=100, help="Members to seed if the database is empty.")] = 20_000
         ) -> None:
    """Set everything up on the embedded defaults and run the main job end to end."""
    from loyalty.demo import run_demo

    app_ctx = _ctx(ctx)
    prefect_environment(app_ctx.settings)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the demo prints its own progress and summary
    run_demo(app_ctx, _programme(app_ctx), members=members, console=console)


def main() -> None:
    """Entry point of the ``loyalflow`` script."""
    app()


if __name__ == "__main__":
    main()
