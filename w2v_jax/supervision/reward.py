"""The rule-based GRPO reward of World2VLM (paper.md §10), reproduced exactly, plus the D2/D4 fix.

Entry points:
  compute_score(reward_inputs)          EasyR1 batch signature:
      [{"response": str, "ground_truth": '{"task_type": T, "answer": A}'}, ...]
      -> [{"overall": float, <sub-scores>: float}, ...]
  score(response, task_type, answer)    one response against a plain answer string.
  ground_truth_json(task_type, answer)  the JSON string that `compute_score` expects.

Every response is stripped; one longer than 200 characters scores -1.0. Otherwise the task type
picks the scorer (A1/A2 single action, A3/D3 sequence, D1 box, A4/D2/D4 binary; anything else an
exact normalised match) and the score lies in [0, 1]; the maximum 1.0 is reached by the
ground-truth answer itself.

Fix over the official code (paper.md §12.4): the D2/D4 answers of the A/B variant ("A"/"B") and of
the sentence variant ("The chair disappears from view.", "They are different object instances.")
are not yes/no, so the official binary scorer always gives them 0. Here such a ground truth is
decoded into its yes/no meaning and the response is read in the same variant's format (a choice
letter, or a sentence with the matching phrase); weights stay 0.2 format + 0.8 accuracy. A yes/no
ground truth is scored exactly as the official code does. `fix_d_variants=False` restores the
official behaviour.

Why this file has its own action parser: `w2v_jax.actions.parse_actions` is a strict grammar
(it rejects text that is not a well-formed action list). The reward must stay lenient exactly as
the official one: it finds every `move <dir> <num> meter(s)` / `turn <dir> <num> degree(s)`
anywhere in the lower-cased text (signed numbers included), so a chatty or partly malformed
response still earns its partial credit.
"""

from __future__ import annotations

import collections
import json
import math
import re
from typing import Any, Mapping, Sequence

from w2v_jax.geometry import box_iou

MAX_RESPONSE_CHARS = 200
OVERLONG_SCORE = -1.0

# Full-credit tolerance / zero-credit error of a predicted action value (paper.md §10).
TURN_TOLERANCE_DEG = 5.0
TURN_ZERO_DEG = 90.0
MOVE_TOLERANCE_M = 0.5
MOVE_ZERO_M = 5.0

SINGLE_ACTION_TASKS = ("A1", "A2")
SEQUENCE_TASKS = ("A3", "D3")
BOX_TASKS = ("D1",)
BINARY_TASKS = ("A4", "D2", "D4")
TASK_TYPES = ("A1", "A2", "A3", "A4", "D1", "D2", "D3", "D4")

_WHITESPACE = re.compile(r"\s+")
_TRAILING_PUNCT = re.compile(r"[ \t\r\n.,;:!?\"]+$")
_NUM = r"(-?\d+(?:\.\d+)?)"
_MOVE = re.compile(r"move\s+(forward|backward|left|right)\s+" + _NUM + r"\s+meters?", re.I)
_TURN = re.compile(r"turn\s+(left|right)\s+" + _NUM + r"\s+degrees?", re.I)
_BOX_BODY = r"\[\s*" + r"\s*,\s*".join([_NUM] * 4) + r"\s*\]"
_BOX_ANYWHERE = re.compile(r"(?:bbox\s*)?" + _BOX_BODY, re.I)
_BOX_ALONE = re.compile(r"^\s*(?:bbox\s*)?" + _BOX_BODY + r"\s*$", re.I)

_TRUE_WORDS = ("yes", "true")
_FALSE_WORDS = ("no", "false")


# ----------------------------------------------------------------------------- text parsing
def normalize_text(text: str | None) -> str:
    """Lower-case, strip, drop trailing whitespace/punctuation `.,;:!?"`, collapse whitespace."""
    out = (text or "").strip().lower()
    out = _TRAILING_PUNCT.sub("", out)
    return _WHITESPACE.sub(" ", out)


