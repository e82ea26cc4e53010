"""The model builders a training config can name (``config.model.name``).

A builder takes ``config.model`` and returns a zero-argument constructor of the ``nnx.Module``
(called inside the mesh + rules context by ``sharding.create_sharded``). Add a builder by adding
an entry below.
"""
from __future__ import annotations

from typing import Callable

from w2v_jax.models import toy, world_model

MODEL_BUILDERS: dict[str, Callable] = {
    "toy_lm": toy.from_config,  # the toy transformer LM of the training-loop tests
    "world_model": world_model.from_config,  # the camera-conditioned flow-matching DiT
}


def get_model_builder(name: str) -> Callable:
    """The builder registered as ``name``; ValueError naming ``config.model.name`` otherwise."""
    if name not in MODEL_BUILDERS:
        raise ValueError(
            f"config.model.name={name!r} is unknown; allowed: {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name]
