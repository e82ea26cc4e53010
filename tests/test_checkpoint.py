"""Orbax checkpoints: cross-mesh restore with the data iterator, keep-N, atomicity, fit()."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2v_jax.data import pipeline, synthetic
from w2v_jax import sharding as shd
from w2v_jax.train.checkpoint import Checkpointer
from w2v_jax.train.metrics import MetricsWriter, read_metrics
from w2v_jax.train.optim import OptimizerConfig
from w2v_jax.train.trainer import Trainer
from toy_fixtures import fresh, toy_model

OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, clip_norm=1.0, weight_decay=0.01)


@pytest.fixture(scope="module")
def base_model():
    return toy_model(32)


def host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_restore_on_another_mesh_with_data_iterator(base_model, tmp_path):
    data_dir = synthetic.write(str(tmp_path / "data"), 64, 16, 32, seed=0)

    def data():
        return iter(synthetic.pipeline(data_dir, "train", batch_size=8, vocab_size=32,
                                       seq_len=16, seed=5))

    mesh_a, mesh_b = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]), shd.make_mesh(2, 2, 2)
    a = Trainer(fresh(base_model), OPT, "next_token", mesh=mesh_a, total_steps=6)
    it_a = data()
    for _ in range(3):
        a.train_step(next(it_a))
    with Checkpointer(tmp_path / "ckpt", max_to_keep=2) as ckpt:
        a.save(ckpt, it_a)
        ckpt.wait()
        b = Trainer(fresh(base_model), OPT, "next_token", mesh=mesh_b, total_steps=6)
        it_b = data()
        meta = b.restore(ckpt, data_iterator=it_b)
    assert b.step == 3 and meta["step"] == 3
    for x, y in zip(host(a.state), host(b.state)):
        np.testing.assert_array_equal(x, y)
    kernel = b.model.blocks[0].up.kernel[...]
    assert kernel.sharding.mesh.shape == mesh_b.shape
    assert kernel.addressable_shards[0].data.shape == (32, 64)  # fsdp=2, tensor=2
    mu = [x for x in jax.tree.leaves(b.state["opt_state"]) if x.shape == (64, 128)]
    assert mu and all(x.addressable_shards[0].data.shape == (32, 64) for x in mu)
    # both continue identically: same next batches, same updates (up to reduction order)
    la = [float(a.train_step(next(it_a))["loss"]) for _ in range(2)]
    lb = [float(b.train_step(next(it_b))["loss"]) for _ in range(2)]
    np.testing.assert_allclose(la, lb, atol=1e-5, rtol=0)
    it_a.close()
    it_b.close()


def test_keep_n_atomic_and_raw_restore(tmp_path):
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(0)}
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in range(1, 5):
            assert ckpt.save(step, {"w": tree["w"] * step, "step": jnp.int32(step)},
                             {"pos": step}, {"note": "x"})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        assert not ckpt.save(4, tree)  # an existing step is never overwritten
    # a crash mid-save leaves only a temporary directory: it is ignored and cleaned up
    partial = tmp_path / "5.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"half written")
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() == 4 and ckpt.all_steps() == [3, 4]
        assert ckpt.save(5, {"w": tree["w"] * 5, "step": jnp.int32(5)})  # replaces the debris
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
        assert not (partial / "state" / "garbage").exists()
        np.testing.assert_array_equal(ckpt.restore_raw(5)["w"], np.asarray(tree["w"]) * 5)
        state, data_state, meta = ckpt.restore(4, jax.tree.map(jnp.zeros_like, tree))
        assert int(state["step"]) == 4 and data_state == {"pos": 4} and meta == {"note": "x"}
    with pytest.raises(ValueError, match="max_to_keep=0"):
        Checkpointer(tmp_path / "other", max_to_keep=0)


def test_raw_restore_in_a_process_with_fewer_devices(tmp_path):
    """A state saved sharded over 4 devices loads with ``restore_raw`` in a one-device process
    (e.g. evaluating on one CPU device a run trained with ``--cpu_devices``)."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:4]), ("data",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    w = jax.device_put(jnp.arange(8.0).reshape(4, 2), spec)
    replicated = jax.device_put(jnp.ones((3,)), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, {"w": w, "b": replicated, "step": jnp.int32(7)})
        ckpt.wait()
    code = (
        "import jax, json, sys; from w2v_jax.train.checkpoint import Checkpointer\n"
        "assert len(jax.devices()) == 1\n"
        "raw = Checkpointer(sys.argv[1]).restore_raw()\n"
        "print(json.dumps({k: v.tolist() for k, v in raw.items()}))\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Metadata file does not exist" not in run.stderr  # no spurious Orbax warning
    raw = json.loads(run.stdout.strip().splitlines()[-1])
    assert raw == {"w": np.arange(8.0).reshape(4, 2).tolist(), "b": [1.0, 1.0, 1.0], "step": 7}


def test_fit_checkpoints_logs_and_always_saves_final_step(base_model, tmp_path):
    arrays = synthetic.arrays(64, 16, 32, seed=0)
    trainer = Trainer(fresh(base_model), OPT, "next_token",
                      mesh=shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]), total_steps=5)
    writer = MetricsWriter(str(tmp_path))
    with Checkpointer(tmp_path / "ckpt", max_to_keep=5) as ckpt:
        rows = trainer.fit(pipeline.in_memory_batches(arrays, 8), 5, checkpointer=ckpt,
                           checkpoint_every=2, metrics_writer=writer, progress=False)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5]
    writer.close()
    logged = read_metrics(str(tmp_path))
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5] == [r["step"] for r in rows]
    for key in ("loss", "grad_norm", "lr", "step_time_s", "examples_per_s", "tokens_per_s"):
        assert all(np.isfinite(r[key]) for r in logged), key
    assert logged[0]["lr"] == 0.0 and logged[1]["lr"] == pytest.approx(1e-2)
    assert logged[-1]["tokens_per_s"] == pytest.approx(
        8 * 16 / logged[-1]["step_time_s"], rel=1e-6)
    events = os.listdir(tmp_path / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)
    # a resumed writer drops rows past the resume step
    MetricsWriter(str(tmp_path), resume_step=3, tensorboard=False).close()
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3]
    assert json.loads(open(tmp_path / "metrics.jsonl").readline())["step"] == 1
