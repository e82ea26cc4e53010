"""A toy causal transformer LM (Flax NNX) for tests, benchmarks and the training demo.

Pre-norm blocks: RMSNorm -> causal multi-head attention -> RMSNorm -> GELU MLP, learned absolute
positions, untied LM head. Every parameter carries logical axis names (see
``w2v_jax.sharding``), so ``create_sharded(lambda: ToyLM(cfg, rngs=nnx.Rngs(0)), mesh)``
shards it. With ``lora_rank > 0`` the query and value projections get ``nnx.LoRA`` adapters whose
weights are ``nnx.LoRAParam`` (train them alone with ``trainable="lora"``).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax.config_parsing import dataclass_from_dict
from w2v_jax.sharding import with_logical_constraint

_init = nnx.initializers


@dataclasses.dataclass(frozen=True)
class ToyLMConfig:
    """Static shape of the toy LM. ``width`` must divide by ``num_heads``."""

    vocab_size: int = 64
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    max_len: int = 32
    lora_rank: int = 0
    dtype: str = "float32"  # compute dtype; parameters are always f32

    def __post_init__(self):
        for name in ("vocab_size", "width", "depth", "num_heads", "mlp_dim", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ToyLMConfig.{name}={getattr(self, name)} must be >= 1")
        if self.width % self.num_heads:
            raise ValueError(
                f"ToyLMConfig.width={self.width} must be divisible by num_heads={self.num_heads}"
            )
        if self.lora_rank < 0:
            raise ValueError(f"ToyLMConfig.lora_rank={self.lora_rank} must be >= 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"ToyLMConfig.dtype={self.dtype!r}: allowed 'float32', 'bfloat16'")


def _dense(cfg, n_in, n_out, names, rngs, scale=1.0):
    return nnx.Linear(
        n_in,
        n_out,
        use_bias=False,
        dtype=jnp.dtype(cfg.dtype),
        kernel_init=nnx.with_partitioning(_init.normal(scale / n_in**0.5), names),
        rngs=rngs,
    )


def _norm(cfg, rngs):
    return nnx.RMSNorm(
        cfg.width,
        dtype=jnp.dtype(cfg.dtype),
        scale_init=nnx.with_partitioning(_init.ones, ("norm",)),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Causal multi-head self-attention on [B, L, D]."""

    def __init__(self, cfg: ToyLMConfig, rngs: nnx.Rngs):
        d = cfg.width
        self.num_heads = cfg.num_heads
        self.q = _dense(cfg, d, d, ("embed", "heads"), rngs)
        self.k = _dense(cfg, d, d, ("embed", "kv_heads"), rngs)
        self.v = _dense(cfg, d, d, ("embed", "kv_heads"), rngs)
        self.o = _dense(cfg, d, d, ("heads", "embed"), rngs)
        if cfg.lora_rank:
            lora = dict(
                a_metadata={"out_sharding": ("embed", None)},
                b_metadata={"out_sharding": (None, "heads")},
                dtype=jnp.dtype(cfg.dtype),
                rngs=rngs,
            )
            self.q = nnx.LoRA(d, cfg.lora_rank, d, base_module=self.q, **lora)
            self.v = nnx.LoRA(d, cfg.lora_rank, d, base_module=self.v, **lora)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        h = self.num_heads

        def heads(t):
            t = t.reshape(b, n, h, d // h)
            return with_logical_constraint(t, ("batch", None, "heads", None))

        out = jax.nn.dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True
        )
        return self.o(out.reshape(b, n, d))


class Block(nnx.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ToyLMConfig, rngs: nnx.Rngs):
        self.norm1 = _norm(cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.norm2 = _norm(cfg, rngs)
        self.up = _dense(cfg, cfg.width, cfg.mlp_dim, ("embed", "mlp"), rngs)
        self.down = _dense(cfg, cfg.mlp_dim, cfg.width, ("mlp", "embed"), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        hidden = jax.nn.gelu(self.up(self.norm2(x)))
        hidden = with_logical_constraint(hidden, ("batch", None, "mlp"))
        return with_logical_constraint(x + self.down(hidden), ("batch", None, None))


class ToyLM(nnx.Module):
    """tokens int32 [B, L] (L <= max_len) -> logits f32 [B, L, vocab_size]."""

    def __init__(self, cfg: ToyLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.width,
            dtype=jnp.dtype(cfg.dtype),
            embedding_init=nnx.with_partitioning(_init.normal(1.0), ("vocab", "embed")),
            rngs=rngs,
        )
        self.pos = nnx.Param(
            nnx.with_partitioning(_init.normal(0.02), ("length", "embed"))(
                rngs.params(), (cfg.max_len, cfg.width)
            )
        )
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.depth)])
        self.final_norm = _norm(cfg, rngs)
        self.head = _dense(cfg, cfg.width, cfg.vocab_size, ("embed", "vocab"), rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        n = tokens.shape[1]
        if n > self.cfg.max_len:
            raise ValueError(f"tokens length {n} exceeds ToyLMConfig.max_len={self.cfg.max_len}")
        table = with_logical_constraint(self.embed.embedding[...], ("vocab", None))
        x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(self.cfg.dtype))
        x = x + self.pos[...][:n].astype(jnp.dtype(self.cfg.dtype))
        x = with_logical_constraint(x, ("batch", None, None))
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x)).astype(jnp.float32)


def matmul_flops_per_token(cfg: ToyLMConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the matmuls (projections, MLP, attention scores, LM head).

    Causal attention is counted over the full L x L score matrix (as XLA computes it).
    Training (forward + backward) costs 3x this.
    """
    d, m, v = cfg.width, cfg.mlp_dim, cfg.vocab_size
    per_block = 2 * (4 * d * d + 2 * d * m) + 2 * 2 * seq_len * d
    return cfg.depth * per_block + 2 * d * v


def from_config(model_config) -> "callable":
    """Factory for the launcher: ``model_config`` (dict-like with ToyLMConfig fields + ``seed``)
    -> a zero-argument constructor for ``create_sharded``."""
    cfg = dataclass_from_dict(ToyLMConfig, model_config, where="config.model",
                              ignore=("name", "seed"))
    seed = int(dict(model_config).get("seed", 0))
    return lambda: ToyLM(cfg, rngs=nnx.Rngs(seed))