def parse_bool(text: str | None) -> bool | None:
    """True for a whole normalised text of `yes`/`true`, False for `no`/`false`, else None."""
    norm = normalize_text(text)
    if norm in _TRUE_WORDS:
        return True
    if norm in _FALSE_WORDS:
        return False
    return None


def parse_actions(text: str | None) -> list[tuple[str, float, str]]:
    """Every action mentioned in `text`, in order of position: (name, value, kind).

    name is `move_forward|move_backward|move_left|move_right|turn_left|turn_right`, value the
    number as written (meters or degrees, sign kept), kind `move` or `turn`.
    """
    norm = normalize_text(text)
    found = []
    for match in _MOVE.finditer(norm):
        found.append(
            (match.start(), "move_" + match.group(1).lower(), float(match.group(2)), "move")
        )
    for match in _TURN.finditer(norm):
        found.append(
            (match.start(), "turn_" + match.group(1).lower(), float(match.group(2)), "turn")
        )
    found.sort(key=lambda item: item[0])
    return [(name, value, kind) for _, name, value, kind in found]


def parse_box(text: str | None) -> list[float] | None:
    """The first `[x1, y1, x2, y2]` (optionally prefixed `bbox`) in `text`, as floats."""
    match = _BOX_ANYWHERE.search(text or "")
    if match is None:
        return None
    return [float(match.group(i)) for i in range(1, 5)]


def numeric_score(kind: str, predicted: float, truth: float) -> float:
    """1 within the tolerance (5 deg / 0.5 m), 0 beyond 90 deg / 5 m, linear in between."""
    if kind == "turn":
        low, high = TURN_TOLERANCE_DEG, TURN_ZERO_DEG
    else:
        low, high = MOVE_TOLERANCE_M, MOVE_ZERO_M
    err = abs(predicted - truth)
    if err <= low:
        return 1.0
    if err >= high:
        return 0.0
    return 1.0 - (err - low) / (high - low)


# ----------------------------------------------------------------------------- A1 / A2
def score_single_action(response: str, answer: str) -> dict[str, float]:
    """A1/A2: the best predicted action against the first ground-truth action.

    overall = 0.10 format + 0.35 action-name match + 0.55 numeric (numeric only on a name match).
    """
    truth = parse_actions(answer)
    if not truth:
        return {"overall": 0.0, "format": 0.0, "action": 0.0, "numeric": 0.0}
    true_name, true_value, true_kind = truth[0]
    predicted = parse_actions(response)
    fmt = 1.0 if predicted else 0.0
    best_action = best_numeric = 0.0
    for name, value, _ in predicted:
        action = 1.0 if name == true_name else 0.0
        numeric = numeric_score(true_kind, value, true_value) if action else 0.0
        if 0.35 * action + 0.55 * numeric > 0.35 * best_action + 0.55 * best_numeric:
            best_action, best_numeric = action, numeric
    overall = 0.10 * fmt + 0.35 * best_action + 0.55 * best_numeric
    return {"overall": overall, "format": fmt, "action": best_action, "numeric": best_numeric}


# ----------------------------------------------------------------------------- A3 / D3
def score_action_sequence(response: str, answer: str) -> dict[str, float]:
    """A3/D3: multiset overlap, positional order and positional numeric agreement.

    overall = 0.10 format + 0.25 action + 0.35 order + 0.30 numeric, minus 0.03 per predicted
    action beyond the ground-truth count (floored at 0 when that penalty applies).
    """
    truth = parse_actions(answer)
    if not truth:
        return {"overall": 0.0, "format": 0.0, "action": 0.0, "order": 0.0, "numeric": 0.0}
    predicted = parse_actions(response)
    fmt = 1.0 if predicted else 0.0
    true_names = [name for name, _, _ in truth]
    pred_names = [name for name, _, _ in predicted]
    common = collections.Counter(true_names) & collections.Counter(pred_names)
    action = sum(common.values()) / max(len(true_names), len(pred_names), 1)
    paired = list(zip(truth, predicted))
    order = sum(1 for t, p in paired if t[0] == p[0]) / len(truth)
    numerics = [numeric_score(t[2], p[1], t[1]) for t, p in paired if t[0] == p[0]]
    numeric = sum(numerics) / len(truth) if numerics else 0.0
    overall = 0.10 * fmt + 0.25 * action + 0.35 * order + 0.30 * numeric
    extra = len(predicted) - len(truth)
    if extra > 0:
        overall = max(0.0, overall - 0.03 * extra)
    return {"overall": overall, "format": fmt, "action": action, "order": order, "numeric": numeric}


