"""``imagine``: the trained world model's answer to "what would the camera see after this trajectory?".

``imagine(model, image, K, trajectory, *, steps, cfg, seed, key_frames=False, method)`` returns views
(V, H, W, 3) float32 in [0, 1]: V = 1 (the view at the end of the trajectory) or, with
``key_frames=True``, one view per key frame after the source (the end of every action segment; the
last one is the end of the trajectory). ``trajectory`` is an ``actions.Trajectory``, a sequence of
``actions.Action`` or action text ("move forward 1 meters; turn left 30 degrees"). ``K`` (3, 3) is
in pixels of ``image`` (H, W, 3; uint8 or float in [0, 1]).

**Single-target from the source, not autoregressive**: every requested view is generated from the
source image alone, conditioned on its pose relative to the source (metric Plücker rays), so errors
do not accumulate along the trajectory and each view matches the model's training distribution
(source -> any later frame of a clip). All requested views are sampled in one batched call; a model
with ``num_target = N > 1`` generates them jointly, N per pass (multi-target, SEVA/CAT3D style), the
last chunk padded by repeating its final pose. A model with ``num_source = M > 1`` gets the source
image in all M source slots. The teachers of the distillation set (this model, or the renderer as
the oracle) share one interface in ``w2v_jax.supervision.teachers``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax import actions, geometry
from w2v_jax.processing.image import to_unit_float
from w2v_jax.models.world_model import sampler
from w2v_jax.models.world_model.config import WorldModelConfig
from w2v_jax.models.world_model.dit import WorldModel


def source_image(image, size: int) -> np.ndarray:
    """The source view as float32 [0, 1] (H, W, 3); ValueError unless it is size x size."""
    img = to_unit_float(image, np.float32)
    if img.shape[:2] != (size, size):
        raise ValueError(f"image must be {size}x{size} pixels for this world model, got "
                         f"{img.shape[0]}x{img.shape[1]} (resize it and scale K accordingly)")
    return img


def _as_model(model_or_params) -> WorldModel:
    if isinstance(model_or_params, WorldModel):
        return model_or_params
    if (isinstance(model_or_params, tuple) and len(model_or_params) == 2
            and isinstance(model_or_params[0], WorldModelConfig)):
        config, params = model_or_params
        with nnx.use_eager_sharding(False):
            model = nnx.eval_shape(lambda: WorldModel(config, rngs=nnx.Rngs(0)))
        state = nnx.state(model, nnx.Param)
        pure = params.to_pure_dict() if isinstance(params, nnx.State) else params
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
        nnx.update(model, state)
        return model
    raise ValueError("model_or_params must be a WorldModel or a (WorldModelConfig, params) pair, "
                     f"got {type(model_or_params).__name__}")


def imagine(model_or_params, image, K, trajectory, *, steps: int = 25, cfg: float = 1.0,
            seed: int = 0, key_frames: bool = False, method: str = "euler") -> np.ndarray:
    """Imagined view(s) (V, H, W, 3) float32 in [0, 1] after ``trajectory`` (module docstring).

    ``model_or_params``: a :class:`WorldModel` or ``(WorldModelConfig, params)`` with params an
    ``nnx.State`` or its pure dict. ``steps``/``method``: the ODE sampler; ``cfg``: guidance scale
    (1 = none); ``seed``: the initial noise (same seed -> same views).
    """
    model = _as_model(model_or_params)
    c = model.config
    img = source_image(image, c.image_size)
    K = np.asarray(K, np.float32)
    rel = actions.target_poses(trajectory, key_frames)
    v, n, h = len(rel), c.num_target, c.image_size
    chunks = -(-v // n)
    padded = np.concatenate([rel, np.repeat(rel[-1:], chunks * n - v, 0)]).reshape(chunks, n, 4, 4)
    rays_src = np.broadcast_to(geometry.plucker_rays(K, np.eye(4, dtype=np.float32), h, h),
                               (chunks, c.num_source, h, h, 6))
    rays_tgt = np.stack([[geometry.plucker_rays(K, p, h, h) for p in chunk] for chunk in padded])
    src = np.broadcast_to(img * 2.0 - 1.0, (chunks, c.num_source, h, h, 3))
    out = sampler.sample(model, src, rays_src, rays_tgt, key=jax.random.key(int(seed)),
                         steps=steps, method=method, cfg_scale=cfg)
    views = (np.asarray(out).reshape(chunks * n, h, h, 3)[:v] + 1.0) / 2.0
    return np.clip(views, 0.0, 1.0).astype(np.float32)
