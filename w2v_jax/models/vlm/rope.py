"""Rotary position embeddings of Qwen2.5-VL: 2-D (vision) and sectioned multimodal M-RoPE (text).

Both use the "rotate half" convention: the head dim is split into two halves that form the
(real, imaginary) parts, and ``cos``/``sin`` tables repeat their ``head_dim // 2`` frequencies
twice. Angles are always computed in float32.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def inv_frequencies(dim: int, theta: float) -> np.ndarray:
    """``1 / theta ** (arange(0, dim, 2) / dim)`` as float32, shape ``(dim // 2,)``."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)


def rotate_half(x: jax.Array) -> jax.Array:
    """``[x1, x2] -> [-x2, x1]`` over the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x (..., L, H, D)`` by ``cos, sin (..., L, D)`` (broadcast over heads H)."""
    return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def vision_cos_sin(
    positions_hw: jax.Array, head_dim: int, theta: float
) -> tuple[jax.Array, jax.Array]:
    """2-D rotary tables for vision patches.

    positions_hw: ``(N, 2)`` int (row, column) of each patch in its image's patch grid.
    Returns ``cos, sin`` of shape ``(N, head_dim)`` float32: the first ``head_dim // 4``
    frequencies rotate by the row, the next ``head_dim // 4`` by the column, then repeated.
    """
    inv_freq = jnp.asarray(inv_frequencies(head_dim // 2, theta))
    pos = positions_hw.astype(jnp.float32)
    freqs = pos[:, :, None] * inv_freq  # (N, 2, head_dim // 4)
    freqs = freqs.reshape(freqs.shape[0], -1)  # (N, head_dim // 2): [h freqs, w freqs]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def mrope_cos_sin(
    position_ids: jax.Array, head_dim: int, theta: float, mrope_section: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
    """Sectioned multimodal rotary tables for the text decoder.

    position_ids: ``(3, B, L)`` int (temporal, height, width) positions.
    The ``head_dim // 2`` frequencies are split into ``mrope_section`` chunks; chunk ``j`` is
    rotated by position axis ``j % 3`` (Qwen2/2.5-VL layout, not Qwen3-VL's interleaved one).
    Returns ``cos, sin`` of shape ``(B, L, head_dim)`` float32.
    """
    if position_ids.ndim != 3 or position_ids.shape[0] != 3:
        raise ValueError(f"position_ids shape {position_ids.shape}: expected (3, batch, length)")
    inv_freq = jnp.asarray(inv_frequencies(head_dim, theta))
    axis_of_freq = np.concatenate([np.full(n, j % 3) for j, n in enumerate(mrope_section)])
    pos = position_ids.astype(jnp.float32)[axis_of_freq]  # (head_dim // 2, B, L)
    freqs = jnp.moveaxis(pos, 0, -1) * inv_freq  # (B, L, head_dim // 2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)
