"""Training metrics: JSON lines + TensorBoard event files.

``WORKDIR/metrics.jsonl`` gets one JSON object per logged step, e.g.
``{"step": 10, "loss": 2.31, "grad_norm": 0.8, "lr": 0.001, "step_time_s": 0.05,
"examples_per_s": 320.0, "tokens_per_s": 10240.0, ...}`` (eval lines carry ``eval_*`` keys).
TensorBoard event files go to ``WORKDIR/tensorboard`` (``tensorboard --logdir WORKDIR``).
Only process 0 writes.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax

from w2v_jax import fileio


class MetricsWriter:
    """Appends metrics of a run in ``workdir``.

    ``resume_step``: when a run resumes from a checkpoint at that step, lines logged by the
    interrupted run for later steps are dropped first (they will be recomputed), so the file
    holds exactly one line per step.
    """

    def __init__(self, workdir: str, resume_step: int | None = None, tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._active = jax.process_index() == 0
        self._tb = None
        if not self._active:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes ``{"step": step, **metrics}`` (values converted to float)."""
        if not self._active:
            return
        row = {"step": int(step)}
        row.update({k: _to_float(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None and math.isfinite(v):
                    self._tb.add_scalar(k, v, int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir_or_path: str) -> list[dict]:
    """All rows of a ``metrics.jsonl`` (path or its workdir)."""
    path = workdir_or_path
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_after(path: str, step: int) -> None:
    """Atomically drops rows with ``row["step"] > step`` from a JSONL file (if it exists)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(keep) == len(lines):
        return
    fileio.atomic_write(path, "".join(keep))


def _to_float(v: Any) -> float | None:
    if v is None:
        return None
    return float(v)
