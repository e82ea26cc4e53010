"""Config-driven training: ``train_from_config(config, workdir)`` is what the launcher runs.

A config (``ml_collections.ConfigDict``, see ``experiments/configs/toy.py``) names:

* ``model.name`` — a builder of ``w2v_jax.models.builders.MODEL_BUILDERS``;
* ``data.name`` — a builder of ``w2v_jax.data.builders.DATA_BUILDERS``;
* ``loss`` (a registered loss name), ``trainable``, ``grad_accum_steps``, ``ema_decay``,
  ``optimizer`` (``OptimizerConfig`` fields), ``mesh`` (``data``/``fsdp``/``tensor``, -1 fills),
  ``batch_size`` (global), ``total_steps``, ``seed``, ``checkpoint`` (``every_steps``,
  ``max_to_keep``, ``async_save``), ``log_every_steps``, ``eval_every_steps``, ``progress``;
  ``stop_at_step`` (> 0: stop at that step while the learning-rate schedule still spans
  ``total_steps``, e.g. to compare two runs at an equal step count) and ``time_budget_s`` (> 0:
  stop after that much wall time of training in this process, with a final checkpoint).

A workdir that holds checkpoints resumes from the newest one (train state, optimizer, RNG and
data-iterator position), so re-running the same command continues an interrupted run and
raising ``total_steps`` extends a finished one. Config errors raise ValueError naming the field
before anything is compiled.
"""
from __future__ import annotations

import json
import os

import jax

from w2v_jax import fileio
from w2v_jax import sharding as shd
from w2v_jax.data.builders import get_data_builder
from w2v_jax.models.builders import get_model_builder
from w2v_jax.train import runs
from w2v_jax.train.checkpoint import Checkpointer
from w2v_jax.train.losses import get_loss, registered_losses
from w2v_jax.train.metrics import MetricsWriter
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.trainer import Trainer


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
    get_loss(config.loss, **loss_kwargs(config))
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
    budget = config.get("time_budget_s", 0)
    if not isinstance(budget, (int, float)) or not budget >= 0:
        raise ValueError(f"config.time_budget_s={budget!r} must be a number >= 0 (0: no limit)")
    get_model_builder(config.model.name)
    get_data_builder(config.data.name)
    OptimizerConfig.from_dict(config.optimizer)
    return mesh


def train_from_config(config, workdir: str) -> Trainer:
    """Builds everything from ``config`` and trains to ``config.total_steps`` in ``workdir``.

    Writes ``workdir/config.json``, ``workdir/metrics.jsonl``, ``workdir/tensorboard/`` and
    ``workdir/checkpoints/<step>/``. Returns the Trainer (its ``model`` is the trained model).
    ``config.loss == "grpo"`` runs the GRPO rollout loop instead (``train.grpo.train_grpo``,
    returning its ``GRPOLoop``). A VLM run (``model.name == "vlm"``) may start from
    ``config.init_from`` (a training workdir or a Hugging Face directory) and keeps its tokenizer
    in ``workdir/tokenizer`` (``train.runs.vlm_run_inputs``).
    """
    if config.loss == "grpo":
        from w2v_jax.train.grpo import train_grpo

        return train_grpo(config, workdir)
    mesh = validate_config(config)
    workdir = os.path.abspath(workdir)
    vlm = config.model.name == "vlm"
    if vlm:
        runs.check_init_from(config)
        runs.check_package_split(config, "sft")
    config = prepare_workdir(config, workdir)

    if vlm:
        model = runs.build_vlm(config, mesh)
    else:
        model = shd.create_sharded(get_model_builder(config.model.name)(config.model), mesh)
    trainer = Trainer(
        model,
        OptimizerConfig.from_dict(config.optimizer),
        config.loss,
        loss_kwargs=loss_kwargs(config),
        mesh=mesh,
        trainable=config.trainable,
        grad_accum_steps=config.grad_accum_steps,
        ema_decay=config.get("ema_decay", 0.0),
        total_steps=config.total_steps,
        seed=config.seed,
    )
    train_ds, eval_fn = get_data_builder(config.data.name)(
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
            progress=config.progress,
            time_budget_s=config.get("time_budget_s", 0),
            meta={"config": json.loads(config.to_json_best_effort())},
        )
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()
        if hasattr(iterator, "close"):
            iterator.close()
    return trainer


def prepare_workdir(config, workdir: str):
    """Checks a resumed run's config (``check_resume_config``, before anything is written),
    creates ``workdir``, fixes a VLM run's tokenizer (``runs.vlm_run_inputs``) and writes
    ``config.json``; returns the (resolved) config."""
    check_resume_config(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    if config.model.name == "vlm":
        config, _ = runs.vlm_run_inputs(config, workdir)
    if jax.process_index() == 0:
        fileio.atomic_write(os.path.join(workdir, "config.json"),
                            config.to_json_best_effort(indent=2))
    return config


# Data options that change how a run reads its data, not which data it is.
_DATA_RUNTIME_KEYS = frozenset({"num_workers", "read_threads", "prefetch", "skip_malformed",
                                "num_eval_batches"})


def run_identity(config: dict) -> dict:
    """What a resumed run must share with the run that wrote the workdir, flattened to dotted
    keys: the model, the loss, the trainable set and the train-state structure (EMA on/off,
    frozen parameter groups), and the data (except loading options)."""
    out: dict = {}

    def flatten(prefix, value):
        if isinstance(value, dict):
            for k in sorted(value):
                flatten(f"{prefix}.{k}", value[k])
        else:
            out[prefix] = value

    data = {k: v for k, v in (config.get("data") or {}).items() if k not in _DATA_RUNTIME_KEYS}
    for key, value in (("model", config.get("model")), ("loss", config.get("loss")),
                       ("loss_kwargs", config.get("loss_kwargs") or {}),
                       ("trainable", config.get("trainable")),
                       ("ema", bool(config.get("ema_decay"))),
                       ("optimizer.param_groups",
                        (config.get("optimizer") or {}).get("param_groups") or []),
                       ("data", data)):
        flatten(key, value)
    return out


def check_resume_config(config, workdir: str) -> None:
    """ValueError (one paragraph, the differing fields) when ``workdir`` holds a run whose saved
    ``config.json`` differs from ``config`` in ``run_identity``; nothing is written."""
    path = os.path.join(os.path.abspath(workdir), "config.json")
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir={workdir!r} exists and is not a directory")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            saved = run_identity(json.load(f))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); move it away to start a new run "
                         "there") from e
    if config.model.name == "vlm" and os.path.isdir(os.path.join(workdir, runs.TOKENIZER_DIR)):
        config, _ = runs.vlm_run_inputs(config, workdir)  # read-only: the tokenizer the run kept
    new = run_identity(json.loads(config.to_json_best_effort()))
    changed = [f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(saved) | set(new))
               if saved.get(k) != new.get(k)]
    if changed:
        raise ValueError(
            f"workdir {workdir} holds a run with another config ({path}); differing fields: "
            + "; ".join(changed) + ". Its checkpoints belong to that run: pass a new --workdir, "
            "or resume with the saved model, loss and data settings (total_steps, checkpoint, "
            "logging and learning-rate settings may change).")


def loss_kwargs(config) -> dict:
    """``config.loss_kwargs`` as a plain dict (empty when the config has none)."""
    kwargs = config.get("loss_kwargs")
    return dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else (kwargs or {}))
