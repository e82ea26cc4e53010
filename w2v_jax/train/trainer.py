"""One Trainer for every model: swappable loss, trainable filter, grad accumulation, EMA.

Usage (any NNX model whose parameters carry logical axis names)::

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    model = sharding.create_sharded(lambda: ToyLM(cfg, rngs=nnx.Rngs(0)), mesh)
    trainer = Trainer(model, OptimizerConfig(learning_rate=3e-3, warmup_steps=10),
                      loss="next_token", mesh=mesh, total_steps=1000)
    metrics = trainer.train_step(batch)          # one update; batch: dict of host arrays [B, ...]
    trainer.fit(iterator, total_steps=1000, checkpointer=..., metrics_writer=...)  # loop + logs

The step is one ``jax.jit`` with explicit in/out shardings and the train state donated:
``state = {"step", "params", "opt_state", "rng"[, "ema"]}`` where ``params`` holds only the
*trainable* variables; everything else in the model (frozen sub-trees, LoRA base weights, ...)
is a separate non-donated input and never changes. After each step the passed ``model`` object is
updated in place, so ``trainer.model`` is always the current model.

Loss contract (see ``w2v_jax.train.losses.registry``): ``fn(model, batch, rng) -> (loss, aux)``
with ``aux["loss_sum"]`` and ``aux["weight"]``; the gradient is that of
``sum_micro(loss_sum) / sum_micro(weight)``, so ``grad_accum_steps=k`` on a batch of ``B``
equals one step on the whole batch. Other aux entries are combined over micro-batches by their
suffix (``_max``: max, ``_min``: min, anything else: sum) and reported by ``report_metrics``.
Model variables mutated inside the loss (e.g. RNG counters) are not carried over: take
randomness from the ``rng`` argument.

GRPO-style outer loops call ``train_step`` with batches they build themselves.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from w2v_jax import sharding as shd
from w2v_jax.train.losses import get_loss
from w2v_jax.train.optim import OptimizerConfig, frozen_regexes, make_optimizer, path_str
from w2v_jax.train.optim import schedule as lr_schedule

def trainable_filter(spec: Any, frozen: Sequence[str] = ()) -> Callable[[tuple, Any], bool]:
    """Predicate ``(path, variable) -> bool`` selecting the trainable variables.

    ``spec``: ``"all"`` (every ``nnx.Param``, LoRA params included), ``"lora"`` (only
    ``nnx.LoRAParam``), ``"all_but:NAME[,NAME...]"`` (every Param outside the sub-trees whose path
    contains a key equal to NAME, e.g. ``"all_but:visual"``), or any ``nnx`` filter.
    ``frozen``: regexes on the '/'-joined path; matching variables are excluded.
    """
    if isinstance(spec, str):
        if spec == "all":
            base = nnx.Param
        elif spec == "lora":
            base = nnx.LoRAParam
        elif spec.startswith("all_but:") and spec[len("all_but:"):]:
            names = [n for n in spec[len("all_but:"):].split(",") if n]
            base = nnx.All(nnx.Param, nnx.Not(nnx.Any(*[nnx.PathContains(n) for n in names])))
        else:
            raise ValueError(
                f"trainable={spec!r}: allowed 'all', 'lora', 'all_but:NAME[,NAME...]' or an nnx "
                "filter"
            )
    else:
        base = spec
    pred = nnx.filterlib.to_predicate(base)
    patterns = [re.compile(r) for r in frozen]

    def is_trainable(path, value) -> bool:
        if not pred(path, value):
            return False
        p = path_str(path)
        return not any(r.search(p) for r in patterns)

    return is_trainable


def resolve_optimizer(optimizer: Any, total_steps: int | None):
    """``(tx, lr_schedule | None, frozen_regexes)`` of an optax transform, an ``OptimizerConfig``
    or a dict of its fields (the schedule spans ``total_steps``, or ``decay_steps`` if set)."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, None, ()
    cfg = optimizer if isinstance(optimizer, OptimizerConfig) else \
        OptimizerConfig.from_dict(optimizer)
    if total_steps is None and not cfg.decay_steps:
        raise ValueError("total_steps is required with an OptimizerConfig (for the schedule)")
    steps = int(total_steps or cfg.decay_steps)
    return make_optimizer(cfg, steps), lr_schedule(cfg, steps), frozen_regexes(cfg)


