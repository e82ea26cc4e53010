"""The released small models (results/models/, written by the reproduce pipeline's release
stage) load with our loaders and with transformers, and answer the committed held-out examples
(results/reproduce_small_examples.jsonl) as recorded."""
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "results", "models")
EXAMPLES = os.path.join(ROOT, "results", "reproduce_small_examples.jsonl")
RESULTS = os.path.join(ROOT, "results", "reproduce_small.json")
VLMS = {"vlm_base_small": "base", "world2vlm_small": "world2vlm"}


def test_the_release_is_complete_and_within_60_mb():
    total = 0
    for name in ("world_model_small", *VLMS):
        path = os.path.join(MODELS, name)
        assert os.path.isfile(os.path.join(path, "README.md")), name
        total += sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
                     for f in fs)
    assert total <= 60 * 2**20
    for name in VLMS:
        files = set(os.listdir(os.path.join(MODELS, name)))
        assert {"config.json", "model.safetensors", "tokenizer.json",
                "preprocessor_config.json"} <= files


@pytest.mark.parametrize("name", sorted(VLMS))
def test_released_vlm_answers_the_committed_examples(name):
    from w2v_jax.eval import runner
    from w2v_jax.eval.inference import VLMAnswerer
    from w2v_jax.reproduce.report import read_examples
    from w2v_jax.train import runs

    path = os.path.join(MODELS, name)
    model, tokenizer = runs.load_vlm(path)
    image_config = runs.vlm_image_config(path)
    with open(RESULTS) as f:
        trained = json.load(f)
    # the bounds it was trained with: 32 px views resized to 56 px
    assert image_config.min_pixels == 56 * 56
    examples = read_examples(EXAMPLES)
    records = runner.run(VLMAnswerer(model, tokenizer, image_config, batch_size=8), examples,
                         circular=False)
    got = {r["id"]: r["response"] for r in records}
    want = {e["id"]: e["responses"][VLMS[name]] for e in examples}
    same = np.mean([got[k] == want[k] for k in want])
    # greedy decoding of the same weights; a near-tie may flip on another CPU's float order
    assert same >= 0.8, {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert VLMS[name] in trained["rows"]


def test_released_vlm_loads_in_transformers():
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)

    path = os.path.join(MODELS, "world2vlm_small")
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, torch_dtype=torch.float32)
    assert sum(p.numel() for p in hf.parameters()) > 1e6
    proc = Qwen2VLImageProcessorPil.from_pretrained(path)  # the processor without torchvision
    assert proc.size.shortest_edge == 56 * 56
    out = proc(images=[np.zeros((32, 32, 3), np.uint8)], return_tensors="np")
    assert tuple(out["image_grid_thw"][0]) == (1, 4, 4)  # 56 px -> 4 x 4 patches of 14


def test_released_world_model_imagines_a_view():
    from w2v_jax import actions, geometry
    from w2v_jax.supervision.teachers import WorldModelTeacher
    from w2v_jax.train import runs

    model = runs.load_world_model(os.path.join(MODELS, "world_model_small"))
    size = model.config.image_size
    image = np.full((size, size, 3), 0.5, np.float32)
    K = geometry.intrinsics_from_hfov(size, size, 90.0)
    views = WorldModelTeacher(model, steps=3, cfg=1.5).views(
        image, K, list(actions.parse_actions("move forward 0.5 meters")), seed=0)
    assert views.shape == (1, size, size, 3) and np.isfinite(views).all()
