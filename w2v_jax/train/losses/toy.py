"""``next_token``: masked next-token cross-entropy for causal LMs (the toy LM and tests).

Batch: ``inputs`` int32 [B, L] token ids, ``targets`` int32 [B, L] next-token ids,
``mask`` f32/bool [B, L] (1 = a real target), optional ``example_mask`` [B] (0 = padding row).
The model maps ``inputs`` [B, L] to logits [B, L, V].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from w2v_jax.train.losses.registry import register_loss


@register_loss("next_token")
def next_token_loss(model, batch: dict, rng: jax.Array):
    """Token-mean cross-entropy; aux carries the token-weighted sum and the token count."""
    del rng  # deterministic model
    logits = model(batch["inputs"]).astype(jnp.float32)
    weights = batch["mask"].astype(jnp.float32)
    if "example_mask" in batch:
        weights = weights * batch["example_mask"].astype(jnp.float32)[:, None]
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    loss_sum = jnp.sum(xent * weights)
    weight = jnp.sum(weights)
    aux = {
        "loss_sum": loss_sum,
        "weight": weight,
        "tokens": weight,
        "accuracy_sum": jnp.sum(correct * weights),
    }
    return loss_sum / jnp.maximum(weight, 1.0), aux
