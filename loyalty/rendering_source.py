"""Where template sources come from: locale fallback, CSS inlining and text parts at compile time.

Template names seen by Jinja carry the language and a variant: ``fr:offers/bonus_500/email.html``,
``fr:offers/bonus_500/email.html#text`` (the text part), ``en:welcome/push.json#title`` (one field
of a push). A file is looked up as ``<folder>/<lang>/<file>``, then ``<folder>/<default>/<file>``,
then ``<folder>/<file>``; includes and extends inherit the language and variant of the file that
names them (:meth:`LocalisedLoader.join`), so ``{% include "_partials/footer.html" %}`` finds the
French footer for a French member.

HTML is transformed once, when Jinja compiles it (then cached per template and locale): Jinja tags
are swapped for placeholders, the stylesheet ``_layouts/email.css`` is inlined into ``style``
attributes with css-inline (or, for the text variant, inscriptis turns the HTML into text), and the
tags are put back. So a render never parses HTML or CSS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import css_inline
import jinja2
from inscriptis import get_text
from inscriptis.model.config import ParserConfig

from loyalty.rendering_sandbox import current_budget, render_clock

STYLESHEET = "_layouts/email.css"
TEXT, FIELD_PREFIX = "text", "field:"
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PLACEHOLDER = re.compile(r"XJINJA(\d{5})X")
_TEXT_CONFIG = ParserConfig(display_links=True)


def split_name(name: str) -> tuple[str, str, str]:
    """``"fr:a/b.html#text"`` → ``("fr", "a/b.html", "text")``."""
    lang, _, rest = name.partition(":") if ":" in name.split("/")[0] else ("", "", name)
    path, _, variant = rest.partition("#")
    return lang, path, variant


def safe_relative(path: str) -> bool:
    """True when ``path`` stays inside the templates folder (no absolute paths, no ``..``)."""
    parts = path.replace("\\", "/").split("/")
    return bool(path) and not path.startswith(("/", "\\")) and ".." not in parts and "" not in parts


class LocalisedLoader(jinja2.BaseLoader):
    """Loads ``templates/`` files by language with fallback, transforming HTML at compile time."""

    def __init__(self, root: Path, default_language: str) -> None:
        self.root = root.resolve()
        self.default_language = default_language

    def find(self, lang: str, path: str) -> Path | None:
        """The file serving ``path`` in ``lang`` (after fallback), or None."""
        if not safe_relative(path):
            return None
        folder, _, filename = path.rpartition("/")
        base = self.root / folder if folder else self.root
        for candidate in (base / lang / filename, base / self.default_language / filename, base / filename):
            if candidate.is_file():
                return candidate
        return None

    def load(self, environment: jinja2.Environment, name: str,
             globals: Any = None) -> jinja2.Template:
        """Jinja's load; the time spent here (CSS inlining, compiling) is not charged to the render waiting for it,
        so the first render of a template on a busy machine is not refused for going over its time limit."""
        started = render_clock()
        try:
            return super().load(environment, name, globals)
        finally:
            current_budget().credit(render_clock() - started)

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        lang, path, variant = split_name(template)
        found = self.find(lang or self.default_language, path)
        if found is None:
            raise jinja2.TemplateNotFound(template)
        stylesheet = self.root / STYLESHEET
        watched = [found] + ([stylesheet] if path.endswith(".html") and stylesheet.is_file() else [])
        stamps = [p.stat().st_mtime_ns for p in watched]
        source = found.read_text(encoding="utf-8")
        source = self.transform(source, path, variant)
        return source, str(found), lambda: [_mtime(p) for p in watched] == stamps

    def transform(self, source: str, path: str, variant: str) -> str:
        """Apply the compile-time transformation ``variant`` asks for."""
        if variant.startswith(FIELD_PREFIX):
            return str(json.loads(source).get(variant[len(FIELD_PREFIX):], ""))
        if not path.endswith(".html"):
            return source
        if variant == TEXT:
            return html_to_text_template(source)
        css_file = self.root / STYLESHEET
        return inline_css_template(source, css_file.read_text(encoding="utf-8") if css_file.is_file() else "")


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def join_name(template: str, parent: str) -> str:
    """Name of ``template`` included from ``parent``: same language, and text variant for HTML partials."""
    lang, _, variant = split_name(parent)
    suffix = f"#{TEXT}" if variant == TEXT and template.endswith(".html") else ""
    return f"{lang}:{template}{suffix}" if lang else template + suffix


def _protect(source: str, comments: bool) -> tuple[str, list[str]]:
    """Swap Jinja tags for placeholders (block tags outside HTML tags become comments when asked)."""
    tags: list[str] = []

    def swap(match: re.Match[str]) -> str:
        tags.append(match.group(0))
        token = f"XJINJA{len(tags) - 1:05d}X"
        if match.group(0).startswith("{{"):
            return token
        inside_tag = source.rfind("<", 0, match.start()) > source.rfind(">", 0, match.start())
        return f"<!--{token}-->" if comments and not inside_tag else token

    return _JINJA.sub(swap, source), tags


def _restore(text: str, tags: list[str]) -> str:
    text = re.sub(r"(?:<|&lt;)!--(XJINJA\d{5}X)--(?:>|&gt;)", r"\1", text)
    return _PLACEHOLDER.sub(lambda m: tags[int(m.group(1))], text)


def inline_css_template(source: str, css: str) -> str:
    """``source`` with ``css`` inlined into style attributes, Jinja tags untouched."""
    protected, tags = _protect(source, comments=True)
    if re.search(r"<html[\s>]", protected, re.I):
        inliner = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False, extra_css=css or None)
        inlined = inliner.inline(protected)
    elif css:
        inlined = css_inline.inline_fragment(protected, css)
    else:
        inlined = protected
    return _restore(inlined, tags)


def html_to_text_template(source: str) -> str:
    """A text template made from an HTML template by inscriptis (links shown as ``[text](url)``)."""
    protected, tags = _protect(source, comments=False)
    text = get_text(protected, _TEXT_CONFIG)
    return _restore(text, tags)


def push_fields(path: Path) -> dict[str, Any]:
    """The fields of a ``push.json`` file (ValueError when it is not a JSON object)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("push.json must hold a JSON object")
    return data
