"""``loyalflow templates check``: each kind of problem is found, located and classed; the shipped set is clean."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from loyalty.cli import app
from loyalty.programme import Programme
from loyalty.template_lint import ERROR, WARNING, Finding, has_errors, link_problem, lint
from tests.conftest import REPO_ROOT
from tests.template_helpers import scratch_library, shipped_library

runner = CliRunner()
FOOTER = '{% include "_partials/footer.html" %}'


def findings_for(tmp_path: Path, programme: Programme, files: dict[str, str]) -> list[Finding]:
    return lint(scratch_library(tmp_path, programme, files), programme)


def test_shipped_templates_are_clean(programme: Programme) -> None:
    assert lint(shipped_library(programme), programme) == []


def test_syntax_error_located(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {"m/en/sms.txt": "ok\n{% if points %}never closed",
                                               "m/fr/sms.txt": "ok"})
    assert any(f.file == "templates/m/en/sms.txt" and f.line == 2 and f.severity == ERROR and "syntax" in f.message
               for f in found)


def test_undocumented_variable_named_with_line(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {"m/sms.txt": "Hi\n{{ member.first_name }} {{ coupon_code }}"})
    hit = [f for f in found if f.variable == "coupon_code"]
    assert hit and hit[0].line == 2 and hit[0].file == "templates/m/sms.txt" and hit[0].severity == ERROR


def test_undefined_attribute_found_by_rendering_personas(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {"m/sms.txt": "Hi {{ member.nickname }}"})
    assert any(f.variable == "nickname" and f.line == 1 and f.severity == ERROR for f in found)


def test_unknown_route(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {"m/sms.txt": "{% if false %}{{ link('checkout') }}{% endif %}ok"})
    assert any(f.variable == "checkout" and "unknown route" in f.message for f in found)


def test_missing_unsubscribe_link_in_email(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {"m/email.subject.txt": "Hi", "m/email.html": "<p>No way out</p>",
                                               "ok/email.subject.txt": "Hi", "ok/email.html": "<p>Hi</p>" + FOOTER})
    missing = [f for f in found if f.variable == "unsubscribe_url"]
    assert [f.file for f in missing] == ["templates/m/email.html"]


def test_sms_over_cap_and_ucs2_character(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {"long/sms.txt": "{{ 'word ' * 100 }}",
                                               "curly/sms.txt": "Hello\nIt\u2019s your day {{ member.first_name }}"})
    assert any(f.file == "templates/long/sms.txt" and f.severity == ERROR and "segments" in f.message for f in found)
    curly = [f for f in found if f.variable == "\u2019" and f.line == 2]
    assert curly and curly[0].severity == WARNING and "UCS-2" in curly[0].message


def test_push_over_limits(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {
        "p/push.json": '{"title": "A title that is really far too long for any phone lock screen", '
                       '"body": "b", "url": "https://shop.example.com/"}'})
    assert any(f.variable == "title" and "title is" in f.message and f.severity == ERROR for f in found)


def test_broken_links(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {
        "m/email.subject.txt": "Hi",
        "m/email.html": '<a href="htps//shop.example.com">x</a><a href="https://">y</a>' + FOOTER})
    broken = sorted(f.variable or "" for f in found if f.message.startswith("broken link"))
    assert broken == ["htps//shop.example.com", "https://"]
    assert link_problem("https://shop.example.com/a?b=1") is None
    assert link_problem("javascript:alert(1)") is not None


def test_missing_language_variant_is_a_warning(tmp_path: Path, programme: Programme) -> None:
    found = findings_for(tmp_path, programme, {"m/en/sms.txt": "Hello", "m/fr/sms.txt": "Bonjour",
                                               "m/en/push.json": '{"title": "t", "body": "b", "url": '
                                                                 '"https://shop.example.com/"}'})
    missing = [f for f in found if f.file == "templates/m/fr/push.json"]
    assert missing and missing[0].severity == WARNING and "'fr'" in missing[0].message
    assert not has_errors(found)


def test_cli_check_passes_on_shipped_and_fails_on_errors(tmp_path: Path, programme: Programme,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALFLOW_CONFIG_DIR", str(REPO_ROOT / "config"))
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(REPO_ROOT / "templates"))
    ok = runner.invoke(app, ["templates", "check"])
    assert ok.exit_code == 0, ok.output
    assert "14 messages checked: 0 errors" in ok.output
    scratch_library(tmp_path, programme, {"bad/sms.txt": "{{ coupon }}"})
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(tmp_path / "templates"))
    bad = runner.invoke(app, ["templates", "check"])
    assert bad.exit_code == 1
    assert "coupon" in bad.output and "templates/bad/sms.txt" in bad.output


def test_cli_preview_persona(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALFLOW_CONFIG_DIR", str(REPO_ROOT / "config"))
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(REPO_ROOT / "templates"))
    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path / "var"))
    sms = runner.invoke(app, ["templates", "preview", "offers/bonus_500", "--persona", "camille", "--channel", "sms"])
    assert sms.exit_code == 0, sms.output
    assert "500 points en prime" in sms.output and "segment(s), GSM-7" in sms.output
    email = runner.invoke(app, ["templates", "preview", "welcome", "--persona", "camille", "--locale", "en_CA"],
                          terminal_width=400)
    assert email.exit_code == 0, email.output
    assert "Welcome to Maple Rewards, Camille" in email.output
    html = tmp_path / "var" / "preview" / "welcome.en.html"
    assert html.is_file() and str(html) in email.output.replace("\n", "")
