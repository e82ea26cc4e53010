"""The world model: a camera-conditioned, view-consistent flow-matching DiT (pixel space).

- ``config``: :class:`WorldModelConfig` and its presets ``tiny`` / ``small`` / ``seva_scale``;
- ``dit``: :class:`WorldModel` (M source + N target views, joint attention, Plücker rays,
  adaLN-Zero);
- ``sampler``: Euler / Heun ODE sampling with classifier-free guidance;
- ``imagine``: :func:`imagine` (views after a trajectory from one source image; the teacher
  objects of the distillation set are in ``w2v_jax.supervision.teachers``);
- ``metrics``: PSNR / SSIM (masked), co-visibility, warp baseline, reprojection error, box matcher.

Losses live in ``w2v_jax.train.losses.flow_matching`` (``flow_matching``, ``regression``).
"""
from __future__ import annotations

from flax import nnx

from w2v_jax.config_parsing import dataclass_from_dict
from w2v_jax.models.world_model.config import PRESETS, WorldModelConfig
from w2v_jax.models.world_model.dit import WorldModel, count_params
from w2v_jax.models.world_model.sampler import sample
from w2v_jax.models.world_model.imagine import imagine


def config_from_dict(d) -> WorldModelConfig:
    """A WorldModelConfig from a dict / ConfigDict (``config.model``): ``preset`` (optional)
    then the named fields; ``name`` and ``seed`` belong to the builder; any other key that is not
    a WorldModelConfig field is a ValueError naming it."""
    d = dict(d)
    base = WorldModelConfig.preset(d["preset"]) if d.get("preset") else WorldModelConfig()
    return dataclass_from_dict(WorldModelConfig, d, where="config.model",
                               ignore=("name", "seed", "preset"), base=base)


def from_config(model_cfg):
    """Model builder ``world_model`` (``w2v_jax.models.builders``): a zero-argument
    constructor."""
    config = config_from_dict(model_cfg)
    seed = int(dict(model_cfg).get("seed", 0))
    return lambda: WorldModel(config, rngs=nnx.Rngs(seed))


def build(config: WorldModelConfig, seed: int = 0) -> WorldModel:
    """A single-device model without sharding annotations resolved (CPU use, notebooks)."""
    with nnx.use_eager_sharding(False):
        return WorldModel(config, rngs=nnx.Rngs(seed))


__all__ = ["PRESETS", "WorldModel", "WorldModelConfig", "build", "config_from_dict", "count_params",
           "from_config", "imagine", "sample"]