# ----------------------------------------------------------------------------- D1
def _box_format(raw_response: str) -> float:
    if _BOX_ALONE.fullmatch(raw_response or ""):
        return 1.0
    return 0.4 if parse_box(raw_response) is not None else 0.0


def _canonical_box(box: Sequence[float]) -> tuple[list[float], float]:
    """Sorted and clipped box, and validity = 0.7 [x1<x2, y1<y2] + 0.3 in-range score."""
    x1, y1, x2, y2 = box
    ordered = 1.0 if (x1 < x2 and y1 < y2) else 0.0
    sorted_box = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    overflow = sum(max(0.0, -v) + max(0.0, v - 1000.0) for v in sorted_box) / 4.0
    in_range = max(0.0, 1.0 - overflow / 200.0)
    clipped = [min(1000.0, max(0.0, v)) for v in sorted_box]
    return clipped, 0.7 * ordered + 0.3 * in_range


def _abs_log_ratio(a: float, b: float) -> float:
    return abs(math.log(max(a, 1e-6) / max(b, 1e-6)))


def score_box(raw_response: str, answer: str) -> dict[str, float]:
    """D1 on the raw (stripped, not normalised) response; boxes in 0-1000 units.

    format: 1 for a bare box (optional `bbox` prefix), 0.4 for a box inside other text, else 0.
    geometry = (0.45 IoU + 0.2 centre + 0.2 L1 + 0.15 size) * (0.3 + 0.7 validity);
    overall = 0.2 format + 0.15 validity + 0.65 geometry (0.2 format when no box parses).
    """
    names = ("format", "validity", "geometry", "iou", "center", "size", "l1")
    truth = parse_box(answer)
    if truth is None:
        return {"overall": 0.0, **{k: 0.0 for k in names}}
    fmt = _box_format(raw_response)
    predicted = parse_box(raw_response)
    if predicted is None:
        return {"overall": 0.2 * fmt, **{k: 0.0 for k in names}, "format": fmt}
    gt, _ = _canonical_box(truth)
    pr, validity = _canonical_box(predicted)
    iou = box_iou(pr, gt)
    gt_w, gt_h = max(1.0, gt[2] - gt[0]), max(1.0, gt[3] - gt[1])
    pr_w, pr_h = max(1.0, pr[2] - pr[0]), max(1.0, pr[3] - pr[1])
    pr_cx, pr_cy = (pr[0] + pr[2]) / 2.0, (pr[1] + pr[3]) / 2.0
    gt_cx, gt_cy = (gt[0] + gt[2]) / 2.0, (gt[1] + gt[3]) / 2.0
    centre_dist = math.hypot(pr_cx - gt_cx, pr_cy - gt_cy)
    center = max(0.0, 1.0 - centre_dist / max(80.0, 0.6 * math.hypot(gt_w, gt_h)))
    size = max(0.0, 1.0 - (_abs_log_ratio(pr_w, gt_w) + _abs_log_ratio(pr_h, gt_h)) / 1.6)
    l1 = max(0.0, 1.0 - sum(abs(p - g) for p, g in zip(pr, gt)) / 4.0 / 180.0)
    geometry = (0.45 * iou + 0.20 * center + 0.20 * l1 + 0.15 * size) * (0.3 + 0.7 * validity)
    overall = 0.20 * fmt + 0.15 * validity + 0.65 * geometry
    return {
        "overall": overall,
        "format": fmt,
        "validity": validity,
        "geometry": geometry,
        "iou": iou,
        "center": center,
        "size": size,
        "l1": l1,
    }