def _opt_state_shardings(abs_opt: Any, params: Any, replicated: NamedSharding) -> Any:
    """Shardings for an optimizer state: a leaf whose key path ends with a parameter's path (and
    has its shape) takes that parameter's sharding; everything else is replicated."""
    by_path = {
        tuple(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    max_len = max((len(p) for p in by_path), default=0)

    def pick(path, leaf):
        path = tuple(path)
        for n in range(min(len(path), max_len), 0, -1):
            param = by_path.get(path[-n:])
            if param is not None and param.shape == leaf.shape:
                return param.sharding
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abs_opt)


def _split_micro(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...] with micro-batch j = rows j, j+k, j+2k, ... (shard-local)."""
    b = x.shape[0]
    x = x.reshape((b // k, k) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    spec = PartitionSpec(None, shd.BATCH_AXES, *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, spec)


def _check_aux(loss: jax.Array, aux: Any) -> dict:
    if not isinstance(aux, Mapping) or "loss_sum" not in aux or "weight" not in aux:
        raise ValueError(
            "a loss must return (loss, aux) with aux['loss_sum'] and aux['weight'] (weighted sum "
            f"and its denominator); got aux keys {sorted(aux) if isinstance(aux, Mapping) else aux}"
        )
    return {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}


class Trainer:
    """Trains ``model`` with ``loss`` on ``mesh``. See the module docstring.

    Args:
      model: an ``nnx.Module``; its variables are (re)placed in the shardings their logical
        names give on ``mesh`` (build it with ``sharding.create_sharded`` to avoid a copy).
        The Trainer owns the model from then on: each step donates the old parameter buffers
        and writes the new ones into ``model``, so don't keep other references to its arrays.
      optimizer: an ``optax.GradientTransformation``, or an ``OptimizerConfig`` / dict of its
        fields (AdamW, warmup + cosine, clipping, weight decay, param groups; groups with
        multiplier 0 are frozen).
      loss: a loss function or a registered loss name.
      loss_kwargs: options of a registered loss (``get_loss(loss, **loss_kwargs)``).
      mesh: the device mesh (default: the mesh of the model's first parameter, or 1 device).
      trainable: see ``trainable_filter``.
      grad_accum_steps: micro-batches per step (the batch is split along its first dim).
      ema_decay: if > 0, keep an exponential moving average of the trainable parameters.
      total_steps: run length, used by the learning-rate schedule of an ``OptimizerConfig``.
      seed: base of the per-step loss RNG (``fold_in(key(seed), step)``).
    """

    def __init__(
        self,
        model: nnx.Module,
        optimizer: Any,
        loss: Any,
        *,
        mesh: jax.sharding.Mesh | None = None,
        loss_kwargs: Mapping[str, Any] | None = None,
        trainable: Any = "all",
        grad_accum_steps: int = 1,
        ema_decay: float = 0.0,
        total_steps: int | None = None,
        seed: int = 0,
    ):
        # ---- validate configuration (before anything compiles) ----
        self.loss_fn = get_loss(loss, **dict(loss_kwargs or {})) if isinstance(loss, str) else loss
        if not callable(self.loss_fn):
            raise ValueError(f"loss={loss!r} must be a registered name or a callable")
        if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps={grad_accum_steps!r} must be an int >= 1")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} must be in [0, 1)")
        self.grad_accum_steps = grad_accum_steps
        self.ema_decay = float(ema_decay)
        self.mesh = mesh if mesh is not None else _infer_mesh(model)

        self.tx, self._schedule, frozen = resolve_optimizer(optimizer, total_steps)

        # ---- split the model: trainable params vs the rest ----
        self.model = model
        self._filter = trainable_filter(trainable, frozen)
        self.graphdef, params, rest = nnx.split(model, self._filter, ...)
        if not jax.tree.leaves(params):
            raise ValueError(f"trainable={trainable!r} selects no parameters of the model")

        # ---- shardings: parameters from their logical names, the rest likewise ----
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        with shd.rules_context(self.mesh):
            param_sh = nnx.get_named_sharding(params, self.mesh)
            rest_sh = nnx.get_named_sharding(rest, self.mesh)
        params = jax.device_put(params, param_sh)
        self._rest = jax.device_put(rest, rest_sh)
        self._rest_sh = rest_sh
        nnx.update(self.model, params, self._rest)

        abs_opt = jax.eval_shape(self.tx.init, params)
        opt_sh = _opt_state_shardings(abs_opt, params, self._replicated)
        with shd.rules_context(self.mesh):
            opt_state = jax.jit(self.tx.init, out_shardings=opt_sh)(params)
        state = {
            "step": jax.device_put(jnp.zeros((), jnp.int32), self._replicated),
            "params": params,
            "opt_state": opt_state,
            "rng": jax.device_put(jax.random.PRNGKey(seed), self._replicated),
        }
        if self.ema_decay:
            state["ema"] = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=param_sh)(
                params
            )
        self.state = state
        self._state_sh = jax.tree.map(lambda x: x.sharding, state)
        self._host_step = 0
        self._batch_sh = shd.batch_sharding(self.mesh)
        self._jit_step = jax.jit(
            self._step,
            in_shardings=(self._state_sh, self._rest_sh, self._batch_sh),
            out_shardings=(self._state_sh, self._replicated),
            donate_argnums=(0,),
        )
        self._jit_eval = jax.jit(
            self._eval,
            in_shardings=(self._state_sh["params"], self._rest_sh, self._batch_sh),
            out_shardings=self._replicated,
        )

    # ------------------------------------------------------------------ properties
    @property
    def step(self) -> int:
        """Number of completed optimizer steps."""
        return self._host_step

    def params(self) -> Any:
        """Current trainable parameters (an ``nnx.State``)."""
        return self.state["params"]

    def ema_model(self) -> nnx.Module:
        """A model view with the EMA parameters (requires ``ema_decay > 0``)."""
        if "ema" not in self.state:
            raise ValueError("ema_model() needs ema_decay > 0")
        return nnx.merge(self.graphdef, self.state["ema"], self._rest)

    def abstract_state(self) -> Any:
        """The train state as ``ShapeDtypeStruct``s with their target shardings (for restore)."""
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            self.state,
            self._state_sh,
        )

    # ------------------------------------------------------------------ jitted functions
    def _objective(self, params, rest, batch, rng):
        model = nnx.merge(self.graphdef, params, rest)
        loss, aux = self.loss_fn(model, batch, rng)
        aux = _check_aux(loss, aux)
        return aux["loss_sum"], aux

    def _grads(self, params, rest, batch, rng):
        """Summed gradients of loss_sum and summed aux over the micro-batches."""
        grad_fn = jax.grad(self._objective, has_aux=True)
        k = self.grad_accum_steps
        if k == 1:
            return grad_fn(params, rest, batch, jax.random.fold_in(rng, 0))
        micro = jax.tree.map(lambda x: _split_micro(x, k), batch)

        def body(carry, xs):
            g_acc, aux_acc = carry
            mb, j = xs
            g, aux = grad_fn(params, rest, mb, jax.random.fold_in(rng, j))
            return (jax.tree.map(jnp.add, g_acc, g), combine_aux(aux_acc, aux)), None

        first = jax.tree.map(lambda x: x[0], micro)
        abs_g, abs_aux = jax.eval_shape(grad_fn, params, rest, first, rng)
        init = (jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abs_g),
                {k: jnp.full(a.shape, _aux_identity(k), a.dtype) for k, a in abs_aux.items()})
        (g, aux), _ = jax.lax.scan(body, init, (micro, jnp.arange(k)))
        return g, aux

    def _step(self, state, rest, batch):
        step = state["step"]
        rng = jax.random.fold_in(state["rng"], step)
        params = state["params"]
        g_sum, aux = self._grads(params, rest, batch, rng)
        weight = aux["weight"]
        scale = jnp.where(weight > 0, 1.0 / jnp.maximum(weight, 1e-30), 0.0)
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), g_sum)
        updates, opt_state = self.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = dict(state, step=step + 1, params=new_params, opt_state=opt_state)
        if "ema" in state:
            d = self.ema_decay
            new_state["ema"] = jax.tree.map(
                lambda e, p: d * e + (1 - d) * p, state["ema"], new_params
            )
        metrics = report_metrics(aux)
        metrics["grad_norm"] = optax.global_norm(grads)
        if self._schedule is not None:
            metrics["lr"] = jnp.asarray(self._schedule(step), jnp.float32)
        return new_state, metrics

    def _eval(self, params, rest, batch):
        _, aux = self._objective(params, rest, batch, jax.random.PRNGKey(0))
        return aux

    # ------------------------------------------------------------------ public steps
    def _check_batch(self, batch: Any) -> None:
        leaves = jax.tree.leaves(batch)
        if not leaves:
            raise ValueError("batch is empty")
        b = int(np.shape(leaves[0])[0]) * (
            1 if isinstance(leaves[0], jax.Array) else jax.process_count()
        )
        div = shd.batch_divisor(self.mesh) * self.grad_accum_steps
        if b % div:
            raise ValueError(
                f"batch_size={b} must be divisible by mesh.data*mesh.fsdp*grad_accum_steps="
                f"{shd.batch_divisor(self.mesh)}*{self.grad_accum_steps}={div}"
            )

    def _place(self, batch: Any) -> Any:
        self._check_batch(batch)
        if all(isinstance(x, jax.Array) for x in jax.tree.leaves(batch)):
            return jax.device_put(batch, self._batch_sh)
        return shd.shard_batch(batch, self.mesh)

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """One optimizer update on ``batch`` (this process's rows, ``[B_local, ...]``).

        Returns the step's metrics as device scalars (``loss``, ``grad_norm``, ``lr``, aux sums
        and ``<name>`` = ``<name>_sum / weight`` for each aux ``*_sum``); does not block.
        """
        batch = self._place(batch)
        with shd.rules_context(self.mesh):
            self.state, metrics = self._jit_step(self.state, self._rest, batch)
        self._host_step += 1
        nnx.update(self.model, self.state["params"])
        return metrics

    def evaluate(self, batches: Iterable[Mapping[str, Any]]) -> dict:
        """Weighted metrics over ``batches``: ``{"eval_loss", "eval_<aux>"...}`` (host floats).

        With ``ema_decay > 0`` the EMA parameters are evaluated (what a finished run ships)."""
        params = self.state["ema" if "ema" in self.state else "params"]
        total = None
        with shd.rules_context(self.mesh):
            for batch in batches:
                aux = self._jit_eval(params, self._rest, self._place(batch))
                total = aux if total is None else combine_aux(total, aux)
        if total is None:
            raise ValueError("evaluate() got no batches")
        return {f"eval_{k}": float(v) for k, v in report_metrics(total).items()}

    # ------------------------------------------------------------------ checkpoints
    def save(self, checkpointer, data_iterator: Any = None, meta: dict | None = None) -> bool:
        """Starts an async save of the train state (+ the iterator's ``get_state()``)."""
        data_state = data_iterator.get_state() if hasattr(data_iterator, "get_state") else None
        meta = dict(meta or {}, step=self.step)
        return checkpointer.save(self.step, self.state, data_state, meta)

    def restore(self, checkpointer, step: int | None = None, data_iterator: Any = None) -> dict:
        """Restores ``step`` (default: the newest that restores, past damaged ones) into this
        trainer's shardings; repositions ``data_iterator`` (``set_state``) when the checkpoint
        holds its state. Returns meta."""
        if step is None:
            _, state, data_state, meta = checkpointer.restore_latest(self.abstract_state())
        else:
            state, data_state, meta = checkpointer.restore(step, self.abstract_state())
        self.state = state
        self._host_step = int(jax.device_get(state["step"]))
        nnx.update(self.model, self.state["params"])
        if data_state is not None and hasattr(data_iterator, "set_state"):
            data_iterator.set_state(data_state)
        return meta

    # ------------------------------------------------------------------ loop
    def fit(
        self,
        data: Iterable[Mapping[str, Any]],
        total_steps: int,
        *,
        checkpointer=None,
        checkpoint_every: int = 0,
        metrics_writer=None,
        log_every: int = 1,
        eval_every: int = 0,
        eval_data: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        progress: bool = True,
        meta: dict | None = None,
        time_budget_s: float = 0.0,
    ) -> list[dict]:
        """Trains from ``self.step`` to ``total_steps``; returns the logged rows.

        ``data``: an iterator (or iterable) of host batches; if it has ``get_state`` its state
        is checkpointed with the model. A checkpoint is written every ``checkpoint_every`` steps
        and at the end. ``eval_data()`` returns a fresh iterable of eval batches, run every
        ``eval_every`` steps. ``time_budget_s`` > 0 stops after that much wall time (a final
        checkpoint is still written). A non-finite loss or gradient norm raises
        ``NonFiniteError`` (step, metric) and nothing is saved from that step on. The next batch
        is read while the device computes the current step (metrics are read one step late).
        """
        if total_steps < self.step:
            raise ValueError(f"total_steps={total_steps} is below the current step {self.step}")
        it: Iterator = data if isinstance(data, Iterator) else iter(data)
        log = StepLogger(total_steps, self.step, metrics_writer, progress)
        deadline = time.monotonic() + time_budget_s if time_budget_s > 0 else None
        pending: tuple[int, dict] | None = None  # a step's metrics to log, still on device
        metrics = None
        try:
            while self.step < total_steps:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    batch = next(it)
                except StopIteration:
                    break
                if pending is not None:
                    log.step(*pending, it)
                metrics = self.train_step(batch)
                log.count(_global_batch(batch))
                step = self.step
                logged = step % max(log_every, 1) == 0 or step == total_steps
                pending = (step, metrics) if logged else None
                if checkpointer is not None and checkpoint_every and step % checkpoint_every == 0:
                    check_finite(step, metrics)  # never save a non-finite state
                    self.save(checkpointer, it, meta)
                if eval_every and eval_data is not None and step % eval_every == 0:
                    if pending is not None:
                        log.step(*pending, it)
                        pending = None
                    log.eval(step, self.evaluate(eval_data()))
            if pending is not None:
                log.step(*pending, it)
            if checkpointer is not None and self.step not in checkpointer.all_steps():
                if metrics is not None:
                    check_finite(self.step, metrics)
                checkpointer.wait()
                self.save(checkpointer, it, meta)
        finally:
            log.close()
        return log.rows


class NonFiniteError(FloatingPointError):
    """A training step produced a non-finite loss or gradient norm."""


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
    """Raises ``NonFiniteError`` naming ``step`` and the metric when ``loss`` or ``grad_norm`` of
    a step's metrics is NaN or infinite (blocks on the device values)."""
    for name in ("loss", "grad_norm"):
        if name in metrics:
            value = float(jax.device_get(metrics[name]))
            if not np.isfinite(value):
                raise NonFiniteError(
                    f"step {step}: {name} = {value}; training stopped and nothing was saved from "
                    "this step on (lower the learning rate or check the data, then resume from "
                    "the last checkpoint)")


class StepLogger:
    """Host side of ``Trainer.fit``: metric rows (with timing), the metrics writer, a tqdm bar."""

    def __init__(self, total_steps: int, start_step: int, writer=None, progress: bool = True):
        from tqdm.auto import tqdm

        self.rows: list[dict] = []
        self.writer = writer
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True,
                        disable=not progress or jax.process_index() != 0)
        self._t_last, self._steps, self._examples = time.perf_counter(), 0, 0

    def count(self, examples: int) -> None:
        """One more step of ``examples`` examples since the last logged row."""
        self._steps += 1
        self._examples += examples

    def step(self, step: int, metrics: Mapping[str, Any], it: Any = None) -> dict:
        """Logs one step's metrics (raises ``NonFiniteError`` on a non-finite loss/grad norm)."""
        check_finite(step, metrics)
        row = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        dt = (now - self._t_last) / max(self._steps, 1)
        row["step_time_s"] = dt
        row["examples_per_s"] = self._examples / max(now - self._t_last, 1e-9)
        row["tokens_per_s"] = row.get("tokens", 0.0) / max(dt, 1e-9)
        if getattr(it, "num_skipped", None) is not None:
            row["skipped_records"] = float(it.num_skipped)
        self._t_last, self._steps, self._examples = now, 0, 0
        self._write(step, row)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}")
        return row

    def eval(self, step: int, row: dict) -> None:
        """Logs eval metrics; the eval's wall time is not counted as training time."""
        self._write(step, row)
        self._t_last = time.perf_counter()

    def _write(self, step: int, row: dict) -> None:
        self.rows.append({"step": step, **row})
        if self.writer is not None:
            self.writer.write(step, row)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()


def _aux_identity(key: str) -> float:
    if key.endswith("_max"):
        return -jnp.inf
    if key.endswith("_min"):
        return jnp.inf
    return 0.0


def combine_aux(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> dict:
    """Combines the aux of two micro-batches (or eval batches) key by key: ``*_max`` by max,
    ``*_min`` by min, everything else by sum."""
    out = {}
    for k, v in a.items():
        if k.endswith("_max"):
            out[k] = jnp.maximum(v, b[k])
        elif k.endswith("_min"):
            out[k] = jnp.minimum(v, b[k])
        else:
            out[k] = v + b[k]
    return out


def report_metrics(aux: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Combined aux -> reported metrics (weighted metrics with their own denominators).

    * ``loss`` = ``loss_sum / weight``;
    * ``<name>_sum`` with a matching ``<name>_count``: ``<name>`` = ``<name>_sum / <name>_count``
      (a metric with its own denominator, e.g. a per-sequence mean next to per-token ones);
    * any other ``<name>_sum``: ``<name>`` = ``<name>_sum / weight``;
    * ``*_count`` entries are reported as is, and so is everything else (``*_max``, ``*_min``,
      plain sums such as ``tokens``).
    A zero denominator reports 0.
    """
    def ratio(num, den):
        return jnp.where(den > 0, num / jnp.maximum(den, 1e-30), 0.0)

    out = {"loss": ratio(aux["loss_sum"], aux["weight"])}
    for k, v in aux.items():
        if k == "loss_sum":
            continue
        if k.endswith("_sum"):
            name = k[: -len("_sum")]
            den = aux.get(f"{name}_count", aux["weight"])
            out[name] = ratio(v, den)
        else:
            out[k] = v
    return out


def _global_batch(batch: Mapping[str, Any]) -> int:
    leaf = jax.tree.leaves(batch)[0]
    n = int(np.shape(leaf)[0])
    return n if isinstance(leaf, jax.Array) else n * jax.process_count()


def _infer_mesh(model: nnx.Module) -> jax.sharding.Mesh:
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding) and set(sh.mesh.axis_names) == set(shd.MESH_AXES):
            return sh.mesh
    return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
