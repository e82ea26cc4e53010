"""Orbax checkpoints of a training run: train state + data-iterator state + run metadata.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,meta}``.

* ``state``: the Trainer state pytree (step, trainable params, optimizer state, EMA, RNG key),
  written as OCDBT/zarr3 arrays; restored straight into the *target* shardings given by an
  abstract tree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` — a checkpoint written on
  one mesh restores on any other mesh.
* ``data``: the JSON ``get_state()`` of the input iterator (a Grain ``DatasetIterator``), taken
  synchronously when ``save`` is called, so the resumed run reads exactly the next batch.
* ``meta``: JSON (e.g. the config, the number of skipped records).

Writes are asynchronous (training continues while arrays are written) and atomic: a step is
written to a temporary directory and renamed when complete, so a crash never leaves a
half-written checkpoint that a restart would pick up (leftover temporaries are deleted on the
next start). ``max_to_keep`` newest steps are kept.

Only finite values are kept: ``save`` refuses a state with a NaN / inf array and every restore
checks the restored arrays, naming the first bad one. ``restore_latest`` / ``restore_raw()``
fall back to the newest step that restores (saying so in one warning line) when newer steps are
damaged; a later save at a damaged step's number replaces it.

This uses Orbax's stable v0 ``CheckpointManager`` (the same engine the v1
``training.Checkpointer`` wraps in orbax-checkpoint 0.12): its ``Composite`` args give named
items with explicit ``StandardRestore`` targets, and saving the iterator state as JSON snapshots
it at call time (the v1 stateful-checkpointable path reads the iterator later, in the
background thread).
"""
from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from w2v_jax.train.optim import path_str

_log = logging.getLogger(__name__)


class DamagedCheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, or holding NaN / inf values)."""


class Checkpointer:
    """Keeps the newest ``max_to_keep`` checkpoints of a run under ``directory``."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, async_save: bool = True):
        if max_to_keep < 1:
            raise ValueError(f"checkpoint.max_to_keep={max_to_keep} must be >= 1")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data", "meta"), options=options
        )
        self._damaged: set[int] = set()  # steps a restore found unusable (a save replaces them)

    def latest_step(self) -> int | None:
        """Newest fully written step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_state: dict | None = None,
        meta: dict | None = None,
    ) -> bool:
        """Starts saving ``state`` (a pytree of jax arrays) at ``step``; returns at once.

        ``data_state`` (JSON-serialisable, e.g. ``iterator.get_state()``) and ``meta`` are
        serialised now. Saving a step that already exists is a no-op returning False (unless a
        restore found that step damaged: then it is replaced). Raises ValueError naming the first
        NaN / inf array instead of saving it.
        """
        bad = first_nonfinite(state)
        if bad is not None:
            raise ValueError(f"refusing to save checkpoint step {step}: {bad} is not finite")
        if step in self._manager.all_steps():
            if step not in self._damaged:
                return False
            self._manager.delete(step)
            self._damaged.discard(step)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"iterator": data_state}),
            meta=ocp.args.JsonSave(meta or {}),
        )
        return bool(self._manager.save(step, args=args, force=True))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict | None, dict]:
        """``(state, data_state, meta)`` of ``step``; arrays land in ``abstract_state``'s shardings.

        ``abstract_state``: the state pytree with ``jax.ShapeDtypeStruct(..., sharding=...)``
        (or concrete arrays, whose shardings are used) as leaves. Raises
        ``DamagedCheckpointError`` naming the first restored array that is not finite.
        """
        abstract = jax.tree.map(_as_abstract, abstract_state)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        _check_restored(step, out["state"])
        return out["state"], (out["data"] or {}).get("iterator"), dict(out["meta"] or {})

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict | None, dict]:
        """``(step, state, data_state, meta)`` of the newest step that restores (see
        ``restore``); older steps are tried when newer ones are damaged."""
        step, out = self._newest_that_restores(lambda s: self.restore(s, abstract_state))
        return (step, *out)

    def _newest_that_restores(self, load: Callable[[int], Any]) -> tuple[int, Any]:
        failures = []
        for step in reversed(self.all_steps()):
            try:
                out = load(step)
            except Exception as e:  # noqa: BLE001 - any damage of one step: try the older ones
                self._damaged.add(step)
                failures.append(f"step {step} unusable ({_one_line(e)})")
                continue
            if failures:
                _log.warning("checkpoints in %s: %s; using step %d", self.directory,
                             "; ".join(failures), step)
            return step, out
        if not failures:
            raise ValueError(f"no checkpoint in {self.directory}")
        raise DamagedCheckpointError(f"no checkpoint step in {self.directory} restores; newest "
                                     f"{failures[0]}" + (f" (and {len(failures) - 1} older)"
                                                         if len(failures) > 1 else ""))

    def restore_raw(self, step: int | None = None) -> Any:
        """The saved state pytree as host numpy arrays (no target needed; for inspection and
        single-device use). Works whatever mesh wrote it: every array is read onto this
        process's first device, so a run saved on N devices loads on one. ``step=None``: the
        newest step that restores (falls back past damaged ones); the step read is
        ``self.restored_step``. Non-finite arrays raise ``DamagedCheckpointError``."""
        if step is None:
            step, out = self._newest_that_restores(self._restore_raw)
        else:
            out = self._restore_raw(step)
        self.restored_step = step
        return out

    def _restore_raw(self, step: int) -> Any:
        # The item handler reads the array metadata directly (a StandardCheckpointer would look
        # for a step-level metadata file inside the item directory and log a warning).
        saved = ocp.StandardCheckpointHandler().metadata(
            pathlib.Path(self.directory, str(step), "state"))
        tree = getattr(saved, "tree", saved)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: (jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)
                       if hasattr(m, "shape") and hasattr(m, "dtype") else m), tree)
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        state = jax.tree.map(np.asarray, out["state"])
        _check_restored(step, state)
        return state

    def restore_json(self, step: int, item: str = "data") -> Any:
        """The JSON item ``"data"`` (``{"iterator": state}``) or ``"meta"`` of ``step``."""
        if item not in ("data", "meta"):
            raise ValueError(f"item={item!r}: allowed 'data', 'meta'")
        out = self._manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
        return out[item]

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@jax.jit
def _all_finite(arrays: list) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in arrays])


def first_nonfinite(tree: Any) -> str | None:
    """'/'-joined path of the first floating-point array of ``tree`` holding a NaN or inf, or
    None when all are finite (numpy leaves are checked on the host, jax arrays on device)."""
    leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    on_device = [x for _, x in leaves if isinstance(x, jax.Array)]
    device_ok = iter(np.asarray(_all_finite(on_device)).tolist() if on_device else [])
    for p, x in leaves:
        ok = next(device_ok) if isinstance(x, jax.Array) else bool(np.all(np.isfinite(x)))
        if not ok:
            return path_str(p)
    return None


def _check_restored(step: int, state: Any) -> None:
    bad = first_nonfinite(state)
    if bad is not None:
        raise DamagedCheckpointError(f"restored array {bad} of step {step} is not finite")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text if isinstance(e, DamagedCheckpointError) else f"{type(e).__name__}: {text}")[:240]


def _as_abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
