"""World model: rays, model, losses, sampler, Trainer integration (EMA, sharding), teachers,
metrics and the clip pipeline. Tiny configs only (16 px, width 64, 2 layers)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from w2v_jax import actions, geometry
from w2v_jax.data import realestate10k, view_pairs as clips
from w2v_jax.models import world_model as wm
from w2v_jax.models.world_model import metrics
from w2v_jax import sharding
from w2v_jax.train.losses import get_loss
from w2v_jax.train.runs import load_world_model
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.trainer import Trainer

TINY = wm.WorldModelConfig.preset("tiny")
H = TINY.image_size
K16 = geometry.intrinsics_from_hfov(H, H, 90.0)


def _fake_clip(n=6, size=H, seed=0):
    """A clip dict with random frames along a forward-then-turn trajectory."""
    rng = np.random.default_rng(seed)
    c2w0 = geometry.look_c2w([0.3, -0.2, 1.4], 30.0, 10.0)
    traj = actions.parse_actions("move forward 0.4 meters; turn left 20 degrees")
    poses, _ = actions.integrate(traj, c2w0)
    poses = poses[:n]
    return {
        "frames": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "c2w": poses.astype(np.float32),
        "K": geometry.intrinsics_from_hfov(size, size, 90.0),
        "num_frames": n,
        "depth": rng.uniform(1, 4, (n, size, size)).astype(np.float16),
        "instance": rng.integers(-1, 3, (n, size, size)).astype(np.int8),
    }


def _batch(b=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(b):
        clip = _fake_clip(seed=seed + i)
        src, tgt = clips.choose_views(clip["num_frames"], clips.PairConfig(), rng)
        rows.append(clips.make_example(clip, src, tgt))
    return {k: np.stack([r[k] for r in rows]) for k in ("source", "target", "plucker_src",
                                                         "plucker_tgt")}


def _randomize(model, seed=0, scale=0.05):
    """Perturb every parameter (so the zero-initialised adaLN/final layers stop being zero)."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [x + scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    return model


def _tiny(prediction="x0", seed=0, self_condition=False):
    config = TINY.replace(prediction=prediction, self_condition=self_condition)
    return sharding.create_unsharded(lambda: wm.WorldModel(config, rngs=nnx.Rngs(seed)))


# ------------------------------------------------------------------------------------ rays


def test_source_plucker_rays_are_identity_rays():
    clip = _fake_clip()
    for flip in (False, True):
        ex = clips.make_example(clip, np.array([2]), np.array([5]), flip=flip)
        rays = ex["plucker_src"][0]
        np.testing.assert_allclose(rays[..., 3:], 0.0, atol=1e-6)  # moment o x d = 0
        np.testing.assert_allclose(ex["rel_src"][0], np.eye(4), atol=1e-5)
        K = ex["K"]
        j, i = np.meshgrid(np.arange(H) + 0.5, np.arange(H) + 0.5)
        d = np.stack([(j - K[0, 2]) / K[0, 0], (i - K[1, 2]) / K[1, 1], np.ones_like(j)], -1)
        np.testing.assert_allclose(rays[..., :3], d / np.linalg.norm(d, axis=-1, keepdims=True),
                                   atol=1e-6)
    # target rays: metric relative pose of frame 5 seen from frame 2 (not renormalised)
    ex = clips.make_example(clip, np.array([2]), np.array([5]))
    c2w = clip["c2w"].astype(np.float64)
    rel = geometry.relative_pose(c2w[2], c2w[5])
    np.testing.assert_allclose(ex["rel_tgt"][0], rel, atol=1e-5)
    np.testing.assert_allclose(ex["plucker_tgt"][0], geometry.plucker_rays(K16, rel, H, H),
                               atol=1e-5)


def test_flip_mirrors_images_and_rays_consistently():
    clip = _fake_clip()
    a = clips.make_example(clip, np.array([0]), np.array([5]), flip=False)
    b = clips.make_example(clip, np.array([0]), np.array([5]), flip=True)
    np.testing.assert_array_equal(b["target"], a["target"][:, :, ::-1])
    # mirrored ray at (i, W-1-j): d' = F d, moment' = (F o) x (F d) = -F (o x d)
    F = np.array([-1.0, 1.0, 1.0])
    ra, rb = a["plucker_tgt"][0], b["plucker_tgt"][0][:, ::-1]
    np.testing.assert_allclose(rb[..., :3], ra[..., :3] * F, atol=1e-5)
    np.testing.assert_allclose(rb[..., 3:], -ra[..., 3:] * F, atol=1e-5)


