"""The data builders a training config can name (``config.data.name``).

A builder is called as ``fn(config.data, workdir=, batch_size=<rows per process>, seed=,
process_index=, process_count=)`` and returns ``(train_dataset, eval_fn | None)``: an iterable
whose iterator may be checkpointable (``get_state``/``set_state``), and a zero-argument function
returning an iterable of eval batches. Add a builder by adding an entry below.
"""
from __future__ import annotations

from typing import Callable

from w2v_jax.data import synthetic, view_pairs

DATA_BUILDERS: dict[str, Callable] = {
    "synthetic_lm": synthetic.from_config,  # the toy LM's modular progressions
    "view_pairs": view_pairs.from_config,  # world-model view pairs from posed clips
}


def get_data_builder(name: str) -> Callable:
    """The builder registered as ``name``; ValueError naming ``config.data.name`` otherwise."""
    if name not in DATA_BUILDERS:
        raise ValueError(f"config.data.name={name!r} is unknown; allowed: {sorted(DATA_BUILDERS)}")
    return DATA_BUILDERS[name]
