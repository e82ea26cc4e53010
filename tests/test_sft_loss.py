"""The ``sft`` loss: hand computation, assistant-only targets, accumulation sums, HF parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import vlm_fixtures as vf
from w2v_jax.hf import load_vlm
from w2v_jax.train.losses import get_loss
from w2v_jax.data.sft_batch import sft_batch, target_positions
from w2v_jax.train.losses.sft import sft_loss

V = 11


class TableLM(nnx.Module):
    """logits[b, i] = table[input_ids[b, i]] + bias[b, i] (so each position's logits are known)."""

    def __init__(self, batch: int, length: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.table = nnx.Param(jnp.asarray(rng.standard_normal((V, V)), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((batch, length, V), jnp.float32))

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None):
        return self.table[...][input_ids] + self.bias[...], None

    def logits(self, hidden):
        return hidden

    def __call__(self, input_ids, attention_mask=None, position_ids=None):
        return self.logits(self.hidden_states(input_ids)[0])


def _text_batch(seed=0, batch=4, length=9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (batch, length)).astype(np.int32)
    attn = np.ones((batch, length), np.int32)
    attn[1, -3:] = 0  # right padding
    attn[3, -5:] = 0
    loss_mask = np.zeros((batch, length), np.int32)
    loss_mask[0, 4:] = 1
    loss_mask[1, 2:] = 1  # includes padded positions: must be ignored via attention_mask
    loss_mask[2, 7:] = 1
    loss_mask[3, 1:4] = 1
    loss_mask[:, 0] = 1  # position 0 can never be a target (nothing predicts it)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}


def _hand_loss(model, batch):
    logits = np.asarray(model(jnp.asarray(batch["input_ids"])), np.float64)
    total, count, correct = 0.0, 0, 0
    b, length = batch["input_ids"].shape
    for r in range(b):
        for i in range(1, length):
            if batch["loss_mask"][r, i] and batch["attention_mask"][r, i]:
                row = logits[r, i - 1]
                logz = np.log(np.sum(np.exp(row - row.max()))) + row.max()
                total += logz - row[batch["input_ids"][r, i]]
                count += 1
                correct += int(np.argmax(row) == batch["input_ids"][r, i])
    return total, count, correct


def test_registered_sft_loss_equals_hand_computation():
    batch = _text_batch()
    model = TableLM(4, 9)
    loss, aux = get_loss("sft")(model, {k: jnp.asarray(v) for k, v in batch.items()},
                                jax.random.key(0))
    total, count, correct = _hand_loss(model, batch)
    assert count == 5 + 4 + 2 + 3
    np.testing.assert_allclose(float(aux["loss_sum"]), total, rtol=1e-5)
    assert float(aux["weight"]) == count
    assert float(aux["accuracy_sum"]) == correct
    assert float(aux["tokens"]) == batch["attention_mask"].sum()
    np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)


def test_target_positions_give_the_same_loss():
    batch = _text_batch()
    index, valid = target_positions(batch["loss_mask"], batch["attention_mask"], 6)
    # row 1: targets at tokens 2..5 (6..8 are padding) -> logit positions 1..4, then padding
    np.testing.assert_array_equal(index[1], [1, 2, 3, 4, 0, 0])
    np.testing.assert_array_equal(valid[1], [1, 1, 1, 1, 0, 0])
    model = TableLM(4, 9)
    full = {k: jnp.asarray(v) for k, v in batch.items()}
    loss, aux = sft_loss(model, full, jax.random.key(0))
    packed = {k: jnp.asarray(v) for k, v in sft_batch(batch, max_target_tokens=5).items()}
    assert packed["target_index"].shape == (4, 5)
    loss_k, aux_k = sft_loss(model, packed, jax.random.key(0))
    np.testing.assert_allclose(float(loss_k), float(loss), rtol=1e-6)
    for key in ("weight", "accuracy_sum", "tokens"):
        assert float(aux_k[key]) == float(aux[key]), key
    with pytest.raises(ValueError, match="example 0 has 5 target tokens > max_target_tokens=4"):
        sft_batch(batch, max_target_tokens=4)


def test_ignores_non_assistant_tokens():
    batch = {k: jnp.asarray(v) for k, v in _text_batch().items()}
    model = TableLM(4, 9)
    base, _ = sft_loss(model, batch, jax.random.key(0))
    # Logits at position i predict token i + 1: perturb every position whose next token is not a
    # (real) target -> the loss must not move; perturb one that is -> it must.
    weights = np.asarray(batch["loss_mask"] * batch["attention_mask"])[:, 1:]
    unused = np.concatenate([weights == 0, np.ones((4, 1), bool)], axis=1)
    noise = np.random.default_rng(1).standard_normal((4, 9, V)).astype(np.float32) * 5
    model.bias[...] = jnp.asarray(np.where(unused[..., None], noise, 0.0))
    moved, _ = sft_loss(model, batch, jax.random.key(0))
    np.testing.assert_allclose(float(moved), float(base), rtol=1e-6)
    model.bias[...] = jnp.asarray(np.where(~unused[..., None], noise, 0.0))
    changed, _ = sft_loss(model, batch, jax.random.key(0))
    assert abs(float(changed) - float(base)) > 1e-3


def test_accumulation_consistent_sums():
    batch = {k: jnp.asarray(v) for k, v in _text_batch().items()}
    model = TableLM(4, 9)
    full, _ = sft_loss(model, batch, jax.random.key(0))
    parts = []
    for rows in (slice(0, 1), slice(1, 4)):  # unequal target counts: 5 vs 9
        small = TableLM(rows.stop - rows.start, 9)
        small.table[...] = model.table[...]
        parts.append(sft_loss(small, {k: v[rows] for k, v in batch.items()}, jax.random.key(0)))
    summed = sum(float(a["loss_sum"]) for _, a in parts) / sum(float(a["weight"]) for _, a in parts)
    np.testing.assert_allclose(summed, float(full), rtol=1e-6)
    mean_of_means = np.mean([float(loss) for loss, _ in parts])
    assert abs(mean_of_means - float(full)) > 1e-4  # the naive average would be wrong
    # A padding row (example_mask 0) contributes nothing.
    masked = dict(batch, example_mask=jnp.asarray([1, 1, 0, 1]))
    _, aux = sft_loss(model, masked, jax.random.key(0))
    _, aux_2 = sft_loss(
        model, dict(batch, loss_mask=batch["loss_mask"].at[2].set(0)), jax.random.key(0)
    )
    np.testing.assert_allclose(float(aux["loss_sum"]), float(aux_2["loss_sum"]), rtol=1e-6)
    assert float(aux["weight"]) == float(aux_2["weight"])


def test_bad_batch_raises():
    model = TableLM(4, 9)
    batch = {k: jnp.asarray(v) for k, v in _text_batch().items()}
    with pytest.raises(ValueError, match="loss_mask"):
        sft_loss(model, {"input_ids": batch["input_ids"]}, jax.random.key(0))
    with pytest.raises(ValueError, match="position_ids"):
        sft_loss(
            model, dict(batch, position_ids=jnp.zeros((3, 4, 9), jnp.int32)), jax.random.key(0)
        )


def _image_batch():
    """Two prompts (different images), targets on the last tokens, HF + per-example layouts."""
    ids, mask, grids = vf.make_prompts(
        [[3, (1, 8, 12), 6], [5, (1, 4, 4), 4, (1, 4, 8), 3]], seed=4
    )
    pixels = vf.random_pixels(grids, seed=5)
    loss_mask = np.zeros_like(mask)
    loss_mask[0, -5:] = 1
    loss_mask[1, -3:] = 1
    return ids, mask, grids, pixels, loss_mask


def test_matches_hf_loss_with_images(tmp_path):
    hf_model, path = vf.save_hf_model(tmp_path, seed=3)
    model, _ = load_vlm(path)
    ids, mask, grids, pixels, loss_mask = _image_batch()
    labels = np.where(loss_mask > 0, ids, -100)
    pos, _ = vf.hf_position_ids(hf_model, ids, grids, mask)
    t = lambda x: torch.as_tensor(np.asarray(x))  # noqa: E731
    with torch.no_grad():
        ref = hf_model(
            input_ids=t(ids),
            attention_mask=t(mask),
            position_ids=t(pos),
            pixel_values=t(pixels),
            image_grid_thw=t(grids),
            labels=t(labels),
        ).loss.item()

    # Per-example (Trainer) layout: image 0 -> row 0; images 1, 2 -> row 1; zero padding.
    per_image = np.prod(grids, axis=-1)
    pix_rows = [pixels[: per_image[0]], pixels[per_image[0] :]]
    grid_rows = [grids[:1], grids[1:]]
    patches = max(len(p) for p in pix_rows) + 8
    pv = np.zeros((2, patches, vf.PATCH_DIM), np.float32)
    g = np.zeros((2, 2, 3), np.int64)
    for r in range(2):
        pv[r, : len(pix_rows[r])] = pix_rows[r]
        g[r, : len(grid_rows[r])] = grid_rows[r]
    collated = {
        "input_ids": ids,
        "attention_mask": mask,
        "loss_mask": loss_mask,
        "position_ids": pos,
        "rope_deltas": np.zeros((2, 1)),
        "pixel_values": pv,
        "image_grid_thw": g,
    }
    batch = {k: jnp.asarray(v) for k, v in sft_batch(collated).items()}
    assert batch["position_ids"].shape == (2, 3, ids.shape[1]) and "rope_deltas" not in batch
    with jax.default_matmul_precision("highest"):
        loss, aux = nnx.jit(sft_loss)(model, batch, jax.random.key(0))
        flat = dict(batch, pixel_values=jnp.asarray(pixels), image_grid_thw=jnp.asarray(grids))
        loss_flat, _ = nnx.jit(sft_loss)(model, flat, jax.random.key(0))
    assert float(aux["weight"]) == 8
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    np.testing.assert_allclose(float(loss_flat), ref, rtol=1e-5)
    # the LM head at the target positions only: same loss and same gradient
    packed = {k: jnp.asarray(v) for k, v in sft_batch(collated, max_target_tokens=6).items()}
    grad = nnx.jit(nnx.grad(lambda m, b: sft_loss(m, b, jax.random.key(0))[0]))
    with jax.default_matmul_precision("highest"):
        loss_k, _ = nnx.jit(sft_loss)(model, packed, jax.random.key(0))
        g_full, g_k = grad(model, batch), grad(model, packed)
    np.testing.assert_allclose(float(loss_k), ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                 nnx.to_pure_dict(g_full), nnx.to_pure_dict(g_k))
