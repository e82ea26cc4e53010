"""Parity of the NNX Qwen2.5-VL with transformers' PyTorch model, through safetensors files.

fp32 under ``jax.default_matmul_precision("highest")``; a tiny random HF model is
``save_pretrained``-ed and read with ``w2v_jax.hf.load_vlm`` (see ``vlm_fixtures``).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

import vlm_fixtures as vf
from w2v_jax.hf import load_vlm, save_vlm
from w2v_jax import sharding

VISION_ATOL = 1e-5
LOGITS_ATOL = 1e-4
# bf16 (params + compute) vs fp32 logits: bf16 keeps 8 mantissa bits (~0.4% per rounding); through
# 2 layers + vision tower the logits of these unit-scale random models drift by a few percent of
# their range. Bound: max-abs <= 0.06 * max|logits_fp32| and the argmax agrees almost everywhere.
BF16_REL_ATOL = 0.06

PROMPTS = {
    "text_only": [[9]],
    "one_image": [[4, (1, 8, 12), 5]],  # 4x6 merged tokens -> 2x3 windows of 2x2
    "two_images": [[3, (1, 8, 12), 2, (1, 6, 10), 4]],  # second: 3x5 merged, partial windows
    "padded_batch": [[3, (1, 8, 12), 2], [6, (1, 6, 10), 9]],  # left padding + 2 images
}


pytestmark = pytest.mark.usefixtures("highest_precision")


@nnx.jit
def _forward(model, ids, pixels, grid, mask, pos):
    return model(ids, pixels, grid, mask, pos)


@nnx.jit
def _encode(model, pixels, grid):
    return model.encode_images(pixels, grid)


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(hf_model, checkpoint_path, model, config) for the untied tiny model."""
    hf_model, path = vf.save_hf_model(tmp_path_factory.mktemp("vlm"), seed=0)
    model, config = load_vlm(path)
    return hf_model, path, model, config


def _inputs(name, seed=11):
    ids, mask, grid = vf.make_prompts(PROMPTS[name], seed=seed)
    pixels = vf.random_pixels(grid, seed + 1) if len(grid) else None
    return ids, mask, (grid if len(grid) else None), pixels


def _ours(model, ids, pixels, grid, mask, pos):
    return np.asarray(_forward(model, ids, pixels, grid, mask, pos), np.float32)


def test_vision_tower_matches_hf_one_image(hf_pair):
    hf_model, _, model, _ = hf_pair
    grid = np.asarray([(1, 8, 12)], np.int64)  # 4x6 merged tokens -> 2x3 windows
    pixels = vf.random_pixels(grid, seed=3)
    ours = np.asarray(_encode(model, pixels, grid))
    ref = vf.hf_image_features(hf_model, pixels, grid)
    assert ours.shape == ref.shape == (24, 64)
    err = np.abs(ours - ref).max()
    assert err <= VISION_ATOL, f"vision max-abs {err:.2e}"


def test_vision_tower_matches_hf_two_images_with_padding_rows(hf_pair):
    """Two images of different sizes (the second with partial windows) plus 16 padding patch
    rows, grid traced under jit: the real rows match HF, the padding rows change nothing."""
    hf_model, _, model, _ = hf_pair
    grid = np.asarray([(1, 8, 12), (1, 6, 10)], np.int64)
    pixels = vf.random_pixels(grid, seed=4)
    pad = np.random.default_rng(0).standard_normal((16, pixels.shape[1])).astype(np.float32)
    ours = np.asarray(_encode(model, np.concatenate([pixels, pad], 0), grid))
    ref = vf.hf_image_features(hf_model, pixels, grid)
    assert ours.shape == (ref.shape[0] + 4, 64) and ref.shape[0] == 24 + 15
    err = np.abs(ours[: ref.shape[0]] - ref).max()
    assert err <= VISION_ATOL, f"vision max-abs {err:.2e}"


