"""LoRA adapters for any NNX model built from linear layers.

A linear layer here is any module with a 2-D ``kernel`` parameter of shape ``[in, out]`` that
computes ``y = x @ kernel (+ bias)`` (``nnx.Linear`` and layers following its convention).
``apply_lora`` wraps the layers whose dotted module path matches a regex in ``LoRALinear``:

    y = base(x) + (alpha / rank) * dropout(x) @ A @ B,   A: [in, rank], B: [rank, out]

``A`` starts He-uniform and ``B`` at zero, so a freshly adapted model computes exactly what the
base model computed. Adapter weights are ``nnx.LoRAParam`` (a subclass of ``nnx.Param``): train
only them with ``nnx.Optimizer(model, tx, wrt=LORA_FILTER)`` / the Trainer's ``LORA_FILTER``.
``merge_lora`` folds ``(alpha / rank) * A @ B`` into each base kernel and puts the base layer back,
so the merged model has the original structure (``save_vlm`` writes it as a plain checkpoint).

Sharding: ``A`` takes the base kernel's input-dimension logical name (``[in_name, None]``) and
``B`` its output-dimension name (``[None, out_name]``); the arrays are placed on the matching
physical sharding of the base kernel, so adapters of an FSDP/tensor-sharded model are sharded too.

Dropout (rate > 0) draws from an ``nnx.Rngs`` stream named ``dropout`` stored in the adapters.
``with_dropout_key(model, key)`` returns a copy of the model (sharing its arrays) whose dropout
streams start from ``key`` — the ``sft`` loss calls it with its ``rng``, which works inside
``jax.grad``/``jit`` where mutating the caller's RNG state is not allowed; turn dropout off with
``nnx.view(model, deterministic=True)`` (generation does).
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

# Paper (ms-swift `all-linear`, `freeze_vit`): every linear layer of the language model's
# decoder blocks; the vision tower, the embeddings and the LM head stay untouched.
DEFAULT_PATTERN = (
    r"(^|\.)language_model\..*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
)

# Trainable-parameter filter selecting the adapter weights only.
LORA_FILTER = nnx.LoRAParam


def _kernel_names(kernel: nnx.Variable) -> tuple[Any, Any]:
    """Logical names ``(in_name, out_name)`` of a 2-D kernel (``None`` where it has none)."""
    names = kernel.get_metadata().get("out_sharding")
    if names is None or len(names) != 2:
        return (None, None)
    return tuple(names)


def _place_like(value: jax.Array, kernel: jax.Array, keep_dim: int) -> jax.Array:
    """Puts an adapter matrix on the base kernel's devices, sharded like kernel dim ``keep_dim``.

    ``keep_dim`` is 0 for ``A`` (shares the kernel's input dim) and 1 for ``B`` (output dim); the
    rank dimension is replicated.
    """
    sharding = getattr(kernel, "sharding", None)
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
        axes = [None, None]
        axes[keep_dim] = spec[keep_dim]
        return jax.device_put(value, NamedSharding(sharding.mesh, PartitionSpec(*axes)))
    if sharding is not None and len(sharding.device_set) == 1:
        return jax.device_put(value, sharding)
    return value


class LoRALinear(nnx.Module):
    """``base(x) + (alpha / rank) * dropout(x) @ lora_a @ lora_b`` for a linear ``base``.

    Shapes: x ``[..., in]`` -> ``[..., out]``; ``lora_a`` ``[in, rank]``, ``lora_b``
    ``[rank, out]`` stored in ``param_dtype`` (default: the base kernel's dtype); the adapter
    product is computed in x's dtype.
    """

    def __init__(
        self,
        base: nnx.Module,
        rank: int,
        alpha: float,
        dropout: float,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = None,
    ):
        kernel = base.kernel
        if kernel.ndim != 2:
            raise ValueError(
                f"LoRALinear base kernel has shape {kernel.shape}; only 2-D [in, out] kernels "
                "are supported"
            )
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"lora rank={rank!r}: must be a positive int")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"lora dropout={dropout!r}: must be in [0, 1)")
        d_in, d_out = kernel.shape
        dtype = jnp.dtype(param_dtype or kernel.dtype)
        in_name, out_name = _kernel_names(kernel)
        a = nnx.initializers.he_uniform()(rngs.params(), (d_in, rank), dtype)
        b = jnp.zeros((rank, d_out), dtype)
        self.base = base
        self.rank = rank
        self.alpha = float(alpha)
        self.lora_a = nnx.LoRAParam(
            _place_like(a, kernel[...], 0), out_sharding=(in_name, None), eager_sharding=False
        )
        self.lora_b = nnx.LoRAParam(
            _place_like(b, kernel[...], 1), out_sharding=(None, out_name), eager_sharding=False
        )
        # Its own stream, tagged "dropout" (see with_dropout_key); None when the rate is 0.
        self.dropout = nnx.data(
            nnx.Dropout(dropout, rngs=nnx.Rngs(dropout=rngs.dropout())) if dropout > 0 else None
        )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> jax.Array:
        """The kernel update ``(alpha / rank) * A @ B`` ``[in, out]``, computed in float32."""
        a = self.lora_a[...].astype(jnp.float32)
        b = self.lora_b[...].astype(jnp.float32)
        return self.scale * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        y = self.base(x, *args, **kwargs)
        h = self.dropout(x) if self.dropout is not None else x
        h = h @ self.lora_a[...].astype(x.dtype)
        h = h @ self.lora_b[...].astype(x.dtype)
        return y + (self.scale * h).astype(y.dtype)


def _path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _is_linear(module: Any) -> bool:
    kernel = getattr(module, "kernel", None)
    return (
        isinstance(kernel, nnx.Variable) and kernel.ndim == 2 and not isinstance(module, LoRALinear)
    )


def _replace(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    """Replaces the submodule at ``path`` (attribute names and list indices) by ``new``."""
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    key = path[-1]
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)


def lora_paths(model: nnx.Module, pattern: str = DEFAULT_PATTERN) -> list[str]:
    """Dotted paths of the linear layers (2-D ``kernel``) whose path matches ``pattern``.

    Matching is ``re.search`` on paths such as ``language_model.layers.0.self_attn.q_proj``.
    """
    regex = re.compile(pattern)
    return [
        _path_str(path)
        for path, module in nnx.iter_modules(model)
        if path and _is_linear(module) and regex.search(_path_str(path))
    ]


def apply_lora(
    model: nnx.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    pattern: str = DEFAULT_PATTERN,
    rngs: nnx.Rngs | int = 0,
    param_dtype: Any = None,
) -> nnx.Module:
    """Wraps every linear layer whose dotted path matches ``pattern`` in a ``LoRALinear``.

    Mutates and returns ``model``. ``rngs`` (an ``nnx.Rngs`` or an int seed) draws the ``A``
    initialisations and seeds the dropout streams. Raises ValueError if nothing matches (listing
    the linear layers that exist) or if the model already has adapters.
    """
    if isinstance(rngs, int):
        rngs = nnx.Rngs(params=rngs, dropout=rngs + 1)
    if has_lora(model):
        raise ValueError("apply_lora: the model already has LoRA adapters; merge_lora it first")
    regex = re.compile(pattern)
    targets = [
        (path, module)
        for path, module in nnx.iter_modules(model)
        if path and _is_linear(module) and regex.search(_path_str(path))
    ]
    if not targets:
        linears = [_path_str(p) for p, m in nnx.iter_modules(model) if p and _is_linear(m)]
        raise ValueError(
            f"apply_lora pattern={pattern!r} matches no linear layer; linear layers are: "
            f"{linears[:20]}{' ...' if len(linears) > 20 else ''}"
        )
    for path, module in targets:
        adapter = LoRALinear(module, rank, alpha, dropout, rngs=rngs, param_dtype=param_dtype)
        _replace(model, path, adapter)
    return model


def adapter_paths(model: nnx.Module) -> list[str]:
    """Dotted paths of the ``LoRALinear`` adapters in ``model``."""
    return [_path_str(p) for p, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]


def has_lora(model: nnx.Module) -> bool:
    """True if any submodule is a ``LoRALinear``."""
    return any(isinstance(m, LoRALinear) for _, m in nnx.iter_modules(model))


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds each adapter into its base kernel and puts the base layer back in its place.

    ``kernel <- kernel + (alpha / rank) * A @ B`` (sum in float32, stored in the kernel's dtype
    and sharding). Mutates and returns ``model``; afterwards it has no ``LoRAParam`` left.
    """
    targets = [(p, m) for p, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]
    for path, adapter in targets:
        kernel = adapter.base.kernel
        old = kernel[...]
        new = (old.astype(jnp.float32) + adapter.delta()).astype(old.dtype)
        if getattr(old, "sharding", None) is not None:
            new = jax.device_put(new, old.sharding)
        kernel[...] = new
        if path:
            _replace(model, path, adapter.base)
    return model


def with_dropout_key(model: nnx.Module, key: jax.Array, stream: str = "dropout") -> nnx.Module:
    """A model sharing ``model``'s arrays whose ``stream`` RNG streams restart from ``key``.

    Each stream gets ``fold_in(key, crc32(path))`` and a zero counter, so results depend only on
    ``key``. The caller's model is not mutated (safe under ``jax.grad`` / ``jit``). Returns
    ``model`` itself when it has no such stream.
    """
    graphdef, state = nnx.split(model)
    found = False

    def reseed(path, var):
        nonlocal found
        if isinstance(var, nnx.RngKey) and var.tag == stream:
            found = True
            salt = zlib.crc32(".".join(str(p) for p in path).encode())
            return var.replace(jax.random.fold_in(key, salt))
        if isinstance(var, nnx.RngCount) and var.tag == stream:
            return var.replace(jnp.zeros_like(var[...]))
        return var

    state = nnx.map_state(reseed, state)
    return nnx.merge(graphdef, state) if found else model
