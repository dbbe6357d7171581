"""``loyalflow templates ...``: lint the message templates and preview one for a member or persona."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from loyalty.cli_support import app_context as _app

if TYPE_CHECKING:
    from loyalty.cli import AppContext
    from loyalty.rendering import TemplateLibrary
    from loyalty.rendering_types import RenderContext

templates_app = typer.Typer(help="Message templates: check them, preview them.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)
CHANNELS = ("email", "sms", "push")


def _library(app_ctx: AppContext) -> TemplateLibrary:
    from loyalty.rendering import TemplateLibrary

    return TemplateLibrary.from_settings(app_ctx.settings, app_ctx.programme)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@templates_app.command("check")
def check_command(ctx: typer.Context) -> None:
    """Lint every template: syntax, variables, unsubscribe links, SMS segments, push limits, links, languages."""
    from loyalty.template_lint import has_errors, lint

    app_ctx = _app(ctx)
    library = _library(app_ctx)
    findings = lint(library, app_ctx.programme)
    if findings:
        table = Table("severity", "file", "line", "variable", "message")
        for f in findings:
            colour = "red" if f.severity == "error" else "yellow"
            table.add_row(f"[{colour}]{f.severity}[/]", f.file, str(f.line or ""), f.variable or "", f.message)
        console.print(table)
    errors = sum(f.severity == "error" for f in findings)
    console.print(f"{len(library.messages())} messages checked: {errors} errors, {len(findings) - errors} warnings")
    if has_errors(findings):
        raise typer.Exit(1)


def _context(app_ctx: AppContext, name: str, member: int | None, persona: str | None) -> RenderContext:
    from loyalty.db import session_scope
    from loyalty.render_context import build_contexts, offer_for_message, personas

    programme = app_ctx.programme
    if member is None:
        choices = personas(programme, name=name)
        key = persona or next(iter(choices))
        if key not in choices:
            raise _fail(f"unknown persona {key!r}; choose one of {', '.join(choices)}")
        return choices[key]
    with session_scope(app_ctx.engine) as session:
        contexts = build_contexts(session, programme, [member], offer=offer_for_message(programme, name),
                                  expiring_within_days=30)
    if member not in contexts:
        raise _fail(f"no member with id {member}")
    return contexts[member]


@templates_app.command("preview")
def preview_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Message folder, e.g. welcome or offers/bonus_500.")],
    channel: Annotated[str, typer.Option("--channel", "-c", help="email, sms or push.")] = "email",
    member: Annotated[int | None, typer.Option("--member", help="A member id from the database.")] = None,
    persona: Annotated[str | None, typer.Option("--persona", help="A sample persona (no database).")] = None,
    locale: Annotated[str | None, typer.Option("--locale", help="Override the member's locale, e.g. fr_CA.")] = None,
) -> None:
    """Render one message: subject and text (email: the HTML goes to var/preview/), SMS body, push fields."""
    from dataclasses import replace

    from loyalty.rendering import TemplateError

    if channel not in CHANNELS:
        raise _fail(f"unknown channel {channel!r}; choose email, sms or push")
    app_ctx = _app(ctx)
    context = _context(app_ctx, name, member, persona)
    if locale:
        context = replace(context, member=replace(context.member, locale=locale))
    try:
        rendered = _library(app_ctx).render(name, channel, context)
    except TemplateError as exc:
        raise _fail(str(exc)) from None
    if channel == "email":
        path = _write_html(app_ctx.settings.var_dir, name, rendered.language, rendered.content["html"])
        console.print(f"[bold]Subject:[/] {rendered.content['subject']}\n")
        console.print(rendered.content["text"], markup=False, highlight=False)
        console.print(f"HTML written to [bold]{path}[/]")
    elif channel == "sms":
        console.print(rendered.content["body"], markup=False, highlight=False)
        info = rendered.segments
        if info is not None:
            forced = f" (forced by {', '.join(map(repr, info.offending))})" if info.offending else ""
            console.print(f"\n{info.segments} segment(s), {info.encoding}{forced}, {info.characters} characters")
    else:
        for key, value in rendered.content.items():
            console.print(f"[bold]{key}:[/] {value}", highlight=False)


def _write_html(var_dir: Path, name: str, language: str, html: str) -> Path:
    folder = var_dir / "preview"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.{language}.html"
    path.write_text(html, encoding="utf-8")
    return path.resolve()
