"""SMS segment counting for GSM-7 and UCS-2 text (3GPP TS 23.038 / 23.040).

Providers bill and throttle SMS per *segment*, so the dispatcher paces SMS by `count_segments(body).segments`
and template authors are warned when one stray character (a curly quote, an emoji) switches a whole message
to UCS-2 and more than doubles its cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 default alphabet: each costs one septet. ESC (0x1B) is deliberately left out: a raw ESC in text would
# be read by the handset as the start of an extension pair, so such text is not safely GSM-7.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: sent as ESC + code, so each costs two septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PART = 160, 153  # a concatenated part loses 7 septets to the user data header
UCS2_SINGLE, UCS2_PART = 70, 67  # ... and 3 UTF-16 code units


@dataclass(frozen=True)
class SegmentInfo:
    """How an SMS body will be encoded and split.

    `characters` is in the encoding's own units: septets for GSM-7, UTF-16 code units for UCS-2.
    `per_segment` is the capacity of one segment in those units (160/70 single, 153/67 when split).
    `offending` lists, in first-seen order, the distinct characters that forced UCS-2 (empty for GSM-7).
    """

    encoding: Encoding
    characters: int
    segments: int
    per_segment: int
    offending: tuple[str, ...]


def gsm7_cost(char: str) -> int | None:
    """Septets one character costs in GSM-7, or None when it is not encodable."""
    if char in GSM7_BASIC:
        return 1
    if char in GSM7_EXTENSION:
        return 2
    return None


def _utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def _pack(costs: list[int], single: int, part: int) -> tuple[int, int]:
    """(segments, per_segment) for indivisible items of the given costs.

    Greedy packing is optimal here because items must stay in order; an item that would straddle a part boundary
    (an ESC pair, a surrogate pair) moves whole to the next part, which is what handsets and providers do.
    """
    total = sum(costs)
    if total == 0:
        return 0, single
    if total <= single:
        return 1, single
    segments, used = 1, 0
    for cost in costs:
        if used + cost > part:
            segments, used = segments + 1, 0
        used += cost
    return segments, part


_NOT_GSM7 = re.compile("[^" + re.escape("".join(sorted(GSM7_BASIC | GSM7_EXTENSION))) + "]")
_EXTENSION = re.compile("[" + re.escape("".join(sorted(GSM7_EXTENSION))) + "]")
_GSM7: Encoding = "GSM-7"
_UCS2: Encoding = "UCS-2"
_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")  # two UTF-16 code units each (most emoji)


def count_segments(text: str) -> SegmentInfo:
    """Encoding, length and number of SMS segments for `text` (empty text is 0 segments).

    Regex scans instead of a per-character loop: the renderer counts every SMS it makes.
    Only text holding two-unit items (ESC pairs, surrogate pairs) needs the item-by-item packing.
    """
    offending = tuple(dict.fromkeys(_NOT_GSM7.findall(text)))
    if not offending:
        doubles = len(_EXTENSION.findall(text))
        single, part, encoding = GSM7_SINGLE, GSM7_PART, _GSM7
    else:
        doubles = len(_ASTRAL.findall(text))
        single, part, encoding = UCS2_SINGLE, UCS2_PART, _UCS2
    units = len(text) + doubles
    if units <= single or not doubles:
        segments = 0 if units == 0 else 1 if units <= single else -(-units // part)
        return SegmentInfo(encoding, units, segments, single if segments <= 1 else part, offending)
    cost = gsm7_cost if encoding == "GSM-7" else _utf16_units
    segments, per_segment = _pack([cost(ch) or 0 for ch in text], single, part)
    return SegmentInfo(encoding, units, segments, per_segment, offending)


_NOT_GSM_BASIC = re.compile("[^" + re.escape("".join(sorted(GSM7_BASIC))) + "]")
_SQUEEZE = re.compile(r"\n{3,}")
_BASIC_INFO: dict[int, SegmentInfo] = {}  # SegmentInfo is immutable: one per length is shared by every body


def segments(body: str) -> SegmentInfo:
    """:func:`count_segments`, with a fast path for the usual case: only basic GSM-7 characters (1 septet each)."""
    if _NOT_GSM_BASIC.search(body):
        return count_segments(body)
    length = len(body)
    info = _BASIC_INFO.get(length)
    if info is None:
        if length <= GSM7_SINGLE:
            info = SegmentInfo(_GSM7, length, 1 if length else 0, GSM7_SINGLE, ())
        else:
            info = SegmentInfo(_GSM7, length, -(-length // GSM7_PART), GSM7_PART, ())
        if length <= 10 * GSM7_SINGLE:  # bounded: bodies past any segment cap are not worth keeping
            _BASIC_INFO[length] = info
    return info


def sms_text(text: str) -> str:
    """Rendered SMS text tidied: no-break spaces (not GSM-7, from Babel) become spaces, runs of spaces one,
    lines stripped, blank lines squeezed to one."""
    # str.split() counts the no-break and thin spaces as whitespace, so splitting also replaces them.
    if "\n" not in text:  # the usual one-line SMS: one split/join does it all
        return " ".join(text.split())
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    return _SQUEEZE.sub("\n\n", "\n".join(lines))
