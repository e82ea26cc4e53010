"""Plain inference vs the MindJourney test-time search: questions per second and FLOPs per question.

    python -m experiments.bench.eval [--items=10 --wm_steps=4 --seed=0]

Same tiny random models for both: a Qwen2.5-VL (text hidden 64, 2 layers; vision hidden 64,
depth 2) with a byte-level tokenizer trained here, and the ``tiny`` world-model preset (16 px)
sampled with ``wm_steps`` Euler steps. Questions: the first ``items`` SAT-like items (seed 0).
Plain inference answers each question once (stored option order) with batch 1 and with batch 8;
the search runs with ``scorer=all`` (no scoring calls) and ``scorer=vlm`` (the random VLM's
scores do not parse, so it stops after one step, as the release does with random 0-5 scores).
Every setting is run once untimed (compilation) and then timed. Prints one JSON line: questions
per second, analytic FLOPs per question (``w2v_jax.eval.cost``), world-model and VLM calls per
question, and the FLOPs / wall-time ratios of each search over plain batch-1 inference.
"""

import json
import os
import time

import numpy as np
from absl import app, flags
from flax import nnx

from w2v_jax import sharding
from w2v_jax.eval import formats, runner
from w2v_jax.eval.inference import VLMAnswerer
from w2v_jax.eval.suites import sat_like
from w2v_jax.eval.test_time import MindJourney, SearchConfig
from w2v_jax.models.vlm.config import VLMConfig, fit_to_tokenizer, hf_config_dict
from w2v_jax.models.vlm.model import Qwen2_5_VL
from w2v_jax.models.world_model import WorldModelConfig, build
from w2v_jax.processing import train_tokenizer
from w2v_jax.processing.image import load_image
from w2v_jax.supervision.teachers import WorldModelTeacher

_ITEMS = flags.DEFINE_integer("items", 10, "Questions timed per setting.")
_WM_STEPS = flags.DEFINE_integer("wm_steps", 4, "World-model sampler steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the models and the suite.")


def tiny_vlm(seed: int):
    corpus = ["rotated left and moved forward", "turn right by 24 degrees", "closer further",
              "Output: 3,5,2,9,0,1"] * 20
    tokenizer, ids = train_tokenizer(corpus, 400)
    # the tiny test model (2-block vision tower) sized to the tokenizer
    sizes = hf_config_dict(vision_depth=2, fullatt_block_indexes=(1,))
    config = VLMConfig.from_hf_dict(fit_to_tokenizer(sizes, len(tokenizer), ids))
    return sharding.create_unsharded(lambda: Qwen2_5_VL(config, rngs=nnx.Rngs(seed))), tokenizer


def _plain(answerer, items):
    t0 = time.perf_counter()
    records = runner.run(answerer, items, circular=False)
    wall = time.perf_counter() - t0
    return {"questions_per_s": len(items) / wall,
            "flops_per_question": float(np.mean([r["flops"] for r in records])),
            "vlm_calls_per_question": 1.0}


def _search(search, items):
    t0 = time.perf_counter()
    out = [search.search(i, [load_image(im) for im in i["images"]],
                         np.asarray(i["meta"]["K"])) for i in items]
    wall = time.perf_counter() - t0
    c = [r["cost"] for r in out]
    return {"questions_per_s": len(items) / wall,
            "flops_per_question": float(np.mean([x["vlm_flops"] + x["world_model_flops"]
                                                 for x in c])),
            "world_model_flops_per_question": float(np.mean([x["world_model_flops"] for x in c])),
            "world_model_calls_per_question": float(np.mean([x["world_model_calls"] for x in c])),
            "vlm_calls_per_question": float(np.mean([x["vlm_calls"] for x in c]))}


def main(argv):
    del argv
    model, tokenizer = tiny_vlm(_SEED.value)
    items, images = sat_like.build(_SEED.value, max(1, -(-_ITEMS.value // 5)))
    items = [dict(i, images=[images[n] for n in i["images"]]) for i in items][:_ITEMS.value]
    assert all(formats.format_of(i) == "sat" for i in items)
    teacher = WorldModelTeacher(build(WorldModelConfig.preset("tiny"), _SEED.value),
                                steps=_WM_STEPS.value)
    one = VLMAnswerer(model, tokenizer, batch_size=1)
    eight = VLMAnswerer(model, tokenizer, batch_size=8)
    settings = {
        "plain_batch1": lambda its: _plain(one, its),
        "plain_batch8": lambda its: _plain(eight, its),
        "search_all": lambda its: _search(MindJourney(one, teacher, SearchConfig(scorer="all")),
                                          its),
        "search_vlm": lambda its: _search(MindJourney(one, teacher, SearchConfig(scorer="vlm")),
                                          its),
    }
    out = {"bench": "eval", "items": len(items), "wm_steps": _WM_STEPS.value}
    for name, fn in settings.items():
        fn(items)  # compile every shape once
        out[name] = {k: round(v, 4) if v < 1e6 else float(f"{v:.4g}")
                     for k, v in fn(items).items()}
    base = out["plain_batch1"]
    for name in ("search_all", "search_vlm"):
        out[name]["flops_ratio_vs_plain"] = round(
            out[name]["flops_per_question"] / base["flops_per_question"], 2)
        out[name]["time_ratio_vs_plain"] = round(
            base["questions_per_s"] / out[name]["questions_per_s"], 2)
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
