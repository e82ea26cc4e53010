"""Shared helpers of the world-model tests: the tiny config, fake clips and batches, models."""
import jax
import numpy as np
from flax import nnx

from w2v_jax import actions, geometry, sharding
from w2v_jax.data import view_pairs
from w2v_jax.models import world_model as wm

TINY = wm.WorldModelConfig.preset("tiny")
H = TINY.image_size
K16 = geometry.intrinsics_from_hfov(H, H, 90.0)


def fake_clip(n=6, size=H, seed=0):
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


def batch_of(b=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(b):
        clip = fake_clip(seed=seed + i)
        src, tgt = view_pairs.choose_views(clip["num_frames"], view_pairs.PairConfig(), rng)
        rows.append(view_pairs.make_example(clip, src, tgt))
    return {k: np.stack([r[k] for r in rows]) for k in ("source", "target", "plucker_src",
                                                         "plucker_tgt")}


def randomize(model, seed=0, scale=0.05):
    """Perturb every parameter (so the zero-initialised adaLN/final layers stop being zero)."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [x + scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    return model


def tiny_model(prediction="x0", seed=0, self_condition=False):
    config = TINY.replace(prediction=prediction, self_condition=self_condition)
    return sharding.create_unsharded(lambda: wm.WorldModel(config, rngs=nnx.Rngs(seed)))
