"""The rendering library: locale formatting, fallback, compile-time inlining, channels, errors, real members."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from channels.segments import GSM7_BASIC, count_segments
from loyalty.ledger import earn
from loyalty.programme import Programme
from loyalty.render_context import build_contexts, offer_for_message, personas
from loyalty.rendering import (
    ChannelLimit,
    RenderLimits,
    SandboxViolation,
    TemplateMissing,
    UndefinedVariable,
    segments,
)
from loyalty.rendering_filters import Formatter
from loyalty.tokens import UNSUBSCRIBE, read_token
from tests.factories import add_member
from tests.template_helpers import WEB, scratch_library, shipped_library

NBSP = "\u00a0"


@pytest.mark.parametrize(("locale", "money", "number", "points"), [
    ("fr_CA", f"12,50{NBSP}$", f"1{NBSP}250", f"1{NBSP}250 points"),
    ("en_CA", "$12.50", "1,250", "1,250 points"),
])
def test_formatter(locale: str, money: str, number: str, points: str) -> None:
    fmt = Formatter(locale, "America/Toronto", "CAD")
    assert (fmt.money(1250), fmt.number(1250), fmt.points(1250)) == (money, number, points)


def test_plurals_follow_the_language() -> None:
    fr, en = Formatter("fr_CA", "America/Toronto", "CAD"), Formatter("en_CA", "America/Toronto", "CAD")
    assert [fr.points(n) for n in (0, 1, 2)] == ["0 point", "1 point", "2 points"]
    assert [en.points(n) for n in (0, 1, 2)] == ["0 points", "1 point", "2 points"]
    assert fr.plural(1, "visite", "visites") == "visite" and en.plural(3, "visit", "visits") == "visits"


def test_dates_in_the_member_language_and_zone() -> None:
    from datetime import UTC, date, datetime

    fr = Formatter("fr_CA", "America/Toronto", "CAD")
    assert fr.date(date(2026, 3, 5)) == "5 mars 2026"
    # 02:00 UTC on the 6th is still the 5th in Toronto
    assert fr.date(datetime(2026, 3, 6, 2, 0, tzinfo=UTC)) == "5 mars 2026"


def test_french_member_gets_french_copy_with_french_numbers(programme: Programme) -> None:
    library = shipped_library(programme)
    camille = personas(programme, name="offers/bonus_500")["camille"]
    rendered = library.render("offers/bonus_500", "email", camille)
    assert rendered.language == "fr"
    assert f"1{NBSP}250 points" in rendered.content["text"]
    assert f"25,00{NBSP}$" in rendered.content["html"]


def test_unknown_language_and_missing_variant_fall_back_to_default(tmp_path: Path, programme: Programme) -> None:
    library = scratch_library(tmp_path, programme, {"m/en/sms.txt": "Hello {{ member.first_name }}",
                                                    "m/fr/email.subject.txt": "x"})
    lea = personas(programme, name="m")["lea"]  # fr_FR: French, but m has no French SMS
    assert library.render("m", "sms", lea).content["body"] == "Hello Léa"
    assert library.language_for({"locale": "es_MX"}) == "en"
    with pytest.raises(TemplateMissing):
        library.render("m", "push", lea)


def test_css_is_inlined_once_at_compile_time(programme: Programme) -> None:
    library = shipped_library(programme)
    olivia = personas(programme, name="welcome")["olivia"]
    html = library.render("welcome", "email", olivia).content["html"]
    assert 'class="button"' in html and "background-color: #0b6e4f" in html
    compiled = library.template("en:welcome/email.html")
    library.render("welcome", "email", olivia)
    assert library.template("en:welcome/email.html") is compiled  # cached, not recompiled


def test_text_part_generated_from_html_unless_written(tmp_path: Path, programme: Programme) -> None:
    files = {"a/email.subject.txt": "Hi", "a/email.html": '<h1>Hello {{ member.first_name }}</h1>'
             '<p><a href="{{ link(\'rewards\') }}">Rewards</a> <a href="{{ unsubscribe_url }}">stop</a></p>',
             "b/email.subject.txt": "Hi", "b/email.html": "<p>html</p>", "b/email.txt": "Plain {{ member.first_name }}"}
    library = scratch_library(tmp_path, programme, files)
    olivia = personas(programme, name="a")["olivia"]
    text = library.render("a", "email", olivia).content["text"]
    assert "Hello Olivia" in text and "[Rewards](https://shop.example.com/rewards?utm_source=loyalflow" in text
    assert library.render("b", "email", olivia).content["text"] == "Plain Olivia\n"


def test_utm_on_shop_links_only_and_list_unsubscribe(programme: Programme) -> None:
    library = shipped_library(programme)
    olivia = personas(programme, name="offers/double_points")["olivia"]
    rendered = library.render("offers/double_points", "email", olivia)
    html = rendered.content["html"]
    assert ("https://shop.example.com/offers/double_points?utm_source=loyalflow&amp;utm_medium=email"
            "&amp;utm_campaign=double_points&amp;utm_content=offers%2Fdouble_points") in html
    unsubscribe = rendered.headers["List-Unsubscribe"].strip("<>")
    assert f'href="{unsubscribe}"' in html  # untouched by tracking
    assert read_token(WEB, unsubscribe.rsplit("/", 1)[1], UNSUBSCRIBE).channel == "email"
    assert rendered.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_sms_segments_and_cap(tmp_path: Path, programme: Programme) -> None:
    files = {"s/sms.txt": "{{ points|points }} for you", "long/sms.txt": "{{ 'x' * 400 }}",
             "curly/sms.txt": "It\u2019s here"}
    library = scratch_library(tmp_path, programme, files,
                              limits=RenderLimits(sms_segment_cap=2))
    camille = personas(programme, name="s")["camille"]
    rendered = library.render("s", "sms", camille)
    assert rendered.content == {"body": "1 250 points for you"}  # no-break space made plain: stays GSM-7
    assert rendered.segments is not None and rendered.segments.encoding == "GSM-7"
    with pytest.raises(ChannelLimit, match="3 segments") as caught:
        library.render("long", "sms", camille)
    assert caught.value.file == "templates/long/sms.txt"
    curly = library.render("curly", "sms", camille)
    assert curly.segments is not None and curly.segments.offending == ("\u2019",)


def test_push_fields_and_limits(tmp_path: Path, programme: Programme) -> None:
    library = scratch_library(tmp_path, programme, {
        "p/push.json": '{"title": "Hi {{ member.first_name }}", "body": "{{ points|points }}", '
                       '"url": "{{ link(\'rewards\') }}"}',
        "long/push.json": '{"title": "{{ \'x\' * 80 }}", "body": "b", "url": "https://shop.example.com/"}'})
    olivia = personas(programme, name="p")["olivia"]
    content = library.render("p", "push", olivia).content
    assert content["title"] == "Hi Olivia" and content["body"] == "7,420 points"
    assert content["url"].startswith("https://shop.example.com/rewards?utm_source=loyalflow&utm_medium=push")
    with pytest.raises(ChannelLimit, match="title is 80"):
        library.render("long", "push", olivia)


def test_undefined_attribute_names_file_line_and_variable(tmp_path: Path, programme: Programme) -> None:
    library = scratch_library(tmp_path, programme, {
        "u/email.subject.txt": "Hi", "u/email.html": "<p>one</p>\n<p>two</p>\n<p>{{ member.nickname }}</p>"})
    with pytest.raises(UndefinedVariable) as caught:
        library.render("u", "email", personas(programme, name="u")["olivia"])
    assert (caught.value.file, caught.value.line, caught.value.variable) == ("templates/u/email.html", 3, "nickname")


def test_auto_reload_picks_up_edits(tmp_path: Path, programme: Programme) -> None:
    from loyalty.rendering import TemplateLibrary

    scratch_library(tmp_path, programme, {"r/sms.txt": "first"}, with_shared=False)
    library = TemplateLibrary(tmp_path / "templates", web=WEB, programme=programme, auto_reload=True)
    olivia = personas(programme, name="r")["olivia"]
    assert library.render("r", "sms", olivia).content["body"] == "first"
    path = tmp_path / "templates" / "r" / "sms.txt"
    path.write_text("second")
    stamp = time.time() + 5
    import os

    os.utime(path, (stamp, stamp))
    assert library.render("r", "sms", olivia).content["body"] == "second"


def test_contexts_for_real_members_in_bulk(engine: Engine, programme: Programme) -> None:
    with Session(engine) as session:
        fr = add_member(session, first_name="Émilie", locale="fr_CA", tier="silver")
        en = add_member(session, first_name="Liam", locale="en_CA")
        earn(session, int(en.id or 0), 1250, reason="test", source="test", idempotency_key=f"t-{en.id}")
        session.commit()
        ids = [int(fr.id or 0), int(en.id or 0), 999_999]
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with Session(engine) as session:
        contexts = build_contexts(session, programme, ids, offer=offer_for_message(programme, "offers/bonus_500"))
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2  # members + qualifying values, whatever the number of members
    assert set(contexts) == set(ids[:2])
    liam = contexts[ids[1]]
    assert (liam.points, liam.tier.code, liam.next_tier and liam.next_tier.code) == (1250, "member", "silver")
    library = shipped_library(programme)
    assert "1,250 points" in library.render("offers/bonus_500", "push", liam).content["body"]
    body = library.render("offers/bonus_500", "email", contexts[ids[0]]).content["text"]
    assert "Bonjour Émilie" in body


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*sorted(GSM7_BASIC), "€", "{", "\u2019", "😀", "ç"]), max_size=400))
def test_fast_segment_count_matches_the_reference(body: str) -> None:
    assert segments(body) == count_segments(body)


def test_render_many_gives_what_render_gives_for_each_member(programme: Programme) -> None:
    library = shipped_library(programme)
    sample = personas(programme, name="offers/bonus_500")
    members = [sample["camille"], sample["olivia"], sample["camille"]]
    for channel in ("sms", "push"):
        batch = library.render_many("offers/bonus_500", channel, members)
        assert batch == [library.render("offers/bonus_500", channel, m) for m in members]
    emails = library.render_many("offers/bonus_500", "email", members)
    singles = [library.render("offers/bonus_500", "email", m) for m in members]
    assert [(r.language, r.content["subject"]) for r in emails if not isinstance(r, Exception)] == \
        [(r.language, r.content["subject"]) for r in singles]
    with pytest.raises(ValueError, match="unknown channel"):
        library.render_many("offers/bonus_500", "fax", members)


def test_render_many_reports_each_member_failure_in_its_place(tmp_path: Path, programme: Programme) -> None:
    camille_only = "{% if member.first_name == 'Camille' %}"
    library = scratch_library(tmp_path, programme, {
        "undefined/sms.txt": camille_only + "{{ nope }}{% endif %}Hi {{ member.first_name }}",
        "spin/sms.txt": camille_only + "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}"
                        "{% endfor %}{% endif %}Hi {{ member.first_name }}",
        "long/sms.txt": camille_only + "{{ 'x' * 600 }}{% endif %}Hi",
    })
    sample = personas(programme, name="undefined")
    members = [sample["camille"], sample["olivia"]]
    for name, error in (("undefined", UndefinedVariable), ("spin", SandboxViolation), ("long", ChannelLimit)):
        failed, rendered = library.render_many(name, "sms", members)
        assert isinstance(failed, error), (name, failed)
        assert failed.file == f"templates/{name}/sms.txt"
        assert not isinstance(rendered, Exception) and rendered.content["body"].startswith("Hi")


def test_render_many_gives_every_member_a_full_budget(tmp_path: Path, programme: Programme) -> None:
    # 15,000 iterations each: under the 20,000 of one render, far over it for the batch.
    library = scratch_library(tmp_path, programme, {
        "busy/sms.txt": "{% for a in range(150) %}{% for b in range(99) %}{% endfor %}{% endfor %}ok"})
    camille = personas(programme, name="busy")["camille"]
    results = library.render_many("busy", "sms", [camille] * 3)
    assert [r.content["body"] for r in results if not isinstance(r, Exception)] == ["ok"] * 3
