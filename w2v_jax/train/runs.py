"""Loading what a training run wrote: the model of a workdir (``config.json`` + checkpoints).

    model = load_world_model(workdir)            # EMA weights when the run kept them
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
from flax import nnx

from w2v_jax.models import world_model
from w2v_jax.train.checkpoint import Checkpointer


def read_run_config(workdir: str) -> dict:
    """The ``config.json`` a run saved in ``workdir``, as a dict."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"workdir={workdir!r} is not a training run: no config.json")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e


def restore_params(workdir: str, step: int | None = None, use_ema: bool = True) -> dict:
    """The trained parameters of ``workdir`` (newest or given step) as a pure nested dict of
    jnp arrays: the EMA copy when the run kept one and ``use_ema``, else the raw parameters."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        raw = ckpt.restore_raw(step)
    finally:
        ckpt.close()
    return _to_pure(raw["ema"] if use_ema and "ema" in raw else raw["params"])


def load_params_into(model: nnx.Module, params: dict) -> nnx.Module:
    """Writes a pure parameter dict (``restore_params``) into ``model``'s ``nnx.Param``s."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def load_world_model(workdir: str, step: int | None = None,
                     use_ema: bool = True) -> world_model.WorldModel:
    """The world model trained by ``experiments.train`` in ``workdir`` (single device), with the
    EMA parameters when the run kept them and ``use_ema``."""
    config = world_model.config_from_dict(read_run_config(workdir)["model"])
    return load_params_into(world_model.build(config), restore_params(workdir, step, use_ema))


def _to_pure(tree):
    """Orbax-restored nested dicts with numpy leaves -> jnp leaves, integer-like keys as ints
    (a variable saved as ``{"value": array}`` becomes its array)."""
    if isinstance(tree, dict) and set(tree) == {"value"}:
        return jnp.asarray(tree["value"])
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _to_pure(v)
                for k, v in tree.items()}
    return jnp.asarray(tree)
