"""Grain input pipelines: source -> seeded per-epoch shuffle -> per-process slice -> read +
validate + transform -> (optional multiprocess prefetch) -> batches with padding masks.

::

    from w2v_jax.data import array_record as ar, pipeline
    source = ar.open_split(builder_dir, "train")          # any random-access source
    ds = pipeline.build_pipeline(
        source, batch_size=32,                            # rows per *process*
        spec={"tokens": ((33,), np.int32)},               # optional checks before transform
        transform=my_transform,                           # record -> dict of fixed-shape arrays
        seed=0, num_epochs=None)                          # None = repeat forever
    it = iter(ds)          # checkpointable: it.get_state() / it.set_state(state)
    batch = next(it)       # {field: [32, ...], "example_mask": bool [32]}

Order: the source indices are shuffled with ``seed`` (a different permutation each epoch, as
Grain's ``shuffle`` seeds epoch e with ``seed + e``), repeated, then process ``p`` of ``P`` takes
positions ``p, p+P, ...`` — the processes read disjoint rows of the same global order.

Malformed records: reading, checking against ``spec`` (missing field, shape, dtype kind) and
``transform`` (a plain function or a Grain ``RandomMap``) run inside a guard; a failure becomes ``MalformedRecordError`` naming the source
record index and the field (``"<record>"`` when the stored bytes cannot be decoded,
``"<transform>"`` when the transform fails without naming a field). With
``skip_malformed=False`` (default) iteration raises it; with ``True`` the record is dropped and
counted in ``iterator.num_skipped`` (part of the checkpointed state).

Padding: with ``drop_remainder=False`` the last partial batch is padded with zero rows and
``example_mask`` marks the real rows. Per-example padding of variable-length fields is the
transform's job (``pad_to`` helps); losses should weight by the masks.

Multiprocessing: ``num_workers > 0`` runs read/validate/transform in worker processes via
``mp_prefetch`` (transform and source must be picklable, i.e. top-level functions/classes).
Grain reads absl flags in workers; if flags are not parsed yet (plain scripts, notebooks) this
module marks them parsed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np


class MalformedRecordError(ValueError):
    """A record that could not be read, validated or transformed."""

    def __init__(self, index: int, field: str, reason: str):
        self.index, self.field, self.reason = int(index), field, reason
        super().__init__(f"malformed record {index} (field {field!r}): {reason}")


@dataclasses.dataclass(frozen=True)
class _Malformed:
    """Sentinel travelling through the pipeline in place of a bad record."""

    index: int
    field: str
    reason: str


def pad_to(
    x: np.ndarray, length: int, axis: int = 0, value: Any = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pads/crops ``x`` along ``axis`` to ``length``; returns ``(padded, mask)`` with mask
    ``bool [length]`` true on the kept entries."""
    x = np.asarray(x)
    n = min(x.shape[axis], length)
    x = np.take(x, np.arange(n), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - n)
    mask = np.zeros(length, bool)
    mask[:n] = True
    return np.pad(x, pad, constant_values=value), mask


def check_record(record: Mapping[str, Any], spec: Mapping[str, tuple]) -> tuple[str, str] | None:
    """``(field, reason)`` of the first violation of ``spec`` ({field: (shape, dtype)}; ``None``
    dims match any size), or None when the record conforms."""
    for field, (shape, dtype) in spec.items():
        if field not in record:
            return field, "missing"
        value = np.asarray(record[field])
        if len(value.shape) != len(shape) or any(
            s is not None and s != v for s, v in zip(shape, value.shape)
        ):
            return field, f"shape {value.shape} does not match {tuple(shape)}"
        want = np.dtype(dtype)
        if want.kind != "O" and value.dtype.kind != want.kind:
            return field, f"dtype {value.dtype} does not match {want}"
    return None


class _ReadTransform:
    """index -> transformed example dict, or a ``_Malformed`` sentinel (picklable)."""

    def __init__(self, source, spec, transform):
        self.source, self.spec, self.transform = source, spec, transform

    def __call__(self, index: int):
        index = int(index)
        try:
            record = self.source[index]
        except Exception as e:  # noqa: BLE001 - any decode failure is a malformed record
            return _Malformed(index, "<record>", f"{type(e).__name__}: {e}")
        if self.spec:
            bad = check_record(record, self.spec)
            if bad is not None:
                return _Malformed(index, *bad)
        if self.transform is None:
            return record
        try:
            return self.transform(record)
        except MalformedRecordError as e:
            return _Malformed(index, e.field, e.reason)
        except Exception as e:  # noqa: BLE001
            return _Malformed(index, "<transform>", f"{type(e).__name__}: {e}")


class _ReadRandomTransform(grain.transforms.RandomMap):
    """index, rng -> ``transform.random_map(record, rng)`` or a ``_Malformed`` (picklable)."""

    def __init__(self, source, spec, transform: grain.transforms.RandomMap):
        self.read = _ReadTransform(source, spec, None)
        self.transform = transform

    def random_map(self, index, rng: np.random.Generator):
        record = self.read(index)
        if isinstance(record, _Malformed):
            return record
        try:
            return self.transform.random_map(record, rng)
        except MalformedRecordError as e:
            return _Malformed(int(index), e.field, e.reason)
        except Exception as e:  # noqa: BLE001
            return _Malformed(int(index), "<transform>", f"{type(e).__name__}: {e}")


