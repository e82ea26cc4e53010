"""Config-driven training: ``train_from_config(config, workdir)`` is what the launcher runs.

A config (``ml_collections.ConfigDict``, see ``experiments/configs/toy.py``) names:

* ``model.name`` — a key of ``MODEL_FACTORIES`` or a ``"module:function"`` path; the factory
  takes ``config.model`` and returns a zero-argument constructor of the ``nnx.Module``;
* ``data.name`` — a key of ``DATA_FACTORIES`` or ``"module:function"``; the factory is called as
  ``fn(config.data, workdir=, batch_size=<rows per process>, seed=, process_index=,
  process_count=)`` and returns ``(train_dataset, eval_fn | None)``: an iterable whose iterator
  may be checkpointable (``get_state``/``set_state``), and a zero-argument function returning an
  iterable of eval batches;
* ``loss`` (a registered loss name), ``trainable``, ``grad_accum_steps``, ``ema_decay``,
  ``optimizer`` (``OptimizerConfig`` fields), ``mesh`` (``data``/``fsdp``/``tensor``, -1 fills),
  ``batch_size`` (global), ``total_steps``, ``seed``, ``checkpoint`` (``every_steps``,
  ``max_to_keep``, ``async_save``), ``log_every_steps``, ``eval_every_steps``, ``progress``;
  optional ``stop_at_step`` (> 0: stop at that step while the learning-rate schedule still spans
  ``total_steps``, e.g. to compare two runs at an equal step count).

A workdir that holds checkpoints resumes from the newest one (train state, optimizer, RNG and
data-iterator position), so re-running the same command continues an interrupted run and
raising ``total_steps`` extends a finished one. Config errors raise ValueError naming the field
before anything is compiled.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Callable, Sequence

import jax

from w2v_jax import sharding as shd
from w2v_jax.train.checkpoint import Checkpointer
from w2v_jax.train.losses import registered_losses
from w2v_jax.train.metrics import MetricsWriter
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.trainer import Trainer

MODEL_FACTORIES: dict[str, str] = {
    "toy_lm": "w2v_jax.models.toy:from_config",
}
DATA_FACTORIES: dict[str, str] = {
    "synthetic_lm": "w2v_jax.train.run:synthetic_lm_data",
}


def resolve(table: dict[str, str], name: str, field: str) -> Callable:
    """Imports ``table[name]`` or a ``"module:function"`` name; ValueError naming ``field``."""
    target = table.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"config.{field}={name!r} is unknown; allowed: {sorted(table)} or 'module:function'"
        )
    module, fn = target.split(":", 1)
    try:
        obj = importlib.import_module(module)
        for part in fn.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"config.{field}={name!r} cannot be imported: {e}") from e
    return obj


def validate_config(config) -> jax.sharding.Mesh:
    """Checks the config fields that would otherwise fail late; returns the mesh."""
    for field in ("total_steps", "batch_size", "grad_accum_steps"):
        value = config.get(field)
        if not isinstance(value, int) or value < (0 if field == "total_steps" else 1):
            raise ValueError(f"config.{field}={value!r} must be an int >= "
                             f"{0 if field == 'total_steps' else 1}")
    stop = config.get("stop_at_step", 0)
    if not isinstance(stop, int) or stop < 0:
        raise ValueError(f"config.stop_at_step={stop!r} must be an int >= 0 (0 = total_steps)")
    if config.loss not in registered_losses():
        raise ValueError(f"config.loss={config.loss!r} is not registered; registered losses: "
                         f"{registered_losses()}")
    try:
        mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    except ValueError as e:
        raise ValueError(f"config.{e}") from e
    div = shd.batch_divisor(mesh) * config.grad_accum_steps
    if config.batch_size % div:
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by mesh.data*mesh.fsdp*"
            f"grad_accum_steps = {shd.batch_divisor(mesh)}*{config.grad_accum_steps} = {div}"
        )
    if config.batch_size % jax.process_count():
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the "
                         f"process count {jax.process_count()}")
    resolve(MODEL_FACTORIES, config.model.name, "model.name")
    resolve(DATA_FACTORIES, config.data.name, "data.name")
    OptimizerConfig.from_dict(config.optimizer)
    return mesh


def train_from_config(config, workdir: str, *, hooks: Sequence[Callable] = ()) -> Trainer:
    """Builds everything from ``config`` and trains to ``config.total_steps`` in ``workdir``.

    Writes ``workdir/config.json``, ``workdir/metrics.jsonl``, ``workdir/tensorboard/`` and
    ``workdir/checkpoints/<step>/``. Returns the Trainer (its ``model`` is the trained model).
    """
    mesh = validate_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    model_ctor = resolve(MODEL_FACTORIES, config.model.name, "model.name")(config.model)
    model = shd.create_sharded(model_ctor, mesh)
    trainer = Trainer(
        model,
        OptimizerConfig.from_dict(config.optimizer),
        config.loss,
        mesh=mesh,
        trainable=config.trainable,
        grad_accum_steps=config.grad_accum_steps,
        ema_decay=config.get("ema_decay", 0.0),
        total_steps=config.total_steps,
        seed=config.seed,
    )
    data_factory = resolve(DATA_FACTORIES, config.data.name, "data.name")
    train_ds, eval_fn = data_factory(
        config.data,
        workdir=workdir,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    iterator = iter(train_ds)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save,
    )
    writer = None
    try:
        if ckpt.latest_step() is not None:
            trainer.restore(ckpt, data_iterator=iterator)
        writer = MetricsWriter(workdir, resume_step=trainer.step)
        stop = config.get("stop_at_step", 0)
        trainer.fit(
            iterator,
            min(stop, config.total_steps) if stop else config.total_steps,
            checkpointer=ckpt,
            checkpoint_every=config.checkpoint.every_steps,
            metrics_writer=writer,
            log_every=config.log_every_steps,
            eval_every=config.eval_every_steps,
            eval_data=eval_fn,
            hooks=hooks,
            progress=config.progress,
            meta={"config": json.loads(config.to_json_best_effort())},
        )
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()
        if hasattr(iterator, "close"):
            iterator.close()
    return trainer


def synthetic_lm_data(data_cfg, *, workdir, batch_size, seed, process_index, process_count):
    """Data factory of the toy LM: writes the synthetic ArrayRecord dataset once (process 0,
    under ``data.data_dir`` or ``WORKDIR/data``) and returns Grain pipelines over it."""
    from jax.experimental import multihost_utils

    from w2v_jax.data import synthetic

    data_dir = data_cfg.data_dir or synthetic.default_data_dir(workdir)
    args = dict(num_examples=data_cfg.num_examples, seq_len=data_cfg.seq_len,
                vocab_size=data_cfg.vocab_size, seed=data_cfg.seed)
    if process_index == 0:
        synthetic.write(data_dir, num_eval=data_cfg.num_eval, **args)
    if process_count > 1:
        multihost_utils.sync_global_devices("synthetic_lm_data written")
    # Process 0 wrote it above; every other process finds the complete copy and reuses it.
    builder_dir = synthetic.write(data_dir, num_eval=data_cfg.num_eval, **args)
    common = dict(vocab_size=data_cfg.vocab_size, seq_len=data_cfg.seq_len,
                  process_index=process_index, process_count=process_count,
                  skip_malformed=data_cfg.skip_malformed)
    train = synthetic.pipeline(builder_dir, "train", batch_size=batch_size, seed=seed,
                               num_workers=data_cfg.num_workers, **common)
    def eval_batches():
        return synthetic.pipeline(builder_dir, "eval", batch_size=batch_size, seed=seed,
                                  shuffle=False, num_epochs=1, drop_remainder=False, **common)

    return train, (eval_batches if data_cfg.num_eval else None)
