"""Errors a template can cause, each naming the file, the line and the variable when known.

Jinja's own exceptions (syntax, undefined, sandbox) are translated at one point,
:func:`translate`, which finds the template file and line in the (Jinja-rewritten) traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType

import jinja2
from jinja2.sandbox import SecurityError


class TemplateError(Exception):
    """A template cannot be rendered; ``file``, ``line`` and ``variable`` say where and what."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 variable: str | None = None) -> None:
        super().__init__(message)
        self.message, self.file, self.line, self.variable = message, file, line, variable

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else f"{self.file}: " if self.file else ""
        what = f" (variable: {self.variable})" if self.variable else ""
        return f"{where}{self.message}{what}"


class TemplateMissing(TemplateError):
    """No file for this message, channel and language (nor the default language)."""


class TemplateSyntax(TemplateError):
    """The file is not valid Jinja."""


class UndefinedVariable(TemplateError):
    """The template uses a variable or attribute the context does not have."""


class SandboxViolation(TemplateError):
    """The template tried something the sandbox refuses (internals, huge loops, time or size limits)."""


class ChannelLimit(TemplateError):
    """The rendered message is over a channel limit (SMS segments, push title/body length)."""


class BrokenLink(TemplateError):
    """A link is malformed or names an unknown route."""


_UNDEFINED = (re.compile(r"'([\w.]+)' is undefined"), re.compile(r"has no attribute '(\w+)'"),
              re.compile(r"no element '?(\w+)'?"))
_UNSAFE = re.compile(r"attribute '(\w+)'")


def _variable(message: str, patterns: tuple[re.Pattern[str], ...]) -> str | None:
    for pattern in patterns:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


def template_frame(tb: TracebackType | None, root: Path) -> tuple[str | None, int | None]:
    """The innermost traceback frame that is a template file under ``root``: (path, line)."""
    found: tuple[str | None, int | None] = (None, None)
    prefix = str(root.resolve())
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(prefix):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _closest_line(path: str | None, line: int | None, variable: str | None) -> int | None:
    """Line of ``variable`` in the original file nearest ``line`` (compile-time rewriting can shift lines)."""
    if not path or not variable or not Path(path).is_file():
        return line
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    word = re.compile(rf"\b{re.escape(variable.split('.')[-1])}\b")
    hits = [n for n, text in enumerate(lines, 1) if word.search(text)]
    if not hits or (line in hits):
        return line
    return min(hits, key=lambda n: abs(n - (line or 0)))


def display_path(path: str | None, root: Path) -> str | None:
    """``path`` relative to the folder holding the templates folder ("templates/welcome/fr/email.html")."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(root.resolve().parent))
    except ValueError:
        return path


def translate(exc: BaseException, root: Path, fallback_file: str | None = None) -> TemplateError:
    """The :class:`TemplateError` for an exception raised while compiling or rendering."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateSyntax(exc.message or "syntax error", file=display_path(exc.filename, root), line=exc.lineno)
    if isinstance(exc, jinja2.TemplateNotFound):
        missing = str(exc.name).split(":", 1)[-1].split("#", 1)[0]
        return TemplateMissing(f"template {missing!r} not found (or outside the templates folder)", file=fallback_file)
    path, line = template_frame(exc.__traceback__, root)
    message = str(exc)
    if isinstance(exc, TemplateError):
        exc.file = exc.file or display_path(path, root) or fallback_file
        exc.line = exc.line or line
        return exc
    if isinstance(exc, jinja2.UndefinedError):
        variable = _variable(message, _UNDEFINED)
        cls: type[TemplateError] = UndefinedVariable
    elif isinstance(exc, SecurityError):
        variable, cls = _variable(message, (_UNSAFE,)), SandboxViolation
    elif isinstance(exc, RecursionError):
        variable, cls, message = None, SandboxViolation, "templates call or include themselves too deeply"
    else:
        variable, cls, message = None, TemplateError, f"{type(exc).__name__}: {message}"
    line = _closest_line(path, line, variable) if cls is UndefinedVariable else line
    return cls(message, file=display_path(path, root) or fallback_file, line=line, variable=variable)
