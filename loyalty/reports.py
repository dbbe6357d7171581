"""Campaign and programme reports: self-contained HTML pages, terminal tables and markdown.

The campaign report answers what a marketer asks first, in that order: did it work (the pooled
conversion lift with its 95% interval, or "not clear" when the interval straddles zero), how much
(incremental conversions and revenue), and was it worth it (ROI on offer and message costs); then
the lift per arm, conversions over time, and every count. While the attribution window is open the
caution is the first thing on the page. The programme report shows the KPIs, their monthly
trend, the tier distribution and the predicted-value histogram.

Pages are autoescaped Jinja templates (``loyalty/web/pages/report_*.html``) with CSS in one
``<style>`` and charts as inline SVG (:mod:`loyalty.report_charts`): no script, no external file,
so the HTML written by ``loyalflow report`` opens anywhere and the web app serves it under a CSP
that forbids scripts. Numbers go through Babel (:class:`loyalty.rendering_filters.Formatter`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from typing import Any
from urllib.parse import quote

import jinja2
from babel.numbers import format_currency
from markupsafe import Markup
from rich.markup import escape as rich_escape
from rich.table import Table

from loyalty import report_charts as charts
from loyalty.measurement_types import ArmResult, Estimate, KpiRow, ProgrammeKpis, RunMeasurement
from loyalty.rendering_filters import Formatter, formatter

#: What a cell shows when there is no value (an en dash).
NONE = "\u2013"


@lru_cache(maxsize=1)
def report_environment() -> jinja2.Environment:
    """The Jinja environment of the report pages (HTML always autoescaped)."""
    return jinja2.Environment(loader=jinja2.PackageLoader("loyalty.web", "pages"), autoescape=True,
                              undefined=jinja2.StrictUndefined)


class Numbers:
    """How reports write numbers: rates as %, differences in points, money in the programme currency."""

    def __init__(self, currency: str = "CAD", locale: str = "en_CA") -> None:
        self.f: Formatter = formatter(locale, "UTC", currency)

    def count(self, value: float) -> str:
        return self.f.number(round(value))

    def rate(self, value: float | None, digits: int = 1) -> str:
        return NONE if value is None else f"{100 * value:.{digits}f}%"

    def pp(self, value: float) -> str:
        return f"{100 * value:+.1f} pp"

    def money(self, cents: float | None) -> str:
        return NONE if cents is None else self.f.money(round(cents))

    def whole_money(self, cents: float) -> str:
        """Money without the cents, for axis labels: "$1,250"."""
        return str(format_currency(round(cents / 100), self.f.currency, format="¤#,##0", locale=self.f.locale,
                                   currency_digits=False))

    def signed_money(self, cents: float) -> str:
        return ("+" if cents > 0 else "") + self.money(cents)

    def lift(self, e: Estimate | None) -> str:
        """A rate difference with its interval: "+2.1 pp (0.4 to 3.8)"."""
        if e is None:
            return NONE
        return f"{self.pp(e.value)} ({100 * e.low:.1f} to {100 * e.high:.1f})"

    def money_lift(self, e: Estimate | None) -> str:
        """A money difference with its interval: "+$1.20 (-$0.10 to $2.50)"."""
        if e is None:
            return NONE
        return f"{self.signed_money(e.value)} ({self.money(e.low)} to {self.money(e.high)})"

    def interval(self, e: Estimate | None) -> str:
        """The 95% interval of a rate difference in points: "0.4 to 3.8" (empty without an estimate)."""
        return "" if e is None else f"{100 * e.low:.1f} to {100 * e.high:.1f}"

    def money_interval(self, e: Estimate | None) -> str:
        return "" if e is None else f"{self.money(e.low)} to {self.money(e.high)}"

    @staticmethod
    def p(e: Estimate | None) -> str:
        if e is None:
            return NONE
        return "p < 0.001" if e.p_value < 0.001 else f"p = {e.p_value:.3f}"

    def roi(self, value: float | None) -> str:
        return NONE if value is None else f"{100 * value:+.0f}%"

    def number(self, value: float | None, digits: int = 1) -> str:
        return NONE if value is None else f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Verdict:
    """The headline: did it work, in one word and one sentence."""

    kind: str  # "yes", "no", "unclear" or "unknown" (a CSS class too)
    headline: str
    detail: str


def verdict(m: RunMeasurement, n: Numbers) -> Verdict:
    """Did the campaign change conversion? Decided by the pooled 95% interval, not the point estimate."""
    e = m.overall.conversion_lift
    if e is None:
        return Verdict("unknown", "Too early to tell", "Too few members in the holdout or the treated arms "
                       "to estimate a lift.")
    said = f"Treated members converted {n.lift(e)} against the holdout ({n.p(e)})."
    if e.low > 0:
        return Verdict("yes", "Yes, it worked", said)
    if e.high < 0:
        return Verdict("no", "No, it did harm", said)
    return Verdict("unclear", "Not clear", said + " The interval includes zero: the difference may be chance.")


def _cost(arm: ArmResult) -> float:
    return arm.offer_cost_cents + arm.message_cost_cents


def worth_it(arm: ArmResult, n: Numbers) -> str:
    """ROI in words: what each unit of currency spent brought back in margin."""
    if arm.roi is None:
        return "It cost nothing to send." if _cost(arm) == 0 else "No ROI without a lift estimate."
    back = n.money(100 * (1 + arm.roi))
    return f"Each {n.money(100)} spent brought back {back} of incremental margin."



def mixed_signals(m: RunMeasurement, n: Numbers) -> list[str]:
    """Arms whose ROI and revenue lift point opposite ways, each explained in a sentence.

    ROI values the extra conversions at the programme's margin per conversion, while revenue per member
    is measured: a free item can win conversions and shrink baskets, and an ROI of +285% beside falling
    revenue would mislead anyone reading one column only.
    """
    notes = []
    for a in [*(a for a in m.arms if a.treated), m.overall]:
        r = a.revenue_lift_cents
        if a.roi is None or r is None or a.roi * r.value >= 0:
            continue
        chance = "" if r.low > 0 or r.high < 0 else " (its interval includes zero, so this may be chance)"
        if a.roi > 0:
            notes.append(f"{a.arm}: ROI {n.roi(a.roi)} counts its extra conversions at the programme's margin, "
                         f"but revenue per member fell by {n.money(-r.value)}{chance}. Check what its converters "
                         "bought before sending it to more members.")
        else:
            notes.append(f"{a.arm}: revenue per member rose by {n.money(r.value)}{chance}, but its extra "
                         f"conversions, valued at the programme's margin, do not cover its cost (ROI {n.roi(a.roi)}).")
    return notes

def _arm_row(arm: ArmResult, n: Numbers) -> dict[str, str]:
    return {"arm": arm.arm, "members": n.count(arm.members), "sent": n.count(arm.sent),
            "delivered": n.count(arm.delivered), "opened": n.count(arm.opened), "clicked": n.count(arm.clicked),
            "converted": n.count(arm.converted), "rate": n.rate(arm.conversion_rate, 2),
            "lift": n.lift(arm.conversion_lift), "p": n.p(arm.conversion_lift),
            "lift_value": n.pp(arm.conversion_lift.value) if arm.conversion_lift else NONE,
            "lift_ci": n.interval(arm.conversion_lift),
            "revenue_lift_value": n.signed_money(arm.revenue_lift_cents.value) if arm.revenue_lift_cents else NONE,
            "revenue_lift_ci": n.money_interval(arm.revenue_lift_cents),
            "revenue": n.money(arm.revenue_cents), "per_member": n.money(arm.revenue_per_member_cents),
            "incremental_revenue": n.signed_money(arm.incremental_revenue_cents) if arm.treated else NONE,
            "cost": n.money(_cost(arm)) if arm.treated else NONE, "roi": n.roi(arm.roi)}


def lift_svg(m: RunMeasurement, n: Numbers) -> str:
    """The conversion lift of each treated arm (and all pooled) with its 95% interval, in points."""
    bars = [charts.Interval(a.arm, 100 * a.conversion_lift.value, 100 * a.conversion_lift.low,
                            100 * a.conversion_lift.high, n.p(a.conversion_lift))
            for a in [*(a for a in m.arms if a.treated), m.overall] if a.conversion_lift is not None]
    bars = [charts.Interval(b.label, b.value, b.low, b.high, f"({b.note})") for b in bars]
    if len(bars) == 2 and bars[0].value == bars[1].value:
        bars = bars[:1]  # one treated arm: "all treated" would repeat it
    described = "; ".join(f"{b.label}: {b.value:+.1f} points ({b.low:.1f} to {b.high:.1f})" for b in bars)
    return charts.interval_chart(bars, key=f"lift-{m.run_id}", title="Conversion lift per arm, with 95% intervals",
                                 desc=described or "No arm has a lift estimate yet.",
                                 axis_label="conversion rate minus holdout (percentage points)",
                                 fmt=lambda v: "0" if v == 0 else f"{v:+.1f} pp")


def cumulative_svg(m: RunMeasurement, n: Numbers) -> str:
    """Cumulative conversion rate by day since the slot, treated and holdout."""
    treated = charts.Series("treated", [(p.day, 100 * p.treated_rate) for p in m.cumulative])
    holdout = charts.Series("holdout", [(p.day, 100 * p.holdout_rate) for p in m.cumulative])
    last = m.cumulative[-1] if m.cumulative else None
    desc = (f"After {last.day} days: treated {n.rate(last.treated_rate)}, holdout {n.rate(last.holdout_rate)}."
            if last else "No conversions recorded yet.")
    return charts.line_chart([treated, holdout], key=f"cumulative-{m.run_id}",
                             title="Cumulative conversion rate, treated vs holdout", desc=desc,
                             x_label="days since the send", y_label="converted (%)", y_fmt=lambda v: f"{v:.1f}%")


def campaign_context(m: RunMeasurement, n: Numbers) -> dict[str, Any]:
    """Everything the campaign page shows, formatted."""
    o = m.overall
    return {
        "m": m, "verdict": verdict(m, n), "worth": worth_it(o, n), "mixed": mixed_signals(m, n),
        "headline": {"incremental": n.number(o.incremental_conversions, 0),
                     "incremental_revenue": n.signed_money(o.incremental_revenue_cents),
                     "revenue_lift": n.money_lift(o.revenue_lift_cents),
                     "cost": n.money(_cost(o)), "roi": n.roi(o.roi)},
        "arms": [_arm_row(a, n) for a in m.arms], "overall": _arm_row(o, n),
        "lift_chart": Markup(lift_svg(m, n)), "cumulative_chart": Markup(cumulative_svg(m, n)),
        "dates": {"slot": f"{m.slot:%Y-%m-%d %H:%M} UTC", "window_end": f"{m.window_end:%Y-%m-%d %H:%M} UTC",
                  "as_of": f"{m.as_of:%Y-%m-%d %H:%M} UTC"},
    }


def campaign_report_html(m: RunMeasurement, *, currency: str = "CAD", locale: str = "en_CA",
                         index_href: str | None = None) -> str:
    """The campaign run's report as one self-contained HTML document."""
    values = campaign_context(m, Numbers(currency, locale))
    return report_environment().get_template("report_campaign.html").render(**values, index_href=index_href)


