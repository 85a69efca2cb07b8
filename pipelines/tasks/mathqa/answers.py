"""Reading the final number out of a model's answer, the one way the reward, the evaluation and the
data check all read it.

A response's answer is the number after its last answer marker (`The answer is 14`, `Answer: 14`,
`answer = x = 14`, `#### 14`, `\\boxed{14}`); without a marker, the last number in the text. Numbers
may carry a sign, decimals, thousands separators (`1,200`), a leading `$` or a trailing unit or `%`.
A `-` counts as a sign only where it cannot be a subtraction (not right after a digit, letter or `)`),
so `19 - 7 = 12` and `19-7` never read as -7. Fractions such as `7/2` are not read (the gold answers
are decimals).
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = r"(?:(?<![\w)])-)?(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_MARKER_RE = re.compile(
    rf"(?:\banswer\b\s*(?:is\b)?|####|\\boxed\{{)\s*[:=]?\s*(?:x\s*=\s*)?\$?\s*({_NUMBER})", re.IGNORECASE
)
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-"})  # minus sign and en dash, as models write them


def parse_number(text: str) -> Fraction:
    """'1,200.50' -> 1200.5 exactly."""
    return Fraction(text.replace(",", ""))


def extract_answer(response: str) -> Fraction | None:
    """The response's final number (see the module docstring), or None if it has none."""
    text = response.translate(_MINUS_SIGNS)
    markers = _MARKER_RE.findall(text)
    if markers:
        return parse_number(markers[-1])
    numbers = _NUMBER_RE.findall(text)
    return parse_number(numbers[-1]) if numbers else None