def test_choose_views_and_pair_dataset():
    rng = np.random.default_rng(0)
    cfg = clips.PairConfig(first_source_prob=1.0, last_target_prob=1.0)
    s, t = clips.choose_views(7, cfg, rng)
    assert s.tolist() == [0] and t.tolist() == [6]
    cfg = clips.PairConfig(num_source=2, num_target=3)
    for _ in range(20):
        s, t = clips.choose_views(9, cfg, rng)
        assert len(set(s.tolist() + t.tolist())) == 5
    with pytest.raises(ValueError, match="num_frames"):
        clips.choose_views(1, cfg, rng)
    source = [_fake_clip(seed=i, size=32) for i in range(4)]
    ds = clips.pair_dataset(source, batch_size=2, config=clips.PairConfig(image_size=16), seed=3)
    it = iter(ds)
    first = next(it)
    assert first["source"].shape == (2, 1, 16, 16, 3)
    assert first["plucker_tgt"].shape == (2, 1, 16, 16, 6)
    assert first["source"].min() >= -1 and first["source"].max() <= 1
    state = it.get_state()
    b1 = next(it)
    it.set_state(state)
    b2 = next(it)
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])


def test_realestate10k_loader(tmp_path):
    root = tmp_path / "re10k"
    frames = root / "seq0"
    frames.mkdir(parents=True)
    w2c = []
    lines = ["https://www.youtube.com/watch?v=xyz"]
    for f in range(3):
        c2w = geometry.egocentric_step(forward_m=0.5 * f, yaw_right_deg=10.0 * f).astype(np.float64)
        m = np.linalg.inv(c2w)[:3]
        w2c.append(m)
        ts = 1000 * (f + 1)
        lines.append(" ".join([str(ts), "0.5", "0.8", "0.5", "0.5", "0", "0"]
                              + [f"{v:.9f}" for v in m.reshape(-1)]))
        Image.fromarray(np.full((40, 64, 3), 40 * f, np.uint8)).save(frames / f"{ts}.png")
    (root / "seq0.txt").write_text("\n".join(lines) + "\n")
    source = realestate10k.RealEstate10KSource(str(root), image_size=16, max_frames=4)
    clip = source[0]
    assert clip["frames"].shape == (4, 16, 16, 3) and clip["num_frames"] == 3
    np.testing.assert_array_equal(clip["frame_mask"], [True, True, True, False])
    expected = geometry.egocentric_step(forward_m=1.0, yaw_right_deg=20.0)
    np.testing.assert_allclose(clip["c2w"][2], expected, atol=1e-5)
    # fx = 0.5 * 64 px, crop 40x40 centred, resize to 16: fx' = 32 * 16 / 40; cx' = (32 - 12) * 0.4
    np.testing.assert_allclose(clip["K"], [[12.8, 0, 8.0], [0, 12.8, 8.0], [0, 0, 1]], atol=1e-5)
    assert clip["frames"][1].mean() == 40
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.txt").write_text("123 1 2 3\n456 1 2 3\n")
    with pytest.raises(ValueError, match="expected 19 numbers"):
        realestate10k.read_realestate10k_cameras(str(bad / "x.txt"))


# ----------------------------------------------------------------------------------- model


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
    model = _randomize(_tiny())
    b = _batch(2)
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
    b = _batch(2)
    args = (b["source"], b["plucker_src"], b["target"], b["plucker_tgt"], jnp.full((2,), 0.5))
    fresh = _tiny(self_condition=True)
    # zero-initialised projection: a new model ignores the estimate
    np.testing.assert_array_equal(np.asarray(fresh(*args, self_cond=b["target"])),
                                  np.asarray(fresh(*args)))
    model = _randomize(fresh)
    none, zeros = model(*args), model(*args, self_cond=jnp.zeros_like(b["target"]))
    np.testing.assert_allclose(np.asarray(none), np.asarray(zeros), atol=1e-6)
    assert not np.allclose(np.asarray(model(*args, self_cond=b["target"])), np.asarray(none))
    with pytest.raises(ValueError, match="self_cond"):
        model(*args, self_cond=b["target"][..., :2])
    assert hasattr(model, "self_cond_embed") and not hasattr(_tiny(), "self_cond_embed")


