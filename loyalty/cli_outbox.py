"""``loyalflow outbox ...``: drain the outbox through the providers (or the sandbox) and inspect it."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from loyalty.cli_support import app_context as _app

if TYPE_CHECKING:
    pass

outbox_app = typer.Typer(help="The outbox: dispatch queued messages, see where they stand.", no_args_is_help=True)
console = Console()
CHANNELS = ("email", "sms", "push")


@outbox_app.command("dispatch")
def dispatch_command(
    ctx: typer.Context,
    channel: Annotated[list[str] | None, typer.Option("--channel", "-c", help="Only these channels.")] = None,
    forever: Annotated[bool, typer.Option(help="Keep polling instead of stopping when idle.")] = False,
    max_seconds: Annotated[float | None, typer.Option(min=0, help="Stop after this long.")] = None,
    gate: Annotated[bool, typer.Option(help="Apply consent, suppression, quiet hours, frequency cap.")] = True,
) -> None:
    """Send what is due, retry what failed transiently, reconcile unknowns; stop when idle."""
    from loyalty.delivery import open_channels
    from loyalty.dispatch import dispatch
    from loyalty.send_policy import SendPolicy

    app_ctx = _app(ctx)
    settings = app_ctx.settings
    wanted = channel or list(CHANNELS)
    unknown = sorted(set(wanted) - set(CHANNELS))
    if unknown:
        raise typer.BadParameter(f"unknown channel(s): {', '.join(unknown)}", param_hint="--channel")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)  # it logs every request at INFO
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish the chunk in hand, record it, then exit
    with open_channels(settings) as opened:
        adapters = [opened.adapters[c] for c in wanted]
        stats = dispatch(app_ctx.engine, adapters, settings=settings.dispatch,
                         policy=SendPolicy(settings.policy) if gate else None, until_idle=not forever,
                         idle_horizon=timedelta(seconds=settings.dispatch.reconcile_grace_seconds + 5),
                         stop=stop, max_seconds=max_seconds)
        sandbox = opened.mailbox.directory if opened.mailbox else None
    table = Table("channel", "claimed", "sent", "retried", "failed", "unknown", "deferred", "skipped")
    for name, s in stats.items():
        skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(s.skipped.items())) or "0"
        table.add_row(name, *(f"{v:,}" for v in (s.claimed, s.sent, s.transient, s.failed, s.unknown, s.deferred)),
                      skipped)
    console.print(table)
    if sandbox is not None:
        console.print(f"sandbox mailbox: {sandbox}")


@outbox_app.command("status")
def status_command(ctx: typer.Context) -> None:
    """How many messages are in each state."""
    from loyalty.outbox import counts_by_status

    table = Table("status", "messages")
    for status, count in counts_by_status(_app(ctx).engine).items():
        table.add_row(status, f"{count:,}")
    console.print(table)
