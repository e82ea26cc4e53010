"""Trainer: sharded == unsharded, grad accumulation, frozen sub-trees, LoRA-only, EMA, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from w2v_jax.models.toy import ToyLM, ToyLMConfig
from w2v_jax import sharding as shd
from w2v_jax.train.optim import OptimizerConfig, path_str
from w2v_jax.train.trainer import Trainer

CFG = ToyLMConfig(vocab_size=64, width=64, depth=2, num_heads=4, mlp_dim=128, max_len=16)
LORA_CFG = ToyLMConfig(vocab_size=64, width=64, depth=2, num_heads=4, mlp_dim=128, max_len=16,
                       lora_rank=4)
OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=2, end_lr_ratio=0.1, weight_decay=0.1,
                      clip_norm=1.0)
ONE = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def make_batches(n, batch=16, length=16, seed=0, ragged=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = rng.integers(0, 64, (batch, length + 1)).astype(np.int32)
        mask = np.ones((batch, length), np.float32)
        if ragged:  # different numbers of target tokens per example
            lengths = rng.integers(1, length + 1, batch)
            mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
        out.append({"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": mask})
    return out


@pytest.fixture(scope="module")
def base_model():
    return shd.create_unsharded(lambda: ToyLM(CFG, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def lora_model():
    return shd.create_unsharded(lambda: ToyLM(LORA_CFG, rngs=nnx.Rngs(0)))


def fresh(model):
    """A copy with its own buffers (the Trainer donates its state)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def flat_params(model, filt=nnx.Param):
    return {
        path_str(p): np.asarray(v)
        for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, filt))
    }


def test_one_device_equals_2x2x2_mesh(base_model):
    batches = make_batches(5)
    losses = {}
    for name, mesh in (("one", ONE), ("mesh", shd.make_mesh(2, 2, 2))):
        # The Trainer places the (unsharded) model's variables in their logical shardings.
        trainer = Trainer(fresh(base_model), OPT, "next_token", mesh=mesh, total_steps=5)
        losses[name] = [float(trainer.train_step(b)["loss"]) for b in batches]
        if name == "mesh":
            kernel = trainer.model.blocks[0].up.kernel[...]
            assert kernel.sharding.spec == jax.P("fsdp", "tensor")
            assert kernel.addressable_shards[0].data.shape == (32, 64)
            mu = jax.tree.leaves(trainer.state["opt_state"])
            assert any(getattr(x, "shape", None) == (64, 128) and not x.sharding.is_fully_replicated
                       for x in mu)
            shd.assert_sharded(trainer.model, mesh, min_size_bytes=4096)
    np.testing.assert_allclose(losses["one"], losses["mesh"], atol=1e-5, rtol=0)
    assert losses["one"][-1] < losses["one"][0]


def test_grad_accumulation_equals_big_batch(base_model):
    batches = make_batches(2, batch=16, ragged=True)
    results = []
    for k in (1, 4):
        trainer = Trainer(fresh(base_model), optax.sgd(0.5), "next_token", mesh=ONE,
                          grad_accum_steps=k)
        losses = [float(trainer.train_step(b)["loss"]) for b in batches]
        results.append((losses, flat_params(trainer.model)))
    # f32 sums in a different order: equal to ~1 ulp of the loss (relative 1e-6)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6, atol=0)
    for key, value in results[0][1].items():
        np.testing.assert_allclose(value, results[1][1][key], atol=1e-6, rtol=0, err_msg=key)
    # the updates are not trivially zero
    before = flat_params(base_model)
    assert np.abs(results[0][1]["head/kernel"] - before["head/kernel"]).max() > 1e-4


def test_frozen_subtree_and_frozen_group_do_not_change(base_model):
    opt = OptimizerConfig(learning_rate=1e-2, weight_decay=0.1,
                          param_groups=(("^head/", 0.0), ("^blocks/1/", 0.5)))
    before = flat_params(base_model)
    trainer = Trainer(fresh(base_model), opt, "next_token", mesh=ONE, trainable="all_but:embed",
                      total_steps=3)
    for b in make_batches(3):
        trainer.train_step(b)
    after = flat_params(trainer.model)
    for key in before:
        changed = not np.array_equal(before[key], after[key])
        frozen = key.startswith("embed/") or key.startswith("head/")
        assert changed != frozen, key
    assert "head/kernel" not in {path_str(p) for p, _ in
                                 jax.tree_util.tree_leaves_with_path(trainer.state["params"])}


