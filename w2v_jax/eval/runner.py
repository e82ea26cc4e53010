"""Run a model over suite items and aggregate the scores the way each benchmark reports them.

    answers = VLMAnswerer(model, tokenizer)
    records = run(answers, items)                 # one record per prompt (SAT: two per item)
    results = aggregate(items, records)           # per suite: categories + summary

``answerer(prompts, max_new_tokens) -> [Answer]`` is anything with that call (``VLMAnswerer``,
or a stub in tests). ``rank(answerer, items)`` answers the SAT-format items by likelihood instead
(``answerer.choice_logprobs``: the option the model finds most probable as its whole answer);
its records aggregate the same way. ``blind=True`` replaces every image by a uniform grey one of
the same size (the blind baseline: what the model gets from the text alone).

Aggregation per suite (each category: ``n``, ``score``, ``se``, ``chance``):
  sat       score = accuracy on the stored option order; ``circular`` = both orders right;
            summary: ``macro`` / ``macro_circular`` over categories and ``headline`` = the macro of
            the dynamic categories (ego movement, object movement, goal aiming, action
            consequence, perspective) present;
  vsi       score = MRA (numeric) or accuracy; summary: the 8 task scores (relative direction =
            mean of its easy / medium / hard levels) and ``overall`` = their unweighted mean;
  mindcube  score = accuracy; summary: ``overall`` pooled over all items (MindCube's number);
  tasks     score = mean official reward; ``exact`` = exact-match rate; summary: ``reward``.
Standard errors: binomial for accuracies, sample std / sqrt(n) for MRA and rewards.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from w2v_jax.eval import formats, scoring

BLANK_VALUE = 128
SAT_DYNAMIC = ("ego_movement", "object_movement", "obj_movement", "goal_aim",
               "action_consequence", "action_conseq", "perspective", "action_sequence")
VSI_TASKS = ("object_counting", "object_abs_distance", "object_size_estimation",
             "room_size_estimation", "object_rel_distance", "object_rel_direction",
             "route_planning", "obj_appearance_order")
LEAK_MIN_GAP = 0.05


def blank_images(images: Sequence) -> tuple:
    """Uniform grey (128) uint8 images of the same sizes as ``images``."""
    from w2v_jax.processing.image import load_image

    return tuple(np.full(load_image(im).shape, BLANK_VALUE, np.uint8) for im in images)


def _prompts(items: Sequence[dict], blind: bool, circular: bool):
    """``(item, prompt)`` pairs grouped by format (blank images when ``blind``)."""
    by_format = collections.defaultdict(list)
    for item in items:
        for p in formats.prompts(item, circular=circular):
            if blind:
                p = formats.Prompt(p.item_id, p.variant, p.text, blank_images(p.images), p.choices)
            by_format[formats.format_of(item)].append((item, p))
    return by_format


def _record(item: dict, p, response: str, blind: bool, **cost) -> dict:
    return dict(id=item["id"], suite=item["suite"], category=item["category"], variant=p.variant,
                blind=blind, prompt=p.text, choices=list(p.choices), answer=item["answer"],
                response=response, **formats.score(item, response), **cost)


def _in_item_order(items: Sequence[dict], records: list[dict]) -> list[dict]:
    order = {item["id"]: k for k, item in enumerate(items)}
    return sorted(records, key=lambda r: (order[r["id"]], r["variant"] != "plain"))


def run(answerer, items: Sequence[dict], *, blind: bool = False, circular: bool = True
        ) -> list[dict]:
    """Ask every item (both option orders for SAT with ``circular``); one record per prompt."""
    records = []
    for fmt, pairs in _prompts(items, blind, circular).items():
        answers = answerer([p for _, p in pairs], formats.MAX_NEW_TOKENS[fmt])
        for (item, p), a in zip(pairs, answers):
            records.append(_record(item, p, a.text, blind, prompt_tokens=a.prompt_tokens,
                                   generated_tokens=a.generated_tokens, flops=a.flops,
                                   wall_s=a.wall_s))
    return _in_item_order(items, records)


def rank(answerer, items: Sequence[dict], *, blind: bool = False, circular: bool = True
         ) -> list[dict]:
    """The SAT-format items answered by likelihood: each prompt's response is its choice with
    the highest ``answerer.choice_logprobs`` (first on ties) and is scored by the SAT rule like a
    generated one. Records as ``run``'s, plus ``choice_logprobs``; ``generated_tokens`` is 0 and
    ``flops`` / ``wall_s`` cover one forward per choice. Items of other formats are skipped."""
    pairs = _prompts(items, blind, circular).get("sat", [])
    if not pairs:
        return []
    ranked = answerer.choice_logprobs([p for _, p in pairs])
    records = []
    for (item, p), r in zip(pairs, ranked):
        best = p.choices[int(np.argmax(r.logprobs))]
        records.append(_record(item, p, best, blind, prompt_tokens=r.tokens, generated_tokens=0,
                               flops=r.flops, wall_s=r.wall_s,
                               choice_logprobs=list(r.logprobs)))
    return _in_item_order(items, records)


def _mean_se(values, binary: bool) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    mean = float(v.mean()) if v.size else 0.0
    if binary:
        return mean, scoring.binomial_se(mean, v.size)
    return mean, float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0


def aggregate(items: Sequence[dict], records: Sequence[dict]) -> dict:
    """Per suite ``{"format", "categories": {cat: {...}}, "summary": {...}}`` (module doc)."""
    out = {}
    for suite in sorted({i["suite"] for i in items}):
        its = [i for i in items if i["suite"] == suite]
        recs = [r for r in records if r["suite"] == suite]
        fmt = formats.format_of(its[0])
        chance = formats.chance(its)
        cats = {}
        for cat in sorted({i["category"] for i in its}):
            plain = [r for r in recs if r["category"] == cat and r["variant"] == "plain"]
            binary = fmt in ("sat", "mindcube") or (fmt == "vsi" and cat not in
                                                     formats.VSI_NUMERIC)
            score, se = _mean_se([r["score"] for r in plain], binary)
            entry = {"n": len(plain), "score": score, "se": se, "chance": chance[cat]}
            if fmt == "sat":
                both = [(r["id"], r["correct"]) for r in recs if r["category"] == cat]
                if any(r["variant"] == "reversed" for r in recs if r["category"] == cat):
                    entry["circular"] = scoring.circular(both)
                    entry["circular_se"] = scoring.binomial_se(entry["circular"], len(plain))
            if fmt == "tasks":
                entry["exact"], entry["exact_se"] = _mean_se([r["correct"] for r in plain], True)
            cats[cat] = entry
        out[suite] = {"format": fmt, "categories": cats, "summary": _summary(fmt, cats, recs)}
    return out


def _summary(fmt: str, cats: dict, recs) -> dict:
    scores = {c: e["score"] for c, e in cats.items()}
    if fmt == "sat":
        dyn = [c for c in cats if c in SAT_DYNAMIC]
        out = {"macro": float(np.mean(list(scores.values()))),
               "headline": float(np.mean([scores[c] for c in dyn])) if dyn else None}
        if all("circular" in e for e in cats.values()):
            out["macro_circular"] = float(np.mean([e["circular"] for e in cats.values()]))
            out["headline_circular"] = (float(np.mean([cats[c]["circular"] for c in dyn]))
                                        if dyn else None)
        return out
    if fmt == "vsi":
        tasks = {}
        levels = [scores[c] for c in cats if c.startswith("object_rel_direction_")]
        for task in VSI_TASKS:
            if task == "object_rel_direction" and levels:
                tasks[task] = float(np.mean(levels))
            elif task in scores:
                tasks[task] = scores[task]
        return {"tasks": tasks, "overall": float(np.mean(list(tasks.values())))}
    if fmt == "mindcube":
        plain = [r["score"] for r in recs if r["variant"] == "plain"]
        return {"overall": float(np.mean(plain)), "n": len(plain)}
    plain = [r for r in recs if r["variant"] == "plain"]
    return {"reward": float(np.mean([r["score"] for r in plain])),
            "exact": float(np.mean([r["correct"] for r in plain]))}


def leaks(blind_results: dict) -> list[dict]:
    """Categories where the blind model beats chance by more than max(3 SE, 0.05): the question
    text alone gives the answer away (a language prior)."""
    out = []
    for suite, res in blind_results.items():
        for cat, e in res["categories"].items():
            if e["chance"] is None:
                continue
            gap = e["score"] - e["chance"]
            if gap > max(3 * e["se"], LEAK_MIN_GAP):
                out.append({"suite": suite, "category": cat, "blind": e["score"],
                            "chance": e["chance"], "gap": gap})
    return out


def hygiene(items: Sequence[dict], tolerance: float = 0.05) -> dict:
    """Per category: label shares and correct-option-position shares, and ``balanced``: every
    share within ``tolerance`` of uniform (binary categories: 45-55 %)."""
    from w2v_jax.eval.store import answer_position

    out = {}
    for suite in sorted({i["suite"] for i in items}):
        for cat in sorted({i["category"] for i in items if i["suite"] == suite}):
            its = [i for i in items if i["suite"] == suite and i["category"] == cat]
            report = {"n": len(its)}
            labels = collections.Counter(str(i["meta"].get("label")) for i in its
                                         if "label" in i["meta"])
            positions = collections.Counter(answer_position(i) for i in its if i["choices"])
            ok = True
            for key, counts, k in (("labels", labels, len(labels)),
                                   ("positions", positions,
                                    max((len(i["choices"]) for i in its), default=0))):
                if not counts or k < 2:
                    continue
                shares = {str(c): v / sum(counts.values()) for c, v in sorted(counts.items())}
                report[key] = shares
                if key == "labels" and any(formats.is_numeric(i) for i in its):
                    continue  # numeric answers have no classes to balance
                ok &= len(counts) == k and all(abs(s - 1 / k) <= tolerance
                                               for s in shares.values())
            report["balanced"] = bool(ok)
            out[f"{suite}/{cat}"] = report
    return out
