"""One model over suite items: plain inference, optionally the blind baseline and the test-time
world-model search, with the cost per question of each (what ``experiments.evaluate`` and the
reproduction pipeline report).

    results, records = evaluate(model, tokenizer, image_config, items, blind=True,
                                search=SearchConfig(scorer="vlm"), teacher=teacher)

``results``: ``{"runs": {"model": aggregate, ["blind": ...], ["ranked": ...],
["blind_ranked": ...], ["test_time_<scorer>": ...]}, "hygiene", "cost": {run: mean cost per
question}, "wall_s": {run: seconds}}`` (aggregates as ``runner.aggregate``); ``records``: one per
prompt (``variant`` "plain" / "reversed" / "test_time", "ranked_plain" / "ranked_reversed";
``blind`` flag). ``rank`` adds the SAT-format items answered by likelihood (``runner.rank``: the
option the model finds most probable), for the model and, with ``blind``, for the blank images.
Costs: ``prompt_tokens``, ``generated_tokens``, ``flops`` (analytic, ``cost.vlm_flops``) and
``wall_s`` per plain question; the search adds its world-model and VLM
calls and FLOPs and the ratios to plain inference on the same questions.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from w2v_jax.eval import formats, runner

COST_KEYS = ("prompt_tokens", "generated_tokens", "flops", "wall_s")


def mean_cost(records: Sequence[dict]) -> dict:
    """Mean cost per plain (stored option order) question; {} without plain records."""
    plain = [r for r in records if r["variant"] == "plain"]
    return {k: float(np.mean([r[k] for r in plain])) for k in COST_KEYS} if plain else {}


def sat_items(items: Sequence[dict], per_category: int = 0) -> list[dict]:
    """The SAT-format items (the search's), the first ``per_category`` of each category when
    > 0."""
    sat = [i for i in items if formats.format_of(i) == "sat"]
    if not per_category:
        return sat
    taken: dict = {}
    out = []
    for item in sat:
        key = (item["suite"], item["category"])
        if taken.get(key, 0) < per_category:
            taken[key] = taken.get(key, 0) + 1
            out.append(item)
    return out


def search_items(search, items: Sequence[dict], progress: bool = True) -> list[dict]:
    """``search.search`` (``test_time.MindJourney``) over the SAT-format items, images decoded."""
    from tqdm.auto import tqdm

    from w2v_jax.processing.image import load_image

    out = []
    sat = sat_items(items)
    for item in tqdm(sat, desc="test-time search", disable=not progress):
        K = np.asarray(item["meta"]["K"]) if "K" in item["meta"] else None
        out.append(search.search(item, [load_image(im) for im in item["images"]], K))
    return out


def search_cost(searched: Sequence[dict], plain_records: Sequence[dict]) -> dict:
    """Mean search cost per question and its FLOPs / wall-time ratios to plain inference on the
    same questions (``plain_records``: the non-blind records of the plain run)."""
    keys = searched[0]["cost"].keys()
    out = {k: float(np.mean([r["cost"][k] for r in searched])) for k in keys}
    ids = {s["id"] for s in searched}
    plain = mean_cost([r for r in plain_records if r["id"] in ids and not r["blind"]])
    out["flops"] = out["world_model_flops"] + out["vlm_flops"]
    out["flops_ratio_vs_plain"] = out["flops"] / max(plain["flops"], 1.0)
    out["wall_ratio_vs_plain"] = out["wall_s"] / max(plain["wall_s"], 1e-9)
    return out


def evaluate(model, tokenizer, image_config, items: Sequence[dict], *, blind: bool = False,
             circular: bool = True, rank: bool = False, search=None, teacher=None,
             search_per_category: int = 0, batch_size: int = 8, progress: bool = True
             ) -> tuple[dict, list[dict]]:
    """Module doc. ``search``: a ``test_time.SearchConfig`` (None: no search) run with
    ``teacher`` (the teacher seam: ``supervision.teachers.WorldModelTeacher``) on the SAT-format
    items (the first ``search_per_category`` of each category when > 0: the search costs tens of
    plain answers per question)."""
    from w2v_jax.eval.inference import VLMAnswerer

    if search is not None and teacher is None:
        raise ValueError("evaluate: search needs a teacher (the world model that imagines)")
    answerer = VLMAnswerer(model, tokenizer, image_config, batch_size=batch_size,
                           progress=progress)
    t0 = time.time()
    records = runner.run(answerer, items, circular=circular)
    results = {"runs": {"model": runner.aggregate(items, records)},
               "hygiene": runner.hygiene(items), "cost": {"model": mean_cost(records)},
               "wall_s": {"model": time.time() - t0}}
    if blind:
        t0 = time.time()
        blind_records = runner.run(answerer, items, blind=True, circular=circular)
        results["runs"]["blind"] = runner.aggregate(items, blind_records)
        results["leaks"] = runner.leaks(results["runs"]["blind"])
        results["cost"]["blind"] = mean_cost(blind_records)
        results["wall_s"]["blind"] = time.time() - t0
        records += blind_records
    sat = sat_items(items)
    for name, blank in (("ranked", False), ("blind_ranked", True)):
        if not rank or not sat or (blank and not blind):
            continue
        t0 = time.time()
        ranked = runner.rank(answerer, sat, blind=blank, circular=circular)
        results["runs"][name] = runner.aggregate(sat, ranked)
        results["cost"][name] = mean_cost(ranked)
        results["wall_s"][name] = time.time() - t0
        records += [dict(r, variant=f"ranked_{r['variant']}") for r in ranked]
    if search is not None:
        from w2v_jax.eval.test_time import MindJourney

        t0 = time.time()
        single = VLMAnswerer(model, tokenizer, image_config, batch_size=1)
        searched_items = sat_items(items, search_per_category)
        searched = search_items(MindJourney(single, teacher, search), searched_items, progress)
        if searched:
            name = f"test_time_{search.scorer}"
            results["runs"][name] = runner.aggregate(
                searched_items, [dict(r, variant="plain") for r in searched])
            results["cost"][name] = search_cost(searched, records)
            results["wall_s"][name] = time.time() - t0
            records += [dict(r, variant="test_time") for r in searched]
    return results, records