def test_lora_only_changes_lora_params(lora_model):
    before_base = flat_params(lora_model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    before_lora = flat_params(lora_model, nnx.LoRAParam)
    assert len(before_lora) == 2 * 2 * LORA_CFG.depth  # a and b for q and v per block
    trainer = Trainer(fresh(lora_model), OPT, "next_token", mesh=ONE, trainable="lora",
                      total_steps=3)
    for b in make_batches(3):
        trainer.train_step(b)
    after_base = flat_params(trainer.model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    after_lora = flat_params(trainer.model, nnx.LoRAParam)
    for key in before_base:
        np.testing.assert_array_equal(before_base[key], after_base[key], err_msg=key)
    for key in before_lora:
        assert not np.array_equal(before_lora[key], after_lora[key]), key


def test_ema_tracks_parameters(base_model):
    decay = 0.9
    trainer = Trainer(fresh(base_model), optax.sgd(0.1), "next_token", mesh=ONE, ema_decay=decay)
    p0 = flat_params(trainer.model)
    trainer.train_step(make_batches(1)[0])
    p1 = flat_params(trainer.model)
    ema = flat_params(trainer.ema_model())
    for key in p0:
        np.testing.assert_allclose(ema[key], decay * p0[key] + (1 - decay) * p1[key], atol=1e-6)


def test_evaluate_reports_the_ema_weights_when_ema_is_on(base_model):
    batches = make_batches(3)
    trainer = Trainer(fresh(base_model), optax.sgd(0.5), "next_token", mesh=ONE, ema_decay=0.5)
    for b in batches:
        trainer.train_step(b)

    def loss_with(params):
        model = fresh(base_model)
        nnx.update(model, jax.tree.map(jnp.copy, params))
        probe = Trainer(model, optax.sgd(0.0), "next_token", mesh=ONE)
        return probe.evaluate(batches[:1])["eval_loss"]

    ev = trainer.evaluate(batches[:1])["eval_loss"]
    assert ev == pytest.approx(loss_with(trainer.state["ema"]), rel=1e-6)
    assert ev != pytest.approx(loss_with(trainer.state["params"]), rel=1e-4)


def test_evaluate_weights_by_tokens(base_model):
    trainer = Trainer(fresh(base_model), optax.sgd(0.0), "next_token", mesh=ONE)
    batches = make_batches(2, ragged=True)
    ev = trainer.evaluate(batches)
    model = trainer.model
    total, count = 0.0, 0.0
    for b in batches:
        logits = model(jnp.asarray(b["inputs"]))
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
        total += float(jnp.sum(xent * b["mask"]))
        count += float(b["mask"].sum())
    assert ev["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    assert ev["eval_tokens"] == count


def test_config_errors_before_compile(base_model):
    with pytest.raises(ValueError, match="registered losses: .*next_token"):
        Trainer(fresh(base_model), OPT, "no_such_loss", mesh=ONE, total_steps=3)
    with pytest.raises(ValueError, match="trainable='lora' selects no parameters"):
        Trainer(fresh(base_model), OPT, "next_token", mesh=ONE, trainable="lora", total_steps=3)
    with pytest.raises(ValueError, match="trainable='some'"):
        Trainer(fresh(base_model), OPT, "next_token", mesh=ONE, trainable="some", total_steps=3)
    with pytest.raises(ValueError, match="grad_accum_steps=0"):
        Trainer(fresh(base_model), OPT, "next_token", mesh=ONE, grad_accum_steps=0, total_steps=3)
    trainer = Trainer(fresh(base_model), OPT, "next_token", mesh=shd.make_mesh(4, 2, 1),
                      grad_accum_steps=2, total_steps=3)
    with pytest.raises(ValueError, match="batch_size=12 must be divisible by .*=16"):
        trainer.train_step(make_batches(1, batch=12)[0])
    assert trainer.step == 0


def test_loss_contract_is_enforced(base_model):
    def bad_loss(model, batch, rng):
        loss = jnp.mean(model(batch["inputs"]))
        return loss, {"loss": loss}

    trainer = Trainer(fresh(base_model), optax.sgd(0.1), bad_loss, mesh=ONE)
    with pytest.raises(ValueError, match="aux\\['loss_sum'\\] and aux\\['weight'\\]"):
        trainer.train_step(make_batches(1)[0])


def test_metrics_with_own_denominators_accumulate_like_one_batch(base_model):
    """``x_sum``/``x_count`` is a per-sequence mean next to the per-token loss; ``_max``/``_min``
    combine by max/min over micro-batches: 4 micro-batches report what one big batch does."""
    def loss_with_metrics(model, batch, rng):
        logits = model(batch["inputs"])
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        m = batch["mask"]
        per_seq = jnp.sum(xent * m, 1) / jnp.maximum(jnp.sum(m, 1), 1)
        aux = {"loss_sum": jnp.sum(xent * m), "weight": jnp.sum(m),
               "seq_loss_sum": jnp.sum(per_seq), "seq_loss_count": jnp.float32(m.shape[0]),
               "xent_max": jnp.max(jnp.where(m > 0, xent, -jnp.inf)),
               "xent_min": jnp.min(jnp.where(m > 0, xent, jnp.inf))}
        return aux["loss_sum"] / aux["weight"], aux

    batch = make_batches(1, ragged=True)[0]
    rows = []
    for k in (1, 4):
        trainer = Trainer(fresh(base_model), optax.sgd(0.0), loss_with_metrics, mesh=ONE,
                          grad_accum_steps=k)
        rows.append({n: float(v) for n, v in trainer.train_step(batch).items()})
    model = fresh(base_model)
    xent = optax.softmax_cross_entropy_with_integer_labels(model(batch["inputs"]),
                                                           batch["targets"])
    m = batch["mask"]
    per_seq = np.sum(np.asarray(xent) * m, 1) / m.sum(1)
    for row in rows:
        assert row["seq_loss"] == pytest.approx(per_seq.mean(), rel=1e-5)
        assert row["loss"] == pytest.approx(float(jnp.sum(xent * m) / m.sum()), rel=1e-5)
        assert row["seq_loss_count"] == 16
        assert row["xent_max"] == pytest.approx(float(np.max(np.where(m > 0, xent, -np.inf))),
                                                rel=1e-5)
        assert row["xent_min"] == pytest.approx(float(np.min(np.where(m > 0, xent, np.inf))),
                                                rel=1e-5)
    assert rows[0]["seq_loss"] != pytest.approx(rows[0]["loss"], rel=1e-3)  # really per sequence


def test_optimizer_schedule_groups_and_decay_mask():
    from w2v_jax.train.optim import make_optimizer, schedule

    cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=4, end_lr_ratio=0.1)
    sched = schedule(cfg, total_steps=20)
    assert float(sched(0)) == 0.0 and float(sched(2)) == pytest.approx(0.5)
    assert float(sched(4)) == pytest.approx(1.0) and float(sched(20)) == pytest.approx(0.1)
    params = {"a": {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}, "c": {"w": jnp.ones((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)

    def first_update(cfg):
        tx = make_optimizer(cfg, total_steps=10)
        updates, _ = tx.update(grads, tx.init(params), params)
        return updates

    plain = first_update(OptimizerConfig(learning_rate=0.1))
    grouped = first_update(OptimizerConfig(learning_rate=0.1, param_groups=(("^c/", 0.5),)))
    np.testing.assert_allclose(grouped["c"]["w"], 0.5 * plain["c"]["w"], rtol=1e-6)
    np.testing.assert_allclose(grouped["a"]["w"], plain["a"]["w"], rtol=1e-6)
    frozen = first_update(OptimizerConfig(learning_rate=0.1, param_groups=(("^a/", 0.0),)))
    assert not np.any(frozen["a"]["w"]) and np.all(frozen["c"]["w"])
    decayed = first_update(OptimizerConfig(learning_rate=0.1, weight_decay=0.5))
    # decoupled decay on matrices only: update = -lr * (adam + wd * p)
    np.testing.assert_allclose(decayed["a"]["w"] - plain["a"]["w"], -0.1 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(decayed["a"]["b"], plain["a"]["b"], rtol=1e-6)
    with pytest.raises(ValueError, match="optimizer.param_groups regex"):
        OptimizerConfig(param_groups=(("(", 1.0),))
    with pytest.raises(ValueError, match=r"config.optimizer: unknown field\(s\) \[.lr.\]"):
        OptimizerConfig.from_dict({"lr": 1.0})