# ----------------------------------------------------------------------------- A4 / D2 / D4
def score_binary(response: str, answer: str) -> dict[str, float]:
    """A4/D2/D4 yes/no (true/false): overall = 0.2 format + 0.8 accuracy (official)."""
    truth = parse_bool(answer)
    if truth is None:
        return {"overall": 0.0, "format": 0.0, "accuracy": 0.0}
    predicted = parse_bool(response)
    fmt = 1.0 if predicted is not None else 0.0
    acc = 1.0 if predicted is not None and predicted == truth else 0.0
    return {"overall": 0.2 * fmt + 0.8 * acc, "format": fmt, "accuracy": acc}


_CHOICE = re.compile(r"^\(?([ab])\)?$")
# D2 sentence variant. "yes" = the object disappears.
_D2_TRUTH_SENTENCE = re.compile(r"^the (.+) (disappears from view|remains visible)$")
_D2_GONE = re.compile(
    r"(?<!not )(?<!n't )(?<!never )\bdisappear(?:s|ed)?\b|\bno longer (?:visible|in view)\b"
    r"|(?:\bnot|n't) (?:visible|in view)\b|\bout of (?:view|sight|frame)\b|\binvisible\b"
)
_D2_KEPT = re.compile(
    r"\b(?:remains?|stays?|still) (?:visible|in view)\b|(?:\bnot|n't|\bnever) disappear"
)
# D4 sentence variant. "yes" = the same physical object instance.
_D4_TRUTH_SAME = "they are the same physical object instance"
_D4_TRUTH_DIFFERENT = "they are different object instances"
_D4_DIFFERENT = re.compile(r"\bdifferent\b|\bdistinct\b|(?:\bnot|n't) (?:the )?same\b")
_D4_SAME = re.compile(r"\bsame\b")


def parse_choice(text: str | None) -> bool | None:
    """An A/B answer (`A`, `(b)`, `B.`): True for A, False for B, else None."""
    match = _CHOICE.match(normalize_text(text))
    return None if match is None else match.group(1) == "a"


def _parse_d2_sentence(text: str | None) -> bool | None:
    norm = normalize_text(text)
    gone, kept = bool(_D2_GONE.search(norm)), bool(_D2_KEPT.search(norm))
    if gone != kept:
        return gone
    return None if (gone or kept) else parse_bool(norm)


def _parse_d4_sentence(text: str | None) -> bool | None:
    norm = normalize_text(text)
    if _D4_DIFFERENT.search(norm):
        return False
    if _D4_SAME.search(norm):
        return True
    return parse_bool(norm)


def decode_d_variant(task_type: str, answer: str) -> tuple[str, bool] | None:
    """(variant, yes) of a D2/D4 ground truth: variant `yes_no`, `choice` or `sentence`."""
    if (value := parse_bool(answer)) is not None:
        return "yes_no", value
    if (value := parse_choice(answer)) is not None:
        return "choice", value
    norm = normalize_text(answer)
    if task_type == "D2" and (match := _D2_TRUTH_SENTENCE.match(norm)):
        return "sentence", match.group(2) == "disappears from view"
    if task_type == "D4" and norm in (_D4_TRUTH_SAME, _D4_TRUTH_DIFFERENT):
        return "sentence", norm == _D4_TRUTH_SAME
    return None


def score_d_variant(task_type: str, response: str, answer: str) -> dict[str, float]:
    """D2/D4 in every variant: the response is read in the format its ground truth uses."""
    decoded = decode_d_variant(task_type, answer)
    if decoded is None:
        return {"overall": 0.0, "format": 0.0, "accuracy": 0.0}
    variant, truth = decoded
    if variant == "yes_no":
        return score_binary(response, answer)
    if variant == "choice":
        predicted = parse_choice(response)
    elif task_type == "D2":
        predicted = _parse_d2_sentence(response)
    else:
        predicted = _parse_d4_sentence(response)
    fmt = 1.0 if predicted is not None else 0.0
    acc = 1.0 if predicted is not None and predicted == truth else 0.0
    return {"overall": 0.2 * fmt + 0.8 * acc, "format": fmt, "accuracy": acc}


