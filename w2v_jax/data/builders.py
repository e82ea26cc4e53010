"""The data builders a training config can name (``config.data.name``).

A builder is called as ``fn(config.data, workdir=, batch_size=<rows per process>, seed=,
process_index=, process_count=)`` and returns ``(train_dataset, eval_fn | None)``: an iterable
whose iterator may be checkpointable (``get_state``/``set_state``), and a zero-argument function
returning an iterable of eval batches. Add a builder by adding an entry below.
"""
from __future__ import annotations

from typing import Callable

from w2v_jax.data import distill, synthetic, view_pairs
from w2v_jax.data.sft_batch import sft_batch


def image_config(data):
    """The ``ImageConfig`` of a VLM data config: ``data.min_pixels`` / ``max_pixels`` (0 or
    absent: the HF / paper defaults)."""
    from w2v_jax.processing import ImageConfig

    defaults = ImageConfig()
    return ImageConfig(min_pixels=int(data.get("min_pixels", 0) or defaults.min_pixels),
                       max_pixels=int(data.get("max_pixels", 0) or defaults.max_pixels))


def _distill_kwargs(data, **kw) -> dict:
    """Arguments of ``distill.sft_pipeline`` / ``grpo_pipeline`` shared by both builders."""
    from w2v_jax.processing import load_tokenizer

    return dict(tokenizer=load_tokenizer(data.tokenizer_dir), image_config=image_config(data),
                skip_malformed=bool(data.get("skip_malformed", False)), **kw)


def distill_sft(data, *, workdir, batch_size, seed, process_index, process_count):
    """SFT batches of the distillation package (``config.data``: package_dir, tokenizer_dir,
    max_length, max_target_tokens, min/max_pixels, num_eval_batches, tasks) and eval batches of
    its ``eval`` split (held-out scenes); ``tasks`` (() = all) keeps only those task types in
    both splits."""
    del workdir
    k = int(data.get("max_target_tokens", 0)) or None
    kw = _distill_kwargs(data, batch_size=batch_size, max_length=int(data.max_length),
                         max_target_tokens=k, tasks=tuple(data.get("tasks", ()) or ()),
                         process_index=process_index,
                         process_count=process_count)
    train = distill.sft_pipeline(data.package_dir, seed=seed, **kw).map(sft_batch)

    def eval_fn():
        ds = distill.sft_pipeline(data.package_dir, split="eval", shuffle=False, num_epochs=1,
                                  drop_remainder=False, **kw).map(sft_batch)
        n = int(data.get("num_eval_batches", 0))
        return ds if not n else (b for _, b in zip(range(n), ds))

    return train, eval_fn


def distill_grpo(data, *, workdir, batch_size, seed, process_index, process_count):
    """GRPO prompt batches of the package's ``grpo`` split (``config.data``: package_dir,
    tokenizer_dir, max_prompt_length, min/max_pixels, num_eval_batches) and prompt batches of
    its ``eval`` split for validation."""
    del workdir
    kw = _distill_kwargs(data, batch_size=batch_size,
                         max_prompt_length=int(data.max_prompt_length),
                         process_index=process_index, process_count=process_count)
    train = distill.grpo_pipeline(data.package_dir, seed=seed, **kw)

    def eval_fn():
        ds = distill.grpo_pipeline(data.package_dir, split="eval", shuffle=False, num_epochs=1,
                                   drop_remainder=False, **kw)
        n = int(data.get("num_eval_batches", 0))
        return ds if not n else (b for _, b in zip(range(n), ds))

    return train, eval_fn


DATA_BUILDERS: dict[str, Callable] = {
    "synthetic_lm": synthetic.from_config,  # the toy LM's modular progressions
    "view_pairs": view_pairs.from_config,  # world-model view pairs from posed clips
    "distill_sft": distill_sft,  # SFT conversations of the distillation package
    "distill_grpo": distill_grpo,  # GRPO prompts (+ ground truth) of the distillation package
}


def get_data_builder(name: str) -> Callable:
    """The builder registered as ``name``; ValueError naming ``config.data.name`` otherwise."""
    if name not in DATA_BUILDERS:
        raise ValueError(f"config.data.name={name!r} is unknown; allowed: {sorted(DATA_BUILDERS)}")
    return DATA_BUILDERS[name]
