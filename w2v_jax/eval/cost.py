"""Analytic compute of the two models, for per-question cost records.

FLOPs count matrix multiplications only (2 per multiply-add: every linear layer, the attention
scores and the attention-weighted values); norms, activations, softmax and rotary are left out
(a few percent at these widths). Attention is counted over the keys a query may see (causal
prefix, vision window, frame), not over the padding a fixed-shape implementation also computes.

- :func:`vlm_flops` — one question on a Qwen2.5-VL: the vision tower on its images, the prefill
  of the prompt (logits at the last position only) and the decode of every generated token after
  the first (each fed back once, with its logits).
- :func:`world_model_flops` — one network evaluation of the world-model DiT on one sample (M + N
  views); :func:`world_model_evals` — evaluations per sample of one sampler call.
"""

from __future__ import annotations

import math
from typing import Sequence


def _vision_flops(v, grid_thw: Sequence[int]) -> float:
    t, h, w = (int(x) for x in grid_thw)
    m, d, p = v.spatial_merge_size, v.hidden_size, t * h * w
    ws = v.window_units
    gh, gw = h // m, w // m

    def windows(n, size):  # sizes of the window chunks along one side, in merged units
        return [min(size, n - s) for s in range(0, n, size)]

    window_sq = sum((rh * rw * m * m) ** 2 for rh in windows(gh, ws) for rw in windows(gw, ws))
    frame_sq = (h * w) ** 2
    linear = 2 * p * d * (3 * d + d + 3 * v.intermediate_size)
    flops = 2.0 * p * v.patch_dim * d
    for block in range(v.depth):
        seg_sq = frame_sq if block in v.fullatt_block_indexes else window_sq
        flops += linear + 4.0 * d * t * seg_sq
    merged = p // (m * m)
    flops += 2.0 * merged * (m * m * d) ** 2 + 2.0 * merged * (m * m * d) * v.out_hidden_size
    return flops


def _text_token_flops(t) -> float:
    """Linear-layer FLOPs of one token through every decoder layer (no attention, no LM head)."""
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    per_layer = 2 * t.hidden_size * (q + 2 * kv) + 2 * q * t.hidden_size \
        + 3 * 2 * t.hidden_size * t.intermediate_size
    return float(per_layer * t.num_hidden_layers)


def vlm_flops(config, prompt_tokens: int, generated_tokens: int,
              image_grids: Sequence[Sequence[int]] = ()) -> dict:
    """``{"vision", "prefill", "decode", "total"}`` FLOPs of one question (``config``: a
    ``VLMConfig``; ``image_grids``: the (t, h, w) patch grid of every image of the prompt)."""
    if prompt_tokens < 1 or generated_tokens < 0:
        raise ValueError(f"need prompt_tokens >= 1 and generated_tokens >= 0, got "
                         f"{prompt_tokens}, {generated_tokens}")
    t = config.text
    attn = 4.0 * t.num_attention_heads * t.head_dim * t.num_hidden_layers  # per (query, key)
    head = 2.0 * t.hidden_size * t.vocab_size
    token = _text_token_flops(t)
    L, G = int(prompt_tokens), int(generated_tokens)
    vision = sum(_vision_flops(config.vision, g) for g in image_grids)
    prefill = L * token + attn * L * (L + 1) / 2 + (head if G else 0.0)
    fed = max(G - 1, 0)  # tokens fed back at positions L .. L + G - 2
    decode = fed * (token + head) + attn * sum(L + k + 1 for k in range(fed))
    return {"vision": vision, "prefill": prefill, "decode": decode,
            "total": vision + prefill + decode}


def world_model_flops(config) -> float:
    """FLOPs of one network evaluation on one sample (``config``: a ``WorldModelConfig``)."""
    c = config
    L, d, pp = c.tokens_per_view, c.width, c.patch_size ** 2
    T, targets = c.num_views * L, c.num_target * L
    flops = 2.0 * T * pp * 9 * d  # patch embedding of rgb + rays
    if c.self_condition:
        flops += 2.0 * targets * pp * 3 * d
    flops += 2.0 * c.time_freq_dim * d + 2.0 * d * d  # time embedding
    per_block = (2.0 * d * 6 * d + 4 * 2.0 * T * d * d + 4.0 * T * T * d
                 + 2 * 2.0 * T * d * c.mlp_dim)
    flops += c.depth * per_block
    flops += 2.0 * d * 2 * d + 2.0 * targets * d * pp * 3  # final modulation and projection
    return flops


def world_model_evals(config, steps: int, method: str = "euler", cfg: float = 1.0) -> int:
    """Network evaluations per sample of one sampler call (``sampler.sample``): Euler ``steps``,
    Heun ``2 * steps - 1``, the regression twin 1; classifier-free guidance (cfg != 1) doubles
    them (both branches run every step)."""
    if config.prediction == "regression":
        return 1
    per = int(steps) if method == "euler" else 2 * int(steps) - 1
    return per * (2 if float(cfg) != 1.0 else 1)


def imagine_cost(config, num_views: int, steps: int, method: str = "euler",
                 cfg: float = 1.0) -> dict:
    """``{"evals", "flops"}`` of one ``imagine`` call for ``num_views`` target views: the views are
    sampled ``num_target`` per sample, ``ceil(num_views / num_target)`` samples."""
    samples = math.ceil(int(num_views) / config.num_target)
    evals = samples * world_model_evals(config, steps, method, cfg)
    return {"evals": evals, "flops": evals * world_model_flops(config)}
