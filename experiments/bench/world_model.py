r"""Benchmark of the ``small`` world model: prints one JSON line.

    python -m experiments.bench.world_model [--config_arg=small --cpu_devices=2 --batch_size=32]

Figures (after compilation, fp32): ``train_images_per_s`` (optimizer steps of the Trainer with the
config's loss on an in-memory batch of random views; ``small`` is self-conditioned, so a step
includes the no-gradient first pass on half of the batch), ``sample_ms_per_image_per_step`` (Euler
sampler, no CFG, one network evaluation per step, first device), ``params``, plus the load average
so numbers from a shared machine can be judged. ``--cpu_devices=N`` splits the CPU into N XLA
devices and trains data-parallel over them (as ``experiments.train --cpu_devices=N`` does).
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from experiments.configs import world_model as wm_configs
from w2v_jax.models import world_model as wm
from w2v_jax import sharding
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.run import loss_kwargs
from w2v_jax.train.trainer import Trainer

_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per training step / sampler call.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 10, "Timed training steps.")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 10, "Sampler steps per timed call.")
_CONFIG_ARG = flags.DEFINE_enum("config_arg", "small", list(wm_configs.ARGS),
                                "experiments/configs/world_model.py argument (model and loss).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "> 0: split the CPU into this many devices "
                                    "and train data-parallel over them (0: the default devices, "
                                    "first one only).")


def random_batch(config: wm.WorldModelConfig, b: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h, m, n = config.image_size, config.num_source, config.num_target
    return {
        "source": rng.uniform(-1, 1, (b, m, h, h, 3)).astype(np.float32),
        "target": rng.uniform(-1, 1, (b, n, h, h, 3)).astype(np.float32),
        "plucker_src": rng.normal(size=(b, m, h, h, 6)).astype(np.float32),
        "plucker_tgt": rng.normal(size=(b, n, h, h, 6)).astype(np.float32),
    }


def main(argv):
    del argv
    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    run_config = wm_configs.get_config(_CONFIG_ARG.value)
    config = wm.config_from_dict(run_config.model)
    b = _BATCH.value
    ctor = lambda: wm.WorldModel(config, rngs=nnx.Rngs(0))  # noqa: E731
    devices = jax.devices() if _CPU_DEVICES.value else jax.devices()[:1]
    mesh = sharding.make_mesh(len(devices), 1, 1, devices=devices)
    model = sharding.create_sharded(ctor, mesh)
    params = wm.count_params(model)
    trainer = Trainer(model, OptimizerConfig(learning_rate=1e-3), run_config.loss,
                      loss_kwargs=loss_kwargs(run_config), mesh=mesh,
                      total_steps=_TRAIN_STEPS.value + 1)
    batch = random_batch(config, b)
    jax.block_until_ready(trainer.train_step(batch)["loss"])  # compile
    t0 = time.perf_counter()
    for _ in range(_TRAIN_STEPS.value):
        loss = trainer.train_step(batch)["loss"]
    jax.block_until_ready(loss)
    train_s = time.perf_counter() - t0

    model = sharding.create_unsharded(ctor)
    nnx.update(model, jax.device_put(nnx.state(trainer.model, nnx.Param), devices[0]))
    args = tuple(jax.device_put(batch[k], devices[0])
                 for k in ("source", "plucker_src", "plucker_tgt"))
    key = jax.random.key(0)
    steps = _SAMPLE_STEPS.value
    jax.block_until_ready(wm.sample(model, *args, key=key, steps=steps))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(wm.sample(model, *args, key=key, steps=steps))
    sample_s = time.perf_counter() - t0
    print(json.dumps({
        "bench": "world_model",
        "config_arg": _CONFIG_ARG.value,
        "loss": run_config.loss,
        "loss_kwargs": loss_kwargs(run_config),
        "params": params,
        "train_devices": len(devices),
        "batch_size": b,
        "train_images_per_s": round(b * _TRAIN_STEPS.value / train_s, 2),
        "train_step_s": round(train_s / _TRAIN_STEPS.value, 3),
        "sample_ms_per_image_per_step": round(1000 * sample_s / (b * steps), 3),
        "device": str(jax.devices()[0].platform),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    app.run(main)
