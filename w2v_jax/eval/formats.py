"""Prompt and score one item the way its benchmark's official harness does.

A suite's *format* fixes the prompt, the answer parser, the metric and the decode length:

=========  ==========================================  ===========================  ==========
format     suites                                      metric                       new tokens
=========  ==========================================  ===========================  ==========
sat        sat_like, sat_real, sat_synth               contains-the-choice rule;    32
                                                       circular (both orders)
vsi        vsi_like, vsibench                          MRA (numeric) / first-token  16
                                                       letter match (choice)
mindcube   mindcube_like, mindcube                     MindCube letter extractor    32
tasks      tasks (distillation eval split)             official reward; exact match 64
=========  ==========================================  ===========================  ==========

Prompts: SAT ``"<question> Choose between the following options: X, or Y"``; VSI-Bench
lmms-eval's ``vsibench_doc_to_text`` ("These are frames of a video." ...); MindCube's raw-QA
template; the distillation record's own prompt. Images come first, as ``<image>`` tags.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from w2v_jax.eval import scoring

SUITE_FORMATS = {"sat_like": "sat", "sat_real": "sat", "sat_synth": "sat", "vsi_like": "vsi",
                 "vsibench": "vsi", "mindcube_like": "mindcube", "mindcube": "mindcube",
                 "tasks": "tasks"}
MAX_NEW_TOKENS = {"sat": 32, "vsi": 16, "mindcube": 32, "tasks": 64}
VSI_NUMERIC = ("object_counting", "object_abs_distance", "object_size_estimation",
               "room_size_estimation")
VSI_PRE = "These are frames of a video."
VSI_NA_POST = "Please answer the question using a single word or phrase."
VSI_MCA_POST = "Answer with the option's letter from the given choices directly."
MINDCUBE_RAW_QA = (
    "[Task]\nYour task is to analyze the spatial arrangement of objects in the scene by examining "
    "the provided images, which show the scene from different viewpoints.\n[Answer Instruction]\n"
    "You only need to provide *ONE* correct answer selecting from the options listed below. For "
    "example, if you think the correct answer is 'A. Above' from 'A. Above B. Under C. Front D. "
    "Behind', your response should **only** be '<answer>A. Above</answer>'.\n")
MINDCUBE_LETTERS = "ABCDE"  # the official extractor's letter class


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One model query: ``text`` with ``<image>`` tags for ``images`` (in order); ``variant`` is
    ``"plain"`` or ``"reversed"`` (SAT's second option order); ``choices`` as shown; ``system``
    replaces the default system turn when given."""

    item_id: str
    variant: str
    text: str
    images: tuple
    choices: tuple
    system: str | None = None


def format_of(item: Mapping[str, Any]) -> str:
    try:
        return SUITE_FORMATS[item["suite"]]
    except KeyError:
        raise ValueError(f"item {item.get('id')!r}: suite {item.get('suite')!r} has no format; "
                         f"known suites {sorted(SUITE_FORMATS)}") from None


def is_numeric(item: Mapping[str, Any]) -> bool:
    return format_of(item) == "vsi" and item["category"] in VSI_NUMERIC


def sat_text(question: str, choices) -> str:
    return f"{question} Choose between the following options: {', or '.join(choices)}"


def _text(item: Mapping[str, Any], choices) -> str:
    fmt = format_of(item)
    tags = "<image>" * len(item["images"])
    if fmt == "sat":
        return tags + sat_text(item["question"], choices)
    if fmt == "vsi":
        if is_numeric(item):
            return tags + "\n".join([VSI_PRE, item["question"], VSI_NA_POST])
        return tags + "\n".join([VSI_PRE, item["question"], "Options:\n" + "\n".join(choices),
                                 VSI_MCA_POST])
    if fmt == "mindcube":
        return tags + MINDCUBE_RAW_QA + "\n" + "[Question]\n" + item["question"]
    text = item["question"]
    if text.count("<image>") != len(item["images"]):
        raise ValueError(f"tasks item {item['id']!r}: {text.count('<image>')} <image> tags for "
                         f"{len(item['images'])} images")
    return text


def prompts(item: Mapping[str, Any], circular: bool = True) -> list[Prompt]:
    """The queries of ``item``: one, plus the reversed option order for SAT with ``circular``."""
    choices = tuple(item["choices"])
    out = [Prompt(item["id"], "plain", _text(item, choices), tuple(item["images"]), choices)]
    if circular and format_of(item) == "sat":
        rev = choices[::-1]
        out.append(Prompt(item["id"], "reversed", _text(item, rev), tuple(item["images"]), rev))
    return out


def score(item: Mapping[str, Any], response: str) -> dict:
    """``{"score": float in [0, 1] (tasks: the reward, >= -1), "correct": bool | None, "parsed":
    what the official parser extracted}`` of one response."""
    fmt = format_of(item)
    if fmt == "sat":
        ok = scoring.sat_correct(response, item["choices"], item["answer"])
        return {"score": float(ok), "correct": ok, "parsed": None}
    if fmt == "vsi":
        if is_numeric(item):
            value = scoring.parse_number(response)
            return {"score": scoring.mra(value, float(item["answer"])), "correct": None,
                    "parsed": value}
        ok = scoring.vsi_choice_correct(response, item["answer"])
        return {"score": float(ok), "correct": ok, "parsed": scoring.first_token(response)}
    if fmt == "mindcube":
        letter = scoring.extract_choice(response, MINDCUBE_LETTERS)
        ok = letter is not None and letter == item["answer"]
        return {"score": float(ok), "correct": ok, "parsed": letter}
    from w2v_jax.supervision import reward

    gt = reward.ground_truth_json(item["category"], item["answer"])
    value = reward.compute_score([{"response": response, "ground_truth": gt}])[0]["overall"]
    exact = reward.normalize_text(response) == reward.normalize_text(item["answer"])
    return {"score": float(value), "correct": exact, "parsed": None}


def chance(items) -> dict:
    """Chance rate per category: 1 / options for choice items (mean over items); for numeric
    items the MRA of always answering the category's mean ground truth (a frequency baseline);
    None for the training-task mirror."""
    out: dict = {}
    for cat in sorted({i["category"] for i in items}):
        its = [i for i in items if i["category"] == cat]
        if format_of(its[0]) == "tasks":
            out[cat] = None
        elif is_numeric(its[0]):
            gts = [float(i["answer"]) for i in its]
            mean = sum(gts) / len(gts)
            out[cat] = sum(scoring.mra(mean, g) for g in gts) / len(gts)
        else:
            out[cat] = sum(1.0 / len(i["choices"]) for i in its) / len(its)
    return out
