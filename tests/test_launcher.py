"""The absl launcher end to end (in-process): exact resume after a hard stop, extending a
finished run by raising total_steps, and config errors that fail before compiling."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from jax.experimental.compilation_cache import compilation_cache

from experiments import train as launcher
from experiments.configs import toy
from w2v_jax.train.checkpoint import Checkpointer
from w2v_jax.train.metrics import read_metrics
from w2v_jax.train.run import train_from_config
from w2v_jax.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "toy.py")
N = 3


@pytest.fixture(scope="module")
def common_flags(tmp_path_factory):
    """Small run on the 2x2x2 mesh; a shared data dir; a persistent compilation cache so the
    identical step/init programs of the successive runs compile once."""
    data_dir = tmp_path_factory.mktemp("data")
    cache_dir = tmp_path_factory.mktemp("jax_cache")
    saved = {k: getattr(jax.config, k) for k in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield [
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
        "--config.batch_size=8", "--config.model.max_len=16", "--config.data.seq_len=16",
        "--config.data.num_examples=128", "--config.data.num_eval=0",
        "--config.eval_every_steps=0", "--config.progress=False",
        f"--config.data.data_dir={data_dir}",
    ]
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def launch(workdir, common, *overrides):
    argv = ["train", f"--config={CONFIG}", f"--workdir={workdir}", *common, *overrides]
    saved = sys.argv
    sys.argv = argv  # config_flags reads the --config.* overrides from sys.argv
    try:
        flags.FLAGS.unparse_flags()
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # override flags are re-created by each parse
        flags.FLAGS(argv)
        launcher.main(argv[:1])
    finally:
        sys.argv = saved


class HardStop(Exception):
    pass


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if "loss" in r}


def final(workdir, step):
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        return ckpt.restore_raw(step), ckpt.restore_json(step, "data"), ckpt.all_steps()


def test_exact_resume_after_hard_stop_and_extension(common_flags, tmp_path, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    launch(straight, common_flags, f"--config.total_steps={2 * N}")

    real_step = Trainer.train_step
    calls = {"n": 0}

    def dying_step(self, batch):
        if calls["n"] == N:
            raise HardStop("killed after step %d" % N)
        calls["n"] += 1
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(HardStop):
        launch(stopped, common_flags, f"--config.total_steps={2 * N}",
               f"--config.checkpoint.every_steps={N}")
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert sorted(losses(stopped)) == list(range(1, N + 1))
    launch(stopped, common_flags, f"--config.total_steps={2 * N}")

    a, b = losses(straight), losses(stopped)
    assert sorted(a) == sorted(b) == list(range(1, 2 * N + 1))  # one line per step
    np.testing.assert_array_equal([a[s] for s in sorted(a)], [b[s] for s in sorted(b)])
    state_a, data_a, steps_a = final(straight, 2 * N)
    state_b, data_b, steps_b = final(stopped, 2 * N)
    assert steps_a == [2 * N] and steps_b == [N, 2 * N]
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(x, y)
    assert data_a == data_b and data_a["iterator"]["parent"]["next_index"] == 2 * N * 8

    # the finished run is extended by raising total_steps; re-running it is a no-op
    launch(straight, common_flags, f"--config.total_steps={2 * N + 2}")
    launch(straight, common_flags, f"--config.total_steps={2 * N + 2}")
    a2 = losses(straight)
    assert sorted(a2) == list(range(1, 2 * N + 3))
    assert [a2[s] for s in range(1, 2 * N + 1)] == [a[s] for s in range(1, 2 * N + 1)]
    assert final(straight, 2 * N + 2)[2] == [2 * N, 2 * N + 2]
    assert os.path.exists(straight / "config.json")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(straight / "tensorboard"))


@pytest.mark.parametrize("field, value, match", [
    ("loss", "no_such_loss", "config.loss='no_such_loss' is not registered"),
    ("mesh.data", 3, "config.mesh.data\\*mesh.fsdp\\*mesh.tensor"),
    ("batch_size", 6, "config.batch_size=6 must be divisible by mesh.data\\*mesh.fsdp"),
    ("model.name", "nope", "config.model.name='nope' is unknown"),
    ("total_steps", -1, "config.total_steps=-1"),
    ("stop_at_step", -2, "config.stop_at_step=-2"),
])
def test_config_errors_name_the_field(tmp_path, field, value, match, monkeypatch):
    config = toy.get_config()
    config.mesh.fsdp = 2
    section, _, key = field.rpartition(".")
    setattr(config[section] if section else config, key, value)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("got past validation"))
    with pytest.raises(ValueError, match=match):
        train_from_config(config, str(tmp_path))


def test_stop_at_step_stops_early_on_the_full_schedule(tmp_path):
    config = toy.get_config()
    config.total_steps, config.stop_at_step, config.progress = 8, 3, False
    config.optimizer.warmup_steps = 0
    config.checkpoint.async_save = False
    trainer = train_from_config(config, str(tmp_path))
    assert trainer.step == 3
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    lr = [r["lr"] for r in rows if "lr" in r]
    # cosine over 8 steps, not 3: at step 2 the rate is still above half of the peak
    assert len(lr) == 3 and lr[-1] > 0.5 * config.optimizer.learning_rate


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_straight_run(common_flags, tmp_path):
    """A real hard stop: the launcher subprocess is SIGKILLed mid-run (possibly mid-save)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    steps = 12
    launch(straight, common_flags, f"--config.total_steps={steps}")
    cmd = [sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
           f"--workdir={killed}", *common_flags, f"--config.total_steps={steps}",
           "--config.checkpoint.every_steps=2"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(losses(killed)) >= steps // 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(losses(killed))
    assert 0 < done < steps, f"kill landed at {done} steps"
    launch(killed, common_flags, f"--config.total_steps={steps}")
    a, b = losses(straight), losses(killed)
    assert sorted(b) == list(range(1, steps + 1))
    np.testing.assert_array_equal([a[s] for s in sorted(a)], [b[s] for s in sorted(b)])
    for x, y in zip(jax.tree.leaves(final(straight, steps)[0]),
                    jax.tree.leaves(final(killed, steps)[0])):
        np.testing.assert_array_equal(x, y)


def test_cpu_devices_flag_splits_the_host_for_data_parallel_training(tmp_path):
    """``--cpu_devices=2 --config.mesh.data=2`` in a fresh process: JAX sees two CPU devices and
    the toy run trains on the 2-way data mesh; a negative value is refused."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    base = [sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
            "--config.batch_size=4", "--config.model.max_len=16", "--config.data.seq_len=16",
            "--config.data.num_examples=32", "--config.data.num_eval=0",
            "--config.eval_every_steps=0", "--config.progress=False",
            f"--config.data.data_dir={tmp_path / 'data'}"]
    run = subprocess.run(base + [f"--workdir={tmp_path / 'run'}", "--cpu_devices=2",
                                 "--config.mesh.data=2", "--config.total_steps=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(losses(tmp_path / "run")) == [1, 2]
    # without the flag the same mesh cannot be built from the one default CPU device
    one = subprocess.run(base + [f"--workdir={tmp_path / 'one'}", "--config.mesh.data=2",
                                 "--config.total_steps=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode != 0 and "mesh" in one.stderr.lower(), one.stderr[-2000:]
    bad = subprocess.run(base + [f"--workdir={tmp_path / 'bad'}", "--cpu_devices=-1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--cpu_devices=-1" in bad.stderr  # one line, exit 2
