"""Shared helpers of the Trainer / checkpoint tests: tiny toy LMs and buffer-owning copies."""
import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax import sharding
from w2v_jax.models.toy import ToyLM, ToyLMConfig


def toy_config(vocab_size: int = 64, lora_rank: int = 0) -> ToyLMConfig:
    """Width 64, 2 layers, 4 heads, sequences of up to 16 tokens."""
    return ToyLMConfig(vocab_size=vocab_size, width=64, depth=2, num_heads=4, mlp_dim=128,
                       max_len=16, lora_rank=lora_rank)


def toy_model(vocab_size: int = 64, lora_rank: int = 0, seed: int = 0) -> ToyLM:
    """An unsharded toy LM (fixed init ``seed``)."""
    config = toy_config(vocab_size, lora_rank)
    return sharding.create_unsharded(lambda: ToyLM(config, rngs=nnx.Rngs(seed)))


def fresh(model):
    """A copy with its own buffers (the Trainer donates its state)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
