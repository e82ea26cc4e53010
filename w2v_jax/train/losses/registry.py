"""Registry of training losses.

A loss is a pure function ``fn(model, batch, rng) -> (loss, aux)``:

* ``model``: the ``nnx.Module`` being trained (parameters already merged in);
* ``batch``: a dict of arrays with a leading batch dimension (one micro-batch);
* ``rng``: a ``jax.random`` key private to this micro-batch and step;
* ``loss``: scalar f32, the micro-batch objective (used for reporting only);
* ``aux``: dict of scalar f32 arrays. It must hold ``aux["loss_sum"]`` (the *sum* of the
  per-unit losses, e.g. token cross-entropies times their weights) and ``aux["weight"]``
  (the matching denominator, e.g. the number of target tokens), so that
  ``loss == loss_sum / weight``. The Trainer differentiates ``sum(loss_sum) / sum(weight)``
  over all micro-batches, which makes k-micro-batch accumulation equal to one big batch.
  Every other aux entry is combined over micro-batches by its suffix (``*_max`` by max,
  ``*_min`` by min, anything else by sum) and reported by ``trainer.report_metrics``:
  ``<name>_sum`` is reported as ``<name>`` = ``<name>_sum / <name>_count`` when the loss also
  returns ``<name>_count`` (a metric with its own denominator, e.g. per-sequence next to
  per-token figures), else as ``<name>_sum / weight`` (e.g. ``accuracy_sum`` -> ``accuracy``);
  everything else is reported as is.
  ``aux["tokens"]`` (optional) counts tokens for the ``tokens_per_s`` metric.

Options: a loss may take keyword-only options after ``rng``; ``get_loss(name, **kwargs)`` binds
them (``config.loss_kwargs`` of a training config), so a variant is configuration of one
registered loss, not a new name. An unknown option is a ValueError naming it; a loss may register
a ``validate(**kwargs)`` callable that checks the values when they are bound (before anything
compiles)::

    @register_loss("my_loss")
    def my_loss(model, batch, rng, *, temperature=1.0): ...

    fn = get_loss("my_loss", temperature=0.5)
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]

_LOSSES: dict[str, LossFn] = {}
_VALIDATORS: dict[str, Callable[..., None]] = {}


def register_loss(name: str, validate: Callable[..., None] | None = None
                  ) -> Callable[[LossFn], LossFn]:
    """Decorator registering ``fn`` under ``name`` (ValueError if the name is taken);
    ``validate(**kwargs)`` (optional) checks option values when ``get_loss`` binds them."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"loss name must be a non-empty str, got {name!r}")

    def decorator(fn: LossFn) -> LossFn:
        if name in _LOSSES and _LOSSES[name] is not fn:
            raise ValueError(f"loss {name!r} is already registered (by {_LOSSES[name]!r})")
        _LOSSES[name] = fn
        if validate is not None:
            _VALIDATORS[name] = validate
        return fn

    return decorator


def loss_options(fn: LossFn) -> dict[str, Any]:
    """The keyword-only options of a loss function and their defaults."""
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_loss(name: str, **kwargs: Any) -> LossFn:
    """The loss registered as ``name`` with options ``kwargs`` bound; ValueError listing the
    registered names for an unknown loss, or naming an unknown option / a bad value."""
    if name not in _LOSSES:
        raise ValueError(
            f"loss={name!r} is not registered; registered losses: {registered_losses()}"
        )
    fn = _LOSSES[name]
    if not kwargs:
        return fn
    options = loss_options(fn)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"config.loss_kwargs {unknown} are not options of loss {name!r}; "
                         f"allowed: {sorted(options)}")
    if name in _VALIDATORS:
        _VALIDATORS[name](**{**options, **kwargs})
    return functools.partial(fn, **kwargs)


def registered_losses() -> list[str]:
    """Sorted names of all registered losses."""
    return sorted(_LOSSES)