def test_flow_matching_loss_decreases_and_ema_update():
    batch = _batch(8)
    trainer = Trainer(_tiny(), OptimizerConfig(learning_rate=3e-3), "flow_matching",
                      total_steps=25, ema_decay=0.75)
    before = trainer.evaluate([batch])["eval_loss"]  # fixed rng: same t, noise and dropout
    p0 = jax.tree.map(np.asarray, trainer.state["params"])
    trainer.train_step(batch)
    p1 = jax.tree.map(np.asarray, trainer.state["params"])
    ema = jax.tree.map(np.asarray, trainer.state["ema"])
    # EMA after one step: decay * initial + (1 - decay) * updated
    jax.tree.map(lambda e, a, b: np.testing.assert_allclose(e, 0.75 * a + 0.25 * b, atol=1e-6),
                 ema, p0, p1)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))
    for _ in range(24):
        trainer.train_step(batch)
    after = trainer.evaluate([batch])["eval_loss"]
    assert after < 0.7 * before, (before, after)
    assert isinstance(trainer.ema_model(), wm.WorldModel)
    with pytest.raises(ValueError, match="regression"):
        get_loss("regression")(_tiny("x0"), batch, jax.random.key(0))
    with pytest.raises(ValueError, match="source, target"):
        get_loss("flow_matching")(_tiny("x0"), {"source": batch["source"]}, jax.random.key(0))


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
    spy, batch = _SelfCondSpy(), _batch(8)
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
    model = _randomize(_tiny(self_condition=True))
    with pytest.raises(ValueError, match="self_cond_prob > 0"):
        get_loss("flow_matching", self_cond_prob=0.0)(model, batch, jax.random.key(0))
    with pytest.raises(ValueError, match="self_cond_prob = 0"):
        get_loss("flow_matching", self_cond_prob=0.5)(_tiny(), batch, jax.random.key(0))
    with pytest.raises(ValueError, match="self_cond_prob must be in"):
        get_loss("flow_matching", self_cond_prob=2.0)


def test_self_conditioned_loss_decreases():
    batch = _batch(8)
    trainer = Trainer(_tiny(self_condition=True), OptimizerConfig(learning_rate=3e-3),
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
    spy, batch = _SpyModel(), _batch(64)
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
    batch = _batch(8)
    # the twin starts from an all-zero output (adaLN-Zero + an empty target slot) and must route
    # everything through attention: ~0.92 after 25 steps, so a weaker bar that still catches
    # "no learning"; the velocity loss is dominated by the noise target: it only has to fall
    for loss, prediction, factor in (("regression", "regression", 0.95),
                                     ("flow_matching", "velocity", 1.0)):
        trainer = Trainer(_tiny(prediction), OptimizerConfig(learning_rate=3e-3), loss,
                          total_steps=25)
        before = trainer.evaluate([batch])["eval_loss"]
        for _ in range(25):
            trainer.train_step(batch)
        after = trainer.evaluate([batch])["eval_loss"]
        assert after < factor * before, (loss, prediction, before, after)


def test_sharded_step_equals_unsharded_on_2x2x2_mesh():
    batch = _batch(8)
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


# --------------------------------------------------------------------------------- sampler


def test_sampler_shapes_and_determinism():
    model = _randomize(_tiny())
    b = _batch(2)
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
    sc_model = _randomize(_tiny(self_condition=True), scale=0.2)
    call = nnx.jit(lambda m, x, t, est: m(b["source"], b["plucker_src"], x, b["plucker_tgt"],
                                          jnp.full((2,), t), self_cond=est))
    x0_first = jnp.clip(call(sc_model, noise, 1.0, jnp.zeros_like(noise)), -1, 1)
    x_half = noise + (0.5 - 1.0) * (noise - x0_first) / 1.0
    x0_second = jnp.clip(call(sc_model, x_half, 0.5, x0_first), -1, 1)
    two = wm.sample(sc_model, *args, key=jax.random.key(7), steps=2)
    np.testing.assert_allclose(np.asarray(two), np.asarray(x0_second), atol=1e-5)
    without = jnp.clip(call(sc_model, x_half, 0.5, jnp.zeros_like(noise)), -1, 1)
    assert not np.allclose(np.asarray(two), np.asarray(without), atol=1e-4)
    reg = _randomize(_tiny("regression"))
    y1 = wm.sample(reg, *args, key=jax.random.key(0))
    y2 = wm.sample(reg, *args, key=jax.random.key(1))
    assert y1.shape == (2, 1, H, H, 3)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))


