"""Trainer throughput: Grain input vs in-memory batches, and MFU against a measured matmul peak.

    python -m experiments.bench.trainer [--width=512 --depth=1 --seq_len=256 --batch=8 ...]

Prints one JSON line. ``steps_per_s_grain`` runs ``Trainer.fit`` on the real pipeline
(synthetic ArrayRecord dataset -> Grain shuffle/read/transform/batch); ``steps_per_s_in_memory``
runs the same loop on batches cut from numpy arrays. Each round times ``--steps`` steps of each
source and an f32 matmul peak (``--peak_n`` square, jitted); rounds alternate so background load
hits all three alike, and each figure is the best round (``*_median`` are the medians).
``input_overhead = 1 - grain / in_memory``. ``mfu`` = model FLOP/s (3x the forward matmul FLOPs,
attention counted over the full L x L scores) / the peak matmul FLOP/s, on one device.
"""
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from w2v_jax.data import pipeline, synthetic
from w2v_jax.models.toy import ToyLM, ToyLMConfig, matmul_flops_per_token
from w2v_jax import sharding as shd
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.trainer import Trainer

_WIDTH = flags.DEFINE_integer("width", 512, "Model width.")
_DEPTH = flags.DEFINE_integer("depth", 1, "Transformer blocks.")
_HEADS = flags.DEFINE_integer("heads", 8, "Attention heads.")
_VOCAB = flags.DEFINE_integer("vocab", 1024, "Vocabulary size.")
_SEQ = flags.DEFINE_integer("seq_len", 256, "Tokens per example.")
_BATCH = flags.DEFINE_integer("batch", 8, "Examples per step.")
_STEPS = flags.DEFINE_integer("steps", 4, "Timed steps per round and source.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating rounds.")
_WORKERS = flags.DEFINE_integer("num_workers", 0, "Grain worker processes (0 = threads only).")
_PEAK_N = flags.DEFINE_integer("peak_n", 2048, "Matmul size for the peak measurement.")


def matmul_peak_flops(n: int, repeats: int = 10) -> float:
    """Best f32 FLOP/s of an n x n x n matmul (jitted, after warm-up)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def timed_fit(trainer: Trainer, iterator, steps: int) -> float:
    """Seconds for ``steps`` more steps through ``Trainer.fit`` (result synced at the end)."""
    start = trainer.step
    t = time.perf_counter()
    trainer.fit(iterator, start + steps, log_every=steps, progress=False)
    jax.block_until_ready(trainer.state["params"])
    return time.perf_counter() - t


def main(argv):
    del argv
    cfg = ToyLMConfig(vocab_size=_VOCAB.value, width=_WIDTH.value, depth=_DEPTH.value,
                      num_heads=_HEADS.value, mlp_dim=4 * _WIDTH.value, max_len=_SEQ.value)
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model = shd.create_sharded(lambda: ToyLM(cfg, rngs=nnx.Rngs(0)), mesh)
    trainer = Trainer(model, OptimizerConfig(learning_rate=1e-3, warmup_steps=10, clip_norm=1.0),
                      "next_token", mesh=mesh, total_steps=10_000)
    n_examples = _BATCH.value * _STEPS.value * _ROUNDS.value * 2 + _BATCH.value * 4
    with tempfile.TemporaryDirectory() as tmp:
        builder_dir = synthetic.write(tmp, n_examples, _SEQ.value, _VOCAB.value, seed=0)
        grain_it = iter(synthetic.pipeline(builder_dir, "train", batch_size=_BATCH.value,
                                           vocab_size=_VOCAB.value, seq_len=_SEQ.value, seed=0,
                                           num_workers=_WORKERS.value))
        mem_it = pipeline.in_memory_batches(
            synthetic.arrays(n_examples, _SEQ.value, _VOCAB.value, seed=0), _BATCH.value)
        timed_fit(trainer, mem_it, 2)  # compile + warm-up
        timed_fit(trainer, grain_it, 2)
        t_grain, t_mem, peaks = [], [], []
        for _ in range(_ROUNDS.value):
            t_mem.append(timed_fit(trainer, mem_it, _STEPS.value))
            t_grain.append(timed_fit(trainer, grain_it, _STEPS.value))
            peaks.append(matmul_peak_flops(_PEAK_N.value, repeats=3))
        grain_it.close()
    n = _STEPS.value * _ROUNDS.value
    sps_grain, sps_mem = _STEPS.value / min(t_grain), _STEPS.value / min(t_mem)
    step_flops = 3.0 * matmul_flops_per_token(cfg, _SEQ.value) * _BATCH.value * _SEQ.value
    peak = max(peaks)
    model_flops = step_flops * sps_mem
    print(json.dumps({
        "bench": "trainer",
        "device": f"{jax.devices()[0].platform} x1",
        "model": {"width": cfg.width, "depth": cfg.depth, "heads": cfg.num_heads,
                  "mlp": cfg.mlp_dim, "vocab": cfg.vocab_size},
        "batch": _BATCH.value,
        "seq_len": _SEQ.value,
        "timed_steps_per_source": n,
        "rounds": _ROUNDS.value,
        "steps_per_s_grain": round(sps_grain, 4),
        "steps_per_s_in_memory": round(sps_mem, 4),
        "steps_per_s_grain_median": round(_STEPS.value / float(np.median(t_grain)), 4),
        "steps_per_s_in_memory_median": round(_STEPS.value / float(np.median(t_mem)), 4),
        "input_overhead": round(1.0 - sps_grain / sps_mem, 4),
        "tokens_per_s_in_memory": round(sps_mem * _BATCH.value * _SEQ.value, 1),
        "model_gflop_per_step": round(step_flops / 1e9, 3),
        "model_gflop_per_s": round(model_flops / 1e9, 2),
        "peak_matmul_gflop_per_s": round(peak / 1e9, 2),
        "peak_matmul_gflop_per_s_median": round(float(np.median(peaks)) / 1e9, 2),
        "mfu": round(model_flops / peak, 4),
    }))


if __name__ == "__main__":
    app.run(main)
