"""GRPO rollouts on the tiny random Qwen2.5-VL (fp32, matmul precision "highest"): the sampler's
log-probs equal the training forward's, accumulation equals one mini-batch, a 2x2x2 mesh equals
one device, and the LoRA reference is the base model."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vlm_fixtures as vf
from grpo_prompts import compile_cache  # noqa: F401  (fixture)
from grpo_prompts import PAD, decode_ids, even_token_reward, prompt_batch
from w2v_jax import sharding
from w2v_jax.hf import load_vlm
from w2v_jax.models import lora
from w2v_jax.train.grpo import GRPOConfig, GRPOLoop, flat_images, reference_state
from w2v_jax.train.losses.grpo import group_advantages, grpo_token_loss
from w2v_jax.train.trainer import Trainer

CONFIG = GRPOConfig(n=4, rollout_prompts=2, global_batch_prompts=2, max_response_length=5)


@pytest.fixture(scope="module", autouse=True)
def highest_precision(compile_cache):
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
    # a 2-block vision tower (full attention in block 1) keeps compilation short
    return vf.save_hf_model(tmp_path_factory.mktemp("grpo"), seed=0, vision_depth=2,
                            fullatt_block_indexes=(1,))[1]


@pytest.fixture(scope="module")
def prompts():
    # row 0 (left-padded): text, one 4x4-patch image, text; row 1: two images of different sizes
    return prompt_batch([[3, (1, 4, 4), 2], [5, (1, 4, 8), (1, 4, 4), 1]], seed=1,
                        truths=["{}", "{}"], tasks=["A1", "D4"])


def make_loop(path, mesh=None, grad_accum_steps=1, lr=0.1, config=CONFIG):
    model, _ = load_vlm(path, mesh=mesh)
    trainer = Trainer(model, optax.sgd(lr), "grpo", mesh=mesh,
                      grad_accum_steps=grad_accum_steps)
    return GRPOLoop(trainer, reference_state(trainer.model, lora=False), config,
                    stop_tokens=(vf.EOS,), pad_id=PAD, decode=decode_ids,
                    reward_fn=even_token_reward, seed=0)


def full_batch(loop, prompts):
    out = loop.rollout(prompts, jax.random.key(3))
    batch = dict(out["batch"])
    rewards = np.asarray([s["overall"] for s in out["scores"]], np.float32)
    batch["advantages"] = group_advantages(rewards, loop.config.n)
    batch["old_logp"] = loop.logprobs(nnx.state(loop.trainer.model), batch)
    batch["ref_logp"] = loop.logprobs(loop.reference, batch)
    return out, batch


def test_flat_images_put_real_patches_first(prompts):
    pv, grid = flat_images(prompts["pixel_values"], prompts["image_grid_thw"])
    assert pv.shape == (2 * 64, vf.PATCH_DIM) and grid.shape == (4, 3)
    np.testing.assert_array_equal(grid[:3], [[1, 4, 4], [1, 4, 8], [1, 4, 4]])
    assert not grid[3].any()
    np.testing.assert_array_equal(pv[:16], prompts["pixel_values"][0, :16])
    np.testing.assert_array_equal(pv[16:64], prompts["pixel_values"][1, :48])
    assert not pv[64:].any()


def test_sampler_logprobs_equal_the_training_forward(hf_path, prompts):
    loop = make_loop(hf_path)
    out, batch = full_batch(loop, prompts)
    mask = batch["response_mask"].astype(bool)
    assert mask.sum() > 8 and len(set(out["lengths"].tolist())) >= 1
    assert batch["input_ids"].shape == (8, prompts["input_ids"].shape[1] + 5)
    np.testing.assert_allclose(batch["old_logp"][mask], out["sampler_logp"][mask], atol=1e-5)
    # the sampler's log-probs as "old", the reference copy's as "ref": ratio 1, KL 0
    _, _, aux = grpo_token_loss(batch["old_logp"], out["sampler_logp"], batch["ref_logp"],
                                batch["advantages"], mask)
    np.testing.assert_allclose([float(aux["ratio_max"]), float(aux["ratio_min"])], [1, 1],
                               atol=1e-5)
    assert abs(float(aux["kl_sum"])) <= 1e-9  # the reference is an identical copy
    np.testing.assert_array_equal(batch["ref_logp"], batch["old_logp"])


def test_micro_batch_accumulation_equals_one_mini_batch(hf_path, prompts):
    one, two = make_loop(hf_path), make_loop(hf_path, grad_accum_steps=2)
    _, batch = full_batch(one, prompts)
    m1, m2 = one.trainer.train_step(batch), two.trainer.train_step(batch)
    for key in ("loss", "pg_loss", "kl", "grad_norm", "weight"):
        np.testing.assert_allclose(float(m1[key]), float(m2[key]), rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(nnx.state(one.trainer.model, nnx.Param)),
                    jax.tree.leaves(nnx.state(two.trainer.model, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.slow  # ~40 s of compilation on 2 cores (sharded generate, log-probs and step)
def test_iteration_on_a_2x2x2_mesh_equals_one_device(hf_path, prompts):
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    single, sharded = make_loop(hf_path), make_loop(hf_path, mesh=mesh)
    q_proj = sharded.trainer.model.language_model.layers[0].self_attn.q_proj.kernel[...]
    assert not q_proj.sharding.is_fully_replicated
    row1, row8 = single.iteration(prompts, 0), sharded.iteration(prompts, 0)
    assert row1["reward"] == row8["reward"] and row1["response_length"] == row8[
        "response_length"]
    for key in ("loss", "pg_loss", "kl", "ratio", "grad_norm", "entropy"):
        np.testing.assert_allclose(row1[key], row8[key], rtol=1e-5, atol=1e-6)
    assert row1["grad_norm"] > 0 and single.trainer.step == sharded.trainer.step == 1
    for a, b in zip(jax.tree.leaves(nnx.state(single.trainer.model, nnx.Param)),
                    jax.tree.leaves(nnx.state(sharded.trainer.model, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(jax.device_get(b)), atol=1e-5)


def test_lora_reference_is_the_base_model_without_a_copy(hf_path, prompts):
    base = make_loop(hf_path)
    _, batch = full_batch(base, prompts)
    model = base.trainer.model
    lora.apply_lora(model, rank=2, alpha=4.0, rngs=1)
    for path in lora.adapter_paths(model):  # move the adapters away from their zero init
        layer = model
        for part in path.split("."):
            layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
        layer.lora_b[...] = jnp.full_like(layer.lora_b[...], 0.05)
    reference = reference_state(model, lora=True)
    base_w = model.language_model.layers[0].mlp.up_proj.base.kernel[...]
    ref_w = reference["language_model"]["layers"][0]["mlp"]["up_proj"]["base"]["kernel"][...]
    assert ref_w is base_w  # the base weights are shared, not copied
    loop = GRPOLoop(Trainer(model, optax.sgd(0.1), "grpo", trainable="lora"), reference,
                    CONFIG, stop_tokens=(vf.EOS,), pad_id=PAD, decode=decode_ids,
                    reward_fn=even_token_reward)
    mask = batch["response_mask"].astype(bool)
    ref_logp = loop.logprobs(reference, batch)
    np.testing.assert_allclose(ref_logp[mask], batch["old_logp"][mask], atol=1e-5)
    policy = loop.logprobs(nnx.state(model), batch)
    assert np.abs(policy[mask] - ref_logp[mask]).max() > 1e-3
