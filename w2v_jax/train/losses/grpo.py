"""``grpo``: GRPO's clipped surrogate with a k3 KL to a frozen reference (EasyR1's semantics).

Pure functions (numpy or jax inputs), as in tunix's ``algo_core``:

* ``group_advantages(rewards, group_size)``: rows are consecutive groups of ``group_size``
  responses to one prompt; ``A = (r - group mean) / (group std, ddof=1, + eps)``.
* ``grpo_token_loss(logp, old_logp, ref_logp, advantages, mask)`` over ``(B, T)`` response
  tokens -> ``(loss_sum, token_count, aux)``: per token, with ``rho = exp(clamp(logp - old,
  +-20))``, ``L = max(-A rho, -A clamp(rho, 1 - clip_low, 1 + clip_high))`` and for ``A < 0``
  additionally ``min(L, -A clip_dual)``; ``k3 = clamp(e^d - d - 1, -10, 10)`` with ``d =
  clamp(ref - logp, +-20)``; ``loss_sum = sum mask (L + kl_coef k3)``, ``token_count = sum
  mask``. Summing both over micro-batches and dividing gives the global token mean over a
  mini-batch (EasyR1 >= v0.3.1, ``loss_avg_mode="token"``). Defaults are the official run's.
* ``response_logprobs(model, batch)``: per-token log-probs ``(B, T)`` of the response tokens
  under a ``Qwen2_5_VL``, with the images, ``image_grid_thw`` and the 3-D M-RoPE positions; the
  LM head runs at the ``T`` response positions only (never ``[B, L, V]`` logits).

The registered loss ``grpo(model, batch, rng, *, clip_low, clip_high, clip_dual, kl_coef)``
computes ``response_logprobs`` and calls ``grpo_token_loss``. Batch (every array batch-major):

* ``input_ids`` / ``attention_mask`` ``[B, Lp + T]``: the left-padded prompt then the response
  (``pad`` after the stop token, mask 0 there); ``position_ids`` ``[B, 3, Lp + T]``;
* ``pixel_values`` ``[B, P, D]`` + ``image_grid_thw`` ``[B, I, 3]`` (per-example layout, see
  ``losses.sft``), or absent for text-only prompts;
* ``response_mask`` ``[B, T]`` (1 on the generated tokens, the stop token included),
  ``old_logp`` / ``ref_logp`` ``[B, T]`` f32, ``advantages`` ``[B]`` f32.

``aux`` holds per-token sums over the masked tokens (``pg_loss_sum``, ``kl_sum``,
``clip_frac_low_sum``, ``clip_frac_high_sum``, ``clip_frac_dual_sum``, ``ratio_sum``,
``entropy_sum`` = sum of ``-logp``) plus ``ratio_max`` / ``ratio_min``; each ``*_sum`` divided
by ``token_count`` is the token mean (``trainer.report_metrics`` does exactly that). Clip
fractions count the tokens whose objective is the clipped branch: ``low`` = ``A < 0`` and
``rho < 1 - clip_low``, ``high`` = ``A > 0`` and ``rho > 1 + clip_high``, ``dual`` = ``A < 0``
and the dual bound ``-A clip_dual`` is the smaller.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.models.vlm.batch import batch_hidden_states
from w2v_jax.train.losses.registry import register_loss

LOG_RATIO_CLAMP = 20.0  # |logp - old| and |ref - logp| are clamped to this before exp
KL_CLAMP = 10.0  # k3 is clamped to [-10, 10] (EasyR1 hard-codes it)


def group_advantages(rewards: Any, group_size: int, eps: float = 1e-6):
    """``(N,)`` advantages of ``(N,)`` rewards in consecutive groups of ``group_size``.

    ``A_i = (r_i - mean_g) / (std_g + eps)`` with the unbiased (ddof=1) group std, as EasyR1's
    ``compute_grpo_outcome_advantage``; a constant group gives 0. numpy in -> numpy out, jax in
    -> jax out. Raises ValueError for ``group_size < 2`` or ``N`` not a multiple of it.
    """
    if not isinstance(group_size, (int, np.integer)) or group_size < 2:
        raise ValueError(f"group_size={group_size!r}: must be an int >= 2 (ddof=1 group std)")
    xp = jnp if isinstance(rewards, jax.Array) else np
    r = xp.asarray(rewards, dtype=xp.float32).reshape(-1)
    if r.shape[0] % group_size:
        raise ValueError(f"{r.shape[0]} rewards are not a whole number of groups of {group_size}")
    g = r.reshape(-1, group_size)
    mean = g.mean(axis=1, keepdims=True)
    std = xp.sqrt(((g - mean) ** 2).sum(axis=1, keepdims=True) / (group_size - 1))
    return ((g - mean) / (std + eps)).reshape(-1)


def grpo_token_loss(logp, old_logp, ref_logp, advantages, mask, *, clip_low: float = 0.2,
                    clip_high: float = 0.3, clip_dual: float = 3.0, kl_coef: float = 0.01):
    """``(loss_sum, token_count, aux)`` of GRPO over ``(B, T)`` response tokens (module doc).

    ``advantages``: ``(B,)`` (one per response) or ``(B, T)``; ``mask``: ``(B, T)`` 0/1.
    All arithmetic is float32.
    """
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    logp, old_logp, ref_logp, mask = f32(logp), f32(old_logp), f32(ref_logp), f32(mask)
    adv = f32(advantages)
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = jnp.broadcast_to(adv, logp.shape)

    ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    trust = jnp.maximum(unclipped, clipped)
    dual_bound = -adv * clip_dual
    negative = adv < 0
    pg = jnp.where(negative, jnp.minimum(trust, dual_bound), trust)

    delta = jnp.clip(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    k3 = jnp.clip(jnp.exp(delta) - delta - 1.0, -KL_CLAMP, KL_CLAMP)

    token_count = jnp.sum(mask)
    loss_sum = jnp.sum(mask * (pg + kl_coef * k3))

    def frac(flag):
        return jnp.sum(mask * flag.astype(jnp.float32))

    live = mask > 0
    aux = {
        "pg_loss_sum": jnp.sum(mask * pg),
        "kl_sum": jnp.sum(mask * k3),
        "clip_frac_low_sum": frac(negative & (ratio < 1.0 - clip_low)),
        "clip_frac_high_sum": frac((adv > 0) & (ratio > 1.0 + clip_high)),
        "clip_frac_dual_sum": frac(negative & (dual_bound < trust)),
        "ratio_sum": jnp.sum(mask * ratio),
        "ratio_max": jnp.max(jnp.where(live, ratio, -jnp.inf)),
        "ratio_min": jnp.min(jnp.where(live, ratio, jnp.inf)),
        "entropy_sum": jnp.sum(mask * -logp),
    }
    return loss_sum, token_count, aux


def response_logprobs(model, batch: Mapping[str, Any]) -> jax.Array:
    """``(B, T)`` f32 log-probs of the response tokens ``input_ids[:, Lp:]`` (``T`` =
    ``response_mask.shape[1]``) under ``model``; dropout off. Token ``Lp + t`` is predicted by the
    hidden state at ``Lp + t - 1``, so only those ``T`` states reach the LM head."""
    if "response_mask" not in batch:
        raise ValueError(f"grpo batch has no 'response_mask'; keys are {sorted(batch)}")
    model = nnx.view(model, deterministic=True, raise_if_not_found=False)
    ids = batch["input_ids"]
    total, steps = ids.shape[1], batch["response_mask"].shape[1]
    if steps >= total:
        raise ValueError(f"grpo batch: response length {steps} >= sequence length {total}")
    hidden = batch_hidden_states(model, batch)[:, total - steps - 1: total - 1]
    logits = model.logits(hidden).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, ids[:, total - steps:, None], axis=-1)[..., 0]


def _validate(*, clip_low, clip_high, clip_dual, kl_coef):
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"config.loss_kwargs.clip_low={clip_low!r}: must be in [0, 1)")
    if not clip_high >= 0.0:
        raise ValueError(f"config.loss_kwargs.clip_high={clip_high!r}: must be >= 0")
    if not clip_dual > 1.0:
        raise ValueError(f"config.loss_kwargs.clip_dual={clip_dual!r}: must be > 1 (EasyR1: 3)")
    if not kl_coef >= 0.0:
        raise ValueError(f"config.loss_kwargs.kl_coef={kl_coef!r}: must be >= 0")


@register_loss("grpo", validate=_validate)
def grpo_loss(model, batch: Mapping[str, Any], rng: jax.Array, *, clip_low: float = 0.2,
              clip_high: float = 0.3, clip_dual: float = 3.0, kl_coef: float = 0.01):
    """GRPO on one micro-batch of responses (module doc); ``rng`` is unused (no dropout)."""
    del rng
    for key in ("old_logp", "ref_logp", "advantages"):
        if key not in batch:
            raise ValueError(f"grpo batch has no {key!r}; keys are {sorted(batch)}")
    logp = response_logprobs(model, batch)
    loss_sum, count, aux = grpo_token_loss(
        logp, batch["old_logp"], batch["ref_logp"], batch["advantages"],
        batch["response_mask"], clip_low=clip_low, clip_high=clip_high, clip_dual=clip_dual,
        kl_coef=kl_coef)
    aux = dict(aux, loss_sum=loss_sum, weight=count,
               tokens=jnp.sum(batch["attention_mask"].astype(jnp.float32)))
    return loss_sum / jnp.maximum(count, 1.0), aux
