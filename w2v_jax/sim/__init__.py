"""Procedural CLEVR-like rooms and their analytic JAX renderer.

``sample_scene`` / ``make_scene`` build fixed-shape :class:`Scene` pytrees; ``render`` (one view),
``render_views`` (one scene, many cameras) and ``render_batch`` (many scenes) ray-cast them.
The posed-clip dataset writer lives in ``w2v_jax.sim.clips`` (imported on demand: it pulls in TFDS).
"""

from w2v_jax.sim.render import render, render_batch, render_cameras, render_views
from w2v_jax.sim.scene import (
    COLORS,
    PALETTE,
    SHAPES,
    SIZES,
    Scene,
    box_corners,
    free_space,
    make_scene,
    object_names,
    sample_camera,
    sample_scene,
    scene_metadata,
    stack_scenes,
)

__all__ = [
    "COLORS",
    "PALETTE",
    "SHAPES",
    "SIZES",
    "Scene",
    "box_corners",
    "free_space",
    "make_scene",
    "object_names",
    "render",
    "render_batch",
    "render_cameras",
    "render_views",
    "sample_camera",
    "sample_scene",
    "scene_metadata",
    "stack_scenes",
]
