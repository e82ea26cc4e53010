"""Does a VLM read its images? Teacher-forced answers with the true views against the views of
other examples, plus how much the loss and the visual tokens depend on the pixels.

    stats = image_use(model, batches)   # sft batches (data.distill.sft_pipeline + sft_batch)

``stats``: ``tokens`` (answer tokens scored), ``correct_real`` / ``correct_rolled`` (answer tokens
predicted right with the true views / with ``roll_images``'s views), ``loss_real`` /
``loss_rolled`` (mean cross-entropy per answer token, nats), ``pixel_grad_norm`` (global norm of
d loss / d pixel_values on the first batch) and ``feature_rms`` / ``feature_spread`` (rms of the
merged visual tokens of the first batch, and the rms of their deviation from the mean over
images: ~0 when the vision tower ignores its input). A student that ignores its images has
``correct_real == correct_rolled`` and a pixel gradient orders of magnitude below its
initialisation's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

def roll_images(batch: Mapping[str, Any]) -> dict:
    """``batch`` with each example's views replaced by those of the next example with the same
    image grid (cyclically); an example whose grid no other example shares keeps its own."""
    grids = np.asarray(batch["image_grid_thw"]).reshape(len(batch["image_grid_thw"]), -1)
    keys = [tuple(g) for g in grids]
    perm = np.arange(len(keys))
    for key in set(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        perm[rows] = np.roll(rows, -1)
    return dict(batch, pixel_values=np.asarray(batch["pixel_values"])[perm])


def image_use(model, batches: Iterable[Mapping[str, Any]]) -> dict:
    """Module doc. ``batches``: sft batches in the per-example image layout (``pixel_values``
    ``(B, P, D)``, ``image_grid_thw`` ``(B, I, 3)``); at least one."""
    import jax
    import jax.numpy as jnp

    from w2v_jax.models.vlm.batch import encode_batch_images
    from w2v_jax.train.losses.sft import sft_loss

    key = jax.random.PRNGKey(0)

    @jax.jit
    def sums(batch):
        aux = sft_loss(model, batch, key)[1]
        return aux["loss_sum"], aux["accuracy_sum"], aux["weight"]

    def place(batch):
        return {k: jnp.asarray(v) for k, v in batch.items()}

    total = {"real": np.zeros(3), "rolled": np.zeros(3)}
    first = None
    for batch in batches:
        if first is None:
            first = batch
        for name, b in (("real", batch), ("rolled", roll_images(batch))):
            total[name] += np.asarray([float(x) for x in sums(place(b))])
    if first is None:
        raise ValueError("image_use: no batches")
    b = place(first)
    grad = jax.grad(lambda pv: sft_loss(model, dict(b, pixel_values=pv), key)[0])(
        b["pixel_values"])
    feats = encode_batch_images(model, b["pixel_values"], b["image_grid_thw"])
    n = int(np.sum(np.asarray(first["input_ids"]) == model.config.image_token_id))
    merge = model.config.vision.merge_unit
    sizes = {int(np.prod(g)) // merge for g in np.asarray(first["image_grid_thw"]).reshape(-1, 3)
             if np.prod(g) > 0}
    feats = np.asarray(feats[:n])
    # deviation from the mean over images, token slot by token slot (images of one size only)
    spread = (np.sqrt(np.mean(np.var(feats.reshape(-1, sizes.pop(), feats.shape[-1]), axis=0)))
              if len(sizes) == 1 else float("nan"))
    tokens = total["real"][2]
    return {"tokens": int(tokens),
            "correct_real": int(round(total["real"][1])),
            "correct_rolled": int(round(total["rolled"][1])),
            "loss_real": float(total["real"][0] / max(tokens, 1)),
            "loss_rolled": float(total["rolled"][0] / max(tokens, 1)),
            "pixel_grad_norm": float(jnp.linalg.norm(grad)),
            "feature_rms": float(np.sqrt(np.mean(feats ** 2))),
            "feature_spread": float(spread)}
