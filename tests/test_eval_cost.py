"""Analytic FLOPs against hand counts on tiny configs, and sampler evaluation counts."""

import jax
import jax.numpy as jnp
import pytest
import vlm_fixtures as vf

from w2v_jax.eval import cost
from w2v_jax.models.vlm.config import VLMConfig
from w2v_jax.models.world_model import WorldModelConfig, build


def test_vlm_flops_hand_count():
    config = VLMConfig.from_hf_dict(vf.tiny_hf_config().to_dict())
    # text: D 64, MLP 128, 2 layers, 4 heads / 2 KV heads of 16, vocab 300
    per_token = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) * 2  # 147456
    pair = 4 * 64 * 2  # QK^T + AV per (query, key) over both layers
    head = 2 * 64 * 300
    out = cost.vlm_flops(config, prompt_tokens=10, generated_tokens=3)
    assert out["prefill"] == 10 * per_token + pair * 55 + head
    assert out["decode"] == 2 * (per_token + head) + pair * (11 + 12)
    assert out["vision"] == 0 and out["total"] == out["prefill"] + out["decode"]
    # vision: hidden 64, MLP 96, depth 4 (full attention at 1, 3), windows of 2x2 merged tokens;
    # a (1, 8, 12) grid = 96 patches, 6 windows of 16 patches, 24 merged tokens
    patch = 2 * 96 * 1176 * 64
    block = 2 * 96 * 64 * (3 * 64 + 64 + 3 * 96)
    window, full = 4 * 64 * 6 * 16**2, 4 * 64 * 96**2
    merger = 2 * 24 * 256 * 256 + 2 * 24 * 256 * 64
    vision = cost.vlm_flops(config, 10, 1, [(1, 8, 12)])["vision"]
    assert vision == patch + 4 * block + 2 * window + 2 * full + merger
    assert cost.vlm_flops(config, 10, 0)["prefill"] == 10 * per_token + pair * 55  # no logits
    with pytest.raises(ValueError, match="prompt_tokens"):
        cost.vlm_flops(config, 0, 1)


def test_world_model_flops_hand_count_and_xla():
    config = WorldModelConfig.preset("tiny")  # 16 px, patch 4, width 64, depth 2, 1 + 1 views
    T, L = 32, 16
    hand = (2 * T * 16 * 9 * 64 + 2 * 64 * 64 * 2
            + 2 * (2 * 64 * 384 + 4 * 2 * T * 64 * 64 + 4 * T * T * 64 + 2 * 2 * T * 64 * 256)
            + 2 * 64 * 128 + 2 * L * 64 * 48)
    assert cost.world_model_flops(config) == hand == 7634944
    model = build(config)
    x = jnp.zeros((1, 1, 16, 16, 3))
    rays = jnp.zeros((1, 1, 16, 16, 6))
    compiled = jax.jit(lambda s, sr, t, tr, tt: model(s, sr, t, tr, tt)).lower(
        x, rays, x, rays, jnp.ones((1,))).compile()
    xla = compiled.cost_analysis()
    xla = (xla[0] if isinstance(xla, list) else xla)["flops"]
    assert 0.9 < xla / hand < 1.3  # XLA also counts the element-wise work


def test_world_model_evals():
    c = WorldModelConfig.preset("tiny")
    assert cost.world_model_evals(c, 25) == 25
    assert cost.world_model_evals(c, 25, "heun") == 49
    assert cost.world_model_evals(c, 25, cfg=1.5) == 50
    assert cost.world_model_evals(c.replace(prediction="regression"), 25, cfg=3.0) == 1
    two = c.replace(num_target=2)
    assert cost.imagine_cost(two, 3, 10)["evals"] == 20  # 3 views -> 2 samples of 2 targets
    assert cost.imagine_cost(c, 1, 10)["flops"] == 10 * cost.world_model_flops(c)
