"""World-model losses: flow_matching (options via loss_kwargs), self-conditioning, regression."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2v_jax.models import world_model as wm
from w2v_jax.train.losses import get_loss
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.trainer import Trainer
from world_model_fixtures import batch_of, randomize, tiny_model


def test_flow_matching_loss_decreases():
    batch = batch_of(8)
    trainer = Trainer(tiny_model(), OptimizerConfig(learning_rate=3e-3), "flow_matching",
                      total_steps=25)
    before = trainer.evaluate([batch])["eval_loss"]  # fixed rng: same t, noise and dropout
    for _ in range(25):
        trainer.train_step(batch)
    after = trainer.evaluate([batch])["eval_loss"]
    assert after < 0.7 * before, (before, after)


def test_world_model_ema_after_one_step_is_the_decayed_mix():
    batch = batch_of(8)
    trainer = Trainer(tiny_model(), OptimizerConfig(learning_rate=3e-3), "flow_matching",
                      total_steps=25, ema_decay=0.75)
    p0 = jax.tree.map(np.asarray, trainer.state["params"])
    trainer.train_step(batch)
    p1 = jax.tree.map(np.asarray, trainer.state["params"])
    ema = jax.tree.map(np.asarray, trainer.state["ema"])
    jax.tree.map(lambda e, a, b: np.testing.assert_allclose(e, 0.75 * a + 0.25 * b, atol=1e-6),
                 ema, p0, p1)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))
    assert isinstance(trainer.ema_model(), wm.WorldModel)


def test_world_model_losses_refuse_the_wrong_model_or_batch():
    batch = batch_of(2)
    with pytest.raises(ValueError, match="regression"):
        get_loss("regression")(tiny_model("x0"), batch, jax.random.key(0))
    with pytest.raises(ValueError, match="source, target"):
        get_loss("flow_matching")(tiny_model("x0"), {"source": batch["source"]},
                                  jax.random.key(0))


class _SpyModel:
    """Records the flow times a loss passes to the model; predicts zeros."""

    config = wm.WorldModelConfig.preset("tiny")

    def __call__(self, source, source_rays, target, target_rays, t, source_keep=None):
        self.t = np.asarray(t)
        return jnp.zeros_like(target)


class _SelfCondSpy:
    """Records every call of a self-conditioned loss; predicts 2 * x_t (clipped to an estimate)."""

    config = wm.WorldModelConfig.preset("tiny").replace(self_condition=True)

    def __init__(self):
        self.calls = []

    def __call__(self, source, source_rays, target, target_rays, t, source_keep=None,
                 self_cond=None):
        self.calls.append(dict(x_t=np.asarray(target), t=np.asarray(t),
                               keep=np.asarray(source_keep),
                               self_cond=None if self_cond is None else np.asarray(self_cond)))
        return 2.0 * target


def test_self_conditioned_loss_feeds_first_pass_estimate():
    spy, batch = _SelfCondSpy(), batch_of(8)
    get_loss("flow_matching", terminal_prob=0.25)(spy, batch, jax.random.key(3))
    first, second = spy.calls
    assert first["x_t"].shape[0] == 4 and first["self_cond"] is None  # half of the batch
    np.testing.assert_array_equal(first["x_t"], second["x_t"][:4])  # same noisy inputs,
    np.testing.assert_array_equal(first["keep"], second["keep"][:4])  # same CFG dropout
    np.testing.assert_allclose(second["self_cond"][:4], np.clip(2.0 * first["x_t"], -1, 1))
    assert not np.any(second["self_cond"][4:])  # the other half: no estimate
    # the estimate carries no gradient: with out = w * (x_t + self_cond), d loss / d w equals the
    # gradient of the same loss with the estimate held constant
    x_t, x0 = second["x_t"], np.asarray(batch["target"])

    class Scaled(_SelfCondSpy):
        def __init__(self, w):
            self.w = w

        def __call__(self, source, source_rays, target, target_rays, t, source_keep=None,
                     self_cond=None):
            return self.w * (target + (0.0 if self_cond is None else self_cond))

    def through_loss(w):
        return get_loss("flow_matching", terminal_prob=0.25)(Scaled(w), batch, jax.random.key(3))[0]

    def held_constant(w):
        est = np.clip(0.3 * x_t[:4], -1, 1)  # the first pass at w = 0.3, as a constant
        est = np.concatenate([est, np.zeros_like(est)])
        return jnp.mean(jnp.mean(jnp.square(w * (x_t + est) - x0), axis=(1, 2, 3, 4)))

    np.testing.assert_allclose(float(through_loss(0.3)), float(held_constant(0.3)), rtol=1e-5)
    np.testing.assert_allclose(float(jax.grad(through_loss)(0.3)),
                               float(jax.grad(held_constant)(0.3)), rtol=1e-4)
    model = randomize(tiny_model(self_condition=True))
    with pytest.raises(ValueError, match="self_cond_prob > 0"):
        get_loss("flow_matching", self_cond_prob=0.0)(model, batch, jax.random.key(0))
    with pytest.raises(ValueError, match="self_cond_prob = 0"):
        get_loss("flow_matching", self_cond_prob=0.5)(tiny_model(), batch, jax.random.key(0))
    with pytest.raises(ValueError, match="self_cond_prob must be in"):
        get_loss("flow_matching", self_cond_prob=2.0)


def test_self_conditioned_loss_decreases():
    batch = batch_of(8)
    trainer = Trainer(tiny_model(self_condition=True), OptimizerConfig(learning_rate=3e-3),
                      "flow_matching", loss_kwargs={"terminal_prob": 0.25}, total_steps=25)
    before = trainer.evaluate([batch])["eval_loss"]
    for _ in range(25):
        trainer.train_step(batch)
    after = trainer.evaluate([batch])["eval_loss"]
    assert after < 0.9 * before, (before, after)
    sc = trainer.state["params"]["self_cond_embed"]["kernel"]
    assert float(jnp.abs(jnp.asarray(sc)).max()) > 0  # the estimate's projection was trained


def test_flow_time_distributions():
    from w2v_jax.train.losses import flow_matching as fm

    key = jax.random.key(0)
    standard, shifted = fm.sample_time(key, 4000), fm.sample_time(key, 4000, mean=1.0)
    uniform = fm.sample_time(key, 4000, "uniform")
    assert abs(np.median(standard) - 0.5) < 0.03
    assert abs(np.median(shifted) - 1 / (1 + np.exp(-1.0))) < 0.03  # sigmoid(1) = 0.731
    assert abs(np.mean(uniform < 0.3) - 0.3) < 0.03 and uniform.min() > 0
    spy, batch = _SpyModel(), batch_of(64)
    get_loss("flow_matching", terminal_prob=0.25)(spy, batch, jax.random.key(1))
    assert 0.1 < np.mean(spy.t == 1.0) < 0.45  # a quarter of the examples at exactly t = 1
    get_loss("flow_matching", terminal_prob=0.5)(spy, batch, jax.random.key(1))
    assert 0.35 < np.mean(spy.t == 1.0) < 0.65  # half of them
    get_loss("flow_matching")(spy, batch, jax.random.key(1))
    assert not np.any(spy.t == 1.0)
    get_loss("flow_matching", time_mean=1.0)(spy, batch, jax.random.key(1))
    assert np.mean(spy.t > 0.5) > 0.7
    with pytest.raises(ValueError, match="time_std"):
        get_loss("flow_matching", time_std=0.0)
    with pytest.raises(ValueError, match="terminal_prob"):
        get_loss("flow_matching", terminal_prob=1.5)
    with pytest.raises(ValueError, match=r"\['terminal'\] are not options of loss 'flow_matching'"):
        get_loss("flow_matching", terminal=0.5)


@pytest.mark.slow
def test_regression_and_velocity_losses_decrease():
    batch = batch_of(8)
    # the twin starts from an all-zero output (adaLN-Zero + an empty target slot) and must route
    # everything through attention: ~0.92 after 25 steps, so a weaker bar that still catches
    # "no learning"; the velocity loss is dominated by the noise target: it only has to fall
    for loss, prediction, factor in (("regression", "regression", 0.95),
                                     ("flow_matching", "velocity", 1.0)):
        trainer = Trainer(tiny_model(prediction), OptimizerConfig(learning_rate=3e-3), loss,
                          total_steps=25)
        before = trainer.evaluate([batch])["eval_loss"]
        for _ in range(25):
            trainer.train_step(batch)
        after = trainer.evaluate([batch])["eval_loss"]
        assert after < factor * before, (loss, prediction, before, after)
