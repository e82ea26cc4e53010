"""The VLM's forward pass over a collated batch: image features, decoder states, shifted targets.

The batch layout is the one ``w2v_jax.train.losses.sft`` documents (``input_ids``,
``attention_mask``, ``loss_mask``, batch-major ``position_ids [B, 3, L]``, per-example
``pixel_values [B, P, D]`` + ``image_grid_thw [B, I, 3]`` or HF's flat layout,
``example_mask``). It lives with the model so that the training losses and the evaluation's
option-likelihood scoring run the same forward pass without one layer importing the other.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp


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


def next_token_targets(batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
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


def batch_hidden_states(model, batch: Mapping[str, Any]) -> jax.Array:
    """Final-normed decoder states ``[B, L, D]`` for a batch (before the LM head)."""
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
