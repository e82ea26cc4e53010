r"""Benchmark of the ``small`` world model: prints one JSON line.

    python -m experiments.bench.world_model [--batch_size=32 --train_steps=10 --sample_steps=10]

Figures (after compilation, fp32, the machine's default devices, first one only):
``train_images_per_s`` (optimizer steps of the Trainer with the ``flow_matching`` loss on an
in-memory batch of random views), ``sample_ms_per_image_per_step`` (Euler sampler, no CFG, one
network evaluation per step), ``params`` of the ``small`` config, plus the load average so numbers
from a shared machine can be judged.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from w2v_jax.models import world_model as wm
from w2v_jax.train import sharding
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.trainer import Trainer

_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per training step / sampler call.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 10, "Timed training steps.")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 10, "Sampler steps per timed call.")
_PRESET = flags.DEFINE_string("preset", "small", "World-model preset.")


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
    config = wm.WorldModelConfig.preset(_PRESET.value)
    b = _BATCH.value
    model = sharding.create_unsharded(lambda: wm.WorldModel(config, rngs=nnx.Rngs(0)))
    params = wm.count_params(model)
    trainer = Trainer(model, OptimizerConfig(learning_rate=1e-3), "flow_matching",
                      total_steps=_TRAIN_STEPS.value + 1)
    batch = jax.device_put(random_batch(config, b))
    jax.block_until_ready(trainer.train_step(batch)["loss"])  # compile
    t0 = time.perf_counter()
    for _ in range(_TRAIN_STEPS.value):
        loss = trainer.train_step(batch)["loss"]
    jax.block_until_ready(loss)
    train_s = time.perf_counter() - t0

    model = trainer.model
    args = (batch["source"], batch["plucker_src"], batch["plucker_tgt"])
    key = jax.random.key(0)
    steps = _SAMPLE_STEPS.value
    jax.block_until_ready(wm.sample(model, *args, key=key, steps=steps))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(wm.sample(model, *args, key=key, steps=steps))
    sample_s = time.perf_counter() - t0
    print(json.dumps({
        "bench": "world_model",
        "preset": _PRESET.value,
        "params": params,
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
