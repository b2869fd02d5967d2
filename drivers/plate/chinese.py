"""Chinese licence plates: the character set, the format check and the plate colour.

Formats (GA 36-2018 and the new-energy supplement), ``P`` = one of the 31 province characters,
``L`` = a letter A–Z without I and O, ``X`` = a letter or a digit:

* ordinary (blue, yellow, white, black): ``P L XXXXX`` — 7 characters;
* new energy (green): ``P L [A-K] X dddd`` (small cars) or ``P L ddddd [A-K]`` (large vehicles)
  — 8 characters;
* with a suffix: ``P L XXXX`` + one of 挂 (trailer) 学 (learner) 警 (police) 领 (consulate)
  港 澳 (cross-border, Guangdong ``粤Z``);
* embassy: ``使`` + 6 digits (older plates put ``使`` last).

The recogniser can emit any sequence of its 72 characters; :func:`is_valid_plate` rejects what
cannot be on a real plate (a province character in the middle, a suffix with a 6-character
body, a digit where the issuing-office letter belongs) so that a misread becomes "unread"
instead of a wrong plate in an enforcement record.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import numpy.typing as npt

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, no O
DIGITS = "0123456789"
SUFFIXES = "挂学警领港澳"

PlateColor = Literal["blue", "yellow", "green", "white", "black", "unknown"]

_P = f"[{PROVINCES}]"
_L = f"[{LETTERS}]"
_X = f"[{LETTERS}{DIGITS}]"
_D = "[0-9]"
_NEV_CLASS = "[ABCDEFGHJK]"  # new-energy class letters (D/F first issued, A–K since 2021)

_FORMATS: dict[str, re.Pattern[str]] = {
    "ordinary": re.compile(f"{_P}{_L}{_X}{{5}}"),
    "new_energy_small": re.compile(f"{_P}{_L}{_NEV_CLASS}{_X}{_D}{{4}}"),
    "new_energy_large": re.compile(f"{_P}{_L}{_D}{{5}}{_NEV_CLASS}"),
    "trailer": re.compile(f"{_P}{_L}{_X}{{4}}挂"),
    "learner": re.compile(f"{_P}{_L}{_X}{{4}}学"),
    "police": re.compile(f"{_P}{_L}{_X}{{4}}警"),
    "consulate": re.compile(f"{_P}{_L}{_X}{{4}}领"),
    "cross_border": re.compile(f"粤Z{_X}{{4}}[港澳]"),
    "embassy": re.compile(f"使{_D}{{6}}|{_D}{{6}}使"),
}


def plate_format(text: str) -> str | None:
    """The name of the format ``text`` has (see the module docstring), or ``None``."""
    for name, pattern in _FORMATS.items():
        if pattern.fullmatch(text):
            return name
    return None


def is_valid_plate(text: str) -> bool:
    """True when ``text`` can be a real Chinese plate."""
    return plate_format(text) is not None


def plate_color(plate_bgr: npt.NDArray[np.uint8]) -> PlateColor:
    """The background colour of an upright plate picture (BGR), from its pixels alone.

    The characters and the frame take up roughly a third of a plate, so the background is the
    dominant class among the pixels of the inner region: saturated pixels vote by hue
    (blue, yellow, green), unsaturated ones by brightness (white, black). Green new-energy plates
    are a white-to-green gradient, which still leaves green as the largest saturated class.
    Night pictures under infrared light have no colour: they come out ``white``/``black`` or
    ``unknown`` when no class has a clear majority.
    """
    import cv2

    h, w = plate_bgr.shape[:2]
    if h < 4 or w < 4:
        return "unknown"
    inner = plate_bgr[h // 8 : h - h // 8, w // 16 : w - w // 16]
    hsv = cv2.cvtColor(inner, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.int32)
    hue, sat, val = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    saturated = (sat > 70) & (val > 60)
    votes = {
        "yellow": int(np.count_nonzero(saturated & (hue >= 11) & (hue < 34))),
        "green": int(np.count_nonzero(saturated & (hue >= 34) & (hue < 95))),
        "blue": int(np.count_nonzero(saturated & (hue >= 95) & (hue < 135))),
        "white": int(np.count_nonzero(~saturated & (val >= 140))),
        "black": int(np.count_nonzero(~saturated & (val < 90))),
    }
    total = hue.size
    best = max(votes, key=lambda k: votes[k])
    # Saturated colours need less area to win: the white characters of a blue plate take a
    # third of it, and green plates fade to white.
    colour_votes = {k: votes[k] for k in ("yellow", "green", "blue")}
    best_colour = max(colour_votes, key=lambda k: colour_votes[k])
    if colour_votes[best_colour] >= 0.25 * total:
        return best_colour  # type: ignore[return-value]
    if votes[best] >= 0.35 * total:
        return best  # type: ignore[return-value]
    return "unknown"


# Which formats each background colour can carry (GA 36-2018): blue = small civil vehicles, no
# suffix; yellow = large vehicles, trailers (挂), learner cars (学), and the yellow-green large
# new-energy plates; black = consulates (领), embassies (使), Hong Kong / Macao (港 澳); white =
# police (警) and military; green = new energy.
_FORMATS_BY_STRONG_COLOUR: dict[str, frozenset[str]] = {
    "blue": frozenset({"ordinary"}),
    "yellow": frozenset({"ordinary", "trailer", "learner", "new_energy_large"}),
    "black": frozenset({"consulate", "cross_border", "embassy"}),
}


def colour_fractions(plate_bgr: npt.NDArray[np.uint8]) -> dict[str, float]:
    """Shares of the inner plate pixels that are clearly blue, yellow or green (saturation and
    value above 40: dark blue plates at dusk still count as blue) or dark and unsaturated, and
    the median brightness (0-1: the background's, which covers most of the plate); and for the
    green test of :func:`colour_length_conflict` the share of pixels of a plain green hue
    (35-85 on OpenCV's 0-180 scale; the blue of CCPD's plates sits at 90-127, the new-energy
    green at 60-80) and the median hue of the coloured pixels."""
    import cv2

    h, w = plate_bgr.shape[:2]
    if h < 4 or w < 4:
        return {
            "blue": 0.0,
            "yellow": 0.0,
            "green": 0.0,
            "dark": 0.0,
            "median_value": 0.0,
            "plain_green": 0.0,
            "median_hue": -1.0,
        }
    inner = plate_bgr[h // 8 : h - h // 8, w // 16 : w - w // 16]
    hsv = cv2.cvtColor(inner, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.int32)
    hue, sat, val = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    chroma = (sat > 40) & (val > 40)
    total = max(hue.size, 1)
    return {
        "yellow": float(np.count_nonzero(chroma & (hue >= 11) & (hue < 34))) / total,
        "green": float(np.count_nonzero(chroma & (hue >= 34) & (hue < 95))) / total,
        "blue": float(np.count_nonzero(chroma & (hue >= 95) & (hue < 135))) / total,
        "dark": float(np.count_nonzero(~chroma & (val < 90))) / total,
        "median_value": float(np.median(val)) / 255.0,
        "plain_green": float(np.count_nonzero(chroma & (hue >= 35) & (hue < 85))) / total,
        "median_hue": float(np.median(hue[chroma])) if np.any(chroma) else -1.0,
    }


def colour_format_conflict(text: str, plate_bgr: npt.NDArray[np.uint8]) -> str | None:
    """Why ``text`` cannot be the number of the plate pictured, judging by its colour, or None.

    Only clear colour evidence counts (the estimate of :func:`plate_color` is too loose for
    refusing a read: dark blue plates at dusk come out ``black``, faded ones ``white``):

    * black: few coloured pixels (< 20 %: a red suffix, warm light), at least a third dark and
      a dark median (the background; bold black characters on a white plate are not enough)
      — only 领 / 使 / 港 / 澳 plates;
    * blue: at least half the plate clearly blue — an ordinary 7-character plate, no suffix;
    * yellow: at least half clearly yellow — ordinary, 挂, 学, or a large new-energy plate.
    """
    fmt = plate_format(text)
    if fmt is None:
        return None
    f = colour_fractions(plate_bgr)
    strong: str | None = None
    if (
        f["blue"] + f["yellow"] + f["green"] < 0.2
        and f["dark"] >= 0.35
        and f["median_value"] < 90 / 255
    ):
        strong = "black"
    elif f["blue"] >= 0.5:
        strong = "blue"
    elif f["yellow"] >= 0.5:
        strong = "yellow"
    if strong is not None and fmt not in _FORMATS_BY_STRONG_COLOUR[strong]:
        return f"a {strong} plate cannot carry {text!r} (a {fmt.replace('_', '-')} number)"
    return None


def colour_length_conflict(
    text: str, color: PlateColor, plate_bgr: npt.NDArray[np.uint8]
) -> str | None:
    """Why ``text`` cannot be the number of a plate of this colour by its length, or None.

    Green new-energy plates carry 8 characters (GA 36-2018 supplement): a green plate read with
    7 is a plate with a dropped character (issue 14: 8 read as 7 at 0.97), and an 8-character
    small-car new-energy number needs some green on the plate (the large-vehicle ones are
    yellow-green). The plate counts as green when the median hue of its coloured pixels is a
    plain green and at least a fifth of it is (faded new-energy plates are a white-to-green
    gradient); ``color`` (the loose estimate) is not enough on its own: CCPD's blue plates sit
    at the blue/green hue boundary.
    """
    fmt = plate_format(text)
    if fmt is None:
        return None
    f = colour_fractions(plate_bgr)
    is_green = 35 <= f["median_hue"] < 85 and f["plain_green"] >= 0.2
    if is_green and not fmt.startswith("new_energy"):
        return f"a green plate carries 8 characters, not {text!r} ({len(text)})"
    if fmt == "new_energy_small" and not is_green and f["plain_green"] < 0.1 and color != "green":
        return f"{text!r} is a new-energy number, but the plate shows no green"
    return None


# Per-character trust (issue 14: a province replaced by 皖 at 0.56, a plate reported although
# one character was a guess). A reading by one recogniser alone is trusted only when every
# character is: its province character at ≥ TRUST_PROVINCE, every other at ≥ TRUST_CHAR. Where
# two independent recognisers read the same character, it is trusted when the surer of the two
# is at ≥ TRUST_AGREED (the other's agreement is the evidence the probability lacks).
TRUST_PROVINCE = 0.9
TRUST_CHAR = 0.8
TRUST_AGREED = 0.75


def untrusted(text: str, char_probs: tuple[float, ...]) -> list[int]:
    """Positions of ``text`` whose character one recogniser alone does not vouch for."""
    if len(char_probs) != len(text):
        return list(range(len(text)))
    return [
        i
        for i, (c, p) in enumerate(zip(text, char_probs, strict=True))
        if p < (TRUST_PROVINCE if c in PROVINCES or c == "使" else TRUST_CHAR)
    ]
