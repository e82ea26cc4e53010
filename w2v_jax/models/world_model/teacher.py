"""Teachers: "what would the camera see after this trajectory?" — imagined or rendered.

Both teachers answer ``teacher(image, K, trajectory, *, steps, cfg, seed, key_frames=False)`` with
views (V, H, W, 3) float32 in [0, 1]: V = 1 (the view at the end of the trajectory) or, with
``key_frames=True``, one view per key frame after the source (the end of every action segment; the
last one is the end of the trajectory). ``trajectory`` is an ``actions.Trajectory``, a sequence of
``actions.Action`` or action text ("move forward 1 meters; turn left 30 degrees"). ``K`` (3, 3) is
in
pixels of ``image`` (H, W, 3; uint8 or float in [0, 1]).

- :func:`imagine` / :class:`WorldModelTeacher`: the trained world model (the method).
  **Single-target from the source, not autoregressive**: every requested view is generated from
  the source image alone, conditioned on its pose relative to the source (metric Plücker rays), so
  errors do not accumulate along the trajectory and each view matches the model's training
  distribution (source -> any later frame of a clip). All requested views are sampled in one
  batched call; a model with ``num_target = N > 1`` generates them jointly, N per pass
  (multi-target, SEVA/CAT3D style), the last chunk padded by repeating its final pose. A model with
  ``num_source = M > 1`` gets the source image in all M source slots.
- :class:`RendererTeacher`: the oracle — the true renders of the scene along the same trajectory.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax import actions, geometry
from w2v_jax.models.world_model import sampler
from w2v_jax.models.world_model.config import WorldModelConfig
from w2v_jax.models.world_model.dit import WorldModel


def as_actions(trajectory) -> list[actions.Action]:
    """Trajectory | sequence of Action | action text -> list of Action (ValueError otherwise)."""
    if isinstance(trajectory, actions.Trajectory):
        return list(trajectory.actions)
    if isinstance(trajectory, str):
        return actions.parse_actions(trajectory)
    if isinstance(trajectory, Sequence) and trajectory and all(
            isinstance(a, actions.Action) for a in trajectory):
        return list(trajectory)
    raise ValueError(f"trajectory must be an actions.Trajectory, a non-empty sequence of "
                     f"actions.Action or action text, got {trajectory!r}")


def trajectory_targets(trajectory, key_frames: bool = False) -> np.ndarray:
    """Poses (V, 4, 4) of the requested views in the source camera's frame (source = identity):
    the trajectory's end, or every key frame after the source."""
    poses, keys = actions.integrate(as_actions(trajectory))
    picks = keys[1:] if key_frames else [keys[-1]]
    return poses[picks].astype(np.float32)


def _image01(image, size: int | None = None) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if size is not None and img.shape[:2] != (size, size):
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
    img = _image01(image, c.image_size)
    K = np.asarray(K, np.float32)
    rel = trajectory_targets(trajectory, key_frames)
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


class WorldModelTeacher:
    """:func:`imagine` with default sampler settings, as a teacher object."""

    def __init__(self, model_or_params, steps: int = 25, cfg: float = 1.0, method: str = "euler"):
        self.model = _as_model(model_or_params)
        self.steps, self.cfg, self.method = steps, cfg, method

    def __call__(self, image, K, trajectory, *, steps: int | None = None, cfg: float | None = None,
                 seed: int = 0, key_frames: bool = False) -> np.ndarray:
        return imagine(self.model, image, K, trajectory,
                       steps=self.steps if steps is None else steps,
                       cfg=self.cfg if cfg is None else cfg, seed=seed, key_frames=key_frames,
                       method=self.method)


class RendererTeacher:
    """The oracle teacher: renders ``scene`` (a ``w2v_jax.sim.Scene``) from the source camera
    ``c2w_source`` (4, 4) moved along the trajectory. ``steps``/``cfg``/``seed`` are accepted for
    signature compatibility and ignored; ``image`` only fixes H and W."""

    def __init__(self, scene, c2w_source, supersample: int = 2):
        self.scene = scene
        self.c2w_source = np.asarray(c2w_source, np.float32)
        if self.c2w_source.shape != (4, 4):
            raise ValueError(f"c2w_source must be (4, 4), got {self.c2w_source.shape}")
        self.supersample = int(supersample)

    def poses(self, trajectory, key_frames: bool = False) -> np.ndarray:
        """World c2w (V, 4, 4) of the requested views."""
        return (self.c2w_source[None].astype(np.float64)
                @ trajectory_targets(trajectory, key_frames)).astype(np.float32)

    def render(self, c2ws, K, height: int, width: int) -> dict:
        """All renderer outputs for cameras ``c2ws`` (V, 4, 4) (numpy, leading V)."""
        from w2v_jax.sim import render_views

        out = render_views(self.scene, np.asarray(c2ws, np.float32), np.asarray(K, np.float32),
                           height, width, self.supersample)
        return {k: np.asarray(x) for k, x in out.items()}

    def __call__(self, image, K, trajectory, *, steps: int | None = None, cfg: float | None = None,
                 seed: int | None = None, key_frames: bool = False) -> np.ndarray:
        del steps, cfg, seed
        h, w = _image01(image).shape[:2]
        return self.render(self.poses(trajectory, key_frames), K, h, w)["rgb"].astype(np.float32)
