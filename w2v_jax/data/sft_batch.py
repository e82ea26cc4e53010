"""Host-side SFT batch layout: ``processing.collate`` output -> what the ``sft`` loss reads.

``sft_batch`` makes every array batch-major (``position_ids`` ``[3, B, L]`` -> ``[B, 3, L]``) so
the Trainer can split it into micro-batches and shard it; ``target_positions`` lists each row's
target-token logit positions (``target_index`` / ``target_valid`` ``[B, K]``) so the loss runs the
LM head at those ``K`` positions only. The batch fields are documented in
``w2v_jax.train.losses.sft``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def target_positions(
    loss_mask: np.ndarray, attention_mask: np.ndarray | None, max_target_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Host-side ``(target_index [B, K] int32, target_valid [B, K] int32)`` for ``K =
    max_target_tokens``: row ``b`` lists, ascending, the logit positions ``i`` whose next token
    ``i + 1`` is a target (``loss_mask * attention_mask``), then zeros with ``target_valid = 0``.

    Raises ``ValueError`` naming the row when it has more than ``K`` targets (never truncates).
    """
    loss_mask = np.asarray(loss_mask)
    if loss_mask.ndim != 2:
        raise ValueError(f"loss_mask shape {loss_mask.shape}: expected (B, L)")
    if not isinstance(max_target_tokens, (int, np.integer)) or max_target_tokens < 1:
        raise ValueError(f"max_target_tokens={max_target_tokens!r}: must be an int >= 1")
    weights = loss_mask[:, 1:] > 0
    if attention_mask is not None:
        weights &= np.asarray(attention_mask)[:, 1:] > 0
    counts = weights.sum(axis=1)
    if counts.max(initial=0) > max_target_tokens:
        row = int(np.argmax(counts))
        raise ValueError(
            f"example {row} has {int(counts[row])} target tokens > max_target_tokens="
            f"{max_target_tokens}; raise max_target_tokens (at most L - 1 = {weights.shape[1]})"
        )
    b = loss_mask.shape[0]
    index = np.zeros((b, max_target_tokens), np.int32)
    valid = np.zeros((b, max_target_tokens), np.int32)
    for r in range(b):
        pos = np.flatnonzero(weights[r])
        index[r, : len(pos)] = pos
        valid[r, : len(pos)] = 1
    return index, valid


def sft_batch(
    collated: Mapping[str, Any], max_target_tokens: int | None = None
) -> dict[str, np.ndarray]:
    """``processing.collate`` output -> the batch-major layout above (``position_ids`` to
    ``[B, 3, L]``; ``rope_deltas`` and ``mm_token_type_ids`` dropped). Use the per-example image
    layout (``patches_per_example``/``images_per_example``) for Trainer batches.
    ``max_target_tokens=K`` adds ``target_index`` / ``target_valid`` (``target_positions``) so the
    loss computes logits at ``K`` positions per row only."""
    out = {
        k: np.asarray(v)
        for k, v in collated.items()
        if k not in ("rope_deltas", "mm_token_type_ids")
    }
    if "position_ids" in out:
        pos = out["position_ids"]
        b, length = out["input_ids"].shape
        if pos.shape != (3, b, length):
            raise ValueError(
                f"collated position_ids shape {pos.shape}: expected (3, {b}, {length})"
            )
        out["position_ids"] = np.ascontiguousarray(pos.transpose(1, 0, 2))
    if max_target_tokens is not None:
        out["target_index"], out["target_valid"] = target_positions(
            out["loss_mask"], out.get("attention_mask"), max_target_tokens
        )
    return out