# -------------------------------------------------------------------------------- teachers


def test_imagine_and_renderer_teacher_shapes():
    from w2v_jax import sim

    scene = sim.sample_scene(3)
    c2w0 = sim.sample_camera(4, scene)
    traj = "move forward 0.4 meters; turn left 20 degrees"
    oracle = wm.RendererTeacher(scene, c2w0, supersample=1)
    image = np.asarray(sim.render(scene, c2w0, K16, H, H)["rgb"])
    end = oracle(image, K16, traj)
    keys = oracle(image, K16, traj, key_frames=True)
    assert end.shape == (1, H, H, 3) and keys.shape == (2, H, H, 3)
    # batched vs single render: f32 rounding
    np.testing.assert_allclose(keys[-1], end[0], atol=1e-5)
    poses, _ = actions.integrate(actions.parse_actions(traj), c2w0)
    truth = np.asarray(sim.render(scene, poses[-1], K16, H, H)["rgb"])
    np.testing.assert_allclose(end[0], truth, atol=1e-5)

    model = _randomize(_tiny())
    views = wm.imagine(model, image, K16, traj, steps=2, seed=0, key_frames=True)
    assert views.shape == (2, H, H, 3) and views.min() >= 0 and views.max() <= 1
    np.testing.assert_array_equal(views, wm.imagine(model, image, K16, traj, steps=2, seed=0,
                                                    key_frames=True))
    params = nnx.state(model, nnx.Param)
    same = wm.imagine((model.config, params), image, K16, traj, steps=2, seed=0, key_frames=True)
    np.testing.assert_allclose(same, views, atol=1e-5)
    teacher = wm.WorldModelTeacher(model, steps=2)
    np.testing.assert_array_equal(teacher(image, K16, actions.parse_actions(traj), key_frames=True),
                                  views)
    with pytest.raises(ValueError, match="16x16"):
        wm.imagine(model, np.zeros((8, 8, 3)), K16, traj, steps=1)
    with pytest.raises(ValueError, match="trajectory"):
        wm.imagine(model, image, K16, 42, steps=1)


# --------------------------------------------------------------------------------- metrics


def test_psnr_ssim_and_masks():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.psnr(a, b), 10 * np.log10(1 / mse), rtol=1e-5)
    mask = np.zeros((2, 16, 16), bool)
    mask[:, :8] = True
    mse_m = np.mean((a - b)[:, :8] ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.psnr(a, b, mask), 10 * np.log10(1 / mse_m), rtol=1e-5)
    assert np.isnan(metrics.psnr(a, b, np.zeros_like(mask))).all()
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-5)
    s = np.asarray(metrics.ssim(a, b))
    assert (s < 0.95).all() and (s > 0).all()
    # masked SSIM over everything equals the plain one
    np.testing.assert_allclose(metrics.ssim(a, b, np.ones_like(mask)), s, atol=1e-6)
    # reference: scipy's 11-tap gaussian (sigma 1.5, radius 5) with the borders cropped = 'valid'
    from scipy.ndimage import gaussian_filter

    def blur(x):
        y = gaussian_filter(x.astype(np.float64), sigma=1.5, truncate=3.4, axes=(0, 1))
        return y[5:-5, 5:-5]

    x, y = a[0], b[0]
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    np.testing.assert_allclose(float(s[0]), ref.mean(), atol=1e-5)


def test_covisibility_warp_and_reprojection_on_renders():
    from w2v_jax import sim

    scene = sim.sample_scene(11)
    c2w0 = sim.sample_camera(12, scene)
    K = geometry.intrinsics_from_hfov(32, 32, 90.0)
    c2w1 = c2w0 @ geometry.egocentric_step(right_m=0.3, forward_m=0.3, yaw_right_deg=15.0)
    r0, r1 = (jax.tree.map(np.asarray, sim.render(scene, c, K, 32, 32, 2)) for c in (c2w0, c2w1))
    rel = geometry.relative_pose(c2w0, c2w1)
    assert metrics.covisible_mask(r0["depth"], r0["depth"], K, np.eye(4)).all()
    same = metrics.warp_baseline(r0["rgb"], r0["depth"], K, np.eye(4))
    np.testing.assert_allclose(same, r0["rgb"])
    cov = metrics.covisible_mask(r1["depth"], r0["depth"], K, rel)
    assert 0.3 < cov.mean() < 1.0
    warp = metrics.warp_baseline(r0["rgb"], r0["depth"], K, rel)
    psnr_warp = float(metrics.psnr(warp, r1["rgb"], cov))
    psnr_copy = float(metrics.psnr(r0["rgb"], r1["rgb"], cov))
    assert psnr_warp > psnr_copy + 3.0
    e_true = metrics.reprojection_error(r1["rgb"], r0["rgb"], r0["depth"], r1["depth"], K, rel)
    e_copy = metrics.reprojection_error(r0["rgb"], r0["rgb"], r0["depth"], r1["depth"], K, rel)
    assert e_true < 0.5 * e_copy


