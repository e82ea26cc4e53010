"""The model builders a training config can name (``config.model.name``).

A builder takes ``config.model`` and returns a zero-argument constructor of the ``nnx.Module``
(called inside the mesh + rules context by ``sharding.create_sharded``). Add a builder by adding
an entry below.
"""
from __future__ import annotations

from typing import Callable

from flax import nnx

from w2v_jax.models import toy, world_model
from w2v_jax.models.vlm import Qwen2_5_VL, VLMConfig


def vlm_from_config(config) -> Callable:
    """``config.model.hf_config`` (a Qwen2.5-VL ``config.json`` dict), ``dtype``,
    ``param_dtype``, ``remat`` and ``seed`` -> a constructor of a randomly initialised
    ``Qwen2_5_VL`` (LoRA and ``init_from`` are applied by the run, ``train.runs.build_vlm``)."""
    hf_config = config.hf_config
    hf_config = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    cfg = VLMConfig.from_hf_dict(hf_config, dtype=config.get("dtype", "float32"),
                                 param_dtype=config.get("param_dtype") or None,
                                 remat=bool(config.get("remat", False)))
    seed = int(config.get("seed", 0))
    return lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(seed))


MODEL_BUILDERS: dict[str, Callable] = {
    "toy_lm": toy.from_config,  # the toy transformer LM of the training-loop tests
    "world_model": world_model.from_config,  # the camera-conditioned flow-matching DiT
    "vlm": vlm_from_config,  # Qwen2.5-VL from an HF-style config dict (tiny / small students)
}


def get_model_builder(name: str) -> Callable:
    """The builder registered as ``name``; ValueError naming ``config.model.name`` otherwise."""
    if name not in MODEL_BUILDERS:
        raise ValueError(
            f"config.model.name={name!r} is unknown; allowed: {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name]
