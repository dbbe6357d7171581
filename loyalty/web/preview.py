"""``/preview``: see a message as a member would, on every channel, with its lint findings.

Pick a message, a sample persona or a member id, and a channel (or all three). The email is shown
in two sandboxed ``srcdoc`` iframes (desktop and mobile widths: no script in an email can run, and
it cannot reach the page), the SMS with its segment count and encoding, the push as a
notification card. A small script served from the app itself (CSP ``script-src 'self'``, nothing
inline) polls ``/preview/version`` (the newest template file's mtime) and reloads the page when a
marketer saves a file; the library re-compiles what changed (``auto_reload``).

The page shows member data by id, so :func:`loyalty.web.app.create_app` mounts it only on a
loopback address unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlmodel import Session

from loyalty.programme import load_programme
from loyalty.render_context import build_contexts, offer_for_message, persona_labels, personas
from loyalty.rendering import CHANNELS, Rendered, TemplateError, TemplateLibrary
from loyalty.rendering_types import RenderContext
from loyalty.template_lint import Finding, message_findings, static_findings
from loyalty.web.context import Ctx, WebContext

router = APIRouter(prefix="/preview")
PREVIEW_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self'; img-src 'self' data: https:; "
               "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SCRIPT = """\
// Reload the preview when a template file changes (polls the newest mtime).
(function () {
  var known = document.body.getAttribute("data-version");
  setInterval(function () {
    fetch("/preview/version", {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (d) {
      if (known && d.version !== known) { window.location.reload(); }
    }).catch(function () {});
  }, 1500);
})();
"""


@dataclass
class ChannelView:
    """What one channel panel shows: the rendered message or the error."""

    channel: str
    rendered: Rendered | None = None
    error: str | None = None


def _library(request: Request, ctx: WebContext) -> TemplateLibrary:
    """The preview's library, built once per app (auto-reloading: edits show without a restart)."""
    library = getattr(request.app.state, "preview_library", None)
    if library is None:
        programme = load_programme(ctx.settings.config_dir)
        library = TemplateLibrary.from_settings(ctx.settings, programme, auto_reload=True)
        request.app.state.preview_library = library
    return library


def templates_version(library: TemplateLibrary) -> str:
    """The newest modification time of any template file (changes when a file is saved)."""
    stamps = [p.stat().st_mtime_ns for p in library.root.rglob("*") if p.is_file()]
    return str(max(stamps, default=0))


def _context(ctx: WebContext, library: TemplateLibrary, name: str, persona: str,
             member: int | None) -> tuple[RenderContext | None, str | None]:
    programme = library.programme
    assert programme is not None
    if member is not None:
        with Session(ctx.engine) as session:
            found = build_contexts(session, programme, [member], offer=offer_for_message(programme, name),
                                   expiring_within_days=30)
        return (found[member], None) if member in found else (None, f"No member with id {member}.")
    choices = personas(programme, name=name)
    return (choices[persona], None) if persona in choices else (None, f"Unknown persona {persona!r}.")


def _render_all(library: TemplateLibrary, name: str, context: RenderContext, wanted: list[str]) -> list[ChannelView]:
    views = []
    for channel in wanted:
        try:
            views.append(ChannelView(channel, rendered=library.render(name, channel, context)))
        except TemplateError as exc:
            views.append(ChannelView(channel, error=str(exc)))
    return views


def _findings(library: TemplateLibrary, name: str) -> list[Finding]:
    assert library.programme is not None
    prefix = f"{library.root.name}/{name}/"
    static = [f for f in static_findings(library) if f.file.startswith(prefix)]
    return sorted(set(static + message_findings(library, library.programme, name)))


@router.get("", response_class=HTMLResponse)
def preview_page(request: Request, ctx: Ctx, name: str = "", persona: str = "", channel: str = "all",
                 member: Annotated[str, Query()] = "") -> Response:
    """The preview page (a GET form: every view has a shareable URL)."""
    library = _library(request, ctx)
    messages = library.messages()
    name = name if name in messages else (messages[0] if messages else "")
    labels = persona_labels()
    persona = persona if persona in labels else next(iter(labels))
    member_id = int(member) if member.strip().isdigit() else None
    wanted = list(CHANNELS) if channel not in CHANNELS else [channel]
    context, problem = _context(ctx, library, name, persona, member_id) if name else (None, "No templates found.")
    views = _render_all(library, name, context, wanted) if context is not None else []
    values: dict[str, Any] = {
        "messages": messages, "name": name, "labels": labels, "persona": persona, "member": member,
        "channel": channel if channel in CHANNELS else "all", "channels": CHANNELS, "views": views,
        "problem": problem, "findings": _findings(library, name) if name else [],
        "version": templates_version(library), "who": context.member if context else None,
    }
    response = ctx.page("preview.html", **values)
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    return response


@router.get("/version")
def preview_version(request: Request, ctx: Ctx) -> JSONResponse:
    """``{"version": ...}``: changes whenever a template file is saved."""
    return JSONResponse({"version": templates_version(_library(request, ctx))})


@router.get("/preview.js")
def preview_script() -> Response:
    """The page's only script, served from the app so the CSP can stay ``script-src 'self'``."""
    return Response(SCRIPT, media_type="text/javascript")
