"""Every shipped message, on every channel, for every sample persona: rendered and read.

The personas cover both shipped languages (fr_CA, fr_FR → French; en_CA, en_US → English) and a
member whose name is markup with a CRLF in it. Assertions are on what members would read.
"""

from __future__ import annotations

import pytest

from loyalty.programme import Programme, load_programme
from loyalty.render_context import personas
from loyalty.rendering import CHANNELS, Rendered, TemplateLibrary
from tests.conftest import REPO_ROOT
from tests.template_helpers import shipped_library

NBSP = "\u00a0"
PROGRAMME = load_programme(REPO_ROOT / "config")
MESSAGES = [f"offers/{o.code}" for o in PROGRAMME.offers] + ["tier_upgrade", "welcome", "points_expiring", "win_back",
                                                          "points_reminder", "birthday", "nps_survey",
                                                          "service_recovery"]
#: Survey messages answer on the survey page (push) or by reply (SMS), not in the shop.
SURVEYS = {"nps_survey"}
PERSONAS = list(personas(PROGRAMME))
FRENCH = {"camille", "lea"}
#: A phrase each message must say, per language (subject or text part of the email).
PHRASES = {
    "offers/double_points": {"en": "Double points this weekend", "fr": "Points doublés ce week-end"},
    "offers/ten_percent_off": {"en": "10% off your next basket", "fr": f"10{NBSP}% de rabais"},
    "offers/five_dollars_off_fifty": {"en": "$5.00 off", "fr": "5,00"},
    "offers/bonus_500": {"en": "500 points", "fr": "500 points boni"},
    "offers/free_coffee": {"en": "Your next coffee is on us", "fr": "Le prochain café est pour nous"},
    "offers/early_access": {"en": "before everyone else", "fr": "avant tout le monde"},
    "welcome": {"en": "Welcome to Maple Rewards", "fr": "Bienvenue chez Maple Rewards"},
    "tier_upgrade": {"en": "You are now", "fr": "Vous êtes maintenant"},
    "points_expiring": {"en": "will expire on April 4, 2026", "fr": "expireront le 4 avril 2026"},
    "win_back": {"en": "We miss you", "fr": "Vous nous manquez"},
    "points_reminder": {"en": "waiting", "fr": "vous attend"},
    "birthday": {"en": "Happy birthday", "fr": "Joyeux anniversaire"},
    "nps_survey": {"en": "how likely are you to recommend", "fr": "recommanderiez-vous"},
    "service_recovery": {"en": "We are sorry", "fr": "Toutes nos excuses"},
}
POINTS = {"camille": f"1{NBSP}250 points", "olivia": "7,420 points", "lea": "80 points", "noah": "23,150 points",
          "mallory": "1 point"}


@pytest.fixture(scope="module")
def library() -> TemplateLibrary:
    return shipped_library(PROGRAMME)


def render(library: TemplateLibrary, name: str, channel: str, persona: str) -> Rendered:
    return library.render(name, channel, personas(PROGRAMME, name=name)[persona])


def test_every_configured_offer_has_templates(library: TemplateLibrary) -> None:
    assert sorted(library.messages()) == sorted(MESSAGES)
    for name in MESSAGES:
        assert library.channels(name) == list(CHANNELS)
        for lang in ("en", "fr"):
            for filename in ("email.subject.txt", "email.html", "sms.txt", "push.json"):
                assert (REPO_ROOT / "templates" / name / lang / filename).is_file(), (name, lang, filename)


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("name", MESSAGES)
def test_email(library: TemplateLibrary, name: str, persona: str) -> None:
    rendered = render(library, name, "email", persona)
    language = "fr" if persona in FRENCH else "en"
    subject, html, text = (rendered.content[k] for k in ("subject", "html", "text"))
    assert rendered.language == language and set(rendered.content) == {"subject", "html", "text"}
    assert PHRASES[name][language] in subject + "\n" + text
    assert "H3B 4W8" in html and "H3B 4W8" in text  # the legal postal address
    unsubscribe = rendered.headers["List-Unsubscribe"].strip("<>")
    assert unsubscribe.startswith("https://rewards.example.com/unsubscribe/") and f'href="{unsubscribe}"' in html
    assert ("désabonnez-vous" if language == "fr" else "unsubscribe") in text
    assert f'<html lang="{language}">' in html and 'style="' in html and "<style>" in html  # inlined + media query
    assert "<script>" not in html and "\n" not in subject
    if persona != "mallory":
        first = personas(PROGRAMME, name=name)[persona].member.first_name
        assert first in html and first in text
    if name.startswith("offers/"):
        assert f"https://shop.example.com/offers/{name.split('/')[1]}?utm_source=loyalflow" in text


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("name", ["welcome", "tier_upgrade", "win_back", "offers/bonus_500", "offers/double_points"])
def test_points_balance_in_member_format(library: TemplateLibrary, name: str, persona: str) -> None:
    text = render(library, name, "email", persona).content["text"]
    assert POINTS[persona] in text


@pytest.mark.parametrize("name", ["win_back", "points_expiring"])
def test_recommended_offers_are_named_and_linked(library: TemplateLibrary, name: str) -> None:
    text = render(library, name, "email", "olivia").content["text"]
    for offer in PROGRAMME.offers[:3]:
        assert offer.name in text and f"/offers/{offer.code}?utm_source" in text


def test_next_tier_progress(library: TemplateLibrary) -> None:
    assert "Only 1,800 points to go until Platinum." not in render(library, "welcome", "email", "noah").content["text"]
    olivia = render(library, "tier_upgrade", "email", "olivia").content["text"]
    assert "Only 5,200 points to go until Platinum." in olivia  # 15,000 - 9,800 qualifying
    camille = render(library, "tier_upgrade", "email", "camille").content["text"]
    assert f"Plus que 1{NBSP}800 points avant le niveau Gold." in camille


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("name", MESSAGES)
def test_sms(library: TemplateLibrary, name: str, persona: str) -> None:
    rendered = render(library, name, "sms", persona)
    body = rendered.content["body"]
    assert set(rendered.content) == {"body"}
    assert rendered.segments is not None and rendered.segments.encoding == "GSM-7", rendered.segments
    assert rendered.segments.segments <= (1 if persona != "mallory" else 3)
    assert body.startswith(("Maple Rewards", "Welcome to Maple Rewards", "Bienvenue chez Maple Rewards"))
    assert "STOP" in body and ("https://shop.example.com/" in body or name in SURVEYS)
    if name in SURVEYS:
        assert "0" in body and "10" in body
    if name.startswith("offers/"):
        assert f"/offers/{name.split('/')[1]}" in body


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("name", MESSAGES)
def test_push(library: TemplateLibrary, name: str, persona: str) -> None:
    content = render(library, name, "push", persona).content
    assert 0 < len(content["title"]) <= 50 and 0 < len(content["body"]) <= 150
    if name in SURVEYS:
        assert content["url"].startswith("https://rewards.example.com/survey/")
    else:
        assert content["url"].startswith("https://shop.example.com/") and "utm_medium=push" in content["url"]
    if name.startswith("offers/"):
        code = name.split("/")[1]
        assert content["image"] == f"https://shop.example.com/img/offers/{code}.png"
        assert f"/offers/{code}?" in content["url"]
    else:
        assert "image" not in content


def test_programme_fixture_matches(programme: Programme) -> None:
    assert [o.code for o in programme.offers] == [o.code for o in PROGRAMME.offers]