@pytest.mark.parametrize("name", ["text_only", "one_image", "two_images"])
def test_logits_match_hf(hf_pair, name):
    hf_model, _, model, _ = hf_pair
    ids, mask, grid, pixels = _inputs(name)
    pos, _ = vf.hf_position_ids(hf_model, ids, grid, mask)
    ref = vf.hf_logits(hf_model, ids, pixels, grid, mask, pos)
    ours = _ours(model, ids, pixels, grid, mask, pos)
    err = np.abs(ours - ref).max()
    assert err <= LOGITS_ATOL, f"{name}: logits max-abs {err:.2e}"
    # the positions the model computes itself (position_ids=None) equal HF's get_rope_index
    np.testing.assert_array_equal(np.asarray(model.position_ids(ids, grid, mask)), pos)


def test_image_token_count_mismatch_raises(hf_pair):
    _, _, model, _ = hf_pair
    ids, _, grid, pixels = _inputs("one_image")
    features = _encode(model, pixels, grid)
    assert model.embed(ids, features, grid).shape == (*ids.shape, 64)
    with pytest.raises(ValueError, match="image tokens do not match"):
        model.embed(ids[:, :-8], features, grid)  # 2 of the 24 image tokens cut off
    with pytest.raises(ValueError, match="image tokens do not match"):
        model.embed(np.where(ids == vf.IMAGE, 5, ids), features, grid)


def test_kv_cache_prefill_then_decode_matches_hf(hf_pair):
    """Prefill an image prompt into a cache, decode 3 tokens one at a time; every step's logits
    equal HF's full forward over the whole sequence."""
    hf_model, _, model, _ = hf_pair
    ids, mask, grid, pixels = _inputs("padded_batch")
    b, length = ids.shape
    new = np.random.default_rng(5).integers(0, vf.TEXT_VOCAB, (b, 3))
    full_ids = np.concatenate([ids, new], 1)
    full_mask = np.concatenate([mask, np.ones_like(new)], 1)
    full_pos, _ = vf.hf_position_ids(hf_model, full_ids, grid, full_mask)
    ref = vf.hf_logits(hf_model, full_ids, pixels, grid, full_mask, full_pos)

    features = _encode(model, pixels, grid)
    cache = model.init_cache(b, full_ids.shape[1] + 2)  # 2 spare slots stay masked out
    slots = np.concatenate([full_mask, np.zeros((b, 2), np.int64)], 1)

    @nnx.jit
    def step(model, tokens, pos, cache, index):
        return model(
            tokens,
            None,
            None,
            jnp.asarray(slots),
            pos,
            image_features=features,
            cache=cache,
            cache_index=index,
        )

    logits, cache = step(model, ids, full_pos[:, :, :length], cache, 0)
    real = mask.astype(bool)
    assert np.abs(np.asarray(logits) - ref[:, :length])[real].max() <= LOGITS_ATOL
    for k in range(3):
        i = length + k
        logits, cache = step(model, full_ids[:, i : i + 1], full_pos[:, :, i : i + 1], cache, i)
        err = np.abs(np.asarray(logits)[:, 0] - ref[:, i]).max()
        assert err <= LOGITS_ATOL, f"decode step {k}: max-abs {err:.2e}"


def test_save_vlm_loads_in_transformers(hf_pair, tmp_path):
    hf_model, _, model, config = hf_pair
    out = tmp_path / "export"
    save_vlm(model, config, out, max_shard_bytes=400_000)  # forces several shards + index
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask, grid, pixels = _inputs("two_images")
    pos, _ = vf.hf_position_ids(hf_model, ids, grid, mask)
    ref = vf.hf_logits(reloaded, ids, pixels, grid, mask, pos)
    assert np.abs(_ours(model, ids, pixels, grid, mask, pos) - ref).max() <= LOGITS_ATOL
    np.testing.assert_array_equal(ref, vf.hf_logits(hf_model, ids, pixels, grid, mask, pos))
    # and back into JAX: identical parameters
    again, config2 = load_vlm(out)
    assert config2 == config
    a, b = nnx.to_flat_state(nnx.state(model, nnx.Param)), nnx.to_flat_state(
        nnx.state(again, nnx.Param)
    )
    for (pa, va), (pb, vb) in zip(a, b):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))


