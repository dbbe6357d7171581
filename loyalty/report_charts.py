"""Inline SVG charts for the reports: pure Python, no script, no external asset.

Every chart is one ``<svg role="img">`` with a ``<title>`` and ``<desc>`` (screen readers read
those), axis labels, and the values written as text next to the marks, so a report printed in
grey or read by someone who cannot tell colours apart loses nothing. Colours are the Okabe-Ito
palette (safe for the common colour-vision deficiencies). Every label is escaped: arm names and
tier codes come from configuration files. Output is deterministic (fixed decimals, no ids from
counters or clocks): the same input gives the same bytes.

Charts are drawn in a fixed ``viewBox`` (:data:`WIDTH` wide) and scale to their container, so
they read at 700 px and shrink on a phone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

#: Okabe-Ito: blue, orange, bluish green, reddish purple, sky blue, vermillion, yellow.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
INK, MUTED, GRID = "#1f2933", "#52606d", "#d9e2ec"
WIDTH = 680
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif"'

Fmt = Callable[[float], str]


@dataclass(frozen=True)
class Interval:
    """One bar of an interval chart: a value with its 95% confidence interval (any unit)."""

    label: str
    value: float
    low: float
    high: float
    note: str = ""  # shown after the value, e.g. "p = 0.03"


@dataclass(frozen=True)
class Series:
    """One line: a name and its (x, y) points, x ascending."""

    name: str
    points: Sequence[tuple[float, float]]


def _n(x: float) -> str:
    """A coordinate with one decimal (deterministic, short)."""
    return f"{x:.1f}"


def _text(x: float, y: float, content: str, *, anchor: str = "start", size: int = 13, fill: str = INK,
          weight: str = "normal") -> str:
    bold = ' font-weight="600"' if weight == "bold" else ""
    return (f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"{bold}>'
            f"{escape(content)}</text>")


def _svg(key: str, title: str, desc: str, height: float, body: list[str], *, width: int = WIDTH) -> str:
    """Wrap ``body`` in an accessible SVG (``key`` makes the title/desc ids unique within a page)."""
    ident = escape(key, quote=True)
    return (f'<svg class="chart" role="img" viewBox="0 0 {width} {_n(height)}" width="100%" '
            f'preserveAspectRatio="xMidYMid meet" aria-labelledby="{ident}-title {ident}-desc" {FONT} '
            f'xmlns="http://www.w3.org/2000/svg">'
            f'<title id="{ident}-title">{escape(title)}</title><desc id="{ident}-desc">{escape(desc)}</desc>'
            + "".join(body) + "</svg>")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(s * power for s in (1, 2, 2.5, 5, 10) if s * power >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def interval_chart(bars: Sequence[Interval], *, key: str, title: str, desc: str, axis_label: str,
                   fmt: Fmt) -> str:
    """Horizontal bars from a zero line with 95% error bars, one row per bar (lift per arm)."""
    left, right, row, top = 190, 150, 44, 30
    plot = WIDTH - left - right
    lows = [min(b.low, b.value, 0.0) for b in bars] or [0.0]
    highs = [max(b.high, b.value, 0.0) for b in bars] or [0.0]
    ticks = nice_ticks(min(lows), max(highs), 5)
    lo, hi = ticks[0], ticks[-1]

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot

    height = top + row * max(len(bars), 1) + 50
    bottom = height - 50
    body = [f'<line x1="{_n(sx(t))}" y1="{top - 6}" x2="{_n(sx(t))}" y2="{_n(bottom)}" stroke="{GRID}"/>'
            + _text(sx(t), bottom + 16, fmt(t), anchor="middle", size=11, fill=MUTED) for t in ticks]
    for i, bar in enumerate(bars):
        y = top + i * row + row / 2
        colour = PALETTE[i % len(PALETTE)]
        x0, x1 = sorted((sx(0.0), sx(bar.value)))
        body.append(f'<g class="bar" data-label="{escape(bar.label, quote=True)}">'
                    + _text(left - 10, y + 4, _clip(bar.label, 24), anchor="end")
                    + f'<rect x="{_n(x0)}" y="{_n(y - 11)}" width="{_n(max(x1 - x0, 1.0))}" height="22" '
                      f'fill="{colour}" fill-opacity="0.85"/>'
                    + _error_bar(sx(bar.low), sx(bar.high), y)
                    + _text(WIDTH - right + 10, y + 4, fmt(bar.value) + (f"  {bar.note}" if bar.note else ""),
                            size=12, weight="bold")
                    + "</g>")
    body.append(f'<line class="zero" x1="{_n(sx(0.0))}" y1="{top - 8}" x2="{_n(sx(0.0))}" y2="{_n(bottom)}" '
                f'stroke="{INK}" stroke-width="1.5"/>')
    body.append(_text(left + plot / 2, height - 10, axis_label, anchor="middle", size=12, fill=MUTED))
    return _svg(key, title, desc, height, body)


def _error_bar(x_low: float, x_high: float, y: float) -> str:
    """The 95% interval as a whisker with end caps."""
    return (f'<g class="error-bar" stroke="{INK}" stroke-width="1.5">'
            f'<line x1="{_n(x_low)}" y1="{_n(y)}" x2="{_n(x_high)}" y2="{_n(y)}"/>'
            f'<line x1="{_n(x_low)}" y1="{_n(y - 7)}" x2="{_n(x_low)}" y2="{_n(y + 7)}"/>'
            f'<line x1="{_n(x_high)}" y1="{_n(y - 7)}" x2="{_n(x_high)}" y2="{_n(y + 7)}"/></g>')


def _clip(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[:limit - 1] + "…"


def line_chart(series: Sequence[Series], *, key: str, title: str, desc: str, x_label: str, y_label: str,
               y_fmt: Fmt, x_fmt: Fmt = lambda v: f"{v:g}", height: int = 300, width: int = WIDTH,
               x_ticks: Sequence[float] | None = None) -> str:
    """Lines over a shared x axis, each series' last value written at its end; a legend for two or more.

    ``width`` below :data:`WIDTH` draws a small multiple (same font sizes, for a two-column grid).
    """
    legend = len(series) > 1
    left, right, top, bottom_pad = 64, 70 if width < WIDTH else 110, 40 if legend else 14, 52
    plot_w, plot_h = width - left - right, height - top - bottom_pad
    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    ys = [y for s in series for _, y in s.points] or [0.0]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_ticks = nice_ticks(min(0.0, min(ys)), max(ys), 5)

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * plot_w

    def sy(v: float) -> float:
        return top + plot_h - (v - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * plot_h

    body = [f'<line x1="{left}" y1="{_n(sy(t))}" x2="{left + plot_w}" y2="{_n(sy(t))}" stroke="{GRID}"/>'
            + _text(left - 8, sy(t) + 4, y_fmt(t), anchor="end", size=11, fill=MUTED) for t in y_ticks]
    for t in x_ticks if x_ticks is not None else nice_ticks(x_lo, x_hi, 6):
        if x_lo <= t <= x_hi:
            body.append(_text(sx(t), top + plot_h + 16, x_fmt(t), anchor="middle", size=11, fill=MUTED))
    for i, s in enumerate(series):
        colour, dash = PALETTE[i % len(PALETTE)], ' stroke-dasharray="6 4"' if i % 2 else ""
        path = " ".join(f"{_n(sx(x))},{_n(sy(y))}" for x, y in s.points)
        body.append(f'<g class="series" data-series="{escape(s.name, quote=True)}">'
                    f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5"{dash}/>')
        if s.points:
            x, y = s.points[-1]
            body.append(f'<circle cx="{_n(sx(x))}" cy="{_n(sy(y))}" r="3.5" fill="{colour}"/>'
                        + _text(sx(x) + 8, sy(y) + 4 + 14 * (i % 2) * _near(series, i, sy), y_fmt(y), size=12,
                                weight="bold"))
        body.append("</g>")
        if legend:
            body.append(f'<line x1="{left + 150 * i}" y1="18" x2="{left + 150 * i + 24}" y2="18" stroke="{colour}" '
                        f'stroke-width="2.5"{dash}/>' + _text(left + 150 * i + 30, 22, _clip(s.name, 16), size=12))
    body.append(_text(left + plot_w / 2, height - 10, x_label, anchor="middle", size=12, fill=MUTED))
    body.append(f'<text transform="translate(16 {_n(top + plot_h / 2)}) rotate(-90)" text-anchor="middle" '
                f'font-size="12" fill="{MUTED}">{escape(y_label)}</text>')
    return _svg(key, title, desc, height, body, width=width)


def _near(series: Sequence[Series], i: int, sy: Callable[[float], float]) -> int:
    """1 when series ``i``'s end label would overlap the previous series' (push it down a line)."""
    if i == 0 or not series[i].points or not series[i - 1].points:
        return 0
    return int(abs(sy(series[i].points[-1][1]) - sy(series[i - 1].points[-1][1])) < 14)


def bar_chart(items: Sequence[tuple[str, float]], *, key: str, title: str, desc: str, x_label: str,
              y_label: str, fmt: Fmt, height: int = 280) -> str:
    """Vertical bars, one per item in the given order, each with its value above it."""
    return _columns([(label, value, label) for label, value in items], key=key, title=title, desc=desc,
                    x_label=x_label, y_label=y_label, fmt=fmt, height=height, gap=0.3)


def histogram(bins: Sequence[tuple[float, float, int]], *, key: str, title: str, desc: str, x_label: str,
              x_fmt: Fmt, height: int = 280) -> str:
    """Adjacent bars for (low, high, count) bins, labelled with their lower edges and counts."""
    columns = [(x_fmt(low), float(count), f"{x_fmt(low)} to {x_fmt(high)}") for low, high, count in bins]
    return _columns(columns, key=key, title=title, desc=desc, x_label=x_label, y_label="members",
                    fmt=lambda v: f"{v:,.0f}", height=height, gap=0.04)


def _columns(columns: Sequence[tuple[str, float, str]], *, key: str, title: str, desc: str, x_label: str,
             y_label: str, fmt: Fmt, height: int, gap: float) -> str:
    left, right, top, bottom_pad = 70, 20, 24, 56
    plot_w, plot_h = WIDTH - left - right, height - top - bottom_pad
    ticks = nice_ticks(0.0, max([v for _, v, _ in columns] or [1.0]), 5)
    slot = plot_w / max(len(columns), 1)
    every = max(1, math.ceil(len(columns) * 56 / plot_w))  # thin the axis labels when bars are narrow

    def sy(v: float) -> float:
        return top + plot_h - v / ticks[-1] * plot_h

    body = [f'<line x1="{left}" y1="{_n(sy(t))}" x2="{left + plot_w}" y2="{_n(sy(t))}" stroke="{GRID}"/>'
            + _text(left - 8, sy(t) + 4, fmt(t), anchor="end", size=11, fill=MUTED) for t in ticks]
    for i, (label, value, name) in enumerate(columns):
        x, w = left + i * slot + slot * gap / 2, slot * (1 - gap)
        body.append(f'<g class="bar" data-label="{escape(name, quote=True)}"><title>{escape(name)}: '
                    f'{escape(fmt(value))}</title><rect x="{_n(x)}" y="{_n(sy(value))}" width="{_n(w)}" '
                    f'height="{_n(sy(0) - sy(value))}" fill="{PALETTE[0]}"/>')
        if w >= 26 or len(columns) <= 12:
            body.append(_text(x + w / 2, sy(value) - 5, fmt(value), anchor="middle", size=11, weight="bold"))
        if i % every == 0:
            body.append(_text(x + w / 2, top + plot_h + 16, _clip(label, 14), anchor="middle", size=11))
        body.append("</g>")
    body.append(f'<line x1="{left}" y1="{_n(sy(0))}" x2="{left + plot_w}" y2="{_n(sy(0))}" stroke="{INK}"/>')
    body.append(_text(left + plot_w / 2, height - 8, x_label, anchor="middle", size=12, fill=MUTED))
    body.append(f'<text transform="translate(16 {_n(top + plot_h / 2)}) rotate(-90)" text-anchor="middle" '
                f'font-size="12" fill="{MUTED}">{escape(y_label)}</text>')
    return _svg(key, title, desc, height, body)


def text_bars(rows: Sequence[tuple[str, float]], fmt: Fmt, width: int = 24) -> list[str]:
    """A unicode bar per row, scaled to the largest magnitude (for markdown and terminals)."""
    scale = max((abs(v) for _, v in rows), default=0.0) or 1.0
    lines = []
    for label, value in rows:
        eighths = round(abs(value) / scale * width * 8)
        bar = "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]
        lines.append(f"{label} {'-' if value < 0 else '+'}{bar or '·'} {fmt(value)}")
    return lines
