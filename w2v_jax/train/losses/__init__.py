"""Loss registry. Importing this package registers every loss module listed below.

Add a loss module by appending one import line (its ``@register_loss`` decorators run on import).
"""
from w2v_jax.train.losses.registry import get_loss, register_loss, registered_losses

from w2v_jax.train.losses import toy  # noqa: F401  (registers "next_token")
from w2v_jax.train.losses import flow_matching  # noqa: F401  (registers "flow_matching", "regression")
from w2v_jax.train.losses import sft  # noqa: F401  (registers "sft")
from w2v_jax.train.losses import grpo  # noqa: F401  (registers "grpo")

__all__ = ["get_loss", "register_loss", "registered_losses"]
