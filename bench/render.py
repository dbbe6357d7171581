"""Benchmark: messages rendered per second, next to a bare ``jinja2.Template.render`` floor.

    .venv/bin/python bench/render.py [--message offers/bonus_500] [--seconds 0.1] [--repeat 21] [--batch 100]

For the offer email, SMS and push, each repeat measures for about ``--seconds``:

* render: :meth:`loyalty.rendering.TemplateLibrary.render` for sample members of both languages, the
  whole path: sandbox and budget, link tokens signed, Babel formatting, UTM tracking, text part,
  SMS segment count, push limits, the outbox payload;
* render_many: :meth:`~loyalty.rendering.TemplateLibrary.render_many` over ``--batch`` members of both
  languages alternating (the call campaign chunks make), counted per member rendered: the same path,
  with the channel check and the budget opened once per batch (each member's budget restarted);
* floor: the same template files (same compile-time CSS inlining and text conversion, same filters,
  variables prepared once in advance) compiled by a plain, non-sandboxed ``jinja2.Environment`` and
  rendered with ``Template.render``: the cost of Jinja and the copy themselves, nothing else. Each path is
  paired with its own floor runs over the same members.

Prints the median renders/s of each, the median of the paired ratios render/floor, and PASS/FAIL against the targets,
for both paths: at least 50% of the floor for email, 80% for SMS (push is reported, not gated). Exit 1 on FAIL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jinja2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

from loyalty.programme import load_programme  # noqa: E402
from loyalty.render_context import personas  # noqa: E402
from loyalty.rendering import CHANNEL_FILES, PUSH_FIELDS, TemplateLibrary, _autoescape  # noqa: E402
from loyalty.rendering_filters import LOCALE_FILTERS  # noqa: E402
from loyalty.rendering_source import FIELD_PREFIX, TEXT, join_name, push_fields  # noqa: E402
from loyalty.rendering_types import RenderContext  # noqa: E402
from loyalty.settings import WebSettings  # noqa: E402

TARGETS = {"email": 0.5, "sms": 0.8}


class _FloorEnvironment(jinja2.Environment):
    def join_path(self, template: str, parent: str) -> str:
        return join_name(template, parent)


def floor_renderer(library: TemplateLibrary, name: str, channel: str,
                   context: RenderContext) -> Callable[[], object]:
    """A closure rendering the channel's templates with bare ``Template.render`` (variables prepared once)."""
    env = _FloorEnvironment(loader=library.loader, autoescape=_autoescape, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(LOCALE_FILTERS)
    env.globals.update(link=library.link, site_url=library.site_url)
    variables = library.variables(context, channel)
    language = library.language_for(context.member)
    if channel == "email":
        names = ["email.subject.txt", "email.html", f"email.html#{TEXT}"]
    elif channel == "sms":
        names = list(CHANNEL_FILES["sms"])
    else:
        path = library.find(name, "push.json", language)
        assert path is not None
        names = [f"push.json#{FIELD_PREFIX}{f}" for f in PUSH_FIELDS if f in push_fields(path)]
    templates = [env.get_template(f"{language}:{name}/{n}") for n in names]
    return lambda: [t.render(variables) for t in templates]


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``work`` over about ``seconds``."""
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            work()
        done += 20
    return done / elapsed


def measure(library: TemplateLibrary, name: str, channel: str, contexts: list[RenderContext], seconds: float,
            repeat: int, batch: int = 0) -> tuple[float, float, float]:
    """Medians (render/s, floor/s, ratio) over ``repeat`` pairs of runs, members of both languages alternating.

    ``batch``: time :meth:`~loyalty.rendering.TemplateLibrary.render_many` over that many members per call
    (the floor then renders the same members one after the other); 0 times single :meth:`render` calls.
    Render and floor run back to back in short pairs, so a neighbour's load on a shared machine hits
    both sides of each ratio alike.
    """
    floors = [floor_renderer(library, name, channel, c) for c in contexts]
    counter = iter(range(10**12))
    members = [contexts[i % len(contexts)] for i in range(batch)]
    member_floors = [floors[i % len(floors)] for i in range(batch)]

    def ours() -> object:
        if batch:
            results = library.render_many(name, channel, members)
            assert not any(isinstance(r, Exception) for r in results), results
            return results
        return library.render(name, channel, contexts[next(counter) % len(contexts)])

    def floor() -> object:
        if batch:
            return [f() for f in member_floors]
        return floors[next(counter) % len(floors)]()

    ours()
    floor()  # compile both before timing
    per_call = max(batch, 1)
    results = [(rate(ours, seconds) * per_call, rate(floor, seconds) * per_call) for _ in range(repeat)]
    return (statistics.median(r for r, _ in results), statistics.median(f for _, f in results),
            statistics.median(r / f for r, f in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--message", default="offers/bonus_500")
    parser.add_argument("--seconds", type=float, default=0.1, help="length of each timed run")
    parser.add_argument("--repeat", type=int, default=21, help="pairs of runs (render, floor) per channel")
    parser.add_argument("--batch", type=int, default=100, help="members per render_many call")
    args = parser.parse_args(argv)
    programme = load_programme(REPO / "config")
    library = TemplateLibrary(REPO / "templates", web=WebSettings(), programme=programme)
    sample = personas(programme, name=args.message)
    contexts = [sample["camille"], sample["olivia"]]
    failed = False
    print(f"{'channel':<8}{'path':<13}{'render/s':>11}{'floor/s':>11}{'ratio':>8}  target")
    for channel in ("email", "sms", "push"):
        for path, batch in (("render", 0), ("render_many", args.batch)):
            ours, floor, ratio = measure(library, args.message, channel, contexts, args.seconds, args.repeat, batch)
            target = TARGETS.get(channel)
            verdict = "-" if target is None else ("PASS" if ratio >= target else "FAIL")
            failed |= verdict == "FAIL"
            goal = f">= {target:.0%} {verdict}" if target is not None else "(reported)"
            print(f"{channel:<8}{path:<13}{ours:>11,.0f}{floor:>11,.0f}{ratio:>8.0%}  {goal}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
