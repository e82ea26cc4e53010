"""The VLM answerer on a tiny random model, and the two launchers end to end (slow)."""

import json
import os
import subprocess
import sys

import eval_fixtures as ef
import numpy as np
import pytest

from w2v_jax.eval import cost, formats
from w2v_jax.eval.inference import VLMAnswerer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prompt(k, n_images=1):
    images = tuple(np.full((64, 64, 3), 40 * k + 5 * j, np.uint8) for j in range(n_images))
    return formats.Prompt(f"p{k}", "plain", "<image>" * n_images + f"Question {k}: left or right?",
                          images, ("left", "right"))


def test_answerer_batches_and_costs():
    model, tokenizer = ef.tiny_vlm()
    answerer = VLMAnswerer(model, tokenizer, batch_size=2)
    prompts = [_prompt(k) for k in range(3)]
    answers = answerer(prompts, max_new_tokens=4)
    alone = answerer(prompts[2:], max_new_tokens=4)
    assert answers[2].text == alone[0].text  # batch padding and neighbours change nothing
    assert answerer.calls == 4
    for p, a in zip(prompts, answers):
        enc = answerer.encode(p)
        assert a.prompt_tokens == len(enc["input_ids"]) and 1 <= a.generated_tokens <= 4
        grids = np.asarray(enc["image_grid_thw"]).tolist()
        assert grids == [[1, 4, 4]]  # 64 px -> 56 px -> 4x4 patches
        assert a.flops == cost.vlm_flops(model.config, a.prompt_tokens, a.generated_tokens,
                                         grids)["total"]


def test_choice_logprobs_are_each_answers_likelihood_whatever_the_batch():
    import jax.numpy as jnp

    from w2v_jax.processing.chat import collate
    from w2v_jax.train.losses.sft import sft_loss

    model, tokenizer = ef.tiny_vlm()
    answerer = VLMAnswerer(model, tokenizer, batch_size=3, length_bucket=16)
    prompts = [_prompt(0), _prompt(1, n_images=2),
               formats.Prompt("p2", "plain", "<image>A longer question with more words: which?",
                              (np.full((64, 64, 3), 9, np.uint8),),
                              ("rotated left and moved forward", "look straight", "closer"))]
    ranked = answerer.choice_logprobs(prompts)
    assert answerer.calls == 7  # one forward per choice
    for p, r in zip(prompts, ranked):
        assert len(r.logprobs) == len(p.choices)
        assert r.tokens == len(answerer.encode(p, answer=p.choices[0])["input_ids"])
        for choice, lp in zip(p.choices, r.logprobs):
            # the same conversation alone, unpadded: minus its summed answer cross-entropy
            enc = answerer.encode(p, answer=choice)
            one = collate([enc], pad_id=0)
            one["position_ids"] = np.transpose(one["position_ids"], (1, 0, 2))
            batch = {k: jnp.asarray(one[k]) for k in ("input_ids", "attention_mask", "loss_mask",
                                                      "position_ids", "pixel_values",
                                                      "image_grid_thw")}
            aux = sft_loss(model, batch, None)[1]
            assert lp == pytest.approx(-float(aux["loss_sum"]), abs=1e-3)
            assert int(aux["weight"]) == len(tokenizer(choice)["input_ids"]) + 1  # + <|im_end|>
    assert ranked[0].logprobs != ranked[1].logprobs


def test_rank_answers_each_sat_prompt_with_its_most_likely_option(tmp_path):
    from w2v_jax.eval import runner, store, suites

    suites.build_suite(str(tmp_path), "sat_like", seed=0, per_category=2,
                       config=suites.common.RenderConfig(resolution=16))
    items = store.load_suite(str(tmp_path / "sat_like"))
    answer = {i["id"]: i["answer"] for i in items}

    class Stub:
        def __init__(self, pick):
            self.pick = pick

        def choice_logprobs(self, prompts):
            from w2v_jax.eval.inference import Ranked

            return [Ranked(tuple(0.0 if self.pick(p, c) else -1.0 for c in p.choices), 5, 1.0,
                           0.1) for p in prompts]

    truth = runner.rank(Stub(lambda p, c: c == answer[p.item_id]), items)
    assert len(truth) == 2 * len(items) and all(r["correct"] for r in truth)
    assert {r["response"] for r in truth} == set(answer.values())
    first = runner.rank(Stub(lambda p, c: c == p.choices[0]), items)
    agg = runner.aggregate(items, first)["sat_like"]
    # always the first option: right in exactly one of the two orders of every item
    assert agg["summary"]["macro"] == pytest.approx(
        np.mean([i["choices"][0] == i["answer"] for i in items]))  # equal n per category
    assert all(e["circular"] == 0.0 for e in agg["categories"].values())
    assert runner.rank(Stub(None), [{**items[0], "suite": "mindcube_like"}]) == []