def test_box_matcher():
    truth = np.full((16, 16, 3), 0.8, np.float32)
    inst = np.full((16, 16), -1, np.int32)
    truth[2:6, 3:9] = [0.9, 0.1, 0.1]
    inst[2:6, 3:9] = 0
    truth[10:14, 10:15] = [0.1, 0.2, 0.9]
    inst[10:14, 10:15] = 1
    res = metrics.match_boxes(truth, truth, inst)
    np.testing.assert_allclose(res["iou"], [1.0, 1.0])
    assert res["visible_pred"].all()
    pred = np.full_like(truth, 0.8)
    pred[3:7, 3:9] = [0.85, 0.15, 0.1]  # red object shifted down by one row, blue one missing
    res = metrics.match_boxes(pred, truth, inst, extra_prototypes={2: [0.1, 0.9, 0.1]})
    np.testing.assert_allclose(res["iou"], [18 / 30, 0.0, np.nan])  # id 2: not truly visible
    np.testing.assert_array_equal(res["visible_pred"], [True, False, False])
    np.testing.assert_array_equal(res["visible_true"], [True, True, False])


# -------------------------------------------------------------------------------- launcher


@pytest.mark.slow
def test_launcher_tiny_run_and_reload(tmp_path):
    from w2v_jax.data.posed_clips import write_clips
    from w2v_jax.sim.clips import ClipConfig
    from experiments.configs import world_model as wm_configs
    from w2v_jax.train.run import train_from_config

    data = write_clips(str(tmp_path / "clips"), 2, 0, ClipConfig(resolution=16, supersample=1),
                       eval_fraction=0.5, progress=False)
    config = wm_configs.get_config("tiny")
    config.data.data_dir = data["path"]
    config.total_steps = 4
    config.progress = False
    trainer = train_from_config(config, str(tmp_path / "run"))
    assert trainer.step == 4
    model = load_world_model(str(tmp_path / "run"))
    ema = trainer.ema_model()
    b = _batch(2)
    t = jnp.full((2,), 0.3)
    np.testing.assert_allclose(
        np.asarray(model(b["source"], b["plucker_src"], b["target"], b["plucker_tgt"], t)),
        np.asarray(ema(b["source"], b["plucker_src"], b["target"], b["plucker_tgt"], t)), atol=1e-5)
    assert os.path.exists(tmp_path / "run" / "metrics.jsonl")

    # the evaluation script on the held-out split: acceptance keys per split, the steps it read
    out = tmp_path / "eval"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-m", "experiments.eval_world_model", f"--workdir={tmp_path / 'run'}",
         f"--regression_workdir={tmp_path / 'run'}", f"--data_dir={data['path']}",
         "--steps=2", "--cfg=2.0", "--batch_size=4", "--max_pairs=6", "--sheet_rows=2",
         f"--out={out}", f"--results_json={tmp_path / 'results.json'}"],
        cwd=root, check=True, capture_output=True)
    with open(tmp_path / "results.json") as f:
        summary = json.load(f)
    assert summary["meta"]["train_steps"] == summary["meta"]["regression_train_steps"] == 4
    assert summary["all"]["num_pairs"] == 6
    keys = ("psnr_covisible", "psnr_covisible_copy_source", "psnr_full", "ssim_full", "box_iou",
            "box_iou_regression")
    for split in ("moves", "turns", "presets"):
        assert set(keys) <= set(summary.get(split, keys)), split
    assert all(np.isfinite(summary["all"][k]) for k in keys), summary["all"]
    assert summary["all"]["psnr_full_truth"] == 100.0  # the truth is the metric's ceiling
    assert os.path.exists(out / "sheet.png") and os.path.exists(out / "eval.md")
