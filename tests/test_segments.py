"""SMS segment counting, checked by hand and against the `gsm0338` codec as an oracle."""

from __future__ import annotations

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.segments import GSM7_BASIC, GSM7_EXTENSION, count_segments, gsm7_cost

RSQUO = "\u2019"  # the curly apostrophe word processors put in "it's"
# Curly quotes, a dash, accents outside the table, CJK, a zero-width space, emoji (outside the BMP).
NON_GSM = RSQUO + "\u201c\u201d\u2013…çêœ中\u200b😀👍🏽"
ESC = "\x1b"


def oracle_septets(text: str) -> int | None:
    """Septets per the gsm0338 codec, or None when it cannot encode the text."""
    try:
        return len(text.encode("gsm03.38"))
    except UnicodeEncodeError:
        return None


def reference_segments(text: str) -> int:
    """Split the oracle's bytes into parts the way a sender must: no ESC pair or surrogate pair across a part."""
    gsm = oracle_septets(text)
    if gsm is not None:
        data, single, part, unit = text.encode("gsm03.38"), 160, 153, 1
    else:
        data, single, part, unit = text.encode("utf-16-be"), 140, 134, 2
    if not data:
        return 0
    if len(data) <= single:
        return 1
    segments, start = 0, 0
    while start < len(data):
        end = min(start + part, len(data))
        if end < len(data) and gsm is not None and data[end - 1] == 0x1B:
            end -= 1  # the escape and its code travel together
        if end < len(data) and gsm is None and 0xD8 <= data[end - unit] <= 0xDB:
            end -= unit  # a high surrogate stays with its low surrogate
        segments, start = segments + 1, end
    return segments


def test_every_bmp_character_agrees_with_the_codec() -> None:
    for code in range(0x10000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF or char == ESC:
            continue
        assert gsm7_cost(char) == oracle_septets(char), repr(char)


def test_a_raw_escape_is_not_treated_as_gsm7() -> None:
    # The codec accepts ESC (0x1B), but a handset would read it as the start of an extension pair.
    info = count_segments("a" + ESC + "b")
    assert info.encoding == "UCS-2"
    assert info.offending == (ESC,)


@pytest.mark.parametrize(
    ("length", "segments", "per_segment"),
    [(0, 0, 160), (1, 1, 160), (160, 1, 160), (161, 2, 153), (306, 2, 153), (307, 3, 153), (459, 3, 153)],
)
def test_plain_gsm7_lengths(length: int, segments: int, per_segment: int) -> None:
    info = count_segments("a" * length)
    assert (info.encoding, info.characters, info.segments, info.per_segment) == (
        "GSM-7",
        length,
        segments,
        per_segment,
    )
    assert info.offending == ()


def test_e_acute_is_in_the_gsm7_basic_set() -> None:
    info = count_segments("Café " + "a" * 155)
    assert (info.encoding, info.characters, info.segments) == ("GSM-7", 160, 1)


def test_extension_characters_cost_two_septets() -> None:
    assert count_segments("€" * 80).characters == 160
    assert count_segments("€" * 80).segments == 1
    assert count_segments("€" * 81).segments == 2
    assert count_segments("\f[]{}~|^\\").characters == 18


def test_an_escape_pair_is_never_split_across_parts() -> None:
    # 152 + 2 + 152 = 306 septets would fit two 153-septet parts, but "€" cannot straddle the boundary.
    info = count_segments("a" * 152 + "€" + "a" * 152)
    assert (info.characters, info.segments) == (306, 3)


def test_one_curly_quote_forces_ucs2() -> None:
    info = count_segments("It" + RSQUO + "s " + "a" * 65)
    assert (info.encoding, info.characters, info.segments, info.per_segment) == ("UCS-2", 70, 1, 70)
    assert info.offending == (RSQUO,)
    assert count_segments("It" + RSQUO + "s " + "a" * 66).segments == 2


def test_offending_characters_are_distinct_in_first_seen_order() -> None:
    assert count_segments("\u2019a\u201c\u2019😀\u201d").offending == ("\u2019", "\u201c", "😀", "\u201d")


def test_emoji_count_two_utf16_units() -> None:
    assert count_segments("😀" * 35).characters == 70
    assert count_segments("😀" * 35).segments == 1
    assert count_segments("😀" * 36).segments == 2
    assert count_segments("👍🏽").characters == 4  # a skin-tone modifier is a second non-BMP character


def test_a_surrogate_pair_is_never_split_across_parts() -> None:
    # 66 + 68 = 134 units would fill two 67-unit parts exactly, but the first emoji cannot straddle them.
    info = count_segments("a" * 66 + "😀" * 34)
    assert (info.characters, info.segments) == (134, 3)


GSM_CHARS = sorted(GSM7_BASIC | GSM7_EXTENSION)
mixed_text = st.text(alphabet=st.sampled_from(GSM_CHARS + list(NON_GSM)), max_size=400)
# Over-weight two-unit characters so escape pairs and surrogate pairs often land on a part boundary.
escape_heavy_text = st.text(
    alphabet=st.one_of(st.sampled_from(sorted(GSM7_BASIC)), st.sampled_from(sorted(GSM7_EXTENSION))),
    min_size=100,
    max_size=400,
)
surrogate_heavy_text = st.text(alphabet=st.sampled_from(["a", RSQUO, "😀", "👍", "中"]), min_size=40, max_size=250)
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=500)


@settings(max_examples=300, deadline=None)
@given(st.one_of(mixed_text, escape_heavy_text, surrogate_heavy_text, gsm_text))
def test_counts_match_the_codec_oracle(text: str) -> None:
    info = count_segments(text)
    septets = oracle_septets(text)
    if septets is not None:
        assert info.encoding == "GSM-7"
        assert info.characters == septets
        assert info.offending == ()
    else:
        assert info.encoding == "UCS-2"
        assert info.characters == len(text.encode("utf-16-be")) // 2
        assert info.offending and all(oracle_septets(ch) is None for ch in info.offending)
    assert info.segments == reference_segments(text)
    assert info.segments * info.per_segment >= info.characters


@pytest.mark.parametrize(("filler", "wide", "part"), [("a", "€", 153), (RSQUO, "😀", 67)])
def test_packing_matches_the_reference_around_every_boundary(filler: str, wide: str, part: int) -> None:
    # Random text rarely puts a two-unit character exactly on a boundary with no slack left; sweep those cases.
    for before in range(part - 10, 2 * part + 2):
        for after in range(part - 10, part + 10):
            text = filler * before + wide + filler * after + wide
            assert count_segments(text).segments == reference_segments(text), (before, after)