def _run(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m"] + args, cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_build_and_evaluate_end_to_end(tmp_path):
    from w2v_jax.hf import save_vlm

    suites = str(tmp_path / "suites")
    lines = _run(["data_gen.build_eval_suites", "--out", suites, "--suites=sat_like,mindcube_like",
                  "--per_category=2", "--seed=0"]).strip().splitlines()
    lines = [json.loads(line) for line in lines if line.startswith("{")]  # TFDS prints too
    assert [line["suite"] for line in lines] == ["sat_like", "mindcube_like"]
    model, tokenizer = ef.tiny_vlm()
    model_dir = str(tmp_path / "model")
    save_vlm(model, model.config, model_dir)
    tokenizer.save_pretrained(model_dir)
    with open(os.path.join(model_dir, "preprocessor_config.json"), "w") as f:
        json.dump({"min_pixels": 3136, "max_pixels": 12544}, f)
    out = str(tmp_path / "out")
    _run(["experiments.evaluate", f"--model={model_dir}", f"--suite_dir={suites}",
          "--suites=sat_like,mindcube_like", "--blind", "--max_items=4", f"--out={out}",
          "--batch_size=4"])
    assert sorted(os.listdir(out)) == ["answers.jsonl", "results.json", "results.md", "sheet.png"]
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert set(results["runs"]) == {"model", "blind"}
    assert results["runs"]["model"]["sat_like"]["categories"]["ego_movement"]["n"] == 2
    with open(os.path.join(out, "answers.jsonl")) as f:
        answers = [json.loads(line) for line in f]
    assert len(answers) == 2 * (4 * 2 + 4)  # model + blind; SAT asked in both orders


def test_evaluate_runs_the_search_on_a_per_category_subset_with_its_cost(tmp_path):
    from w2v_jax.eval import evaluate, store, suites
    from w2v_jax.eval.test_time import SearchConfig
    from w2v_jax.models.world_model import WorldModelConfig, build
    from w2v_jax.processing.image import ImageConfig
    from w2v_jax.supervision.teachers import WorldModelTeacher

    config = suites.common.RenderConfig(resolution=16)
    suites.build_suite(str(tmp_path), "sat_like", seed=0, per_category=2, config=config)
    items = store.load_suite(str(tmp_path / "sat_like"))
    assert len(evaluate.sat_items(items, 1)) == 5  # one of each of the 5 categories
    model, tokenizer = ef.tiny_vlm()
    teacher = WorldModelTeacher(build(WorldModelConfig.preset("tiny")), steps=1)
    results, records = evaluate.evaluate(
        model, tokenizer, ImageConfig(min_pixels=3136, max_pixels=3136), items,
        search=SearchConfig(scorer="all", steps=1, max_evidence=2), teacher=teacher,
        search_per_category=1, batch_size=4, progress=False, rank=True)
    ranked = [r for r in records if r["variant"] == "ranked_plain"]
    assert len(ranked) == 10 and all(r["response"] in r["choices"] for r in ranked)
    assert "blind_ranked" not in results["runs"]  # no blind run asked for
    assert results["runs"]["ranked"]["sat_like"]["categories"]["goal_aim"]["n"] == 2
    assert results["cost"]["ranked"]["generated_tokens"] == 0
    searched = [r for r in records if r["variant"] == "test_time"]
    assert len(searched) == 5 and len([r for r in records if r["variant"] == "plain"]) == 10
    cost = results["cost"]["test_time_all"]
    assert cost["world_model_calls"] == 3  # the three primitives, one step
    assert cost["flops"] == pytest.approx(cost["world_model_flops"] + cost["vlm_flops"])
    assert cost["flops_ratio_vs_plain"] > 1
    assert results["runs"]["test_time_all"]["sat_like"]["categories"]["goal_aim"]["n"] == 1
