"""Qwen2.5-VL vision tower: patch embedding, windowed ViT with 2-D rotary, patch merger.

Input is Hugging Face's packed layout: ``pixel_values (N, C*t*p*p)``, the patches of all images
concatenated, each image's patches in "merge-block-major" order (the ``m x m`` patches that merge
into one output token are consecutive), rows flattened in (C, t, p, p) order; ``grid_thw
(num_images, 3)`` gives each image's (frames, patch rows, patch cols).

Everything is computed from arrays, so the tower is jittable with a traced ``grid_thw`` (only
``N`` and ``num_images`` are static). Rows of ``pixel_values`` beyond ``sum(t*h*w)`` are padding:
they form their own attention segment and their outputs are to be ignored.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax.models.vlm import layers, rope
from w2v_jax.models.vlm.config import VisionConfig, VLMConfig


class VisionLayout(NamedTuple):
    """Index arrays of the window attention, all in *window order* unless stated.

    window_index: ``(U,)`` int, merge unit (output token) at each window-order slot; merge units
        are grouped by image, frame, window (row-major), then row-major inside the window (HF's
        ``get_vision_window_index``).
    positions_hw: ``(N, 2)`` int, (row, col) of every patch in its image's patch grid.
    window_segments: ``(N,)`` int, window id of every patch (window-attention blocks).
    frame_segments: ``(N,)`` int, frame id of every patch (full-attention blocks).
    """

    window_index: jax.Array
    positions_hw: jax.Array
    window_segments: jax.Array
    frame_segments: jax.Array


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
    return jnp.concatenate([jnp.zeros((1,), x.dtype), jnp.cumsum(x)[:-1]])


def vision_layout(grid_thw: jax.Array, num_patches: int, cfg: VisionConfig) -> VisionLayout:
    """Window order, rotary positions and attention segments for packed patches.

    grid_thw: ``(num_images, 3)`` int (t, h, w) in patches; h and w must be multiples of
    ``spatial_merge_size``. num_patches: static ``N`` (rows of pixel_values), a multiple of
    ``spatial_merge_size ** 2``; patches past ``sum(t*h*w)`` are padding (one extra segment).
    """
    m, unit = cfg.spatial_merge_size, cfg.merge_unit
    if num_patches % unit:
        raise ValueError(
            f"pixel_values rows={num_patches}: must be a multiple of {unit} (merge unit)"
        )
    grid = jnp.asarray(grid_thw, jnp.int32)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw shape {grid.shape}: expected (num_images, 3)")
    num_units = num_patches // unit
    t, gh, gw = grid[:, 0], grid[:, 1] // m, grid[:, 2] // m
    ws = cfg.window_units
    nwh, nww = (gh + ws - 1) // ws, (gw + ws - 1) // ws
    units_per_image = t * gh * gw
    unit_start = _exclusive_cumsum(units_per_image)
    window_start = _exclusive_cumsum(t * nwh * nww)
    frame_start = _exclusive_cumsum(t)

    u = jnp.arange(num_units, dtype=jnp.int32)
    image = jnp.searchsorted(jnp.cumsum(units_per_image), u, side="right").astype(jnp.int32)
    is_pad = image >= grid.shape[0]
    img = jnp.minimum(image, grid.shape[0] - 1)
    local = u - unit_start[img]
    per_frame = jnp.maximum(gh[img] * gw[img], 1)
    frame = local // per_frame
    row = (local % per_frame) // jnp.maximum(gw[img], 1)
    col = (local % per_frame) % jnp.maximum(gw[img], 1)
    window = window_start[img] + frame * nwh[img] * nww[img] + (row // ws) * nww[img] + col // ws
    window = jnp.where(is_pad, jnp.sum(t * nwh * nww), window)
    frame_id = jnp.where(is_pad, jnp.sum(t), frame_start[img] + frame)

    window_index = jnp.argsort(window, stable=True).astype(jnp.int32)
    k = jnp.arange(unit, dtype=jnp.int32)
    pos_h = (row[:, None] * m + k[None, :] // m).reshape(-1)
    pos_w = (col[:, None] * m + k[None, :] % m).reshape(-1)
    return VisionLayout(
        window_index=window_index,
        positions_hw=jnp.stack([pos_h, pos_w], axis=-1),
        window_segments=jnp.repeat(window[window_index], unit),
        frame_segments=jnp.repeat(frame_id[window_index], unit),
    )


def to_window_order(x: jax.Array, window_index: jax.Array, unit: int) -> jax.Array:
    """Reorders patch rows ``(N, ...)`` by merge unit into window order."""
    grouped = x.reshape(x.shape[0] // unit, unit, *x.shape[1:])
    return grouped[window_index].reshape(x.shape)


class VisionAttention(nnx.Module):
    """Multi-head self-attention with fused ``qkv`` (bias), 2-D rotary, segment mask."""

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        self.num_heads, self.head_dim = v.num_heads, v.head_dim
        self.qkv = layers.linear(
            cfg, v.hidden_size, 3 * v.hidden_size, ("embed", "heads"), use_bias=True, rngs=rngs
        )
        self.proj = layers.linear(
            cfg, v.hidden_size, v.hidden_size, ("heads", "embed"), use_bias=True, rngs=rngs
        )

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        """x ``(N, D)``; cos, sin ``(N, head_dim)`` float32; mask ``(N, N)`` bool."""
        n = x.shape[0]
        qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        q = rope.apply_rotary(q.astype(jnp.float32), cos, sin).astype(x.dtype)
        k = rope.apply_rotary(k.astype(jnp.float32), cos, sin).astype(x.dtype)
        out = layers.attention(q, k, v, mask, self.head_dim**-0.5)
        return self.proj(out.reshape(n, -1))


class VisionBlock(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        eps = cfg.vision.rms_norm_eps
        self.norm1 = layers.RMSNorm(cfg.vision.hidden_size, eps, cfg)
        self.norm2 = layers.RMSNorm(cfg.vision.hidden_size, eps, cfg)
        self.attn = VisionAttention(cfg, rngs=rngs)
        v = cfg.vision  # gated MLP with biases
        self.mlp = layers.GatedMLP(cfg, v.hidden_size, v.intermediate_size, v.hidden_act,
                                   use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """RMSNorm per patch, concat ``m*m`` patches, ``fc2(gelu(fc1(.)))`` (HF ``mlp.0/mlp.2``)."""

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        v = cfg.vision
        self.merged = v.hidden_size * v.merge_unit
        self.ln_q = layers.RMSNorm(v.hidden_size, v.rms_norm_eps, cfg)
        self.fc1 = layers.linear(
            cfg, self.merged, self.merged, ("embed", "mlp"), use_bias=True, rngs=rngs
        )
        self.fc2 = layers.linear(
            cfg, self.merged, v.out_hidden_size, ("mlp", "embed"), use_bias=True, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x ``(N, D)`` -> ``(N / m^2, out_hidden_size)``."""
        x = self.ln_q(x).reshape(-1, self.merged)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTransformer(nnx.Module):
    """The whole tower: ``pixel_values (N, C*t*p*p), grid_thw -> (N / m^2, out_hidden_size)``.

    Output rows are in the original (image, frame, row, col) order of the merged tokens, i.e.
    the order of the ``<|image_pad|>`` tokens of the prompt.
    """

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg.vision
        self.remat = cfg.remat
        self.patch_embed = layers.linear(
            cfg,
            cfg.vision.patch_dim,
            cfg.vision.hidden_size,
            ("patch", "embed"),
            use_bias=False,
            rngs=rngs,
        )
        self.blocks = nnx.List([VisionBlock(cfg, rngs=rngs) for _ in range(cfg.vision.depth)])
        self.merger = PatchMerger(cfg, rngs=rngs)

    def __call__(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        v = self.cfg
        if pixel_values.ndim != 2 or pixel_values.shape[1] != v.patch_dim:
            raise ValueError(
                f"pixel_values shape {pixel_values.shape}: expected (num_patches, {v.patch_dim}) "
                f"= (C*t*p*p) rows"
            )
        layout = vision_layout(grid_thw, pixel_values.shape[0], v)
        x = self.patch_embed(pixel_values)
        x = to_window_order(x, layout.window_index, v.merge_unit)
        positions = to_window_order(layout.positions_hw, layout.window_index, v.merge_unit)
        cos, sin = rope.vision_cos_sin(positions, v.head_dim, v.rope_theta)
        window_mask = layout.window_segments[:, None] == layout.window_segments[None, :]
        frame_mask = layout.frame_segments[:, None] == layout.frame_segments[None, :]

        def run_block(block, x, cos, sin, mask):
            return block(x, cos, sin, mask)

        run_block = layers.maybe_remat(run_block, self.remat)
        for i, block in enumerate(self.blocks):
            mask = frame_mask if i in v.fullatt_block_indexes else window_mask
            x = run_block(block, x, cos, sin, mask)
        merged = self.merger(x)  # (U, out) in window order
        return jnp.zeros_like(merged).at[layout.window_index].set(merged)
