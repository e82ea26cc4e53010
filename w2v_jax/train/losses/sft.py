"""``sft``: supervised fine-tuning of the VLM — token cross-entropy over assistant tokens.

Batch (one micro-batch; every array has the batch as its *leading* axis so the Trainer can split
it into micro-batches and shard it over ``("data", "fsdp")``):

* ``input_ids`` int ``[B, L]``; ``attention_mask`` int ``[B, L]`` (1 = real token);
* ``loss_mask`` int ``[B, L]``: 1 on the *target* tokens (assistant content + its ``<|im_end|>``)
  in ``input_ids`` coordinates — token ``i`` is predicted by the logits at position ``i - 1``;
* ``position_ids`` int ``[B, 3, L]`` (M-RoPE, batch-major; ``sft_batch`` converts ``collate``'s
  ``[3, B, L]``), optional for text-only batches;
* ``pixel_values`` ``[B, P, C*t*p*p]`` + ``image_grid_thw`` ``[B, I, 3]`` (``collate(...,
  patches_per_example=P, images_per_example=I)``: zero padding patches last, ``(0, 0, 0)``
  padding grid rows), or absent for text-only; HF's flat ``[N, D]`` / ``[n, 3]`` layout is also
  accepted when calling the loss directly;
* ``example_mask`` ``[B]`` optional (0 = a padding row that contributes nothing);
* ``target_index`` int ``[B, K]`` + ``target_valid`` int ``[B, K]`` optional
  (``sft_batch(..., max_target_tokens=K)``): the logit positions of each row's target tokens
  (``target_positions``). With them the LM head and the cross-entropy run on ``K`` positions per
  row instead of ``L``: the loss and its gradient are unchanged, the ``[B, L, V]`` logits are
  never built (at 7B with a 152k vocabulary they are most of the activation memory), and the
  step does ``B * (L - K) * D * V * 6`` fewer FLOPs.

The model is ``Qwen2_5_VL`` (``encode_images``, ``hidden_states(..., image_features=...)`` and the
LM head ``logits``).

Returned ``aux`` holds sums (``loss_sum`` = summed cross-entropy of the target tokens, ``weight``
= their count, ``accuracy_sum``, ``tokens`` = real input tokens), so the Trainer's micro-batch
accumulation averages per target token exactly as one big batch would.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from w2v_jax.models.lora import with_dropout_key
from w2v_jax.models.vlm.batch import batch_hidden_states, next_token_targets
from w2v_jax.train.losses.registry import register_loss


@register_loss("sft")
def sft_loss(model, batch: Mapping[str, Any], rng: jax.Array):
    """Target-token-mean cross-entropy; ``aux`` carries sums and counts (see module doc).

    ``rng`` seeds the model's ``dropout`` RNG streams (e.g. LoRA dropout) for this micro-batch
    (``lora.with_dropout_key``; the caller's model is not mutated); a model without dropout
    ignores it.
    """
    model = with_dropout_key(model, rng)
    hidden = batch_hidden_states(model, batch)[:, :-1]
    targets, weights = next_token_targets(batch)
    if "target_index" in batch:  # the LM head only at the K target positions of each row
        index = batch["target_index"].astype(jnp.int32)
        if index.ndim != 2 or index.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"sft batch target_index shape {index.shape}: expected ({hidden.shape[0]}, K)"
            )
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(targets, index, axis=1)
        valid = batch.get("target_valid", jnp.ones_like(index)).astype(jnp.float32)
        weights = jnp.take_along_axis(weights, index, axis=1) * valid
    logits = model.logits(hidden).astype(jnp.float32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    loss_sum = jnp.sum(xent * weights)
    weight = jnp.sum(weights)
    if "attention_mask" in batch:
        tokens = jnp.sum(batch["attention_mask"].astype(jnp.float32))
    else:
        tokens = jnp.asarray(batch["input_ids"].size, jnp.float32)
    aux = {
        "loss_sum": loss_sum,
        "weight": weight,
        "accuracy_sum": jnp.sum(correct * weights),
        "tokens": tokens,
    }
    return loss_sum / jnp.maximum(weight, 1.0), aux
