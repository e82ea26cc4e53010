"""Building blocks shared by the vision tower and the text decoder.

Linear layers are plain ``nnx.Linear`` (kernel ``(in, out)``) with logical axis names on their
parameters, so adapters can wrap them by module path and the mesh rules can shard them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax.models.vlm.config import VLMConfig

INIT_STD = 0.02  # normal init of kernels and embeddings (as Hugging Face's initializer_range)


def linear(
    cfg: VLMConfig,
    in_features: int,
    out_features: int,
    names: tuple[str, str],
    *,
    use_bias: bool,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """``nnx.Linear`` whose kernel carries logical ``names`` and bias ``names[1:]``."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype,
        kernel_init=nnx.with_partitioning(nnx.initializers.normal(INIT_STD), names),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), names[1:]),
        rngs=rngs,
    )


class GatedMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))``: the decoder's SwiGLU (no biases) and the vision tower's
    gated MLP (with biases). ``x`` (..., hidden) -> (..., hidden)."""

    def __init__(self, cfg: VLMConfig, hidden: int, intermediate: int, hidden_act: str,
                 use_bias: bool, *, rngs: nnx.Rngs):
        self.hidden_act = hidden_act
        self.gate_proj = linear(cfg, hidden, intermediate, ("embed", "mlp"), use_bias=use_bias,
                                rngs=rngs)
        self.up_proj = linear(cfg, hidden, intermediate, ("embed", "mlp"), use_bias=use_bias,
                              rngs=rngs)
        self.down_proj = linear(cfg, intermediate, hidden, ("mlp", "embed"), use_bias=use_bias,
                                rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation(self.hidden_act)
        return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))


class RMSNorm(nnx.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``; normalised in float32, then cast back (HF order)."""

    def __init__(self, dim: int, eps: float, cfg: VLMConfig):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), cfg.params_dtype), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        in_dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        weight = self.weight[...]
        out_dtype = jnp.promote_types(in_dtype, weight.dtype)
        return weight.astype(out_dtype) * x32.astype(in_dtype).astype(out_dtype)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Hugging Face ``hidden_act`` name -> function."""
    if name == "silu":
        return jax.nn.silu
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "gelu_pytorch_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f"hidden_act={name!r}: allowed silu, gelu, gelu_pytorch_tanh, quick_gelu")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    scale: float,
    kv_head_major: bool = False,
) -> jax.Array:
    """Masked softmax attention with grouped key/value heads.

    q: ``(..., Lq, H, D)``; k, v: ``(..., Lk, Hkv, D)`` (or ``(..., Hkv, Lk, D)`` with
    ``kv_head_major``, the KV-cache layout) with ``H % Hkv == 0`` (query head ``h`` reads key
    head ``h // (H // Hkv)``, as HF's ``repeat_kv``); mask: bool broadcastable to
    ``(..., Lq, Lk)`` (True = attend). Softmax runs in float32. Returns ``(..., Lq, H, D)``.
    """
    *lead, lq, h, d = q.shape
    hkv = k.shape[-3] if kv_head_major else k.shape[-2]
    groups = h // hkv
    qg = q.reshape(*lead, lq, hkv, groups, d)
    kv_spec = "...hkd" if kv_head_major else "...khd"
    scores = jnp.einsum(f"...qhgd,{kv_spec}->...hgqk", qg, k) * jnp.asarray(scale, q.dtype)
    scores = scores.astype(jnp.float32)
    mask = mask[..., None, None, :, :]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"...hgqk,{kv_spec}->...qhgd", probs, v)
    return out.reshape(*lead, lq, h, d)


def maybe_remat(fn: Callable, enabled: bool, static_argnums: Sequence[int] = ()) -> Callable:
    """``nnx.remat(fn)`` when ``enabled`` (recompute activations in the backward pass)."""
    return nnx.remat(fn, static_argnums=tuple(static_argnums)) if enabled else fn
