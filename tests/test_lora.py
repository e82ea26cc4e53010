"""LoRA adapters: targets, merged == unmerged, export, trainable filter, sharding, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P
from transformers import Qwen2_5_VLForConditionalGeneration

import vlm_fixtures as vf
from w2v_jax.hf import load_vlm, save_vlm
from w2v_jax.models import lora
from w2v_jax import sharding
from w2v_jax.train.trainer import Trainer

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


pytestmark = pytest.mark.usefixtures("highest_precision")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    _, path = vf.save_hf_model(tmp_path_factory.mktemp("lora"), seed=0)
    return path


@pytest.fixture(scope="module")
def inputs():
    ids, mask, grids = vf.make_prompts([[3, (1, 8, 12), 4], [5, (1, 4, 4), 2]], seed=1)
    pixels = vf.random_pixels(grids, seed=2)
    pos, _ = vf.hf_position_ids(vf.make_hf_model(0), ids, grids, mask)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        image_grid_thw=grids,
        position_ids=pos,
    )


@nnx.jit
def _logits(model, x):
    return model(
        x["input_ids"],
        pixel_values=x["pixel_values"],
        image_grid_thw=x["image_grid_thw"],
        attention_mask=x["attention_mask"],
        position_ids=x["position_ids"],
    )


def _as_jnp(x):
    return {k: jnp.asarray(v) for k, v in x.items()}


def _randomize_adapters(model, seed=0, scale=0.05):
    """Non-zero B (fresh adapters are exactly zero) so merging is actually exercised."""
    keys = iter(jax.random.split(jax.random.key(seed), 1000))
    for _, m in nnx.iter_modules(model):
        if isinstance(m, lora.LoRALinear):
            m.lora_b[...] = scale * jax.random.normal(next(keys), m.lora_b.shape, m.lora_b.dtype)


def test_default_pattern_targets_language_model_linears(hf_dir):
    model, cfg = load_vlm(hf_dir)
    paths = lora.lora_paths(model)
    assert len(paths) == cfg.text.num_hidden_layers * len(LINEARS)
    assert all(
        p.startswith("language_model.layers.") and p.split(".")[-1] in LINEARS for p in paths
    )
    lora.apply_lora(model, rank=4, alpha=8.0, rngs=0)
    assert lora.has_lora(model)
    assert isinstance(model.visual.blocks[0].mlp.gate_proj, nnx.Linear)  # vision tower untouched
    assert isinstance(model.lm_head, nnx.Linear)
    adapter = model.language_model.layers[1].self_attn.q_proj
    assert isinstance(adapter, lora.LoRALinear)
    assert adapter.lora_a.shape == (64, 4) and adapter.lora_b.shape == (4, 64)
    assert adapter.lora_a.get_metadata()["out_sharding"] == ("embed", None)
    assert adapter.lora_b.get_metadata()["out_sharding"] == (None, "heads")


def test_merged_equals_unmerged_and_exports_to_transformers(hf_dir, inputs, tmp_path):
    model, cfg = load_vlm(hf_dir)
    x = _as_jnp(inputs)
    base = np.asarray(_logits(model, x))
    lora.apply_lora(model, rank=4, alpha=8.0, rngs=1)
    np.testing.assert_array_equal(np.asarray(_logits(model, x)), base)  # B = 0: identity
    _randomize_adapters(model)
    unmerged = np.asarray(_logits(model, x))
    assert np.abs(unmerged - base).max() > 1e-2
    lora.merge_lora(model)
    assert not lora.has_lora(model) and not jax.tree.leaves(nnx.state(model, nnx.LoRAParam))
    assert type(model.language_model.layers[0].mlp.down_proj) is nnx.Linear
    merged = np.asarray(_logits(model, x))
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)

    save_vlm(model, cfg, tmp_path / "merged")
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tmp_path / "merged", dtype=torch.float32
    ).eval()
    ref = vf.hf_logits(
        hf,
        inputs["input_ids"],
        inputs["pixel_values"],
        inputs["image_grid_thw"],
        inputs["attention_mask"],
        inputs["position_ids"],
    )
    real = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(ref[real], unmerged[real], atol=1e-4, rtol=0)
    # save_vlm refuses un-merged adapters rather than writing a wrong checkpoint.
    lora.apply_lora(model, rank=2, alpha=2.0, rngs=2)
    with pytest.raises(ValueError, match="LoRA"):
        save_vlm(model, cfg, tmp_path / "unmerged")


def test_filter_trains_only_adapters(hf_dir, inputs):
    model, _ = load_vlm(hf_dir)
    lora.apply_lora(model, rank=4, alpha=8.0, dropout=0.1, rngs=3)
    before_base = jax.tree.map(
        np.asarray, nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora.LORA_FILTER)))
    )
    before_lora = jax.tree.map(np.asarray, nnx.state(model, lora.LORA_FILTER))
    loss_mask = np.zeros_like(inputs["attention_mask"])
    loss_mask[:, -4:] = 1
    per_image = np.prod(inputs["image_grid_thw"], axis=-1)
    pv = np.zeros((2, int(per_image.max()), vf.PATCH_DIM), np.float32)
    pv[0, : per_image[0]] = inputs["pixel_values"][: per_image[0]]
    pv[1, : per_image[1]] = inputs["pixel_values"][per_image[0] :]
    batch = {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "loss_mask": loss_mask,
        "position_ids": inputs["position_ids"].transpose(1, 0, 2),
        "pixel_values": pv,
        "image_grid_thw": inputs["image_grid_thw"][:, None, :],
    }
    trainer = Trainer(model, optax.adam(1e-2), "sft", trainable="lora")
    assert set(
        jax.tree.leaves(
            jax.tree.map(
                lambda v: type(v).__name__,
                trainer.params(),
                is_leaf=lambda v: isinstance(v, nnx.Variable),
            )
        )
    ) == {"LoRAParam"}
    for _ in range(2):  # A only gets a gradient once B is non-zero, i.e. from step 2 on
        metrics = trainer.train_step(batch)
        assert np.isfinite(float(metrics["loss"]))
    after_base = nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora.LORA_FILTER)))
    after_lora = nnx.state(model, lora.LORA_FILTER)
    jax.tree.map(np.testing.assert_array_equal, before_base, jax.tree.map(np.asarray, after_base))
    changed = jax.tree.leaves(
        jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before_lora, after_lora)
    )
    assert all(changed)  # every adapter matrix (A and B) moved


def test_adapters_follow_kernel_sharding(hf_dir, inputs):
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    model, _ = load_vlm(hf_dir, mesh=mesh)
    reference, _ = load_vlm(hf_dir)
    for m in (model, reference):
        lora.apply_lora(m, rank=4, alpha=8.0, rngs=4)
        _randomize_adapters(m, seed=5)
    q = model.language_model.layers[0].self_attn.q_proj
    down = model.language_model.layers[0].mlp.down_proj
    assert q.lora_a[...].sharding.spec == P("fsdp", None)
    assert q.lora_b[...].sharding.spec == P(None, "tensor")
    assert down.lora_a[...].sharding.spec == P("tensor", None)
    assert down.lora_b[...].sharding.spec == P(None, "fsdp")
    x = _as_jnp(inputs)
    np.testing.assert_allclose(
        np.asarray(_logits(model, x)), np.asarray(_logits(reference, x)), atol=1e-5
    )
    lora.merge_lora(model)
    assert model.language_model.layers[0].self_attn.q_proj.kernel[...].sharding.spec == P(
        "fsdp", "tensor"
    )


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.encoder = nnx.List([nnx.Linear(6, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)])
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        for layer in self.encoder:
            x = jax.nn.gelu(layer(x))
        return self.head(x)


def test_generic_model_dropout_and_errors():
    model = MLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (5, 6))
    with pytest.raises(ValueError, match="matches no linear layer"):
        lora.apply_lora(model, rank=2, alpha=4.0, pattern=r"language_model")
    lora.apply_lora(model, rank=2, alpha=4.0, dropout=0.5, pattern=r"^encoder\.", rngs=nnx.Rngs(7))
    assert [p for p, m in nnx.iter_modules(model) if isinstance(m, lora.LoRALinear)] == [
        ("encoder", 0),
        ("encoder", 1),
    ]
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.apply_lora(model, rank=2, alpha=4.0, pattern=r"head")
    with pytest.raises(ValueError, match="rank"):
        lora.LoRALinear(
            nnx.Linear(2, 2, rngs=nnx.Rngs(0)), rank=0, alpha=1.0, dropout=0.0, rngs=nnx.Rngs(0)
        )
    _randomize_adapters(model, scale=0.5)
    eval_view = nnx.view(model, deterministic=True)
    clean = eval_view(x)
    rng_state = jax.tree.map(
        np.asarray, jax.random.key_data(model.encoder[0].dropout.rngs.key[...])
    )
    a = lora.with_dropout_key(model, jax.random.key(3))(x)
    b = lora.with_dropout_key(model, jax.random.key(3))(x)
    c = lora.with_dropout_key(model, jax.random.key(4))(x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same key, same mask
    np.testing.assert_array_equal(  # the caller's RNG state is untouched
        jax.random.key_data(model.encoder[0].dropout.rngs.key[...]), rng_state
    )
    assert not np.allclose(np.asarray(a), np.asarray(c))
    assert not np.allclose(np.asarray(a), np.asarray(clean))
    lora.merge_lora(model)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(clean), atol=1e-5)
