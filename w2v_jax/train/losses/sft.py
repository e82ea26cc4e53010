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
from w2v_jax.train.losses.registry import register_loss


def encode_batch_images(model, pixel_values: jax.Array, image_grid_thw: jax.Array) -> jax.Array:
    """Image features ``[num_image_tokens (+ padding rows), D]`` in prompt order for the model.

    Flat HF layout (``pixel_values [N, D]``): one vision-tower call. Per-example layout
    (``[B, P, D]``, grids ``[B, I, 3]``): the tower runs per example (``vmap``: attention cost
    ``B * P^2``, shardable over the batch) and the real feature rows of all examples are moved
    in front of the padding rows, in example order — the order of the ``<|image_pad|>`` tokens.
    """
    if pixel_values.ndim == 2:
        return model.encode_images(pixel_values, image_grid_thw)
    if pixel_values.ndim != 3 or image_grid_thw.ndim != 3:
        raise ValueError(
            f"pixel_values shape {pixel_values.shape} / image_grid_thw shape "
            f"{image_grid_thw.shape}: "
            "need (N, D) / (n, 3) or per-example (B, P, D) / (B, I, 3)"
        )
    feats = jax.vmap(model.encode_images)(pixel_values, image_grid_thw)  # (B, U, D)
    b, units, dim = feats.shape
    merge = model.config.vision.merge_unit
    real = jnp.sum(jnp.prod(image_grid_thw, axis=-1), axis=-1) // merge  # (B,)
    is_pad = (jnp.arange(units)[None, :] >= real[:, None]).reshape(-1)
    order = jnp.argsort(is_pad, stable=True)
    return feats.reshape(b * units, dim)[order]


def sft_targets(batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
    """Shifted targets and weights: ``(targets [B, L-1], weights [B, L-1] f32)``.

    ``targets[:, i] = input_ids[:, i + 1]`` with weight ``loss_mask * attention_mask`` at
    ``i + 1`` (times ``example_mask``), matching the logits at positions ``0 .. L-2``.
    """
    for key in ("input_ids", "loss_mask"):
        if key not in batch:
            raise ValueError(f"sft batch has no {key!r}; keys are {sorted(batch)}")
    ids = batch["input_ids"]
    if ids.ndim != 2 or batch["loss_mask"].shape != ids.shape:
        raise ValueError(
            f"sft batch input_ids shape {ids.shape} / loss_mask shape {batch['loss_mask'].shape}: "
            "need equal (B, L) shapes"
        )
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    if "attention_mask" in batch:
        weights = weights * batch["attention_mask"][:, 1:].astype(jnp.float32)
    if "example_mask" in batch:
        weights = weights * batch["example_mask"].astype(jnp.float32)[:, None]
    return ids[:, 1:], weights


def sft_hidden(model, batch: Mapping[str, Any]) -> jax.Array:
    """Final-normed decoder states ``[B, L, D]`` for an sft batch (before the LM head)."""
    ids = batch["input_ids"]
    b, length = ids.shape
    kwargs = {}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    if "position_ids" in batch:
        pos = batch["position_ids"]
        if pos.shape != (b, 3, length):
            raise ValueError(
                f"sft batch position_ids shape {pos.shape}: expected batch-major "
                f"({b}, 3, {length}) "
                "(convert collate output with sft_batch)"
            )
        kwargs["position_ids"] = jnp.swapaxes(pos, 0, 1)
    if batch.get("pixel_values") is not None:
        if "position_ids" not in batch:
            raise ValueError(
                "sft batch with pixel_values needs position_ids (M-RoPE of the images)"
            )
        grid = batch["image_grid_thw"]
        kwargs["image_features"] = encode_batch_images(model, batch["pixel_values"], grid)
        kwargs["image_grid_thw"] = grid.reshape(-1, 3)  # lets eager calls check token counts
    return model.hidden_states(ids, **kwargs)[0]


@register_loss("sft")
def sft_loss(model, batch: Mapping[str, Any], rng: jax.Array):
    """Target-token-mean cross-entropy; ``aux`` carries sums and counts (see module doc).

    ``rng`` seeds the model's ``dropout`` RNG streams (e.g. LoRA dropout) for this micro-batch
    (``lora.with_dropout_key``; the caller's model is not mutated); a model without dropout
    ignores it.
    """
    model = with_dropout_key(model, rng)
    hidden = sft_hidden(model, batch)[:, :-1]
    targets, weights = sft_targets(batch)
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