def test_tied_embeddings_roundtrip(tmp_path):
    hf_model, path = vf.save_hf_model(tmp_path, seed=1, tie_word_embeddings=True)
    model, config = load_vlm(path)
    assert config.tie_word_embeddings and model.lm_head is None
    ids, mask, grid, pixels = _inputs("text_only", seed=21)
    pos, _ = vf.hf_position_ids(hf_model, ids, grid, mask)
    ref = vf.hf_logits(hf_model, ids, pixels, grid, mask, pos)
    assert np.abs(_ours(model, ids, pixels, grid, mask, pos) - ref).max() <= LOGITS_ATOL
    save_vlm(model, config, tmp_path / "export")
    assert "lm_head.weight" not in load_file(tmp_path / "export" / "model.safetensors")
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    np.testing.assert_allclose(vf.hf_logits(reloaded, ids, pixels, grid, mask, pos), ref, atol=1e-6)


def test_bf16_forward_close_to_fp32(hf_pair):
    _, path, model, _ = hf_pair
    model16, config16 = load_vlm(path, dtype=jnp.bfloat16)
    assert config16.param_dtype == "bfloat16"
    kernel = model16.language_model.layers[0].self_attn.q_proj.kernel[...]
    assert kernel.dtype == jnp.bfloat16
    ids, mask, grid, pixels = _inputs("one_image")
    pos = np.asarray(model.position_ids(ids, grid, mask))
    ref = _ours(model, ids, pixels, grid, mask, pos)
    low = _ours(model16, ids, pixels, grid, mask, pos)
    assert np.isfinite(low).all()
    err = np.abs(low - ref).max()
    assert (
        err <= BF16_REL_ATOL * np.abs(ref).max()
    ), f"bf16 max-abs {err:.3f} vs range {np.abs(ref).max():.2f}"
    assert np.mean(low.argmax(-1) == ref.argmax(-1)) >= 0.9


def test_missing_and_unknown_keys_raise(hf_pair, tmp_path):
    _, path, _, _ = hf_pair
    tensors = load_file(path / "model.safetensors")
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["visual.blocks.0.attn.extra.weight"] = np.zeros((2, 2), np.float32)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((path / "config.json").read_text())
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        load_vlm(broken)
    assert "model.layers.1.mlp.up_proj.weight" in str(err.value)
    assert "visual.blocks.0.attn.extra.weight" in str(err.value)


def test_in_memory_key_spelling_and_shape_check(hf_pair, tmp_path):
    """``model.visual.*`` / ``model.language_model.*`` keys load like hub keys; bad shape errors."""
    _, path, model, _ = hf_pair
    tensors = load_file(path / "model.safetensors")
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model."):
            key = "model.language_model." + key[len("model.") :]
        renamed[key] = value
    alt = tmp_path / "alt"
    alt.mkdir()
    config = json.loads((path / "config.json").read_text())
    (alt / "config.json").write_text(json.dumps(config))
    save_file(renamed, str(alt / "model.safetensors"), metadata={"format": "pt"})
    again, _ = load_vlm(alt)
    np.testing.assert_array_equal(
        np.asarray(again.visual.blocks[2].attn.qkv.kernel[...]),
        np.asarray(model.visual.blocks[2].attn.qkv.kernel[...]),
    )
    renamed["model.language_model.norm.weight"] = np.ones((3,), np.float32)
    save_file(renamed, str(alt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.norm.weight"):
        load_vlm(alt)


def test_load_on_2x2x2_mesh_is_sharded_and_equal(hf_pair):
    _, path, model, _ = hf_pair
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, _ = load_vlm(path, mesh=mesh)
    sharding.assert_sharded(sharded, mesh, min_size_bytes=4096)
    q = sharded.language_model.layers[0].self_attn.q_proj.kernel[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (32, 32)
    ids, mask, grid, pixels = _inputs("two_images")
    pos = np.asarray(model.position_ids(ids, grid, mask))
    ref = _ours(model, ids, pixels, grid, mask, pos)
    with sharding.rules_context(mesh):
        out = _ours(sharded, ids, pixels, grid, mask, pos)
    assert np.abs(out - ref).max() <= 1e-5
