"""Reports: HTML pages, charts, terminal tables and markdown from constructed results; the CLI end to end."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from rich.console import Console
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from loyalty import report_charts as charts
from loyalty import reports
from loyalty.measurement_types import Estimate
from loyalty.programme import Programme
from loyalty.seed import seed_programme
from loyalty.seed_campaign import CAMPAIGN_NAME
from tests import report_samples as samples

HOSTILE = '<script>alert("x")</script>&[bold]'
SEED_AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, css_class: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and (css_class is None or css_class in a.get("class", "").split())]

    def svgs(self, html: str) -> list[str]:
        return re.findall(r"<svg.*?</svg>", html, flags=re.S)


def assert_self_contained(html: str) -> None:
    """No script, no stylesheet or image from anywhere, no link to another host."""
    lowered = html.lower()
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", lowered)
    assert "javascript:" not in lowered


def test_campaign_report_headline_charts_and_numbers() -> None:
    m = samples.measurement()
    html = reports.campaign_report_html(m)
    page = Tags(html)
    svgs = page.svgs(html)
    assert len(svgs) == 2  # lift per arm, cumulative
    lift = Tags(svgs[0])
    treated = [a for a in m.arms if a.treated]
    assert [g["data-label"] for g in lift.find("g", "bar")] == [a.arm for a in treated] + [m.overall.arm]
    assert len(lift.find("g", "error-bar")) == len(treated) + 1 and len(lift.find("line", "zero")) == 1
    assert lift.find("title") and lift.find("desc") and "aria-labelledby" in lift.find("svg")[0]
    cumulative = Tags(svgs[1])
    assert [g["data-series"] for g in cumulative.find("g", "series")] == ["treated", "holdout"]
    text = " ".join(page.text)
    # did it work, how much, worth it: the pooled lift in points with its interval, then ROI.
    assert "Yes, it worked" in text and "+1.2 pp (0.1 to 2.3)" in text and "p = 0.031" in text
    arms = Tags(re.search(r'<table id="arms">.*?</table>', html, flags=re.S).group(0))  # type: ignore[union-attr]
    cells = " ".join(arms.text)
    assert "+2.1 pp" in cells and "0.4 to 3.8" in cells and "+0.3 pp" in cells and "-1.1 to 1.7" in cells
    assert "p = 0.640" in cells and "ROI +5%" in text
    assert "$9,000.00" in text and "7.10%" in text  # bonus_500 revenue (cents 900,000) and rate 142/2000
    assert "Caution" not in text and not page.find("p", "caution")
    assert_self_contained(html)
    assert reports.campaign_report_html(m) == html  # deterministic


@pytest.mark.parametrize(("lift", "kind"), [(Estimate(0.01, -0.002, 0.02, 0.2), "unclear"),
                                            (Estimate(-0.03, -0.05, -0.01, 0.004), "no"), (None, "unknown")])
def test_verdict_follows_the_interval(lift: Estimate | None, kind: str) -> None:
    m = samples.measurement()
    m = dataclasses.replace(m, overall=dataclasses.replace(m.overall, conversion_lift=lift))
    page = Tags(reports.campaign_report_html(m))
    assert page.find("div", kind) and page.find("div", "verdict")[0]["class"].split()[-1] == kind


def test_caution_shown_first_when_the_window_is_open() -> None:
    caution = "attribution window open until 2026-05-18: figures will change"
    html = reports.campaign_report_html(samples.measurement(caution=caution))
    assert Tags(html).find("p", "caution")
    assert html.index(caution) < html.index("Did it work?")
    assert caution in reports.campaign_markdown(samples.measurement(caution=caution))
    table = reports.campaign_table(samples.measurement(caution=caution))
    assert table.caption == caution



def test_roi_and_revenue_pointing_opposite_ways_are_called_out() -> None:
    m = samples.measurement()
    assert reports.mixed_signals(m, reports.Numbers("CAD")) == []  # the default arms agree
    assert 'id="mixed-signals"' not in reports.campaign_report_html(m)
    coffee = samples.arm("free_coffee", 2000, 160, lift=Estimate(0.03, 0.012, 0.048, 0.001), roi=2.85,
                         revenue_cents=600_000, cost_cents=20_000, revenue_lift=Estimate(-310.0, -520.0, -100.0, 0.004))
    m = dataclasses.replace(m, arms=[*m.arms, coffee])
    [note] = reports.mixed_signals(m, reports.Numbers("CAD"))
    assert note.startswith("free_coffee: ROI +285%") and "fell by $3.10" in note and "chance" not in note
    html = reports.campaign_report_html(m)
    assert Tags(html).find("div", "caution") and "fell by $3.10" in html
    assert "ROI and revenue disagree" in reports.campaign_markdown(m)
    assert "fell by $3.10" in str(reports.campaign_table(m).caption)

def test_hostile_arm_name_is_escaped_everywhere() -> None:
    m = samples.measurement()
    hostile = dataclasses.replace(m.arms[1], arm=HOSTILE)
    m = dataclasses.replace(m, arms=[m.arms[0], hostile, m.arms[2]], campaign=HOSTILE)
    html = reports.campaign_report_html(m)
    assert "<script" not in html.lower() and "&lt;script&gt;" in html
    assert any(g["data-label"] == HOSTILE for g in Tags(html).find("g", "bar"))  # parsed back to the same name
    markdown = reports.campaign_markdown(m)
    assert "<script" not in markdown and "&lt;script&gt;" in markdown
    console = Console(width=200, record=True)
    console.print(reports.campaign_table(m))
    assert "[bold]" in console.export_text()  # printed as text, not taken for rich markup


def test_programme_report_charts_and_numbers() -> None:
    k = samples.kpis()
    html = reports.programme_report_html(k, name="Maple Rewards")
    page = Tags(html)
    svgs = page.svgs(html)
    assert len(svgs) == len(reports.TRENDS) + 2  # one small multiple per KPI, tiers, CLV
    tiers = Tags(next(s for s in svgs if "Members per tier" in s))
    assert [g["data-label"] for g in tiers.find("g", "bar")] == list(k.tier_distribution)
    clv = Tags(next(s for s in svgs if "Predicted 12-month value per member" in s))
    assert len(clv.find("g", "bar")) == len(k.clv_histogram)
    text = " ".join(page.text)
    assert "Maple Rewards" in text and "41.0%" in text and "$42.50" in text and "$180.00" in text
    assert "tier: gold" in text and "locale: fr_CA" in text and "promoters 40" in text
    assert_self_contained(html)


def test_programme_report_without_a_lifetime_fit() -> None:
    k = samples.kpis()
    rows = [dataclasses.replace(r, clv_12m_cents=None) for r in k.rows]
    months = [dataclasses.replace(r, clv_12m_cents=None, nps=None) for r in k.months]
    k = dataclasses.replace(k, rows=rows, months=months, clv_histogram=[])
    html = reports.programme_report_html(k)
    assert "No lifetime-value fit yet." in html
    assert len(Tags(html).svgs(html)) == len(reports.TRENDS) - 2 + 1  # no CLV or NPS trend, no histogram


def test_markdown_has_a_row_per_arm_and_a_bar_per_treated_arm() -> None:
    m = samples.measurement()
    markdown = reports.campaign_markdown(m)
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(m.arms) + 1  # header, arms, pooled
    bars = [line for line in markdown.splitlines() if "█" in line]
    assert len(bars) == sum(a.treated for a in m.arms)
    assert bars[0].count("█") > bars[1].count("█")  # +2.1 pp against +0.3 pp


def test_nice_ticks_cover_the_range() -> None:
    for low, high in [(-1.1, 3.8), (0.0, 7.1), (0.0, 0.0), (-5.0, -1.0), (0.0, 330.0)]:
        ticks = charts.nice_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and ticks == sorted(set(ticks)) and 2 <= len(ticks) <= 8


def _report_app() -> typer.Typer:
    from loyalty.cli import main_callback
    from loyalty.cli_reports import report_app

    root = typer.Typer()  # as loyalty.cli mounts it: `loyalflow report ...`
    root.callback()(main_callback)
    root.add_typer(report_app, name="report")
    return root


def seed_and_attribute(engine: Engine, programme: Programme, tmp_path: Path, *, members: int = 300,
                       as_of: datetime = SEED_AS_OF) -> int:
    """A small seeded programme with its past campaign attributed; returns that run's id."""
    from loyalty import attribution, measurement

    seed_programme(engine, programme, members=members, seed=3, as_of=as_of, truth_dir=tmp_path)
    attribution.attribute_all(engine, as_of=as_of, chunk_size=1000)
    run_id = measurement.latest_run_id(engine, CAMPAIGN_NAME)
    assert run_id is not None
    return run_id


