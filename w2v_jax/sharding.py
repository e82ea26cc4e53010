"""Device mesh, logical-axis rules and sharded model creation.

This is the only module that names the physical mesh axes ``data``, ``fsdp`` and ``tensor``.
Models put *logical* names on their parameters with
``nnx.with_partitioning(init_fn, ("embed", "mlp"))``; ``LOGICAL_RULES`` maps each logical name
to a mesh axis (or ``None`` = replicated along that dimension):

==========  ==================  ===================================================
logical     mesh axis           meaning
==========  ==================  ===================================================
batch       ("data", "fsdp")    examples of a batch (activations and inputs)
length      None                sequence / token positions
embed       "fsdp"              model width (FSDP shards parameters along it)
mlp         "tensor"            feed-forward hidden width
heads       "tensor"            fused ``heads * head_dim`` of a query projection
kv_heads    "tensor"            fused ``kv_heads * head_dim`` of a key/value projection
head_dim    None                per-head width when kept as a separate dimension
vocab       "tensor"            vocabulary (embedding rows, LM-head columns)
norm        None                normalisation scales and biases
patch       None                flattened image-patch features
conv        None                convolution window
views       None                camera views / frames of a clip
time        None                diffusion time embedding features
==========  ==================  ===================================================

Typical use::

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = create_sharded(lambda: MyModel(cfg, rngs=nnx.Rngs(0)), mesh)
    assert_sharded(model, mesh, min_size_bytes=1 << 20)
    batch = shard_batch({"tokens": np_tokens}, mesh)

Multi-host: call ``initialize_multihost()`` once per process before anything touches devices;
then ``make_mesh`` spans all processes' devices and ``shard_batch`` takes each process's *local*
slice of the global batch (rows ``process_index::process_count`` of the data pipeline) and
assembles the global array with ``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, str] = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("patch", None),
    ("conv", None),
    ("views", None),
    ("time", None),
)
_RULES = dict(LOGICAL_RULES)


def initialize_multihost(**kwargs: Any) -> None:
    """Joins a multi-process JAX job (``jax.distributed.initialize``); call before device use.

    On TPU pods and SLURM/Open MPI GPU clusters the coordinator address, process count and id are
    discovered automatically; elsewhere pass ``coordinator_address=``, ``num_processes=`` and
    ``process_id=`` (forwarded unchanged).
    """
    jax.distributed.initialize(**kwargs)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh with Auto axis types.

    Exactly one size may be ``-1``: it is filled with the remaining devices. The product of the
    sizes must equal the number of devices (default: all devices of all processes).
    Raises ValueError naming the ``mesh.*`` field on bad sizes.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{name}={size!r}: must be a positive int or -1 (fill)")
    fill = [name for name, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(f"mesh.{fill[0]} and mesh.{fill[1]} are both -1: at most one may be -1")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if n % fixed:
            raise ValueError(
                f"mesh.{fill[0]}=-1: the other mesh sizes multiply to {fixed}, which does not "
                f"divide the {n} devices"
            )
        sizes[fill[0]] = n // fixed
    elif fixed != n:
        raise ValueError(
            f"mesh.data*mesh.fsdp*mesh.tensor = {data}*{fsdp}*{tensor} = {fixed} must equal the "
            f"number of devices ({n}); use -1 on one axis to fill"
        )
    shape = tuple(int(sizes[a]) for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@contextlib.contextmanager
def rules_context(mesh: Mesh) -> Iterator[Mesh]:
    """Context in which logical names resolve: ``jax.set_mesh(mesh)`` + the logical rules."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield mesh


def logical_to_spec(names: Sequence[str | None]) -> PartitionSpec:
    """Maps logical dimension names (``None`` = replicated) to a physical PartitionSpec."""
    axes = []
    for name in names:
        if name is None:
            axes.append(None)
        elif name in _RULES:
            axes.append(_RULES[name])
        else:
            raise ValueError(
                f"logical axis name {name!r} is unknown; allowed: {sorted(_RULES)} or None"
            )
    return PartitionSpec(*axes)


