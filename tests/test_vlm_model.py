"""Unit tests of the NNX Qwen2.5-VL beyond HF parity: config I/O, 7B shapes, KV cache, remat."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

import vlm_fixtures as vf
from w2v_jax.hf import nnx_to_hf_key
from w2v_jax.models.vlm import Qwen2_5_VL, VLMConfig
from w2v_jax import sharding

# config.json of the released Qwen2.5-VL-7B-Instruct (hub spelling: flat text fields, rope_scaling)
QWEN25_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}


def test_config_reads_hub_7b_json_and_round_trips():
    cfg = VLMConfig.from_hf_dict(QWEN25_VL_7B, dtype="bfloat16")
    t, v = cfg.text, cfg.vision
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (
        3584,
        28,
        28,
        4,
    )
    assert (t.head_dim, t.mrope_section, t.rope_theta, t.vocab_size) == (
        128,
        (16, 24, 24),
        1e6,
        152064,
    )
    assert (v.depth, v.hidden_size, v.num_heads, v.in_channels, v.window_units) == (
        32,
        1280,
        16,
        3,
        4,
    )
    assert v.fullatt_block_indexes == (7, 15, 23, 31) and v.patch_dim == 1176
    assert cfg.param_dtype == cfg.dtype == "bfloat16" and not cfg.tie_word_embeddings
    again = VLMConfig.from_hf_dict(cfg.to_hf_dict(), dtype="bfloat16")
    assert again == cfg
    hf = Qwen2_5_VLConfig(**cfg.to_hf_dict())
    assert hf.text_config.hidden_size == 3584 and hf.vision_config.fullatt_block_indexes == [
        7,
        15,
        23,
        31,
    ]
    assert hf.text_config.rope_parameters["mrope_section"] == [16, 24, 24]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope type"),
        ({"rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 16]}}, "mrope_section"),
        ({"image_token_id": 152064}, "image_token_id"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"model_type": "qwen2_vl"}, "model_type"),
    ],
)
def test_config_rejects_bad_fields(change, field):
    with pytest.raises(ValueError, match=field):
        VLMConfig.from_hf_dict({**QWEN25_VL_7B, **change})


def _hf_shapes(cfg: VLMConfig) -> dict[str, tuple]:
    with torch.device("meta"):  # shapes only, no memory
        hf = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg.to_hf_dict()))
    shapes = {}
    for name, p in hf.state_dict().items():
        name = name.replace("model.visual.", "visual.").replace("model.language_model.", "model.")
        shapes[name] = tuple(p.shape)
    return shapes


def test_7b_widths_shapes_match_transformers():
    """The 7B widths (2 text layers, 4 vision blocks to keep tracing cheap): every abstract NNX
    parameter maps through KEY_TABLE to an HF tensor of the transformed shape, and back."""
    full = VLMConfig.from_hf_dict(QWEN25_VL_7B, dtype="bfloat16")
    total = sum(np.prod(s) for s in _hf_shapes(full).values())
    assert 8.2e9 < total < 8.4e9  # "Qwen2.5-VL-7B" has 8.29 B parameters
    cfg = full.replace(
        text=dataclasses.replace(full.text, num_hidden_layers=2),
        vision=dataclasses.replace(full.vision, depth=4, fullatt_block_indexes=(3,)),
    )
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    _, abs_state, _ = sharding.abstract_sharded(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)), mesh)
    ours = {}
    for path, var in nnx.to_flat_state(abs_state):
        key, transform = nnx_to_hf_key(".".join(map(str, path)))
        shape = var.get_value().shape
        assert var.get_value().dtype == jnp.bfloat16
        if transform == "linear":
            shape = shape[::-1]
        elif transform == "conv3d":
            assert shape == (1176, 1280)
            shape = (1280, 3, 2, 14, 14)
        ours[key] = shape
    assert ours == _hf_shapes(cfg)


def _tiny_inputs(seed=0):
    rng = np.random.default_rng(seed)
    grid = np.array([[1, 4, 8]])  # 2x4 merged tokens
    ids = np.concatenate(
        [rng.integers(0, 290, 3), [296], [298] * 8, [297], rng.integers(0, 290, 4)]
    )[None]
    pixels = rng.standard_normal((32, 1176)).astype(np.float32)
    return ids, grid, pixels


@pytest.mark.slow
def test_remat_gives_same_loss_and_grads():
    ids, grid, pixels = _tiny_inputs()
    pos = None

    def make(remat):
        return sharding.create_unsharded(
            lambda: Qwen2_5_VL(vf.tiny_config(remat=remat), rngs=nnx.Rngs(0))
        )

    @nnx.jit
    def loss_and_grads(model, ids, pixels, grid, pos):
        def loss_fn(model):
            return jnp.mean(jax.nn.log_softmax(model(ids, pixels, grid, None, pos)) ** 2)

        return nnx.value_and_grad(loss_fn)(model)

    with jax.default_matmul_precision("highest"):
        base = make(False)
        pos = base.position_ids(ids, grid)
        l0, g0 = loss_and_grads(base, ids, pixels, grid, pos)
        l1, g1 = loss_and_grads(make(True), ids, pixels, grid, pos)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert float(jnp.abs(g0["visual"]["blocks"][0]["attn"]["qkv"]["kernel"][...]).max()) > 0


def test_cache_decode_equals_full_forward_text_only():
    """Text-only greedy continuation with the cache == logits of one full forward pass."""
    model = sharding.create_unsharded(
        lambda: Qwen2_5_VL(vf.tiny_config(tie_word_embeddings=True), rngs=nnx.Rngs(1))
    )
    ids = np.random.default_rng(2).integers(0, 290, (2, 6))

    @nnx.jit
    def step(model, tokens, cache, index):
        return model(tokens, cache=cache, cache_index=index)

    with jax.default_matmul_precision("highest"):
        cache = model.init_cache(2, 10)
        logits, cache = step(model, ids, cache, 0)
        seq = ids
        for i in range(3):
            nxt = np.asarray(logits[:, -1].argmax(-1))[:, None]
            seq = np.concatenate([seq, nxt], 1)
            logits, cache = step(model, nxt, cache, 6 + i)
        full = nnx.jit(lambda m, x: m(x))(model, seq)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(full[:, -1]), atol=1e-5)
    assert cache[0]["k"].shape == (2, 2, 10, 16)  # (B, Hkv, S, D)
    assert float(jnp.abs(cache[1]["v"][:, :, 9:]).max()) == 0.0  # never-written slot stays zero
