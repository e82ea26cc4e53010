"""The shared training system: one Trainer, losses, checkpoints, run loading.

``from w2v_jax.train import Trainer`` is the entry point; the loss registry is
``w2v_jax.train.losses`` and checkpoints are ``w2v_jax.train.checkpoint``. Mesh and logical-axis
rules live one layer down, in ``w2v_jax.sharding``.
"""
from w2v_jax.train.trainer import Trainer

__all__ = ["Trainer"]
