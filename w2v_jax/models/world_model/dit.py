"""A camera-conditioned multi-view DiT in Flax NNX (pixel space, joint attention over all views).

Per sample the model sees M source views (clean) and N target views (noisy during flow matching),
each an RGB image in [-1, 1] with its 6-channel Plücker ray map ``(d̂, o × d̂)`` expressed in the
first source camera's OpenCV frame, in metres (never renormalised: "move 1 m" is 1 m everywhere).

    per view:   [rgb (3) ++ rays (6)] -> p x p patches -> linear -> + row/col embedding
                                                                  + role embedding (source | target)
    all views:  (M + N) * (H/p)^2 tokens -> depth x [adaLN-Zero(t) self-attention + MLP]
    targets:    adaLN-modulated norm -> linear -> patches -> (N, H, W, 3)

With ``config.self_condition`` each target view's previous clean-image estimate (N, H, W, 3) is
patchified, projected by its own zero-initialised linear layer and added to that view's tokens.

What the output means (clean image or velocity) is ``config.prediction``; the sampler and the losses
read it from the config. Every parameter carries logical axis names (``w2v_jax.sharding``), so
build it inside ``rules_context(mesh)`` (or with ``sharding.create_sharded`` /
``create_unsharded``).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax.models.world_model.config import WorldModelConfig

RAY_CHANNELS = 6
RGB_CHANNELS = 3
SOURCE_ROLE, TARGET_ROLE = 0, 1

_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_normal = nnx.initializers.normal(0.02)


def _linear(din, dout, names, rngs, *, init=_xavier, dtype=jnp.float32):
    """nnx.Linear whose kernel (din, dout) carries ``names`` and whose bias carries ``names[1]``."""
    return nnx.Linear(
        din, dout, dtype=dtype,
        kernel_init=nnx.with_partitioning(init, names),
        bias_init=nnx.with_partitioning(_zeros, (names[1],)),
        rngs=rngs,
    )


def timestep_features(t, dim: int):
    """Sinusoidal features (B, dim) of flow times ``t`` (B,) in [0, 1] (times 1000, as in DiT)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (t.astype(jnp.float32) * 1000.0)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def patchify(x, p: int):
    """(B, V, H, W, C) -> (B, V, (H/p)*(W/p), p*p*C), patches in row-major order."""
    b, v, h, w, c = x.shape
    x = x.reshape(b, v, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, v, (h // p) * (w // p), p * p * c)


def unpatchify(x, p: int, h: int, w: int):
    """(B, V, (H/p)*(W/p), p*p*C) -> (B, V, H, W, C); inverse of :func:`patchify`."""
    b, v, _, d = x.shape
    c = d // (p * p)
    x = x.reshape(b, v, h // p, w // p, p, p, c)
    x = x.transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, v, h, w, c)


def modulate(x, shift, scale):
    """adaLN: ``x * (1 + scale) + shift``, per-sample (B, D) shift/scale on tokens (B, T, D)."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class RMSNorm(nnx.Module):
    """RMS normalisation over the last axis with a learned scale (used on queries and keys)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        del rngs
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=("norm",))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
        return (y * self.scale[...]).astype(x.dtype)


class TimeEmbedding(nnx.Module):
    """t (B,) -> (B, D): sinusoidal features -> Linear -> SiLU -> Linear."""

    def __init__(self, config: WorldModelConfig, *, rngs: nnx.Rngs):
        self.freq_dim = config.time_freq_dim
        self.fc1 = _linear(config.time_freq_dim, config.width, ("time", "mlp"), rngs, init=_normal)
        self.fc2 = _linear(config.width, config.width, ("mlp", "embed"), rngs, init=_normal)

    def __call__(self, t):
        return self.fc2(nnx.silu(self.fc1(timestep_features(t, self.freq_dim))))


class Attention(nnx.Module):
    """Multi-head self-attention over all tokens of all views, RMS-normalised queries and keys."""

    def __init__(self, config: WorldModelConfig, *, rngs: nnx.Rngs):
        d, dt = config.width, jnp.dtype(config.dtype)
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.q = _linear(d, d, ("embed", "heads"), rngs, dtype=dt)
        self.k = _linear(d, d, ("embed", "kv_heads"), rngs, dtype=dt)
        self.v = _linear(d, d, ("embed", "kv_heads"), rngs, dtype=dt)
        self.o = _linear(d, d, ("heads", "embed"), rngs, dtype=dt)
        self.q_norm = RMSNorm(config.head_dim, rngs=rngs)
        self.k_norm = RMSNorm(config.head_dim, rngs=rngs)

    def __call__(self, x):
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, self.head_dim)  # noqa: E731
        q, k, v = self.q_norm(split(self.q(x))), self.k_norm(split(self.k(x))), split(self.v(x))
        y = jax.nn.dot_product_attention(q, k, v)
        return self.o(y.reshape(b, t, self.num_heads * self.head_dim))


