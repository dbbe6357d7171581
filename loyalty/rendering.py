"""Rendering messages from the templates marketers edit, safely, per channel and language.

One :class:`TemplateLibrary` per process holds one sandboxed Jinja environment
(:mod:`loyalty.rendering_sandbox`) with ``StrictUndefined`` and autoescaping for ``.html``.
Templates compile once and stay cached per template and language; CSS is inlined and the text
part derived when a file compiles (:mod:`loyalty.rendering_source`), so a render is Jinja plus a
few string passes. ``render(name, channel, context)`` returns :class:`Rendered`, whose
``content`` is exactly what an outbox row's payload carries:

- email: ``{"subject", "html", "text"}``, plus ``headers`` (``List-Unsubscribe``, one-click);
- sms: ``{"body"}``, plus ``segments`` (GSM-7/UCS-2, refused above ``limits.sms_segment_cap``);
- push: ``{"title", "body", "url"}`` and ``"image"`` when the template has one.

Shop links get UTM parameters (``utm_source``, ``utm_medium`` = channel, ``utm_campaign``,
``utm_content`` = message). Every failure is a :class:`TemplateError` naming file, line, variable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2

from channels.segments import segments, sms_text
from loyalty.programme import Programme
from loyalty.rendering_errors import (
    BrokenLink,
    ChannelLimit,
    SandboxViolation,
    TemplateError,
    TemplateMissing,
    TemplateSyntax,
    UndefinedVariable,
    display_path,
    translate,
)
from loyalty.rendering_filters import LOCALE_FILTERS, formatter
from loyalty.rendering_sandbox import (
    MessageSandbox,
    RenderLimitExceeded,
    current_budget,
    end_budget,
    open_budget,
    start_budget,
)
from loyalty.rendering_source import FIELD_PREFIX, TEXT, LocalisedLoader, join_name, push_fields, split_name
from loyalty.rendering_types import VIEW_TYPES, ProgrammeView, RenderContext, Rendered, RenderLimits
from loyalty.settings import Settings, WebSettings
from loyalty.surveys import survey_url
from loyalty.tokens import preferences_url, unsubscribe_url

__all__ = ["CHANNELS", "BrokenLink", "ChannelLimit", "RenderLimits", "Rendered", "SandboxViolation",
           "TemplateError", "TemplateLibrary", "TemplateMissing", "TemplateSyntax", "UndefinedVariable", "segments"]

CHANNELS = ("email", "sms", "push")
CHANNEL_FILES = {"email": ("email.subject.txt", "email.html"), "sms": ("sms.txt",), "push": ("push.json",)}
PUSH_FIELDS = ("title", "body", "url", "image")
#: Shop routes templates may link to with ``link(route, ...)``.
ROUTES = {"home": "/", "rewards": "/rewards", "offer": "/offers/{code}", "tiers": "/rewards/tiers", "app": "/app"}
_HREF = re.compile(r'href="(https?://[^"]+)"')
_TEXT_URL = re.compile(r"https?://[^\s)\]>\"']+")
LINK_VARIABLES = frozenset({"unsubscribe_url", "preferences_url"})


class _Environment(MessageSandbox):
    data_types = VIEW_TYPES

    def join_path(self, template: str, parent: str) -> str:
        return join_name(template, parent)


def _autoescape(name: str | None) -> bool:
    if name is None:
        return False
    _, path, variant = split_name(name)
    return path.endswith(".html") and variant != TEXT


class TemplateLibrary:
    """The shipped templates, compiled on first use and cached per template and language."""

    def __init__(self, templates_dir: Path, *, web: WebSettings, programme: Programme | None = None,
                 default_language: str = "en", languages: tuple[str, ...] = ("en", "fr"),
                 site_url: str = "https://shop.example.com", limits: RenderLimits | None = None,
                 auto_reload: bool = False, utm_source: str = "loyalflow") -> None:
        self.root = Path(templates_dir)
        self.web, self.programme = web, programme
        self.default_language, self.languages = default_language, languages
        self.site_url = site_url.rstrip("/")
        self.limits = limits or RenderLimits()
        self.auto_reload, self.utm_source = auto_reload, utm_source
        self.loader = LocalisedLoader(self.root, default_language)
        self.environment = _Environment(loader=self.loader, undefined=jinja2.StrictUndefined,
                                        autoescape=_autoescape, auto_reload=auto_reload, cache_size=-1,
                                        trim_blocks=True, lstrip_blocks=True)
        self.environment.filters.update(LOCALE_FILTERS)
        self.environment.globals.update(link=self.link, site_url=self.site_url, survey_url=self.survey_url)
        self._templates: dict[str, jinja2.Template] = {}
        self._files: dict[tuple[str, str], Path | None] = {}
        self._links: dict[tuple[str, str], frozenset[str]] = {}
        self._fields: dict[tuple[str, str], list[str]] = {}
        self._language: dict[str, str] = {}
        self._utm_cache: dict[tuple[str, str, str | None], str] = {}
        self._programme = ProgrammeView(programme.name if programme else "Rewards",
                                        programme.currency if programme else "CAD")

    @classmethod
    def from_settings(cls, settings: Settings, programme: Programme | None, **options: Any) -> TemplateLibrary:
        """The library of ``settings.templates_dir``, linking with ``settings.web``."""
        return cls(settings.templates_dir, web=settings.web, programme=programme, **options)

    # -- public API -------------------------------------------------------------------------------------------

    def render(self, name: str, channel: str, context: RenderContext | Mapping[str, Any]) -> Rendered:
        """Render message ``name`` (e.g. ``"offers/bonus_500"``) for ``channel`` in the member's language."""
        _check_channel(channel)
        token = start_budget(self.limits.timeout_seconds)
        try:
            return self._render(name, channel, context)
        finally:
            end_budget(token)

    def render_many(self, name: str, channel: str,
                    contexts: Iterable[RenderContext | Mapping[str, Any]]) -> list[Rendered | TemplateError]:
        """Render message ``name`` for each context, in order: what :meth:`render` gives, or its error.

        The path for campaign chunks: a member whose render fails (template error, over the time, loop or
        size budget, SMS segment cap...) gets the :class:`TemplateError` in their place and the others still
        render. Every member gets a full budget of their own, restarted instead of opened per member.
        """
        _check_channel(channel)
        budget, token = open_budget(self.limits.timeout_seconds)
        results: list[Rendered | TemplateError] = []
        try:
            for context in contexts:
                budget.restart()
                try:
                    results.append(self._render(name, channel, context))
                except TemplateError as exc:
                    results.append(exc)
        finally:
            end_budget(token)
        return results

    def _render(self, name: str, channel: str, context: RenderContext | Mapping[str, Any]) -> Rendered:
        """One render inside the budget the caller opened."""
        values = context.variables() if isinstance(context, RenderContext) else dict(context)
        language = self.language_for(values["member"])
        variables = self._complete(values, channel, self._links_needed(name, channel, language))
        for key, value in self.environment.globals.items():  # so templates run on this dict, uncopied
            variables.setdefault(key, value)
        if channel == "sms":
            return self._sms(name, language, variables)
        if channel == "email":
            return self._email(name, language, variables)
        return self._push(name, language, variables)

    def variables(self, context: RenderContext | Mapping[str, Any], channel: str, *,
                  links: frozenset[str] = LINK_VARIABLES) -> dict[str, Any]:
        """The template variables for ``context`` on ``channel``: programme, formatter and the ``links`` asked for.

        Signing a link token costs as much as rendering a short SMS, so only links a template uses are made.
        """
        values = context.variables() if isinstance(context, RenderContext) else dict(context)
        return self._complete(values, channel, links)

    def _complete(self, values: dict[str, Any], channel: str, links: frozenset[str]) -> dict[str, Any]:
        member = values["member"]
        member_id = int(_field(member, "id", 0))
        if "unsubscribe_url" in links and "unsubscribe_url" not in values:
            values["unsubscribe_url"] = unsubscribe_url(self.web, member_id, channel)
        if "preferences_url" in links and "preferences_url" not in values:
            values["preferences_url"] = preferences_url(self.web, member_id)
        values.setdefault("programme", self._programme)
        values["_fmt"] = formatter(str(_field(member, "locale", "en_CA")),
                                   str(_field(member, "time_zone", "America/Toronto")), self._programme.currency)
        return values

    def _links_needed(self, name: str, channel: str, language: str) -> frozenset[str]:
        """Link variables the channel's templates may use (all of them for email: List-Unsubscribe needs one)."""
        if channel == "email" or self.auto_reload:
            return LINK_VARIABLES
        key = (language, f"{name}#{channel}")
        if key not in self._links:
            self._links[key] = self._scan_links(name, channel, language)
        return self._links[key]

    def _scan_links(self, name: str, channel: str, language: str) -> frozenset[str]:
        filename = CHANNEL_FILES[channel][-1]
        path = self.find(name, filename, language)
        if path is None:
            return LINK_VARIABLES
        source = path.read_text(encoding="utf-8")
        if re.search(r"\{%-?\s*(include|extends|import|from)\b", source):
            return LINK_VARIABLES  # other files could use them
        return frozenset(v for v in LINK_VARIABLES if v in source)

    def language_for(self, member: Any) -> str:
        """The template language for a member: their locale's language if shipped, else the default."""
        locale = str(_field(member, "locale", ""))
        language = self._language.get(locale)
        if language is None:
            language = locale.split("_")[0].lower()
            language = self._language[locale] = language if language in self.languages else self.default_language
        return language

    def link(self, route: str, **params: Any) -> str:
        """``link('offer', code='bonus_500')`` → the shop URL of that route (BrokenLink when unknown)."""
        if route not in ROUTES:
            raise BrokenLink(f"unknown route {route!r}; known routes: {', '.join(ROUTES)}", variable=route)
        try:
            path = ROUTES[route].format(**{k: quote(str(v), safe="") for k, v in params.items()})
        except KeyError as exc:
            raise BrokenLink(f"route {route!r} needs {exc.args[0]}=...", variable=route) from None
        return self.site_url + path

    @jinja2.pass_context
    def survey_url(self, context: jinja2.runtime.Context) -> str:
        """``survey_url()``: the signed survey link of the message being rendered (a preview key outside a run)."""
        member_id = int(_field(context.get("member"), "id", 0))
        return survey_url(self.web, member_id, str(context.get("message_key") or f"preview:{member_id}"))

    def find(self, name: str, filename: str, language: str) -> Path | None:
        """The file serving ``name/filename`` in ``language`` (after fallback), or None."""
        key = (language, f"{name}/{filename}")
        if self.auto_reload or key not in self._files:
            self._files[key] = self.loader.find(language, key[1])
        return self._files[key]

    def messages(self) -> list[str]:
        """Every message folder (``welcome``, ``offers/bonus_500``...), sorted."""
        names = set()
        files = {f for group in CHANNEL_FILES.values() for f in group} | {"email.txt"}
        for path in self.root.rglob("*"):
            if path.name not in files or any(p.startswith("_") for p in path.relative_to(self.root).parts):
                continue
            folder = path.parent.parent if path.parent.name in self.languages else path.parent
            names.add(folder.relative_to(self.root).as_posix())
        return sorted(names)

    def channels(self, name: str) -> list[str]:
        """The channels message ``name`` has templates for (in any language)."""
        return [c for c in CHANNELS
                if any(self.find(name, CHANNEL_FILES[c][-1], lang) for lang in self.languages)]

    def template(self, name: str) -> jinja2.Template:
        """The compiled template ``name`` ("fr:welcome/email.html"), as a :class:`TemplateError` on failure."""
        cached = None if self.auto_reload else self._templates.get(name)
        if cached is not None:
            return cached
        try:
            compiled = self.environment.get_template(name)
        except (jinja2.TemplateSyntaxError, jinja2.TemplateNotFound) as exc:
            raise translate(exc, self.root, fallback_file=name) from None
        self._templates[name] = compiled
        return compiled

    # -- running templates ------------------------------------------------------------------------------------

    def run(self, name: str, variables: dict[str, Any], *, shared: bool = False) -> str:
        """Render template ``name`` within the current budget and the output size limit.

        ``shared``: ``variables`` already holds the environment's globals and is not copied (the render path).
        """
        template = self.template(name)
        limit, size, out = self.limits.max_output_chars, 0, []
        try:
            for chunk in template.root_render_func(template.new_context(variables, shared)):
                size += len(chunk)
                if size > limit:
                    raise RenderLimitExceeded(f"output larger than {limit:,} characters")
                out.append(chunk)
            current_budget().check_time()
        except Exception:
            try:
                self.environment.handle_exception()
            except Exception as exc:  # the same exception, its traceback now pointing into the template
                raise translate(exc, self.root, fallback_file=display_path(template.filename, self.root)) from None
        return "".join(out)

    def _email(self, name: str, language: str, variables: dict[str, Any]) -> Rendered:
        prefix = f"{language}:{name}/"
        subject = _one_line(self.run(prefix + "email.subject.txt", variables, shared=True))
        if len(subject) > self.limits.subject_max:
            raise ChannelLimit(f"subject is {len(subject)} characters (at most {self.limits.subject_max})",
                               file=self._shown(name, "email.subject.txt", language))
        html = self.run(prefix + "email.html", variables, shared=True)
        has_text = self.find(name, "email.txt", language) is not None
        text = _tidy_text(self.run(prefix + ("email.txt" if has_text else f"email.html#{TEXT}"), variables,
                                       shared=True))
        utm = self._utm(name, "email", variables)
        html_utm = utm.replace("&", "&amp;")
        html = _HREF.sub(lambda m: f'href="{self._track(m.group(1), html_utm, html=True)}"', html)
        text = _TEXT_URL.sub(lambda m: self._track(m.group(0), utm), text)
        unsubscribe = variables["unsubscribe_url"]
        headers = {"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        return Rendered(name, "email", language, {"subject": subject, "html": html, "text": text}, headers)

    def _sms(self, name: str, language: str, variables: dict[str, Any]) -> Rendered:
        body = sms_text(self.run(f"{language}:{name}/sms.txt", variables, shared=True))
        info = segments(body)
        cap = self.limits.sms_segment_cap
        if info.segments > cap:
            forced = f"; {info.encoding} forced by {', '.join(map(repr, info.offending))}" if info.offending else ""
            raise ChannelLimit(f"SMS is {info.segments} segments (cap {cap}){forced}",
                               file=self._shown(name, "sms.txt", language),
                               variable=info.offending[0] if info.offending else None)
        return Rendered(name, "sms", language, {"body": body}, segments=info)

    def _push(self, name: str, language: str, variables: dict[str, Any]) -> Rendered:
        path = self.find(name, "push.json", language)
        if path is None:
            raise TemplateMissing(f"no push.json for {name!r}", file=f"{name}/push.json")
        try:
            present = self._push_fields(path)
        except ValueError as exc:
            raise TemplateSyntax(f"push.json is not a JSON object: {exc}",
                                 file=display_path(str(path), self.root)) from None
        content = {f: _one_line(self.run(f"{language}:{name}/push.json#{FIELD_PREFIX}{f}", variables, shared=True))
                   for f in present}
        shown = display_path(str(path), self.root)
        for key, limit in (("title", self.limits.push_title_max), ("body", self.limits.push_body_max)):
            if len(content.get(key, "")) > limit:
                raise ChannelLimit(f"push {key} is {len(content[key])} characters (at most {limit})",
                                   file=shown, variable=key)
        for key in ("url", "image"):
            if key in content and not _valid_url(content[key]):
                raise BrokenLink(f"push {key} {content[key]!r} is not an absolute http(s) URL", file=shown,
                                 variable=key)
        if "url" in content:
            content["url"] = self._track(content["url"], self._utm(name, "push", variables))
        return Rendered(name, "push", language, content)

    def _push_fields(self, path: Path) -> list[str]:
        key = (str(path), "#fields")
        if self.auto_reload or key not in self._fields:
            self._fields[key] = [f for f in PUSH_FIELDS if f in push_fields(path)]
        return self._fields[key]

    # -- helpers ----------------------------------------------------------------------------------------------

    def _shown(self, name: str, filename: str, language: str) -> str | None:
        path = self.find(name, filename, language)
        return display_path(str(path), self.root) if path else f"{name}/{filename}"

    def _utm(self, name: str, medium: str, variables: dict[str, Any]) -> str:
        campaign = variables.get("campaign")
        code = _field(campaign, "code", None) if campaign is not None else None
        key = (name, medium, code)
        if key not in self._utm_cache:
            self._utm_cache[key] = urlencode({"utm_source": self.utm_source, "utm_medium": medium,
                                              "utm_campaign": code or name.rsplit("/", 1)[-1], "utm_content": name})
        return self._utm_cache[key]

    def _track(self, url: str, utm: str, *, html: bool = False) -> str:
        """``url`` with UTM parameters when it points at the shop (never unsubscribe or preference links)."""
        if not url.startswith(self.site_url) or "utm_source=" in url:
            return url
        base, hash_mark, fragment = url.partition("#")
        joiner = ("&amp;" if html else "&") if "?" in base else "?"
        return f"{base}{joiner}{utm}{hash_mark}{fragment}"


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")


def _field(obj: Any, key: str, default: Any) -> Any:
    if type(obj) in VIEW_TYPES:
        return getattr(obj, key, default)
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _one_line(text: str) -> str:
    """Whitespace (CR and LF included: no header injection) collapsed to single spaces."""
    return " ".join(text.split())


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


def _valid_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(c.isspace() for c in url)