class PaddedBatchDataset(grain.IterDataset):
    """Batches examples (dicts of arrays) into ``[batch_size, ...]`` + ``example_mask``;
    raises or skips-and-counts ``_Malformed`` elements."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, drop_remainder: bool,
                 skip_malformed: bool):
        super().__init__(parent)
        self.batch_size, self.drop_remainder = batch_size, drop_remainder
        self.skip_malformed = skip_malformed

    def __iter__(self):
        return PaddedBatchIterator(self._parent.__iter__(), self.batch_size, self.drop_remainder,
                                   self.skip_malformed)


class PaddedBatchIterator(grain.DatasetIterator):
    """Iterator of ``PaddedBatchDataset``; ``num_skipped`` counts dropped malformed records."""

    def __init__(self, parent, batch_size: int, drop_remainder: bool, skip_malformed: bool):
        super().__init__(parent)
        self.batch_size, self.drop_remainder = batch_size, drop_remainder
        self.skip_malformed = skip_malformed
        self.num_skipped = 0

    def __next__(self) -> dict:
        rows = []
        while len(rows) < self.batch_size:
            try:
                x = next(self._parent)
            except StopIteration:
                break
            if isinstance(x, _Malformed):
                if not self.skip_malformed:
                    raise MalformedRecordError(x.index, x.field, x.reason)
                self.num_skipped += 1
                continue
            rows.append(x)
        if not rows or (len(rows) < self.batch_size and self.drop_remainder):
            raise StopIteration
        n = len(rows)
        batch = {}
        for key in rows[0]:
            stacked = np.stack([np.asarray(r[key]) for r in rows])
            if n < self.batch_size:
                pad = np.zeros((self.batch_size - n,) + stacked.shape[1:], stacked.dtype)
                stacked = np.concatenate([stacked, pad])
            batch[key] = stacked
        mask = np.zeros(self.batch_size, bool)
        mask[:n] = True
        batch["example_mask"] = mask
        return batch

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "num_skipped": self.num_skipped}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.num_skipped = int(state["num_skipped"])


def build_pipeline(
    source: Any,
    *,
    batch_size: int,
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    spec: Mapping[str, tuple] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
    skip_malformed: bool = False,
    num_workers: int = 0,
    worker_buffer_size: int = 4,
    read_threads: int = 4,
    prefetch: int = 16,
) -> grain.IterDataset:
    """A checkpointable Grain ``IterDataset`` of host batches for this process (see module doc).

    ``source``: random access (``len``, ``[i]``), e.g. ``array_record.open_split(...)``.
    ``batch_size``: rows per process per batch (global batch / process count).
    ``transform``: ``record -> example``, or a ``grain.transforms.RandomMap`` whose
    ``random_map(record, rng)`` draws from Grain's per-element generator (seeded by ``seed``
    and the element's position, as ``MapDataset.random_map`` does); both run inside the guard.
    """
    if batch_size < 1:
        raise ValueError(f"data.batch_size={batch_size} must be >= 1")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"data.num_epochs={num_epochs} must be >= 1 or None")
    if num_workers < 0:
        raise ValueError(f"data.num_workers={num_workers} must be >= 0")
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if not 0 <= pi < pc:
        raise ValueError(f"process_index={pi} must be in [0, process_count={pc})")
    n = len(source)
    if n == 0:
        raise ValueError("source is empty")
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if pc > 1:
        ds = ds[pi::pc]
    if isinstance(transform, grain.transforms.RandomMap):
        ds = ds.random_map(_ReadRandomTransform(source, dict(spec or {}), transform), seed=seed)
    else:
        ds = ds.map(_ReadTransform(source, dict(spec or {}), transform))
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
    )
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=num_workers, per_worker_buffer_size=worker_buffer_size
            )
        )
    return PaddedBatchDataset(it_ds, batch_size, drop_remainder, skip_malformed)


def _ensure_absl_flags_parsed() -> None:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def take(iterator, n: int) -> list[dict]:
    """The next ``n`` batches of an iterator (helper for tests and previews)."""
    return [next(iterator) for _ in range(n)]


def in_memory_batches(arrays: Mapping[str, np.ndarray], batch_size: int,
                      order: Sequence[int] | None = None):
    """Endless iterator of batches cut from in-memory arrays (no Grain; for benchmarks)."""
    n = len(next(iter(arrays.values())))
    order = np.arange(n) if order is None else np.asarray(order)
    i = 0
    while True:
        idx = np.take(order, np.arange(i, i + batch_size), mode="wrap")
        i = (i + batch_size) % n
        batch = {k: v[idx] for k, v in arrays.items()}
        batch["example_mask"] = np.ones(batch_size, bool)
        yield batch
