"""The teacher seam: "what would the camera see after this trajectory?" — rendered or imagined.

Every teacher answers one call::

    teacher.views(image, K, trajectory, *, scene, c2w_source, seed, key_frames=False)
        -> (V, H, W, 3) float32 in [0, 1]

V = 1 (the view at the end of the trajectory) or, with ``key_frames=True``, one view per key frame
after the source (the end of every action segment; the last one is the end of the trajectory).
``image`` (H, W, 3; uint8 or float in [0, 1]) is the source view, ``K`` (3, 3) its intrinsics in
pixels, ``trajectory`` an ``actions.Trajectory``, a sequence of ``actions.Action`` or action text.
``scene`` / ``c2w_source`` (4, 4, world frame) are where the source view was taken: the renderer
needs them, the world model ignores them (it sees the image only). ``teacher.name`` is what the
distillation records store as their ``source``.

- :class:`RendererTeacher` (``name = "renderer"``): the oracle, the true renders of the scene
  along the trajectory: the "simulator data" ablation and the upper bound.
- :class:`WorldModelTeacher` (``name = "world_model"``): the trained world model
  (``models.world_model.imagine``): the method.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from w2v_jax import actions
from w2v_jax.models.world_model import imagine
from w2v_jax.processing.image import to_unit_float
from w2v_jax.sim.render import render_cameras

RENDERER = "renderer"
WORLD_MODEL = "world_model"


class Teacher(Protocol):
    """What ``supervision.build`` needs of a teacher (module docstring)."""

    name: str

    def views(self, image: Any, K: Any, trajectory: Any, *, scene: Any, c2w_source: Any,
              seed: int, key_frames: bool = False) -> np.ndarray: ...


class RendererTeacher:
    """The oracle: renders ``scene`` from ``c2w_source`` moved along the trajectory.

    ``supersample``: rays per pixel side; ``render_chunk``: cameras per jitted render call (one
    compilation per process). ``image`` only fixes H and W; ``seed`` is ignored.
    """

    name = RENDERER

    def __init__(self, supersample: int = 2, render_chunk: int = 16):
        for field, value in (("supersample", supersample), ("render_chunk", render_chunk)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"RendererTeacher.{field} must be an integer >= 1, got {value!r}")
        self.supersample, self.render_chunk = int(supersample), int(render_chunk)

    def poses(self, c2w_source: Any, trajectory: Any, key_frames: bool = False) -> np.ndarray:
        """World c2w (V, 4, 4) of the requested views."""
        c2w = np.asarray(c2w_source, np.float64)
        if c2w.shape != (4, 4):
            raise ValueError(f"c2w_source must be (4, 4), got {c2w.shape}")
        return (c2w[None] @ actions.target_poses(trajectory, key_frames)).astype(np.float32)

    def views(self, image, K, trajectory, *, scene, c2w_source, seed: int = 0,
              key_frames: bool = False) -> np.ndarray:
        del seed
        h, w = to_unit_float(image).shape[:2]
        out = render_cameras(scene, self.poses(c2w_source, trajectory, key_frames),
                             np.asarray(K, np.float32), h, w, self.supersample, self.render_chunk)
        return out["rgb"].astype(np.float32)


class WorldModelTeacher:
    """The trained world model with fixed sampler settings (``steps``, guidance ``cfg``,
    ``method``); ``seed`` picks the initial noise (same seed, same views)."""

    name = WORLD_MODEL

    def __init__(self, model, steps: int = 25, cfg: float = 1.0, method: str = "euler"):
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"WorldModelTeacher.steps must be an integer >= 1, got {steps!r}")
        if not np.isfinite(cfg) or cfg < 0:
            raise ValueError(f"WorldModelTeacher.cfg must be a finite number >= 0, got {cfg!r}")
        self.model, self.steps, self.cfg, self.method = model, int(steps), float(cfg), method

    def views(self, image, K, trajectory, *, scene=None, c2w_source=None, seed: int = 0,
              key_frames: bool = False) -> np.ndarray:
        del scene, c2w_source
        return imagine(self.model, image, K, trajectory, steps=self.steps, cfg=self.cfg,
                       seed=seed, key_frames=key_frames, method=self.method)