def logical_to_sharding(names: Sequence[str | None], mesh: Mesh) -> NamedSharding:
    """NamedSharding for an array whose dimensions carry the given logical names."""
    return NamedSharding(mesh, logical_to_spec(names))


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical names inside ``rules_context``/jit.

    A no-op when no mesh is set (plain CPU use). Activations should name only ``batch`` and
    model-parallel dims (``heads``, ``mlp``, ``vocab``) and leave ``embed`` as None.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(mesh.axis_names) != set(MESH_AXES):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def abstract_sharded(ctor: Callable[[], nnx.Module], mesh: Mesh):
    """``(graphdef, abstract_state, shardings)`` of ``ctor()`` without allocating parameters."""
    with rules_context(mesh):
        abstract = nnx.eval_shape(ctor)
        graphdef, abs_state = nnx.split(abstract)
        shardings = nnx.get_named_sharding(abs_state, mesh)
    return graphdef, abs_state, shardings


def create_sharded(ctor: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Builds ``ctor()`` with every variable created directly in its target sharding.

    ``ctor`` takes no arguments and returns an ``nnx.Module`` (seed it inside, e.g.
    ``lambda: Model(cfg, rngs=nnx.Rngs(0))``). Shapes come from ``nnx.eval_shape``; the
    variables are materialised by ``jax.jit(out_shardings=...)`` so no device ever holds a full
    copy of a sharded parameter.
    """
    graphdef, _, shardings = abstract_sharded(ctor, mesh)

    def init():
        return nnx.split(ctor())[1]

    with rules_context(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def create_unsharded(ctor: Callable[[], nnx.Module]) -> nnx.Module:
    """``create_sharded`` on a one-device mesh (tests, parity checks, CPU use)."""
    return create_sharded(ctor, make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def _is_replicated(sharding: Any) -> bool:
    return bool(getattr(sharding, "is_fully_replicated", True))


def assert_sharded(module_or_state: Any, mesh: Mesh, min_size_bytes: int = 1 << 20) -> None:
    """Raises AssertionError listing every parameter >= ``min_size_bytes`` that is replicated.

    Only meaningful when the mesh has more than one device on the parameter axes
    (``fsdp * tensor > 1``); otherwise every parameter is legitimately replicated and the check
    passes. For a module only ``nnx.Param`` variables are checked; for a state / pytree every
    array leaf is.
    """
    if mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
        return
    if isinstance(module_or_state, nnx.Module):
        tree = nnx.state(module_or_state, nnx.Param)
    else:
        tree = module_or_state
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not isinstance(leaf, jax.Array):
            continue
        if leaf.nbytes >= min_size_bytes and _is_replicated(leaf.sharding):
            bad.append(f"{jax.tree_util.keystr(path)} shape={leaf.shape} ({leaf.nbytes} bytes)")
    if bad:
        raise AssertionError(
            f"{len(bad)} parameter(s) of >= {min_size_bytes} bytes are fully replicated on mesh "
            f"{dict(mesh.shape)} (missing logical names or a rule?):\n  " + "\n  ".join(bad)
        )


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of a batch array: leading dim over ``("data", "fsdp")``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh) -> int:
    """Number of batch shards: ``mesh.data * mesh.fsdp``."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a pytree of host arrays ``[B_local, ...]`` as global arrays sharded on the batch.

    On one process ``B_local`` is the global batch; on several, each process passes its own
    slice and the global batch is ``B_local * process_count``. The global batch must divide by
    ``mesh.data * mesh.fsdp`` (ValueError otherwise).
    """
    div = batch_divisor(mesh)

    def put(path, x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"batch{jax.tree_util.keystr(path)} is a scalar; need a batch dim")
        global_b = x.shape[0] * jax.process_count()
        if global_b % div:
            raise ValueError(
                f"batch{jax.tree_util.keystr(path)}: global batch {global_b} is not divisible by "
                f"mesh.data*mesh.fsdp={div}"
            )
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree_util.tree_map_with_path(put, batch)
