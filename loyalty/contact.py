"""Validate and normalise email addresses and phone numbers, fast.

The reference behaviour is the libraries': ``email_validator.validate_email(...,
check_deliverability=False)`` for email, and ``phonenumbers.parse`` + ``is_valid_number`` +
E.164 formatting for phones. Both cost 20-40 µs a call, too slow for bulk imports, so each
function here first tries a *fast path* that handles the common shapes exactly as the
library would, and hands everything else to the library:

* email: a strict ASCII regex (dot-atom local part, LDH domain labels, alphabetic TLD). It
  only ever accepts addresses that email-validator accepts with the same normalised form
  (domain lowercased, local part unchanged); special-use domains, RFC 2142 mailbox names,
  ``xn--``-like labels, quoting, non-ASCII and over-long parts all go to email-validator.
* phone: separators are stripped; ``+<digits>`` is split into country code and national
  number, and bare national numbers of the shapes we see most (NANP 10/11 digits for CA/US,
  French ``0X XX XX XX XX``) are completed with the default region's country code. Any shape
  where ``phonenumbers.parse`` would strip a national prefix, keep a leading zero or read an
  international dialling prefix goes to ``phonenumbers.parse``. Validity is memoised on the
  number's leading digits for country codes where it does not depend on the last four.

``tests/test_contact.py`` checks with hypothesis that fast and reference paths agree.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

import email_validator
import phonenumbers
from email_validator import EmailNotValidError
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber, PhoneNumberFormat

__all__ = [
    "ContactError",
    "email_fast_path",
    "normalise_email",
    "normalise_phone",
    "phone_fast_path",
    "region_for_locale",
]


class ContactError(ValueError):
    """An email address or phone number is not valid; ``str()`` says why."""


# ---------------------------------------------------------------------------------- email

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FAST_EMAIL = re.compile(rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@((?:{_LABEL}\.)+([A-Za-z]{{2,63}}))")
# email-validator refuses these domains and their subdomains; single labels are checked
# against the TLD, anything longer (none today) by suffix.
_SPECIAL = [d.lower() for d in email_validator.SPECIAL_USE_DOMAIN_NAMES]
_SPECIAL_TLDS = frozenset(d for d in _SPECIAL if "." not in d)
_SPECIAL_SUFFIXES = tuple(d for d in _SPECIAL if "." in d)
# email-validator lowercases these local parts (RFC 2142); leave them to it.
_CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


def email_fast_path(raw: str) -> str | None:
    """The normalised address if the fast path can accept ``raw``, else None (undecided)."""
    match = _FAST_EMAIL.fullmatch(raw)
    if match is None or len(raw) > 254:
        return None
    local, domain, tld = match.groups()
    domain = domain.lower()
    if (
        len(local) > 64
        or "--" in domain  # "ab--" labels are Punycode (or refused): email-validator decides
        or tld.lower() in _SPECIAL_TLDS
        or local.lower() in _CASE_INSENSITIVE
        or (_SPECIAL_SUFFIXES and any(domain == d or domain.endswith("." + d) for d in _SPECIAL_SUFFIXES))
    ):
        return None
    return f"{local}@{domain}"


def normalise_email(raw: str) -> str:
    """The normalised form of ``raw``, as email-validator gives it; ContactError if invalid."""
    fast = email_fast_path(raw)
    if fast is not None:
        return fast
    try:
        return email_validator.validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ContactError(str(exc)) from None


# ---------------------------------------------------------------------------------- phone

_SEPARATORS = str.maketrans("", "", " -.()")
_COUNTRY_CODES = frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
_NANP_REGIONS = frozenset({"CA", "US"})
# Country codes for which validity was measured not to depend on the last four digits of
# a national number of 8+ digits (tests/test_contact.py re-checks it on every run).
MEMO_COUNTRY_CODES = frozenset({1, 32, 33, 41, 44, 49, 52, 61})
_MIN_MEMO_DIGITS = 8


@cache
def _national_prefix(country_code: int) -> re.Pattern[str] | None:
    """The pattern phonenumbers strips as a national (trunk) prefix after ``+<cc>``."""
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    pattern = metadata.national_prefix_for_parsing if metadata is not None else None
    return re.compile(pattern) if pattern else None


def _split_international(digits: str) -> tuple[int, str] | None:
    if digits[:1] == "0":
        return None
    for size in (1, 2, 3):
        country_code = int(digits[:size])
        if country_code in _COUNTRY_CODES:
            national = digits[size:]
            break
    else:
        return None
    if not 4 <= len(national) <= 17 or national[0] == "0":
        return None  # too short/long to parse the same way, or a kept leading zero (Italy)
    prefix = _national_prefix(country_code)
    if prefix is not None and prefix.match(national):
        return None  # phonenumbers might strip it as a trunk prefix: let it decide
    return country_code, national


def _split_national(digits: str, region: str) -> tuple[int, str] | None:
    if region in _NANP_REGIONS:
        if len(digits) == 11 and digits[0] == "1":
            digits = digits[1:]
        if len(digits) == 10 and digits[0] in "23456789":
            return 1, digits
    elif region == "FR" and len(digits) == 10 and digits[0] == "0" and digits[1] != "0":
        return 33, digits[1:]  # trunk 0 dropped; "00" would be an international prefix
    return None


def phone_fast_path(raw: str, region: str) -> tuple[int, str] | None:
    """``(country code, national number)`` as phonenumbers would parse ``raw``, or None (undecided)."""
    compact = raw.translate(_SEPARATORS)
    if not compact.isascii() or len(raw) > 250:  # phonenumbers refuses inputs over 250 characters
        return None
    if compact[:1] == "+":
        digits = compact[1:]
        return _split_international(digits) if digits.isdigit() else None
    return _split_national(compact, region) if compact.isdigit() else None


@lru_cache(maxsize=1 << 16)
def _block_is_valid(country_code: int, length: int, block: int) -> bool:
    # Any number of the block stands for all of them; suffix 0000 keeps the length.
    del length  # part of the cache key only (the block's digit count already implies it)
    number = PhoneNumber(country_code=country_code, national_number=block * 10_000)
    return bool(phonenumbers.is_valid_number(number))


def _is_valid(country_code: int, national: str) -> bool:
    if len(national) >= _MIN_MEMO_DIGITS and country_code in MEMO_COUNTRY_CODES:
        return _block_is_valid(country_code, len(national), int(national) // 10_000)
    number = PhoneNumber(country_code=country_code, national_number=int(national))
    return bool(phonenumbers.is_valid_number(number))


def normalise_phone(raw: str, region: str) -> str:
    """``raw`` in E.164 (``+15145550134``); ``region`` (e.g. ``CA``) applies without ``+``.

    Raises ContactError when phonenumbers cannot parse it or says it is not a valid number.
    """
    split = phone_fast_path(raw, region)
    if split is None:
        return _normalise_phone_slow(raw, region)
    country_code, national = split
    if not _is_valid(country_code, national):
        raise ContactError(_invalid_phone(raw, region))
    return f"+{country_code}{national}"


def _normalise_phone_slow(raw: str, region: str) -> str:
    try:
        number = phonenumbers.parse(raw, region)
    except NumberParseException as exc:
        raise ContactError(str(exc.args[0]) if exc.args else str(exc)) from None
    if not phonenumbers.is_valid_number(number):
        raise ContactError(_invalid_phone(raw, region))
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))


def _invalid_phone(raw: str, region: str) -> str:
    where = "" if raw.lstrip().startswith("+") else f" in {region} (no +country code given)"
    return f"{raw!r} is not a valid phone number{where}."


def region_for_locale(locale: str) -> str:
    """The region of a ``ll_RR`` locale (``fr_CA`` → ``CA``), the default for national phone numbers."""
    return locale[3:]
