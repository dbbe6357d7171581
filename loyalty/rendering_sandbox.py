"""The Jinja sandbox marketers' templates run in, and the limits every render obeys.

Jinja's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` already refuses attributes starting
with ``_`` (so ``''.__class__``, ``self._TemplateReference__context``...) and methods that mutate
lists and dicts. On top of it:

- only a short list of filters and globals exists (no ``lipsum``, ``cycler``, ``joiner``,
  ``namespace``, ``format``, ``center``, ``indent``, ``slice``...), so nothing can carry state from
  one loop iteration to the next or build a huge string in one call;
- ``*``, ``**``, ``%`` and ``+`` are checked before they run (huge strings, lists and powers refused;
  ``%`` formatting refused outright), and string methods are an allow-list (no ``format``, ``ljust``);
- every ``for`` loop iterates through a guard that charges a per-render budget of iterations and
  checks the deadline (in CPU seconds of the rendering thread), so nested loops cannot spin for
  minutes; ``range`` is capped.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_RANGE = 1_000
MAX_ITERATIONS = 20_000
MAX_SEQUENCE = 100_000  # characters or items any one operation may build
MAX_EXPONENT = 64
GUARD_FILTER = "_loop_guard"

#: String methods templates may call; everything else (format, ljust, zfill, encode...) is refused.
SAFE_STR_METHODS = frozenset({
    "capitalize", "casefold", "endswith", "isalnum", "isalpha", "isdigit", "islower", "isspace", "istitle",
    "isupper", "lower", "lstrip", "removeprefix", "removesuffix", "rstrip", "split", "splitlines", "startswith",
    "strip", "title", "upper",
})
SAFE_FILTERS = frozenset({
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "groupby",
    "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "reverse", "round", "select", "selectattr", "sort", "string", "striptags", "sum", "title", "trim", "truncate",
    "unique", "upper", "urlencode", "wordcount",
})


class RenderLimitExceeded(SecurityError):
    """A render went over its time, iteration or size budget."""


@dataclass
class Budget:
    """What one render may still spend."""

    deadline: float
    iterations_left: int
    seconds: float

    def charge(self, count: int = 1) -> None:
        """Spend ``count`` loop iterations; raise when the budget or the deadline is exhausted."""
        self.iterations_left -= count
        if self.iterations_left < 0:
            raise RenderLimitExceeded(f"template loops ran more than {MAX_ITERATIONS:,} iterations")
        if not self.iterations_left & 63 and render_clock() > self.deadline:
            raise RenderLimitExceeded(f"rendering took longer than {self.seconds:g} s")

    def restart(self) -> None:
        """A fresh allowance for the next render of a batch (cheaper than opening a new budget per render)."""
        self.deadline = render_clock() + self.seconds
        self.iterations_left = MAX_ITERATIONS

    def credit(self, seconds: float) -> None:
        """Give back ``seconds`` spent on something other than rendering (loading and compiling a template)."""
        self.deadline += seconds

    def check_time(self) -> None:
        """Raise when the deadline has passed."""
        if render_clock() > self.deadline:
            raise RenderLimitExceeded(f"rendering took longer than {self.seconds:g} s")


def render_clock() -> float:
    """Seconds of CPU this thread has spent. The limit stops templates that compute too long; wall time
    would also count the time a busy machine keeps the thread waiting for a core, and refused members'
    renders on a loaded 2-core CI machine for that."""
    return time.thread_time()


_budget: ContextVar[Budget | None] = ContextVar("loyalflow_render_budget", default=None)


def start_budget(seconds: float) -> Any:
    """Open a budget for the render about to run; returns the token for :func:`end_budget`."""
    return _budget.set(Budget(render_clock() + seconds, MAX_ITERATIONS, seconds))


def open_budget(seconds: float) -> tuple[Budget, Any]:
    """Open a budget for a batch of renders: the budget (``restart`` it before each render) and the token."""
    budget = Budget(render_clock() + seconds, MAX_ITERATIONS, seconds)
    return budget, _budget.set(budget)


def end_budget(token: Any) -> None:
    """Close the budget opened by :func:`start_budget`."""
    _budget.reset(token)


def current_budget() -> Budget:
    """The budget of the render in progress (a fresh default one outside renders, e.g. in tests)."""
    budget = _budget.get()
    return budget if budget is not None else Budget(render_clock() + 1.0, MAX_ITERATIONS, 1.0)


def loop_guard(iterable: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``iterable`` while charging the render budget (wrapped around every ``for`` loop)."""
    budget = current_budget()
    for item in iterable:
        budget.charge()
        yield item