def _kpi_cards(row: KpiRow | None, n: Numbers, period_days: int) -> list[tuple[str, str, str]]:
    """(label, value, note) of the headline KPI cards."""
    if row is None:
        return []
    return [("Members", n.count(row.members), ""),
            ("Retention", n.rate(row.retention_rate), f"of last period's buyers bought again ({period_days} days)"),
            ("NPS", n.number(row.nps, 0), f"{n.count(row.responses)} responses"),
            ("Average transaction", n.money(row.average_transaction_value_cents), ""),
            ("Purchases per active member", n.number(row.purchase_frequency, 2), f"per {period_days} days"),
            ("Predicted 12-month value", n.money(row.clv_12m_cents),
             "mean per member" if row.clv_12m_cents is not None else "no lifetime fit yet")]


TRENDS: tuple[tuple[str, str], ...] = (
    ("retention_rate", "Retention"), ("nps", "NPS"), ("average_transaction_value_cents", "Average transaction"),
    ("purchase_frequency", "Purchases per active member"), ("clv_12m_cents", "Predicted 12-month value"),
)


def _trend_fmt(field_name: str, n: Numbers) -> charts.Fmt:
    if field_name.endswith("cents"):
        return n.whole_money
    if field_name == "retention_rate":
        return lambda v: f"{100 * v:.0f}%"
    return lambda v: f"{v:,.1f}" if field_name == "purchase_frequency" else f"{v:,.0f}"


