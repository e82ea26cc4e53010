"""The toy LM's synthetic dataset: modular arithmetic progressions.

Example ``i`` is ``tokens[j] = (a + b * j) mod vocab_size`` for ``j = 0..seq_len`` with ``a``
uniform in ``[0, vocab_size)`` and stride ``b`` in ``[1, max_stride]`` drawn from
``np.random.default_rng([seed, i])``: after two tokens the rest is predictable, so a tiny model
drives the loss well below ``log(vocab_size)`` in a few hundred steps.

Stored as a TFDS ArrayRecord dataset with fields ``id`` (int64) and ``tokens``
(int32 ``[seq_len + 1]``), read through the Grain pipeline; ``LMTransform`` turns a record into
``inputs``/``targets``/``mask`` for the ``next_token`` loss.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping

import numpy as np

from w2v_jax.data import array_record as ar
from w2v_jax.data.pipeline import MalformedRecordError, build_pipeline


def example(i: int, seq_len: int, vocab_size: int, seed: int, max_stride: int = 3) -> dict:
    """Example ``i``: ``{"id": int64, "tokens": int32 [seq_len + 1]}``."""
    rng = np.random.default_rng([seed, i])
    a = rng.integers(0, vocab_size)
    b = rng.integers(1, max_stride + 1)
    tokens = (a + b * np.arange(seq_len + 1)) % vocab_size
    return {"id": np.int64(i), "tokens": tokens.astype(np.int32)}


def examples(num_examples: int, seq_len: int, vocab_size: int, seed: int) -> Iterator[dict]:
    for i in range(num_examples):
        yield example(i, seq_len, vocab_size, seed)


def arrays(num_examples: int, seq_len: int, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """All examples, transformed, as in-memory arrays (``inputs``, ``targets``, ``mask``)."""
    t = LMTransform(vocab_size, seq_len)
    rows = [t(e) for e in examples(num_examples, seq_len, vocab_size, seed)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def write(data_dir: str, num_examples: int, seq_len: int, vocab_size: int, seed: int,
          num_eval: int = 0) -> str:
    """Writes splits ``train`` (and ``eval`` if ``num_eval``) under ``data_dir``; returns the
    builder dir. The dataset name encodes its parameters, so changed settings never reuse a
    stale copy."""
    name = f"synthetic_lm_n{num_examples}_l{seq_len}_v{vocab_size}_s{seed}_e{num_eval}"
    splits = {"train": lambda: examples(num_examples, seq_len, vocab_size, seed)}
    if num_eval:
        splits["eval"] = lambda: (
            example(num_examples + i, seq_len, vocab_size, seed) for i in range(num_eval)
        )
    return ar.write_dataset(
        data_dir,
        name,
        {"id": ar.tensor_feature((), np.int64),
         "tokens": ar.tensor_feature((seq_len + 1,), np.int32)},
        splits,
        description="Synthetic modular arithmetic progressions for the toy LM.",
    )


class LMTransform:
    """Record ``{"tokens": int32 [L+1]}`` -> ``inputs``/``targets`` int32 [L], ``mask`` f32 [L].

    Raises ``MalformedRecordError`` (field ``tokens``) for ids outside ``[0, vocab_size)``.
    """

    def __init__(self, vocab_size: int, seq_len: int):
        self.vocab_size, self.seq_len = vocab_size, seq_len

    def spec(self) -> dict:
        return {"tokens": ((self.seq_len + 1,), np.int32)}

    def __call__(self, record: Mapping) -> dict:
        tokens = np.asarray(record["tokens"], np.int32)
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise MalformedRecordError(
                int(record.get("id", -1)), "tokens",
                f"ids in [{tokens.min()}, {tokens.max()}] outside [0, {self.vocab_size})",
            )
        return {
            "inputs": tokens[:-1],
            "targets": tokens[1:],
            "mask": np.ones(self.seq_len, np.float32),
        }


def pipeline(builder_dir: str, split: str, *, batch_size: int, vocab_size: int, seq_len: int,
             seed: int, **kwargs):
    """Grain pipeline over a written synthetic split (kwargs go to ``build_pipeline``)."""
    t = LMTransform(vocab_size, seq_len)
    return build_pipeline(ar.open_split(builder_dir, split), batch_size=batch_size, transform=t,
                          spec=t.spec(), seed=seed, **kwargs)


def default_data_dir(workdir: str) -> str:
    return os.path.join(workdir, "data")


def from_config(data_cfg, *, workdir, batch_size, seed, process_index, process_count):
    """Data builder ``synthetic_lm`` (``w2v_jax.data.builders``): writes the synthetic ArrayRecord
    dataset once (process 0, under ``data.data_dir`` or ``WORKDIR/data``) and returns Grain
    pipelines over it."""
    from jax.experimental import multihost_utils

    data_dir = data_cfg.data_dir or default_data_dir(workdir)
    args = dict(num_examples=data_cfg.num_examples, seq_len=data_cfg.seq_len,
                vocab_size=data_cfg.vocab_size, seed=data_cfg.seed)
    if process_index == 0:
        write(data_dir, num_eval=data_cfg.num_eval, **args)
    if process_count > 1:
        multihost_utils.sync_global_devices("synthetic_lm_data written")
    # Process 0 wrote it above; every other process finds the complete copy and reuses it.
    builder_dir = write(data_dir, num_eval=data_cfg.num_eval, **args)
    common = dict(vocab_size=data_cfg.vocab_size, seq_len=data_cfg.seq_len,
                  process_index=process_index, process_count=process_count,
                  skip_malformed=data_cfg.skip_malformed)
    train = pipeline(builder_dir, "train", batch_size=batch_size, seed=seed,
                     num_workers=data_cfg.num_workers, **common)

    def eval_batches():
        return pipeline(builder_dir, "eval", batch_size=batch_size, seed=seed, shuffle=False,
                        num_epochs=1, drop_remainder=False, **common)

    return train, (eval_batches if data_cfg.num_eval else None)
