"""The fast paths of loyalty.contact agree with email-validator and phonenumbers."""

from __future__ import annotations

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat, PhoneNumberType

from loyalty.contact import (
    MEMO_COUNTRY_CODES,
    ContactError,
    email_fast_path,
    normalise_email,
    normalise_phone,
    phone_fast_path,
    region_for_locale,
)

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_email(raw: str) -> str | None:
    """email-validator's verdict: the normalised address, or None when invalid."""
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def ours_email(raw: str) -> str | None:
    try:
        return normalise_email(raw)
    except ContactError:
        return None


def reference_phone(raw: str, region: str) -> str | None:
    """The plain phonenumbers path: parse, is_valid_number, E.164; None when invalid."""
    try:
        number = phonenumbers.parse(raw, region)
    except NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))


def ours_phone(raw: str, region: str) -> str | None:
    try:
        return normalise_phone(raw, region)
    except ContactError:
        return None


# ---------------------------------------------------------------------------------- email

ATEXT = "abcxyzABCXYZ0189!#$%&'*+/=?^_`{|}~-"
LOCAL_CHARS = ATEXT + ".\"@ \\é(),:;<>[]"
LABEL_CHARS = "abcxyzABCXYZ0189-_é"
TLDS = ["com", "ca", "FR", "org", "test", "local", "localhost", "invalid", "onion", "arpa",
        "c0m", "x", "museum", "xn--p1ai", "Test", "LOCAL", "a" * 63, "b" * 64]


@st.composite
def near_valid_emails(draw: st.DrawFn) -> str:
    """Addresses built like real ones, with the edge cases the fast path must get right."""
    local = draw(st.one_of(
        st.text(ATEXT, min_size=1, max_size=70).map(lambda s: s.strip(".")),
        st.lists(st.text(ATEXT, min_size=1, max_size=12), min_size=1, max_size=4).map(".".join),
        st.text(LOCAL_CHARS, min_size=0, max_size=20),
        st.sampled_from(sorted(CASE_INSENSITIVE_MAILBOX_NAMES)).map(str.upper),
        st.just("a" * 64), st.just("a" * 65),
    ))
    labels = draw(st.lists(st.one_of(
        st.text(LABEL_CHARS, min_size=0, max_size=12),
        st.sampled_from(["xn--bcher-kva", "ab--cd", "a--b", "-ab", "ab-", "EXAMPLE", "a" * 63, "a" * 64]),
    ), min_size=0, max_size=4))
    tld = draw(st.sampled_from(TLDS))
    domain = ".".join([*labels, tld])
    padding = draw(st.sampled_from(["", "", "", " ", "."]))
    return f"{local}@{domain}{padding}"


@FAST
@given(st.one_of(near_valid_emails(), st.text(max_size=80), st.emails().map(str)))
@example("jean.tremblay@Videotron.CA")
@example("info@example.com")
@example("someone@mail.test")
@example("a@b.local")
@example("x@xn--bcher-kva.ch")
@example("a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ".com")
def test_email_fast_path_agrees_with_email_validator(raw: str) -> None:
    fast = email_fast_path(raw)
    reference = reference_email(raw)
    if fast is not None:
        assert reference == fast  # the fast path only accepts what email-validator accepts, identically
    assert ours_email(raw) == reference  # and whatever it leaves is decided by email-validator


def test_email_common_cases() -> None:
    assert normalise_email("Jean.Tremblay@Videotron.CA") == "Jean.Tremblay@videotron.ca"
    assert email_fast_path("Jean.Tremblay@Videotron.CA") == "Jean.Tremblay@videotron.ca"
    assert email_fast_path("Info@example.com") is None  # RFC 2142 name: email-validator lowercases it
    assert normalise_email("Info@example.com") == "info@example.com"
    with pytest.raises(ContactError, match="@-sign"):
        normalise_email("jean.tremblay.videotron.ca")
    with pytest.raises(ContactError, match="special-use"):
        normalise_email("jean@shop.test")


# ---------------------------------------------------------------------------------- phone

REGIONS = ["CA", "US", "FR", "GB"]
SEPARATORS = [" ", "-", ".", "(", ")", "", "", ""]


@st.composite
def formatted(draw: st.DrawFn, digits: str) -> str:
    """``digits`` with random separators between (and around) them."""
    out = []
    for digit in digits:
        out.append(draw(st.sampled_from(SEPARATORS)) if draw(st.booleans()) else "")
        out.append(digit)
    return "".join(out) + draw(st.sampled_from(["", "", ")", " "]))


@st.composite
def phone_inputs(draw: st.DrawFn) -> tuple[str, str]:
    """(raw, region): international and national numbers, valid-looking and random."""
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from(["example", "example", "random", "text"]))
    if kind == "text":
        return draw(st.text("0123456789+ -.()x#/", max_size=20)), region
    number_region = draw(st.sampled_from([region, *REGIONS, "DE", "BE", "CH", "MX", "AU", "IT", "JM"]))
    if kind == "example":
        kind_ = draw(st.sampled_from([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE,
                                      PhoneNumberType.TOLL_FREE]))
        example_number = phonenumbers.example_number_for_type(number_region, kind_)
        assume(example_number is not None)
        national = phonenumbers.national_significant_number(example_number)
        # Mostly keep the example's leading digits (so many numbers are valid), sometimes not.
        keep = draw(st.one_of(st.integers(max(0, len(national) - 6), len(national)), st.integers(0, len(national))))
        size = len(national) - keep
        size = max(0, size + draw(st.sampled_from([0, 0, 0, 1, -1])))  # sometimes a digit more or less
        tail = draw(st.text("0123456789", min_size=size, max_size=size))
        national = national[:keep] + tail
        country_code = example_number.country_code
    else:
        national = draw(st.text("0123456789", min_size=1, max_size=13))
        country_code = phonenumbers.country_code_for_region(number_region)
    style = draw(st.sampled_from(["plus", "plus", "national", "national", "trunk", "one", "idd"]))
    digits = {
        "plus": f"+{country_code}{national}",
        "national": national,
        "trunk": f"0{national}",
        "one": f"1{national}",
        "idd": f"00{country_code}{national}",
    }[style]
    if digits.startswith("+"):
        return "+" + draw(formatted(digits[1:])), region
    return draw(formatted(digits)), region


