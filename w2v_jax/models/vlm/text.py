"""Qwen2 text decoder of Qwen2.5-VL: GQA attention, RMSNorm, SwiGLU, sectioned M-RoPE, KV cache.

KV cache: a list with one ``{"k": (B, Hkv, S, D), "v": (B, Hkv, S, D)}`` dict per layer
(``init_cache``; head-major, so a decode step reads it without a transpose). A call with
``cache`` writes the new keys/values at slots ``[cache_index, cache_index + L)`` and attends over
all ``S`` slots, so prefill and decode are the same function with fixed shapes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax.models.vlm import layers, rope
from w2v_jax.sharding import with_logical_constraint
from w2v_jax.models.vlm.config import VLMConfig

KVCache = list[dict[str, jax.Array]]


class TextAttention(nnx.Module):
    """Grouped-query attention: q/k/v projections with bias, o_proj without."""

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        self.num_heads, self.num_kv_heads, self.head_dim = (
            t.num_attention_heads,
            t.num_key_value_heads,
            t.head_dim,
        )
        d, q_out, kv_out = (
            t.hidden_size,
            t.num_attention_heads * t.head_dim,
            t.num_key_value_heads * t.head_dim,
        )
        self.q_proj = layers.linear(cfg, d, q_out, ("embed", "heads"), use_bias=True, rngs=rngs)
        self.k_proj = layers.linear(cfg, d, kv_out, ("embed", "kv_heads"), use_bias=True, rngs=rngs)
        self.v_proj = layers.linear(cfg, d, kv_out, ("embed", "kv_heads"), use_bias=True, rngs=rngs)
        self.o_proj = layers.linear(cfg, q_out, d, ("heads", "embed"), use_bias=False, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache: dict[str, jax.Array] | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        """x ``(B, L, D)``; cos, sin ``(B, L, head_dim)``; mask ``(B, L, L or S)`` bool."""
        b, length, _ = x.shape
        q = self.q_proj(x).reshape(b, length, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, length, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, length, self.num_kv_heads, self.head_dim)
        q = rope.apply_rotary(q, cos.astype(q.dtype), sin.astype(q.dtype))
        k = rope.apply_rotary(k, cos.astype(k.dtype), sin.astype(k.dtype))
        if cache is None:
            out = layers.attention(q, k, v, mask, self.head_dim**-0.5)
        else:  # head-major cache (B, Hkv, S, D)
            start = (0, 0, cache_index, 0)
            new = {}
            for name, x in (("k", k), ("v", v)):
                x = jnp.swapaxes(x, 1, 2).astype(cache[name].dtype)
                new[name] = jax.lax.dynamic_update_slice(cache[name], x, start)
            cache = new
            out = layers.attention(q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype),
                                   mask, self.head_dim**-0.5, kv_head_major=True)
        return self.o_proj(out.reshape(b, length, -1)), cache


class DecoderLayer(nnx.Module):
    """Pre-norm decoder layer: input_layernorm -> attention, post_attention_layernorm -> MLP."""

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        eps = cfg.text.rms_norm_eps
        self.input_layernorm = layers.RMSNorm(cfg.text.hidden_size, eps, cfg)
        self.self_attn = TextAttention(cfg, rngs=rngs)
        self.post_attention_layernorm = layers.RMSNorm(cfg.text.hidden_size, eps, cfg)
        t = cfg.text  # SwiGLU without biases
        self.mlp = layers.GatedMLP(cfg, t.hidden_size, t.intermediate_size, t.hidden_act,
                                   use_bias=False, rngs=rngs)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class TextModel(nnx.Module):
    """Token embedding, decoder layers and final norm (HF ``Qwen2_5_VLTextModel``)."""

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        self.cfg = t
        self.remat = cfg.remat
        self.embed_tokens = nnx.Embed(
            t.vocab_size,
            t.hidden_size,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            embedding_init=nnx.with_partitioning(
                nnx.initializers.normal(layers.INIT_STD), ("vocab", "embed")
            ),
            rngs=rngs,
        )
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(t.num_hidden_layers)])
        self.norm = layers.RMSNorm(t.hidden_size, t.rms_norm_eps, cfg)

    def init_cache(self, batch: int, max_length: int, dtype: Any = None) -> KVCache:
        """Zero KV cache with ``max_length`` slots per sequence (default dtype: compute dtype),
        sharded on the batch axes of the mesh when one is set (``sharding.rules_context``)."""
        t = self.cfg
        dtype = self.embed_tokens.dtype if dtype is None else dtype
        shape = (batch, t.num_key_value_heads, max_length, t.head_dim)

        def zeros():
            return with_logical_constraint(jnp.zeros(shape, dtype), ("batch", None, None, None))

        return [{"k": zeros(), "v": zeros()} for _ in range(t.num_hidden_layers)]

    def __call__(
        self,
        inputs_embeds: jax.Array,
        position_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Runs the decoder; returns the final-normed hidden states ``(B, L, D)`` and the cache.

        inputs_embeds: ``(B, L, D)``. position_ids: ``(3, B, L)`` M-RoPE positions.
        attention_mask: ``(B, L)`` without cache, ``(B, S)`` over the cache slots with a cache
        (1 = real token, 0 = padding); None = all real. Without a cache, query ``i`` attends to
        keys ``j <= i``; with a cache, query ``i`` sits at slot ``cache_index + i`` and attends to
        slots ``j <= cache_index + i``.
        """
        b, length, _ = inputs_embeds.shape
        if position_ids.shape != (3, b, length):
            raise ValueError(
                f"position_ids shape {position_ids.shape}: expected (3, {b}, {length})"
            )
        t = self.cfg
        cos, sin = rope.mrope_cos_sin(position_ids, t.head_dim, t.rope_theta, t.mrope_section)
        if cache is None:
            if cache_index is not None:
                raise ValueError("cache_index given without cache")
            num_keys = length
            query_pos = jnp.arange(length)
        else:
            if cache_index is None:
                raise ValueError("cache given without cache_index (the first slot to write)")
            if len(cache) != t.num_hidden_layers:
                raise ValueError(
                    f"cache has {len(cache)} layers; the model has {t.num_hidden_layers}"
                )
            num_keys = cache[0]["k"].shape[2]
            query_pos = cache_index + jnp.arange(length)
        mask = query_pos[:, None] >= jnp.arange(num_keys)[None, :]  # (L, keys)
        mask = jnp.broadcast_to(mask, (b, length, num_keys))
        if attention_mask is not None:
            if attention_mask.shape != (b, num_keys):
                raise ValueError(
                    f"attention_mask shape {attention_mask.shape}: expected ({b}, {num_keys})"
                )
            mask = mask & attention_mask.astype(bool)[:, None, :]

        def run_layer(layer, x, cos, sin, mask):
            return layer(x, cos, sin, mask)[0]

        run_layer_remat = layers.maybe_remat(run_layer, self.remat and cache is None)
        x = inputs_embeds
        new_cache = None if cache is None else []
        for i, layer in enumerate(self.layers):
            if cache is None:
                x = run_layer_remat(layer, x, cos, sin, mask)
            else:
                x, layer_cache = layer(x, cos, sin, mask, cache[i], cache_index)
                new_cache.append(layer_cache)
        return self.norm(x), new_cache
