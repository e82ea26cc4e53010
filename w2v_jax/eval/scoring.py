"""The official scoring rules of SAT, VSI-Bench and MindCube (research/benchmarks.md §1-§4).

Public names (used by every suite, real or procedural):

- :func:`mra` — VSI-Bench's mean relative accuracy of a numeric answer: the fraction of the 10
  confidence thresholds θ ∈ {0.50, 0.55, …, 0.95} with ``|pred - gt| / gt <= 1 - θ``. The
  thresholds and the comparison are computed exactly as lmms-eval's ``vsibench`` computes them
  (``np.linspace(.5, .95, 10)`` and ``<=`` in float64), so boundary cases such as
  ``pred = 1.1, gt = 1`` (0.9, not 0.8 or 1.0) agree bit for bit.
- :func:`parse_number` — lmms-eval's first-token rule: ``response.split(' ')[0]``, trailing dots
  stripped, then ``float()``; ``None`` when that fails (the item then scores 0).
- :func:`vsi_choice_correct` — VSI-Bench multiple choice: the same first token, case-insensitive
  exact match with the answer letter.
- :func:`sat_correct` — SAT with text options: correct when the response contains the correct
  choice string (case-insensitive) and none of the other choices. Occurrences of a choice inside
  a longer choice that contains it are not counted for the shorter one.
- :func:`extract_choice` — MindCube's answer extractor (``src/evaluation/core/extractors.py``):
  its ordered list of patterns, the last match of the first pattern that matches wins; the
  letter class is built from ``letters`` (MindCube uses A-E).
- :func:`circular` — circular evaluation: an item counts only if every one of its option orders
  was answered correctly.
- :func:`binomial_se` — standard error ``sqrt(p (1 - p) / n)`` of an accuracy.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Iterable, Sequence

import numpy as np

# lmms-eval vsibench: np.linspace(start, end, int((end - start) / interval + 2)) with .5/.95/.05.
MRA_THRESHOLDS = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))


def mra(pred: float, gt: float) -> float:
    """Mean relative accuracy of ``pred`` against ``gt`` (> 0), in [0, 1]."""
    gt = float(gt)
    if not gt > 0 or not math.isfinite(gt):
        raise ValueError(f"mra needs a finite ground truth > 0, got gt={gt!r}")
    if pred is None:
        return 0.0
    rel = abs(float(pred) - gt) / gt
    return float(np.mean(rel <= 1.0 - MRA_THRESHOLDS))


def first_token(response: str) -> str:
    """lmms-eval's ``fuzzy_matching``: the text before the first space, trailing '.' stripped."""
    return (response or "").split(" ")[0].rstrip(".").strip()


def parse_number(response: str) -> float | None:
    """The first token of ``response`` as a float, or None (lmms-eval's ``to_float``)."""
    try:
        return float(first_token(response))
    except (TypeError, ValueError):
        return None


def vsi_choice_correct(response: str, answer: str) -> bool:
    """VSI-Bench multiple choice: first token == answer letter, case-insensitive."""
    return first_token(response).lower() == str(answer).lower()


def _mentions(text: str, choice: str, longer: Sequence[str]) -> bool:
    """``choice`` occurs in ``text`` outside every occurrence of a longer choice containing it."""
    for other in longer:
        text = text.replace(other, " ")
    return choice in text


def sat_correct(response: str, choices: Sequence[str], answer: str) -> bool:
    """SAT text-option rule: the response names the answer and no other choice (any case)."""
    if answer not in choices:
        raise ValueError(f"answer {answer!r} is not one of the choices {list(choices)}")
    text = (response or "").lower()
    lowered = [c.lower() for c in choices]

    def named(c: str) -> bool:
        longer = [o for o in lowered if o != c and c in o]
        return _mentions(text, c, longer)

    others = [c for c in lowered if c != answer.lower()]
    return named(answer.lower()) and not any(named(c) for c in others)


def extract_choice(response: str, letters: str = "ABCD") -> str | None:
    """The answer letter of ``response`` by MindCube's pattern priority, or None."""
    if not response:
        return None
    if not letters or not all(ch.isalpha() and ch.isupper() for ch in letters):
        raise ValueError(f"letters must be upper-case letters, got {letters!r}")
    L = "[" + re.escape(letters) + "]"
    simple = list(re.finditer(rf"({L})\.", response))
    if simple:
        return simple[-1].group(1)
    section = re.search(r"<Answer>(.*?)(?:<|$)", response, re.DOTALL)
    if section:
        for pattern in (rf"[Mm]y answer is ({L})", rf"[Mm]y answer is ({L})\.",
                        rf"[Tt]he answer is ({L})", rf"(?:Answer: )?({L})\.", rf"\b({L})\b"):
            found = list(re.finditer(pattern, section.group(1)))
            if found:
                return found[-1].group(1)
    patterns = (
        rf"(?:Answer: )?({L})\. [A-Za-z0-9 \-\(\)\'\",]+(?=(?:\n|$|\.|\"))",
        rf"(?:Answer: )?({L})\. [A-Za-z0-9 \-\(\)\'\"]+",
        rf"(?:^|\n)(?:Answer: )?({L})(?:\.|$|\s)",
        rf"[\*\"]({L})[\*\"]",
        rf"\bAnswer:?\s*({L})\b",
        rf"[Mm]y answer is ({L})",
        rf"[Mm]y answer is ({L})\.",
        rf"answer is ({L})",
    )
    for pattern in patterns:
        found = list(re.finditer(pattern, response))
        if found:
            return found[-1].group(1)
    lines = response.split("\n")
    line_hits = [m.group(1) for line in lines
                 for m in [re.search(rf"({L})\. [A-Za-z0-9 \-\(\)\'\",]+", line)] if m]
    if line_hits:
        return line_hits[-1]
    for line in reversed(lines):
        m = re.search(rf"\b({L})\b", line)
        if m:
            return m.group(1)
    return None


def circular(results: Iterable[tuple[str, bool]]) -> float:
    """Fraction of item ids whose every ``(id, correct)`` entry is correct (0.0 when empty)."""
    by_item: dict = collections.defaultdict(list)
    for item_id, correct in results:
        by_item[item_id].append(bool(correct))
    if not by_item:
        return 0.0
    return float(np.mean([all(v) for v in by_item.values()]))


def binomial_se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` items (0 when n = 0)."""
    return float(math.sqrt(max(p * (1.0 - p), 0.0) / n)) if n > 0 else 0.0