class DiTBlock(nnx.Module):
    """adaLN-Zero transformer block: the modulation is zero-initialised, so each block starts as
    the identity."""

    def __init__(self, config: WorldModelConfig, *, rngs: nnx.Rngs):
        d, dt = config.width, jnp.dtype(config.dtype)
        self.norm1 = nnx.LayerNorm(d, use_scale=False, use_bias=False, epsilon=1e-6, dtype=dt,
                                   rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, use_scale=False, use_bias=False, epsilon=1e-6, dtype=dt,
                                   rngs=rngs)
        self.mlp_in = _linear(d, config.mlp_dim, ("embed", "mlp"), rngs, dtype=dt)
        self.mlp_out = _linear(config.mlp_dim, d, ("mlp", "embed"), rngs, dtype=dt)
        self.modulation = _linear(d, 6 * d, ("embed", "mlp"), rngs, init=_zeros)

    def __call__(self, x, c):
        mod = self.modulation(nnx.silu(c)).astype(x.dtype)
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        h = modulate(self.norm2(x), shift2, scale2)
        x = x + gate2[:, None, :] * self.mlp_out(nnx.gelu(self.mlp_in(h), approximate=True))
        return x


class WorldModel(nnx.Module):
    """The multi-view DiT. See the module docstring for the data flow.

    Call with

    - ``source``  (B, M, H, W, 3) clean source views in [-1, 1];
    - ``source_rays`` (B, M, H, W, 6) their Plücker maps (first source: identity rays);
    - ``target``  (B, N, H, W, 3) noisy target views ``x_t``;
    - ``target_rays`` (B, N, H, W, 6);
    - ``t`` (B,) flow time in [0, 1] (0 = clean, 1 = pure noise);
    - ``source_keep`` optional (B,) in {0, 1}: 0 drops the source images (pixels zeroed and a
      learned null embedding added) — the unconditional branch of classifier-free guidance. The
      rays always stay.
    - ``self_cond`` optional (B, N, H, W, 3) in [-1, 1], only with ``config.self_condition``: the
      model's previous clean-image estimate of each target (None or zeros = no estimate).

    Returns (B, N, H, W, 3) float32: the clean-image or velocity prediction (``config.prediction``).
    """

    def __init__(self, config: WorldModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, dt = config.width, jnp.dtype(config.dtype)
        in_dim = config.patch_size ** 2 * (RGB_CHANNELS + RAY_CHANNELS)
        out_dim = config.patch_size ** 2 * RGB_CHANNELS
        self.patch_embed = _linear(in_dim, d, ("patch", "embed"), rngs, dtype=dt)
        if config.self_condition:
            self.self_cond_embed = _linear(out_dim, d, ("patch", "embed"), rngs, init=_zeros,
                                           dtype=dt)
        self.row_embed = nnx.Param(_normal(rngs.params(), (config.grid, d)),
                                   out_sharding=("length", "embed"))
        self.col_embed = nnx.Param(_normal(rngs.params(), (config.grid, d)),
                                   out_sharding=("length", "embed"))
        self.role_embed = nnx.Param(_normal(rngs.params(), (2, d)), out_sharding=("views", "embed"))
        self.null_source = nnx.Param(_normal(rngs.params(), (d,)), out_sharding=("embed",))
        self.time_embed = TimeEmbedding(config, rngs=rngs)
        self.blocks = nnx.List([DiTBlock(config, rngs=rngs) for _ in range(config.depth)])
        self.final_norm = nnx.LayerNorm(d, use_scale=False, use_bias=False, epsilon=1e-6, dtype=dt,
                                        rngs=rngs)
        self.final_modulation = _linear(d, 2 * d, ("embed", "mlp"), rngs, init=_zeros)
        self.final = _linear(d, out_dim, ("embed", "patch"), rngs, init=_zeros, dtype=dt)

    def _check(self, name, x, views, channels):
        cfg = self.config
        want = (views, cfg.image_size, cfg.image_size, channels)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"WorldModel input {name} must have shape (B, {', '.join(map(str, want))}), "
                f"got {tuple(x.shape)}")

    def __call__(self, source, source_rays, target, target_rays, t, source_keep=None,
                 self_cond=None):
        cfg = self.config
        m, n = cfg.num_source, cfg.num_target
        self._check("source", source, m, RGB_CHANNELS)
        self._check("source_rays", source_rays, m, RAY_CHANNELS)
        self._check("target", target, n, RGB_CHANNELS)
        self._check("target_rays", target_rays, n, RAY_CHANNELS)
        if self_cond is not None:
            if not cfg.self_condition:
                raise ValueError("WorldModel got self_cond but config.self_condition is False")
            self._check("self_cond", self_cond, n, RGB_CHANNELS)
        b = source.shape[0]
        if t.shape != (b,):
            raise ValueError(f"WorldModel input t must have shape ({b},), got {tuple(t.shape)}")
        dt = jnp.dtype(cfg.dtype)
        keep = (jnp.ones((b,), jnp.float32) if source_keep is None
                else source_keep.astype(jnp.float32))
        source = source * keep[:, None, None, None, None]
        views = jnp.concatenate(
            [jnp.concatenate([source, source_rays], -1),
             jnp.concatenate([target, target_rays], -1)],
            axis=1,
        ).astype(dt)
        tokens = self.patch_embed(patchify(views, cfg.patch_size))  # (B, M+N, L, D)
        pos = (self.row_embed[...][:, None, :] + self.col_embed[...][None, :, :]).reshape(
            cfg.tokens_per_view, cfg.width)
        roles = jnp.asarray([SOURCE_ROLE] * m + [TARGET_ROLE] * n)
        role = self.role_embed[...][roles]  # (M+N, D)
        null = jnp.zeros((b, m + n, 1, cfg.width), jnp.float32).at[:, :m].set(
            (1.0 - keep)[:, None, None, None] * self.null_source[...])
        tokens = tokens + (pos[None, None] + role[None, :, None, :] + null).astype(dt)
        if cfg.self_condition:
            estimate = (jnp.zeros_like(target) if self_cond is None
                        else jnp.asarray(self_cond, jnp.float32))
            sc = self.self_cond_embed(patchify(estimate.astype(dt), cfg.patch_size))
            tokens = tokens + jnp.concatenate(
                [jnp.zeros((b, m) + sc.shape[2:], sc.dtype), sc], axis=1)
        x = tokens.reshape(b, (m + n) * cfg.tokens_per_view, cfg.width)

        c = self.time_embed(t)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = jnp.split(self.final_modulation(nnx.silu(c)).astype(x.dtype), 2, axis=-1)
        x = modulate(self.final_norm(x), shift, scale)
        x = x.reshape(b, m + n, cfg.tokens_per_view, cfg.width)[:, m:]
        out = self.final(x).astype(jnp.float32)
        return unpatchify(out, cfg.patch_size, cfg.image_size, cfg.image_size)


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves) of a module or abstract module."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
