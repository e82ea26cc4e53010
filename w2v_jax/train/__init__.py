"""The shared training system: mesh + logical rules, one Trainer, losses, checkpoints.

Submodules are imported explicitly (``from w2v_jax.train import sharding``,
``from w2v_jax.train.trainer import Trainer``) so that importing the sharding contract stays
cheap and has no side effects.
"""
