"""World-model sampling: the ODE sampler and imagine()."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2v_jax.models import world_model as wm
from world_model_fixtures import H, K16, batch_of, randomize, tiny_model


def test_sampler_shapes_and_determinism():
    model = randomize(tiny_model())
    b = batch_of(2)
    args = (b["source"], b["plucker_src"], b["plucker_tgt"])
    for method, cfg in (("euler", 1.0), ("heun", 2.0)):
        x1 = wm.sample(model, *args, key=jax.random.key(7), steps=2, method=method, cfg_scale=cfg)
        x2 = wm.sample(model, *args, key=jax.random.key(7), steps=2, method=method, cfg_scale=cfg)
        x3 = wm.sample(model, *args, key=jax.random.key(8), steps=2, method=method, cfg_scale=cfg)
        assert x1.shape == (2, 1, H, H, 3)
        assert float(jnp.abs(x1).max()) <= 1.0
        np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
        assert not np.allclose(np.asarray(x1), np.asarray(x3))
    # one Euler step of an x0 model lands exactly on its (clipped) x0 prediction at t = 1
    noise = jax.random.normal(jax.random.key(7), (2, 1, H, H, 3))
    x0 = jnp.clip(nnx.jit(lambda m: m(b["source"], b["plucker_src"], noise, b["plucker_tgt"],
                                      jnp.ones((2,))))(model), -1, 1)
    one = wm.sample(model, *args, key=jax.random.key(7), steps=1)
    np.testing.assert_allclose(np.asarray(one), np.asarray(x0), atol=1e-5)
    with pytest.raises(ValueError, match="method"):
        wm.sample(model, *args, key=jax.random.key(0), method="rk4")
    # a self-conditioned model gets zeros first, then the previous step's clipped x0
    sc_model = randomize(tiny_model(self_condition=True), scale=0.2)
    call = nnx.jit(lambda m, x, t, est: m(b["source"], b["plucker_src"], x, b["plucker_tgt"],
                                          jnp.full((2,), t), self_cond=est))
    x0_first = jnp.clip(call(sc_model, noise, 1.0, jnp.zeros_like(noise)), -1, 1)
    x_half = noise + (0.5 - 1.0) * (noise - x0_first) / 1.0
    x0_second = jnp.clip(call(sc_model, x_half, 0.5, x0_first), -1, 1)
    two = wm.sample(sc_model, *args, key=jax.random.key(7), steps=2)
    np.testing.assert_allclose(np.asarray(two), np.asarray(x0_second), atol=1e-5)
    without = jnp.clip(call(sc_model, x_half, 0.5, jnp.zeros_like(noise)), -1, 1)
    assert not np.allclose(np.asarray(two), np.asarray(without), atol=1e-4)
    reg = randomize(tiny_model("regression"))
    y1 = wm.sample(reg, *args, key=jax.random.key(0))
    y2 = wm.sample(reg, *args, key=jax.random.key(1))
    assert y1.shape == (2, 1, H, H, 3)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))



def test_imagine_views_are_deterministic_and_accept_params():
    from w2v_jax import sim

    scene = sim.sample_scene(3)
    c2w0 = sim.sample_camera(4, scene)
    traj = "move forward 0.4 meters; turn left 20 degrees"
    image = np.asarray(sim.render(scene, c2w0, K16, H, H)["rgb"])
    model = randomize(tiny_model())
    views = wm.imagine(model, image, K16, traj, steps=2, seed=0, key_frames=True)
    assert views.shape == (2, H, H, 3) and views.min() >= 0 and views.max() <= 1
    np.testing.assert_array_equal(views, wm.imagine(model, image, K16, traj, steps=2, seed=0,
                                                    key_frames=True))
    assert not np.array_equal(views, wm.imagine(model, image, K16, traj, steps=2, seed=1,
                                                key_frames=True))
    params = nnx.state(model, nnx.Param)
    same = wm.imagine((model.config, params), image, K16, traj, steps=2, seed=0, key_frames=True)
    np.testing.assert_allclose(same, views, atol=1e-5)


def test_imagine_input_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="16x16"):
        wm.imagine(model, np.zeros((8, 8, 3)), K16, "turn left 10 degrees", steps=1)
    with pytest.raises(ValueError, match="Trajectory, action text or a sequence"):
        wm.imagine(model, np.zeros((H, H, 3)), K16, 42, steps=1)
