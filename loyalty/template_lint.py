"""``loyalflow templates check``: everything that would break or embarrass a send, found before it.

Static checks read each file as written (exact line numbers): Jinja syntax, variables outside the
documented context, ``link()`` to unknown routes, characters that force an SMS into UCS-2. Dynamic
checks render every message on every channel for every sample persona (:func:`personas`, one per
shipped language and some edge cases): undefined attributes, sandbox refusals, SMS over the
segment cap, push over its limits, marketing email without the member's unsubscribe link,
malformed links. Missing language variants are warnings (the default language is used).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from jinja2 import meta, nodes

from channels.segments import gsm7_cost
from loyalty.programme import Programme
from loyalty.render_context import personas
from loyalty.rendering import CHANNEL_FILES, CHANNELS, ROUTES, TemplateLibrary
from loyalty.rendering_errors import TemplateError, display_path
from loyalty.rendering_source import STYLESHEET
from loyalty.rendering_types import DOCUMENTED

ERROR, WARNING = "error", "warning"
_LINK_SCHEMES = ("http", "https", "mailto", "tel")
_TEMPLATE_SUFFIXES = (".html", ".txt", ".json")


@dataclass(frozen=True, order=True)
class Finding:
    """One problem: where (file, line), what (variable or character), how bad."""

    file: str
    line: int | None
    severity: str
    message: str
    variable: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f" [{self.variable}]" if self.variable else ""
        return f"{where}: {self.severity}: {self.message}{what}"


def _finding(error: TemplateError, severity: str = ERROR) -> Finding:
    return Finding(error.file or "?", error.line, severity, error.message, error.variable)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value or "" for name, value in attrs if name in ("href", "src") and tag in ("a", "img")]


def link_problem(url: str) -> str | None:
    """Why ``url`` is broken, or None (no network: only its shape is checked)."""
    parts = urlsplit(url)
    if any(c.isspace() for c in url) or not url:
        return "empty link or a link with spaces"
    if parts.scheme not in _LINK_SCHEMES:
        return f"link scheme {parts.scheme or '(none)'!r} is not http(s), mailto or tel"
    if parts.scheme.startswith("http") and not parts.netloc:
        return "http(s) link without a host"
    return None


# -- static checks -------------------------------------------------------------------------------------------------

def _sources(library: TemplateLibrary) -> list[tuple[Path, str]]:
    """(file, source) for every template file; push.json fields are checked one by one."""
    found = []
    for path in sorted(library.root.rglob("*")):
        if path.is_file() and path.suffix in _TEMPLATE_SUFFIXES and path.name != "README.md":
            found.append((path, path.read_text(encoding="utf-8")))
    return found


def _static_source(library: TemplateLibrary, shown: str, source: str, line_offset: int = 0) -> list[Finding]:
    try:
        tree = library.environment.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return [Finding(shown, (exc.lineno or 1) + line_offset, ERROR, f"syntax error: {exc.message}")]
    found = []
    for name in sorted(meta.find_undeclared_variables(tree) - set(DOCUMENTED) - _declared(tree)):
        line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == name), 1)
        found.append(Finding(shown, line + line_offset, ERROR, f"{name!r} is not a documented variable", name))
    for call in tree.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name == "link" and call.args:
            route = call.args[0]
            if isinstance(route, nodes.Const) and route.value not in ROUTES:
                found.append(Finding(shown, call.lineno + line_offset, ERROR,
                                     f"unknown route {route.value!r} (known: {', '.join(ROUTES)})", str(route.value)))
    return found


def _declared(tree: nodes.Template) -> set[str]:
    """Names the template itself defines (imports, macros, sets): blocks of a child template see them."""
    names = {n.name for n in tree.find_all(nodes.Macro)} | {n.target for n in tree.find_all(nodes.Import)}
    for node in tree.find_all(nodes.FromImport):
        names |= {item[1] if isinstance(item, tuple) else item for item in node.names}
    names |= {n.name for n in tree.find_all(nodes.Name) if n.ctx == "store"}
    return names


def _push_static(library: TemplateLibrary, shown: str, source: str) -> list[Finding]:
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        return [Finding(shown, exc.lineno, ERROR, f"not valid JSON: {exc.msg}")]
    if not isinstance(data, dict):
        return [Finding(shown, 1, ERROR, "push.json must hold a JSON object")]
    found = [] if {"title", "body", "url"} <= set(data) else \
        [Finding(shown, 1, ERROR, "push.json needs title, body and url")]
    for key, value in data.items():
        line = next((n for n, text in enumerate(source.splitlines(), 1) if f'"{key}"' in text), 1)
        found += _static_source(library, shown, str(value), line - 1)
    return found


def _sms_characters(shown: str, source: str) -> list[Finding]:
    """Characters typed in an SMS template that are not GSM-7 (each switches the whole SMS to UCS-2)."""
    text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", "", source, flags=re.S)
    found = []
    for char in dict.fromkeys(c for c in text if gsm7_cost(c) is None):
        line = next(n for n, row in enumerate(source.splitlines(), 1) if char in row)
        found.append(Finding(shown, line, WARNING, f"character {char!r} (U+{ord(char):04X}) forces the whole SMS "
                                                   "into UCS-2: 70 characters per segment instead of 160", char))
    return found


def static_findings(library: TemplateLibrary) -> list[Finding]:
    """Syntax, undeclared variables, unknown routes and non-GSM characters, file by file."""
    found: list[Finding] = []
    for path, source in _sources(library):
        shown = display_path(str(path), library.root) or str(path)
        if path.name == "push.json":
            found += _push_static(library, shown, source)
            continue
        found += _static_source(library, shown, source)
        if path.name == "sms.txt":
            found += _sms_characters(shown, source)
    return found


def missing_variants(library: TemplateLibrary) -> list[Finding]:
    """Warnings for message files that exist in one language but not another."""
    found = []
    for name in library.messages():
        for filename in sorted({f for group in CHANNEL_FILES.values() for f in group} | {"email.txt"}):
            base = library.root / name
            have = [lang for lang in library.languages if (base / lang / filename).is_file()]
            if not have or (base / filename).is_file():
                continue
            used = library.default_language if library.default_language in have else have[0]
            for lang in sorted(set(library.languages) - set(have)):
                found.append(Finding(f"{display_path(str(base), library.root)}/{lang}/{filename}", None, WARNING,
                                     f"no {lang!r} version: members in {lang} get the {used!r} one"))
    return found


# -- rendering with personas ----------------------------------------------------------------------------------------

def message_findings(library: TemplateLibrary, programme: Programme, name: str) -> list[Finding]:
    """Render ``name`` on every channel it has, for every persona, and report what goes wrong."""
    found: set[Finding] = set()
    for channel in library.channels(name):
        for context in personas(programme, name=name).values():
            try:
                rendered = library.render(name, channel, context)
            except TemplateError as exc:
                found.add(_finding(exc))
                continue
            shown = library._shown(name, CHANNEL_FILES[channel][-1], rendered.language) or name
            if channel == "email":
                unsubscribe = rendered.headers["List-Unsubscribe"].strip("<>")  # the very URL this render used
                found.update(_email_checks(shown, rendered.content["html"], unsubscribe))
            elif channel == "sms" and rendered.segments and rendered.segments.offending:
                chars = ", ".join(repr(c) for c in rendered.segments.offending)
                found.add(Finding(shown, None, WARNING, f"rendered SMS is UCS-2 because of {chars}",
                                  rendered.segments.offending[0]))
    return sorted(found)


def _email_checks(shown: str, html: str, unsubscribe: str) -> list[Finding]:
    parser = _Links()
    parser.feed(html)
    found = [Finding(shown, None, ERROR, f"broken link {url!r}: {problem}", url)
             for url in parser.links if (problem := link_problem(url))]
    if unsubscribe not in parser.links:
        found.append(Finding(shown, None, ERROR, "marketing email without the member's unsubscribe link "
                                                 "(include _partials/footer.html or link {{ unsubscribe_url }})",
                             "unsubscribe_url"))
    return found


def lint(library: TemplateLibrary, programme: Programme) -> list[Finding]:
    """Every finding for the library: static checks, renders with personas, missing variants."""
    found = static_findings(library) + missing_variants(library)
    for name in library.messages():
        found += message_findings(library, programme, name)
    if not (library.root / STYLESHEET).is_file():
        found.append(Finding(STYLESHEET, None, WARNING, "no stylesheet: emails are sent unstyled"))
    return sorted(set(found), key=lambda f: (f.severity != ERROR, f.file, f.line or 0, f.message))


def has_errors(findings: list[Finding]) -> bool:
    """True when any finding is an error (what makes ``templates check`` exit 1)."""
    return any(f.severity == ERROR for f in findings)


__all__ = ["CHANNELS", "ERROR", "WARNING", "Finding", "has_errors", "link_problem", "lint", "message_findings",
           "missing_variants", "static_findings"]
