"""What every ``loyalflow`` command module shares: the invocation's context and the error exit.

Kept apart from :mod:`loyalty.cli`, which imports the command modules (they cannot import it back).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from loyalty.types import as_utc

if TYPE_CHECKING:
    from loyalty.cli import AppContext

err_console = Console(stderr=True)


def app_context(ctx: typer.Context) -> AppContext:
    """Settings, engine and programme of this invocation (set by :mod:`loyalty.cli`'s callback)."""
    return ctx.obj  # type: ignore[no-any-return,unused-ignore]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error in red and exit with ``code`` (2 for configuration, 1 otherwise)."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def as_of_option(value: datetime | None) -> datetime | None:
    """An ``--as-of`` option in UTC: Typer parses naive datetimes, and the command line speaks UTC."""
    return None if value is None else as_utc(value if value.tzinfo else value.replace(tzinfo=UTC))