# ----------------------------------------------------------------------------- dispatch
def _exact_match(normalized_response: str, answer: str) -> dict[str, float]:
    # Not normalised again: normalisation is not idempotent ("0\xa0." -> "0 " -> "0"), and the
    # official code compares the once-normalised response.
    eq = 1.0 if (answer and normalized_response == normalize_text(answer)) else 0.0
    return {"overall": eq, "format": eq, "accuracy": eq}


def _finite(scores: dict[str, float]) -> dict[str, float]:
    # Only reachable with numbers of 309+ digits in a ground truth (float inf): never NaN out.
    return {k: (v if math.isfinite(v) else 0.0) for k, v in scores.items()}


def score(
    response: str | None, task_type: str, answer: str, *, fix_d_variants: bool = True
) -> dict[str, float]:
    """Score one response against the plain answer string of a `task_type` record.

    Returns {"overall": float in [-1, 1], <sub-scores in [0, 1]>}; -1 for a stripped response
    over 200 characters. Unknown task types fall back to an exact normalised match.
    """
    raw = (response or "").strip()
    if len(raw) > MAX_RESPONSE_CHARS:
        return {"overall": OVERLONG_SCORE, "format": 0.0}
    norm = normalize_text(raw)
    if task_type in SINGLE_ACTION_TASKS:
        out = score_single_action(norm, answer)
    elif task_type in SEQUENCE_TASKS:
        out = score_action_sequence(norm, answer)
    elif task_type in BOX_TASKS:
        out = score_box(raw, answer)
    elif task_type in ("D2", "D4") and fix_d_variants:
        out = score_d_variant(task_type, norm, answer)
    elif task_type in BINARY_TASKS:
        out = score_binary(norm, answer)
    else:
        out = _exact_match(norm, answer)
    return _finite(out)


def ground_truth_json(task_type: str, answer: str) -> str:
    """The `ground_truth` string of a GRPO record: JSON {"task_type", "answer"}."""
    return json.dumps({"task_type": task_type, "answer": answer}, ensure_ascii=False)


def load_ground_truth(ground_truth: str | Mapping[str, Any] | None) -> tuple[str, str]:
    """(task_type, answer) from the JSON string (or its dict); a non-JSON string is the answer."""
    if isinstance(ground_truth, Mapping):
        obj: Any = ground_truth
    else:
        text = (ground_truth or "").strip()
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return "", text
        if not isinstance(obj, dict):
            return "", text
    return str(obj.get("task_type", "")).strip(), str(obj.get("answer", "")).strip()


def compute_score(
    reward_inputs: Sequence[Mapping[str, Any]], *, fix_d_variants: bool = True
) -> list[dict[str, float]]:
    """EasyR1 batch reward: one score dict (key `overall` + sub-scores) per input.

    Any string response scores (never raises); a non-dict item, or a `response` / `ground_truth`
    of another type, raises ValueError naming the item index and the field."""
    if isinstance(reward_inputs, Mapping):
        raise ValueError(
            f"reward_inputs must be a list of dicts, got a single {type(reward_inputs).__name__}"
        )
    out = []
    for i, item in enumerate(reward_inputs):
        if not isinstance(item, Mapping):
            raise ValueError(f"reward_inputs[{i}] must be a dict with 'response' and "
                             f"'ground_truth', got {type(item).__name__}")
        for field, allowed in (("response", (str,)), ("ground_truth", (str, Mapping))):
            if item.get(field) is not None and not isinstance(item[field], allowed):
                raise ValueError(f"reward_inputs[{i}][{field!r}] must be a "
                                 f"{' or '.join(t.__name__ for t in allowed)}, got "
                                 f"{type(item[field]).__name__}")
        task_type, answer = load_ground_truth(item.get("ground_truth", ""))
        out.append(
            score(item.get("response", ""), task_type, answer, fix_d_variants=fix_d_variants)
        )
    return out
