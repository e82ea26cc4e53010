"""ODE samplers for the world model: Euler and Heun on the rectified flow, with CFG; jitted.

The flow runs from pure noise at t = 1 to the clean target at t = 0 on a uniform grid of ``steps``
intervals: ``dx/dt = v(x, t)`` with ``v = (x - x0_hat) / t`` for an x0-predicting model (x0_hat is
clipped to [-1, 1], which keeps tiny pixel-space models in range) or the network output for a
velocity model. Heun (2nd order) uses Euler on the last interval (t -> 0), so it costs
``2 * steps - 1`` network evaluations; Euler costs ``steps``.

Classifier-free guidance: ``out = out_uncond + cfg_scale * (out_cond - out_uncond)`` where the
unconditional branch drops the source images (``source_keep = 0``); ``cfg_scale = 1`` skips it.
A ``"regression"`` model is evaluated once (zero target slot at t = 1) and ignores steps/CFG/key.
A self-conditioned model (``config.self_condition``) gets the guided, clipped x0 of the previous
network evaluation as its ``self_cond`` input (zeros at the first), in both CFG branches.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

METHODS = ("euler", "heun")


def _denoise(model, source, source_rays, x, target_rays, t, cfg_scale: float, estimate):
    """Guided network output turned into ``(velocity, x0_hat)``; ``t`` is a scalar in (0, 1].

    ``estimate`` (B, N, H, W, 3): the previous x0 (the ``self_cond`` input of a self-conditioned
    model; unused otherwise)."""
    b = x.shape[0]
    tb = jnp.full((b,), t, jnp.float32)
    sc = estimate if model.config.self_condition else None
    if cfg_scale == 1.0:
        out = model(source, source_rays, x, target_rays, tb, self_cond=sc)
    else:
        keep = jnp.concatenate([jnp.ones((b,)), jnp.zeros((b,))])
        both = model(*(jnp.concatenate([a, a]) for a in (source, source_rays, x, target_rays)),
                     jnp.concatenate([tb, tb]), source_keep=keep,
                     self_cond=None if sc is None else jnp.concatenate([sc, sc]))
        out = both[b:] + cfg_scale * (both[:b] - both[b:])
    if model.config.prediction == "x0":
        x0 = jnp.clip(out, -1.0, 1.0)
        return (x - x0) / t, x0
    return out, jnp.clip(x - t * out, -1.0, 1.0)


@functools.partial(nnx.jit, static_argnames=("steps", "method", "cfg_scale"))
def _sample_flow(model, source, source_rays, target_rays, key, *, steps, method, cfg_scale):
    shape = target_rays.shape[:-1] + (3,)
    x = jax.random.normal(key, shape, jnp.float32)
    times = jnp.linspace(1.0, 0.0, steps + 1)

    def v_at(x, t, estimate):
        return _denoise(model, source, source_rays, x, target_rays, t, cfg_scale, estimate)

    def heun_step(i, carry):
        x, estimate = carry
        t, t_next = times[i], times[i + 1]
        v1, estimate = v_at(x, t, estimate)
        x_euler = x + (t_next - t) * v1
        v2, estimate = v_at(x_euler, t_next, estimate)
        return x + (t_next - t) * 0.5 * (v1 + v2), estimate

    def euler_step(i, carry):
        x, estimate = carry
        v, estimate = v_at(x, times[i], estimate)
        return x + (times[i + 1] - times[i]) * v, estimate

    carry = (x, jnp.zeros_like(x))
    if method == "heun":
        carry = jax.lax.fori_loop(0, steps - 1, heun_step, carry)
        carry = euler_step(steps - 1, carry)
    else:
        carry = jax.lax.fori_loop(0, steps, euler_step, carry)
    return jnp.clip(carry[0], -1.0, 1.0)


@nnx.jit
def _predict_regression(model, source, source_rays, target_rays):
    b = source.shape[0]
    zeros = jnp.zeros(target_rays.shape[:-1] + (3,), jnp.float32)
    return jnp.clip(model(source, source_rays, zeros, target_rays, jnp.ones((b,), jnp.float32)),
                    -1.0, 1.0)


def sample(model, source, source_rays, target_rays, *, key, steps: int = 25,
           method: str = "euler", cfg_scale: float = 1.0):
    """Sample target views (B, N, H, W, 3) in [-1, 1].

    ``source`` (B, M, H, W, 3) in [-1, 1]; ``source_rays`` (B, M, H, W, 6); ``target_rays``
    (B, N, H, W, 6) (Plücker maps in the first source camera's frame); ``key`` a jax PRNG key (the
    initial noise; same key -> same samples). ``steps`` >= 1, ``method`` in ('euler', 'heun'),
    ``cfg_scale`` >= 0 (1 = no guidance).
    """
    if model.config.prediction == "regression":
        return _predict_regression(model, jnp.asarray(source, jnp.float32),
                                   jnp.asarray(source_rays, jnp.float32),
                                   jnp.asarray(target_rays, jnp.float32))
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not cfg_scale >= 0.0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale!r}")
    return _sample_flow(model, jnp.asarray(source, jnp.float32),
                        jnp.asarray(source_rays, jnp.float32),
                        jnp.asarray(target_rays, jnp.float32), key,
                        steps=steps, method=method, cfg_scale=float(cfg_scale))
