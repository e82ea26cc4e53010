"""GRPO prompt batches for the tiny random Qwen2.5-VL of ``vlm_fixtures`` (the layout of
``data.distill.grpo_pipeline``: left-padded prompts, per-example images, ground truth strings).

    batch = prompt_batch([[3, (1, 4, 4), 2], [5, (1, 4, 8)]], seed=1, truths=[...], tasks=[...])
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

import vlm_fixtures as vf
from w2v_jax.processing.rope_index import get_rope_index

PAD = 0


def prompt_batch(specs: Sequence[Sequence], *, seed: int, truths: Sequence[str],
                 tasks: Sequence[str], pixels: Sequence[np.ndarray] | None = None,
                 patches_per_example: int = 64, images_per_example: int = 2) -> dict:
    """``vf.make_prompts`` specs -> a grpo_pipeline-style batch; ``pixels[b]``: example ``b``'s
    patches (default random), zero-padded to ``patches_per_example``."""
    ids, mask, grids = vf.make_prompts(specs, seed=seed, pad_id=PAD)
    pos, deltas = get_rope_index(ids, grids, mask, spatial_merge_size=vf.MERGE,
                                 image_token_id=vf.IMAGE, vision_start_token_id=vf.VISION_START)
    b = len(specs)
    pv = np.zeros((b, patches_per_example, vf.PATCH_DIM), np.float32)
    grid = np.zeros((b, images_per_example, 3), np.int32)
    row = 0
    for i, spec in enumerate(specs):
        own = [item for item in spec if not isinstance(item, (int, np.integer))]
        own_grids = np.asarray(grids[row:row + len(own)])
        row += len(own)
        grid[i, :len(own)] = own_grids
        count = int(np.prod(own_grids, axis=-1).sum())
        pv[i, :count] = (vf.random_pixels(own_grids, seed + 10 * i) if pixels is None
                         else pixels[i])
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
            "position_ids": pos.astype(np.int32), "rope_deltas": deltas.astype(np.int32),
            "pixel_values": pv, "image_grid_thw": grid,
            "ground_truth": np.asarray(truths), "task_type": np.asarray(tasks),
            "example_mask": np.ones(b, bool)}


def decode_ids(rows: Sequence[Sequence[int]]) -> list[str]:
    """Token ids -> a space-separated string (the tiny models have no tokenizer)."""
    return [" ".join(str(t) for t in row) for row in rows]


def even_token_reward(inputs) -> list[dict]:
    """A reward with spread for random policies: the fraction of even token ids."""
    out = []
    for item in inputs:
        toks = [int(t) for t in item["response"].split()] or [1]
        out.append({"overall": float(np.mean([t % 2 == 0 for t in toks])), "format": 1.0})
    return out


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for the module, so identical programs of successive
    Trainers / runs (same shapes, new instances) compile once."""
    cache_dir = tmp_path_factory.mktemp("jax_cache")
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in names}
    for k, v in zip(names, (str(cache_dir), 0, 0)):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()
