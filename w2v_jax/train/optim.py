"""Optimizer construction: AdamW with linear warmup + cosine decay, clipping, parameter groups.

Parameter paths are the '/'-joined keys of a parameter in the model, e.g.
``blocks/0/attn/q/kernel`` (``nnx.List`` indices are numbers). ``param_groups`` are
``(regex, lr_multiplier)`` pairs matched with ``re.search`` against the path, first match wins;
a multiplier of 0 freezes the group (it gets no optimizer state and never changes — the Trainer
removes it from the trainable set, see ``frozen_regexes``).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from w2v_jax.config_parsing import dataclass_from_dict


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW + warmup/cosine schedule. ``decay_steps=0`` means "the run's total_steps"."""

    learning_rate: float = 1e-3
    warmup_steps: int = 0
    decay_steps: int = 0
    end_lr_ratio: float = 0.0  # final lr = learning_rate * end_lr_ratio
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled; applied to parameters with ndim >= 2 only
    clip_norm: float = 0.0  # global grad-norm clipping threshold; 0 = off
    param_groups: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        # written as "not (x in range)" so that NaN (every comparison False) is refused too
        for name, lo, hi in (("learning_rate", 0.0, math.inf), ("end_lr_ratio", 0.0, 1.0),
                             ("b1", 0.0, 1.0), ("b2", 0.0, 1.0), ("weight_decay", 0.0, math.inf),
                             ("clip_norm", 0.0, math.inf)):
            value = getattr(self, name)
            if not (math.isfinite(value) and lo <= value <= hi):
                allowed = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
                raise ValueError(f"optimizer.{name}={value}: must be a finite number {allowed}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"optimizer.eps={self.eps}: must be a finite number > 0")
        for name in ("warmup_steps", "decay_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(
                    value) and value == int(value) and value >= 0):
                raise ValueError(f"optimizer.{name}={value!r}: must be an integer >= 0")
        for group in self.param_groups:
            if len(group) != 2 or not (math.isfinite(float(group[1])) and float(group[1]) >= 0):
                raise ValueError(f"optimizer.param_groups entry {group!r} must be (regex, "
                                 "lr_multiplier: a finite number >= 0)")
            try:
                re.compile(group[0])
            except re.error as e:
                raise ValueError(f"optimizer.param_groups regex {group[0]!r}: {e}") from e

    @classmethod
    def from_dict(cls, d: Any) -> "OptimizerConfig":
        """From a dict / ConfigDict; unknown keys raise ValueError naming them."""
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        if "param_groups" in d:
            d["param_groups"] = tuple((str(r), float(m)) for r, m in d["param_groups"])
        return dataclass_from_dict(cls, d, where="config.optimizer")


def schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Learning rate at optimizer step ``count``: linear warmup from 0, then cosine decay."""
    decay = cfg.decay_steps or total_steps
    warmup = min(cfg.warmup_steps, max(decay - 1, 0))
    if decay <= 0 or decay <= warmup:
        return optax.constant_schedule(cfg.learning_rate)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.learning_rate,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=decay,
        end_value=cfg.learning_rate * cfg.end_lr_ratio,
    )


def path_str(path: Sequence[Any]) -> str:
    """'/'-joined parameter path from a jax key path (drops the trailing Variable ``value``)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def frozen_regexes(cfg: OptimizerConfig) -> tuple[str, ...]:
    """Regexes of groups with multiplier 0 (excluded from training)."""
    return tuple(r for r, m in cfg.param_groups if float(m) == 0.0)


def group_index(path: str, cfg: OptimizerConfig) -> int:
    """Index of the first matching param group, or -1 (default group, multiplier 1)."""
    for i, (regex, _) in enumerate(cfg.param_groups):
        if re.search(regex, path):
            return i
    return -1


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm -> per-group AdamW(lr * multiplier, decoupled weight decay on ndim>=2).

    Gradient clipping acts on the global norm over all trainable parameters. Groups with
    multiplier 0 should already be excluded from the trainable set; if any such parameter is
    passed anyway its update is zero.
    """
    base = schedule(cfg, total_steps)

    def decay_mask(params):
        return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)

    def adamw(mult: float) -> optax.GradientTransformation:
        if mult == 0.0:
            return optax.set_to_zero()
        return optax.adamw(
            lambda count: base(count) * mult,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )

    if cfg.param_groups:

        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: str(group_index(path_str(path), cfg)), params
            )

        transforms = {str(i): adamw(float(m)) for i, (_, m) in enumerate(cfg.param_groups)}
        transforms["-1"] = adamw(1.0)
        core = optax.multi_transform(transforms, labels)
    else:
        core = adamw(1.0)
    if cfg.clip_norm:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)
    return core