def limited_range(*args: int) -> range:
    """``range`` with at most :data:`MAX_RANGE` items."""
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise RenderLimitExceeded(f"range() of {len(rng):,} items refused (at most {MAX_RANGE:,})")
    return rng


class GuardedCodeGenerator(CodeGenerator):
    """Compiles every ``{% for %}`` so its iterable goes through :func:`loop_guard`."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # Rewritten before code generation starts: the generator collects the filters it needs up front.
        for loop in node.find_all(nodes.For):
            if not (isinstance(loop.iter, nodes.Filter) and loop.iter.name == GUARD_FILTER):
                guarded = nodes.Filter(loop.iter, GUARD_FILTER, [], [], None, None)
                guarded.set_lineno(loop.lineno)
                loop.iter = guarded
        super().visit_Template(node, frame)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


class MessageSandbox(ImmutableSandboxedEnvironment):
    """The sandboxed environment: checked operators, allow-listed filters, globals and str methods."""

    code_generator_class = GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: f for name, f in self.filters.items() if name in SAFE_FILTERS}
        self.filters[GUARD_FILTER] = loop_guard
        self.globals = {"range": limited_range}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """Refuse internals (via Jinja) and any string method not in :data:`SAFE_STR_METHODS`."""
        if isinstance(obj, str) and callable(value) and attr not in SAFE_STR_METHODS:
            return False
        if attr in ("format", "format_map", "mro"):
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    #: Types whose public attributes are plain data: read directly, skipping the generic checks (speed).
    data_types: tuple[type, ...] = ()

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Jinja hands out a "safe" ``str.format``; its width specs can still build huge strings: refuse it."""
        if type(obj) in self.data_types and not attribute.startswith("_"):
            try:
                return getattr(obj, attribute)
            except AttributeError:
                return self.undefined(obj=obj, name=attribute)
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            return self.unsafe_undefined(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """``obj['format']`` falls back to attributes: same refusal as :meth:`getattr`."""
        if isinstance(obj, str) and argument in ("format", "format_map"):
            return self.unsafe_undefined(obj, argument)
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        """Run ``left <op> right`` after checking it cannot build something huge."""
        if operator_name == "%":
            raise SecurityError("the % operator is not allowed in templates (use the documented filters)")
        if operator_name == "**" and (not isinstance(right, int | float) or abs(right) > MAX_EXPONENT):
            raise RenderLimitExceeded(f"exponent {right!r} refused (at most {MAX_EXPONENT})")
        if operator_name == "*":
            _check_repeat(left, right)
        if operator_name == "+" and _size(left) + _size(right) > MAX_SEQUENCE:
            raise RenderLimitExceeded(f"concatenation longer than {MAX_SEQUENCE:,} refused")
        return _OPERATORS[operator_name](left, right)


def _check_repeat(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if _size(seq) and isinstance(times, int) and _size(seq) * times > MAX_SEQUENCE:
            raise RenderLimitExceeded(f"repeating a sequence to more than {MAX_SEQUENCE:,} items refused")
    if isinstance(left, int) and isinstance(right, int) and max(abs(left), abs(right)) > 10**12:
        raise RenderLimitExceeded("multiplying numbers this large is refused")


_OPERATORS = {"*": operator.mul, "**": operator.pow, "+": operator.add}