@FAST
@given(phone_inputs())
@example(("(514) 555-0134", "CA"))
@example(("+1 416 555 0199", "CA"))
@example(("06 12 34 56 78", "FR"))
@example(("+33 6 12 34 56 78", "CA"))
@example(("1-514-872-3456", "US"))
@example(("+44 020 7946 0958", "GB"))
@example(("+39 06 6982 1234", "FR"))
@example(("0033612345678", "FR"))
def test_phone_fast_path_agrees_with_phonenumbers(case: tuple[str, str]) -> None:
    raw, region = case
    assert ours_phone(raw, region) == reference_phone(raw, region)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(MEMO_COUNTRY_CODES)), st.data())
def test_validity_does_not_depend_on_the_last_four_digits(country_code: int, data: st.DataObject) -> None:
    """The assumption behind the validity memo, on valid numbers and random prefixes alike."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[country_code]
    region = data.draw(st.sampled_from(regions))
    kind = data.draw(st.sampled_from([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, None]))
    example_number = phonenumbers.example_number_for_type(region, kind) if kind is not None else None
    if example_number is not None:
        national = phonenumbers.national_significant_number(example_number)
    else:
        national = data.draw(st.from_regex(r"[1-9][0-9]{7,11}", fullmatch=True))
    assume(len(national) >= 8 and national[0] != "0")
    block = int(national) // 10_000
    verdicts = {
        phonenumbers.is_valid_number(PhoneNumber(country_code=country_code, national_number=block * 10_000 + s))
        for s in (0, 9999, data.draw(st.integers(0, 9999)), int(national) % 10_000)
    }
    assert len(verdicts) == 1


def test_phone_common_cases() -> None:
    assert normalise_phone("(514) 555-0134", "CA") == "+15145550134"
    assert normalise_phone("+1 416 555 0199", "FR") == "+14165550199"
    assert normalise_phone("06 12 34 56 78", "FR") == "+33612345678"
    assert normalise_phone("+33 6 12 34 56 78", "CA") == "+33612345678"
    assert phone_fast_path("(514) 555-0134", "CA") == (1, "5145550134")
    assert phone_fast_path("+44 020 7946 0958", "GB") is None  # trunk 0 after +44: phonenumbers decides
    assert normalise_phone("+44 020 7946 0958", "GB") == "+442079460958"
    with pytest.raises(ContactError, match="not a valid phone number in CA"):
        normalise_phone("555-0134", "CA")
    with pytest.raises(ContactError, match="did not seem to be a phone number"):
        normalise_phone("call me", "CA")


def test_region_for_locale() -> None:
    assert [region_for_locale(loc) for loc in ("fr_CA", "en_US", "fr_FR")] == ["CA", "US", "FR"]