def trend_svgs(k: ProgrammeKpis, n: Numbers) -> list[tuple[str, Markup]]:
    """Small multiples: (KPI name, line chart by month); KPIs without any value are left out."""
    out = []
    labels = {i: row.group for i, row in enumerate(k.months)}
    ticks = [float(i) for i in range(0, len(k.months), max(1, -(-len(k.months) // 3)))]
    for field_name, label in TRENDS:
        points = [(float(i), float(v)) for i, row in enumerate(k.months) if (v := getattr(row, field_name)) is not None]
        if not points:
            continue
        fmt = _trend_fmt(field_name, n)
        desc = (f"{label} from {labels[int(points[0][0])]} ({fmt(points[0][1])}) "
                f"to {labels[int(points[-1][0])]} ({fmt(points[-1][1])}).")
        chart = charts.line_chart([charts.Series(label, points)], key=f"trend-{field_name}", title=f"{label} by month",
                                  desc=desc, x_label="month", y_label="", y_fmt=fmt,
                                  x_fmt=lambda v: labels.get(int(v), ""), height=220, width=340, x_ticks=ticks)
        out.append((label, Markup(chart)))
    return out


def _group_row(r: KpiRow, n: Numbers) -> dict[str, str]:
    return {"group": f"{r.dimension}: {r.group}", "members": n.count(r.members), "retention": n.rate(r.retention_rate),
            "nps": n.number(r.nps, 0), "responses": n.count(r.responses),
            "atv": n.money(r.average_transaction_value_cents), "frequency": n.number(r.purchase_frequency, 2),
            "clv": n.money(r.clv_12m_cents)}


def programme_context(k: ProgrammeKpis, n: Numbers, name: str) -> dict[str, Any]:
    """Everything the programme page shows, formatted."""
    overall = next((r for r in k.rows if r.dimension == "all"), None)
    tiers = list(k.tier_distribution.items())
    tier_chart = charts.bar_chart(tiers, key="tiers", title="Members per tier",
                                  desc="; ".join(f"{t}: {c:,}" for t, c in tiers) or "No members.",
                                  x_label="tier", y_label="members", fmt=lambda v: f"{v:,.0f}")
    clv_chart = charts.histogram(k.clv_histogram, key="clv", title="Predicted 12-month value per member",
                                 desc=f"{sum(c for _, _, c in k.clv_histogram):,} members in "
                                      f"{len(k.clv_histogram)} bins.",
                                 x_label=f"predicted 12-month value ({n.f.currency})",
                                 x_fmt=n.whole_money) if k.clv_histogram else None
    groups = [_group_row(r, n) for r in k.rows if r.dimension != "all"]
    return {"k": k, "name": name, "cards": _kpi_cards(overall, n, k.period_days), "trends": trend_svgs(k, n),
            "tier_chart": Markup(tier_chart), "clv_chart": Markup(clv_chart) if clv_chart else None,
            "groups": groups, "as_of": f"{k.as_of:%Y-%m-%d %H:%M} UTC",
            "nps_breakdown": {key: n.count(v) for key, v in k.nps_breakdown.items()}}


def programme_report_html(k: ProgrammeKpis, *, name: str = "Programme", currency: str = "CAD",
                          locale: str = "en_CA", index_href: str | None = None) -> str:
    """The programme's KPI report as one self-contained HTML document."""
    values = programme_context(k, Numbers(currency, locale), name)
    return report_environment().get_template("report_programme.html").render(**values, index_href=index_href)


def _table(columns: list[str], *, title: str, caption: str | None = None) -> Table:
    """A rich table: the first column a label, the others numbers (right-aligned)."""
    table = Table(title=title, caption=caption, caption_style="bold yellow")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def campaign_table(m: RunMeasurement, *, currency: str = "CAD") -> Table:
    """The key numbers per arm for the terminal."""
    n = Numbers(currency)
    v = verdict(m, n)
    notes = ([m.caution] if m.caution else []) + mixed_signals(m, n)
    table = _table(["arm", "members", "converted", "rate", "lift (95% CI)", "p", "incr. revenue", "cost", "ROI"],
                   title=rich_escape(f"{m.campaign} run {m.run_id}: {v.headline}"),
                   caption=rich_escape("\n".join(notes)) if notes else None)
    for row in [_arm_row(a, n) for a in m.arms] + [_arm_row(m.overall, n)]:
        table.add_row(rich_escape(row["arm"]), row["members"], row["converted"], row["rate"], row["lift"], row["p"],
                      row["incremental_revenue"], row["cost"], row["roi"])
    return table


def programme_table(k: ProgrammeKpis, *, currency: str = "CAD") -> Table:
    """The KPI rows (programme, tiers, segments, locales) for the terminal."""
    n = Numbers(currency)
    table = _table(["group", "members", "retention", "NPS", "avg. transaction", "purchases/member", "12-month value"],
                   title=f"Programme KPIs as of {k.as_of:%Y-%m-%d} ({k.period_days}-day periods)")
    for r in k.rows:
        label = "programme" if r.dimension == "all" else f"{r.dimension}: {r.group}"
        table.add_row(rich_escape(label), n.count(r.members), n.rate(r.retention_rate), n.number(r.nps, 0),
                      n.money(r.average_transaction_value_cents), n.number(r.purchase_frequency, 2),
                      n.money(r.clv_12m_cents))
    return table


def campaign_markdown(m: RunMeasurement, *, currency: str = "CAD") -> str:
    """The run's lift as markdown (for a Prefect artifact): verdict, per-arm table, a unicode bar chart."""
    n = Numbers(currency)
    v = verdict(m, n)
    lines = [f"## {_md(m.campaign)}, run {m.run_id}: {v.headline}", "", v.detail, ""]
    if m.caution:
        lines += [f"> **Caution:** {_md(m.caution)}", ""]
    for note in mixed_signals(m, n):
        lines += [f"> **ROI and revenue disagree:** {_md(note)}", ""]
    lines += ["| arm | members | converted | rate | lift (95% CI) | p | incremental revenue | ROI |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in [_arm_row(a, n) for a in m.arms] + [_arm_row(m.overall, n)]:
        cells = [row[c] for c in ("arm", "members", "converted", "rate", "lift", "p", "incremental_revenue", "roi")]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    bars = [(_md(a.arm), a.conversion_lift.value) for a in m.arms if a.treated and a.conversion_lift is not None]
    if bars:
        width = max(len(label) for label, _ in bars)
        lines += ["", "Conversion lift per arm (percentage points):", "", "```"]
        lines += charts.text_bars([(label.ljust(width), value) for label, value in bars], n.pp)
        lines.append("```")
    return "\n".join(lines) + "\n"


def artifact_key(campaign: str, suffix: str = "lift") -> str:
    """A Prefect artifact key for a campaign (lowercase letters, digits and dashes only): "campaign-win-back-lift"."""
    slug = re.sub(r"[^a-z0-9]+", "-", campaign.lower()).strip("-") or "unnamed"
    return f"campaign-{slug}-{suffix}"


def report_url(base_url: str, campaign: str, run_id: int) -> str:
    """Where the web app serves the report of one run."""
    return f"{base_url.rstrip('/')}/reports/campaigns/{quote(campaign, safe='')}?run={run_id}"


def _md(text: str) -> str:
    """Text safe inside a markdown table cell (a renderer may pass HTML through; a pipe ends a cell)."""
    return escape(text).replace("|", "\\|")
