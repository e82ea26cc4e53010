"""Mesh construction, logical rules, sharded init and batch sharding (8 fake CPU devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from w2v_jax.models.toy import ToyLM, ToyLMConfig
from w2v_jax import sharding as shd

CFG = ToyLMConfig(vocab_size=64, width=64, depth=2, num_heads=4, mlp_dim=128, max_len=16)


def toy_ctor():
    return ToyLM(CFG, rngs=nnx.Rngs(0))


def test_make_mesh_fill_and_axis_types():
    mesh = shd.make_mesh(data=-1, fsdp=2, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(shd.make_mesh(2, -1, 1).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    one = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    assert one.size == 1


@pytest.mark.parametrize(
    "sizes, match",
    [((3, 1, 1), "mesh.data\\*mesh.fsdp\\*mesh.tensor"),
     ((-1, -1, 1), "mesh.data and mesh.fsdp"),
     ((-1, 3, 1), "mesh.data=-1"),
     ((0, 1, 1), "mesh.data=0")],
)
def test_make_mesh_errors_name_the_field(sizes, match):
    with pytest.raises(ValueError, match=match):
        shd.make_mesh(*sizes)


def test_logical_rules_and_specs():
    names = dict(shd.LOGICAL_RULES)
    for required in ("batch", "length", "embed", "mlp", "heads", "kv_heads", "head_dim", "vocab",
                     "norm", "patch", "conv", "views", "time"):
        assert required in names
    mesh = shd.make_mesh(2, 2, 2)
    assert shd.logical_to_sharding(("embed", "mlp"), mesh).spec == P("fsdp", "tensor")
    assert shd.logical_to_sharding(("batch", None), mesh).spec == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="'hidden' is unknown"):
        shd.logical_to_spec(("hidden",))


def test_create_sharded_matches_unsharded_and_is_sharded():
    mesh = shd.make_mesh(2, 2, 2)
    sharded = shd.create_sharded(toy_ctor, mesh)
    plain = shd.create_unsharded(toy_ctor)
    kernel = sharded.blocks[0].up.kernel[...]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    # each device holds a quarter of the (64, 128) kernel
    assert kernel.addressable_shards[0].data.shape == (32, 64)
    assert sharded.embed.embedding[...].sharding.spec == P("tensor", "fsdp")
    for a, b in zip(jax.tree.leaves(nnx.state(sharded)), jax.tree.leaves(nnx.state(plain))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    shd.assert_sharded(sharded, mesh, min_size_bytes=4096)


def test_assert_sharded_fails_loudly_on_replicated_param():
    class Unnamed(nnx.Module):
        def __init__(self, rngs):
            self.w = nnx.Param(jax.random.normal(rngs.params(), (64, 64)))

    mesh = shd.make_mesh(2, 2, 2)
    model = shd.create_sharded(lambda: Unnamed(nnx.Rngs(0)), mesh)
    with pytest.raises(AssertionError, match=r"\['w'\]"):
        shd.assert_sharded(model, mesh, min_size_bytes=1024)
    # On a pure data-parallel mesh replication is expected: no error.
    shd.assert_sharded(model, shd.make_mesh(8, 1, 1), min_size_bytes=1024)


def test_shard_batch_and_divisibility():
    mesh = shd.make_mesh(2, 2, 2)
    batch = shd.shard_batch({"x": np.arange(8 * 3).reshape(8, 3)}, mesh)
    assert batch["x"].sharding.spec == P(("data", "fsdp"), None)
    assert batch["x"].addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(24).reshape(8, 3))
    with pytest.raises(ValueError, match="not divisible by mesh.data\\*mesh.fsdp=4"):
        shd.shard_batch({"x": np.zeros((6, 3))}, mesh)


def test_with_logical_constraint_inside_and_outside_mesh():
    x = jnp.ones((8, 4))
    assert shd.with_logical_constraint(x, ("batch", None)) is x  # no mesh: no-op
    mesh = shd.make_mesh(2, 2, 2)
    with shd.rules_context(mesh):
        y = jax.jit(lambda t: shd.with_logical_constraint(t * 2, ("batch", None)))(x)
    assert y.sharding.is_equivalent_to(shd.batch_sharding(mesh, 2), 2)