def test_cli_writes_the_reports_and_prints_the_tables(app_env: Engine, programme: Programme, tmp_path: Path) -> None:
    from loyalty import measurement

    run_id = seed_and_attribute(app_env, programme, tmp_path)
    measured = measurement.measure_run(app_env, run_id, as_of=SEED_AS_OF, programme=programme)
    out = tmp_path / "reports" / "campaign.html"
    env = {"COLUMNS": "220", "LOYALFLOW_VAR_DIR": str(tmp_path / "var")}
    result = CliRunner().invoke(_report_app(), ["report", "campaign", CAMPAIGN_NAME, "--as-of", "2026-06-01T00:00:00",
                                                "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert str(out) in result.output.replace("\n", "")
    n = reports.Numbers(programme.currency)
    for arm in measured.arms:
        assert arm.arm in result.output and arm.arm in html
        assert n.rate(arm.conversion_rate, 2) in result.output
    overall = n.lift(measured.overall.conversion_lift)
    assert overall in html and overall in result.output
    assert len(Tags(html).svgs(html)) == 2 and "Caution" not in result.output

    early = (measured.slot + (measured.window_end - measured.slot) / 2).strftime("%Y-%m-%dT%H:%M:%S")
    result = CliRunner().invoke(_report_app(), ["report", "campaign", CAMPAIGN_NAME, "--as-of", early], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Caution:")  # before any figure
    assert (tmp_path / "var" / "reports" / f"campaign-{CAMPAIGN_NAME}-run-{run_id}.html").exists()  # the default

    result = CliRunner().invoke(_report_app(), ["report", "programme", "--as-of", "2026-06-01T00:00:00"], env=env)
    assert result.exit_code == 0, result.output
    written = tmp_path / "var" / "reports" / "programme.html"  # the default place
    assert written.exists() and "programme" in result.output and "tier: gold" in result.output
    assert "gold" in written.read_text(encoding="utf-8")


def test_cli_refuses_a_campaign_without_runs_or_a_foreign_run(app_env: Engine, programme: Programme,
                                                               tmp_path: Path) -> None:
    run_id = seed_and_attribute(app_env, programme, tmp_path)
    env = {"COLUMNS": "200", "LOYALFLOW_VAR_DIR": str(tmp_path / "var")}
    result = CliRunner().invoke(_report_app(), ["report", "campaign", "win_back"], env=env)
    assert result.exit_code == 1 and "no completed run" in result.output
    result = CliRunner().invoke(_report_app(), ["report", "campaign", "win_back", "--run", str(run_id)], env=env)
    assert result.exit_code == 1 and f"belongs to campaign '{CAMPAIGN_NAME}'" in result.output
    result = CliRunner().invoke(_report_app(), ["report", "campaign", "win_back", "--run", "999999"], env=env)
    assert result.exit_code == 1 and "no run 999999" in result.output


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_attribution_flow_attaches_the_lift_as_markdown(app_env: Engine, programme: Programme, tmp_path: Path) -> None:
    from flows.attribution import attribute_campaigns
    from loyalty import attribution, measurement
    from tests.test_flows_attribution import _artifact

    seed_programme(app_env, programme, members=300, seed=3, as_of=SEED_AS_OF, truth_dir=tmp_path)
    [run_id] = attribution.runs_needing_attribution(app_env, as_of=SEED_AS_OF)
    attribute_campaigns(as_of=SEED_AS_OF)
    measured = measurement.measure_run(app_env, run_id, as_of=SEED_AS_OF, programme=programme)
    artifact = _artifact(reports.artifact_key(CAMPAIGN_NAME))
    assert artifact["type"] == "markdown" and reports.artifact_key(CAMPAIGN_NAME) == "campaign-spring-reactivation-lift"
    markdown = str(artifact["data"])
    n = reports.Numbers(programme.currency)
    assert f"run {run_id}" in markdown and n.lift(measured.overall.conversion_lift) in markdown
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == len(measured.arms) + 2
    assert f"/reports/campaigns/{CAMPAIGN_NAME}?run={run_id}" in markdown
