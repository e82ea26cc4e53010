"""The world-model DiT: config presets, shapes and roles, self-conditioning input, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2v_jax import sharding
from w2v_jax.models import world_model as wm
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.trainer import Trainer
from world_model_fixtures import H, TINY, batch_of, randomize, tiny_model


def test_config_presets_and_validation():
    assert wm.WorldModelConfig.preset("small").image_size == 32
    with pytest.raises(ValueError, match="patch_size"):
        wm.WorldModelConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="prediction"):
        wm.WorldModelConfig(prediction="eps")
    with pytest.raises(ValueError, match="preset"):
        wm.WorldModelConfig.preset("huge")
    with pytest.raises(ValueError, match="self_condition"):
        wm.WorldModelConfig(prediction="regression", self_condition=True)
    with sharding.rules_context(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])):
        abstract = nnx.eval_shape(lambda: wm.WorldModel(wm.WorldModelConfig.preset("seva_scale"),
                                                        rngs=nnx.Rngs(0)))
    assert 0.9e9 < wm.count_params(abstract) < 1.2e9


def test_model_shapes_roles_and_input_errors():
    model = randomize(tiny_model())
    b = batch_of(2)
    forward = nnx.jit(lambda m, keep: m(b["source"], b["plucker_src"], b["target"],
                                        b["plucker_tgt"], jnp.full((2,), 0.5), source_keep=keep))
    out = forward(model, jnp.ones((2,)))
    assert out.shape == (2, 1, H, H, 3) and out.dtype == jnp.float32
    dropped = forward(model, jnp.zeros((2,)))
    assert not np.allclose(out, dropped)
    with pytest.raises(ValueError, match="target_rays"):
        model(b["source"], b["plucker_src"], b["target"], b["plucker_tgt"][..., :3],
              jnp.zeros((2,)))
    with pytest.raises(ValueError, match="self_condition is False"):
        model(b["source"], b["plucker_src"], b["target"], b["plucker_tgt"], jnp.zeros((2,)),
              self_cond=b["target"])
    # every parameter carries logical names from the shared set
    allowed = {name for name, _ in sharding.LOGICAL_RULES}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and set(names) <= allowed, (path, names)


def test_self_conditioning_input():
    b = batch_of(2)
    args = (b["source"], b["plucker_src"], b["target"], b["plucker_tgt"], jnp.full((2,), 0.5))
    fresh = tiny_model(self_condition=True)
    # zero-initialised projection: a new model ignores the estimate
    np.testing.assert_array_equal(np.asarray(fresh(*args, self_cond=b["target"])),
                                  np.asarray(fresh(*args)))
    model = randomize(fresh)
    none, zeros = model(*args), model(*args, self_cond=jnp.zeros_like(b["target"]))
    np.testing.assert_allclose(np.asarray(none), np.asarray(zeros), atol=1e-6)
    assert not np.allclose(np.asarray(model(*args, self_cond=b["target"])), np.asarray(none))
    with pytest.raises(ValueError, match="self_cond"):
        model(*args, self_cond=b["target"][..., :2])
    assert hasattr(model, "self_cond_embed") and not hasattr(tiny_model(), "self_cond_embed")




def test_sharded_step_equals_unsharded_on_2x2x2_mesh():
    batch = batch_of(8)
    mesh = sharding.make_mesh(2, 2, 2)
    opt = OptimizerConfig(learning_rate=3e-3, clip_norm=1.0)
    ctor = lambda: wm.WorldModel(TINY, rngs=nnx.Rngs(1))  # noqa: E731
    single = Trainer(sharding.create_unsharded(ctor), opt, "flow_matching", total_steps=3, seed=5)
    multi = Trainer(sharding.create_sharded(ctor, mesh), opt, "flow_matching", mesh=mesh,
                    total_steps=3, seed=5)
    sharding.assert_sharded(multi.model, mesh, min_size_bytes=16 * 1024)
    for _ in range(3):
        a = float(single.train_step(batch)["loss"])
        b = float(multi.train_step(batch)["loss"])
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (a, b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5),
                 single.state["params"], multi.state["params"])
