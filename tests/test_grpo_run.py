"""SFT -> GRPO through the launcher on a tiny distillation package: the chain runs, a stopped
GRPO run resumes exactly, ``load_vlm`` loads a run, and bad values fail before compiling."""
import json
import os
import sys

import jax
import numpy as np
import pytest
from absl import flags

from experiments import train as launcher
from experiments.configs import vlm as vlm_configs
from grpo_prompts import compile_cache  # noqa: F401
from test_distill_data import fake_render_cameras
from w2v_jax import hf
from w2v_jax.sim.clips import ClipConfig
from w2v_jax.supervision import build, package, teachers
from w2v_jax.train.checkpoint import Checkpointer
from w2v_jax.train.metrics import read_metrics
from w2v_jax.train.run import train_from_config
from w2v_jax.train.runs import load_vlm
from w2v_jax.train.trainer import Trainer

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "experiments", "configs", "vlm.py")


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_pkg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "render_cameras", fake_render_cameras)
        mp.setattr(teachers, "render_cameras", fake_render_cameras)
        done = build.build_shards(str(root / "shards"), build.scene_seeds(3, 6),
                                  build.BuildConfig(clip=ClipConfig(resolution=32)),
                                  teachers.RendererTeacher(), progress=False)
    out = str(root / "package")
    package.write_package(done["shards"], out,
                          package.PackageConfig(grpo_per_task=4, eval_fraction=0.34))
    return out


def launch(arg, workdir, *overrides):
    argv = ["train", f"--config={CONFIG}:{arg}", f"--workdir={workdir}", *overrides]
    saved = sys.argv
    sys.argv = argv  # config_flags reads the --config.* overrides from sys.argv
    try:
        flags.FLAGS.unparse_flags()
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)
        flags.FLAGS(argv)
        launcher.main(argv[:1])
    finally:
        sys.argv = saved


@pytest.fixture(scope="module")
def sft_run(pkg, tmp_path_factory, compile_cache):  # noqa: F811
    workdir = tmp_path_factory.mktemp("sft")
    launch("sft_tiny", workdir, f"--config.data.package_dir={pkg}", "--config.total_steps=2",
           "--config.batch_size=8", "--config.eval_every_steps=0")
    return str(workdir)


def rows(workdir):
    return {r["step"]: r for r in read_metrics(str(workdir)) if "loss" in r}


@pytest.mark.slow  # four launcher runs (one SFT, three GRPO): ~60 s on 2 cores
def test_sft_then_grpo_resumes_exactly(pkg, sft_run, tmp_path):
    assert sorted(rows(sft_run)) == [1, 2]
    common = [f"--config.data.package_dir={pkg}", f"--config.init_from={sft_run}",
              "--config.total_steps=2", "--config.eval_every_steps=0",
              "--config.grpo.val_before_train=False", "--config.checkpoint.every_steps=1"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    launch("grpo_tiny", straight, *common)
    launch("grpo_tiny", stopped, *common, "--config.stop_at_step=1")
    assert sorted(rows(stopped)) == [1]
    launch("grpo_tiny", stopped, *common)
    a, b = rows(straight), rows(stopped)
    assert sorted(a) == sorted(b) == [1, 2]
    for step in (1, 2):
        for key in ("loss", "reward", "kl", "pg_loss", "grad_norm", "response_length"):
            assert a[step][key] == b[step][key], (step, key)
    assert a[1]["optimizer_step"] == 2 and a[2]["optimizer_step"] == 4  # 2 updates / rollout
    with Checkpointer(os.path.join(straight, "checkpoints")) as ca, \
            Checkpointer(os.path.join(stopped, "checkpoints")) as cb:
        assert ca.all_steps()[-1] == cb.all_steps()[-1] == 4
        for x, y in zip(jax.tree.leaves(ca.restore_raw(4)), jax.tree.leaves(cb.restore_raw(4))):
            np.testing.assert_array_equal(x, y)
        assert ca.restore_json(4) == cb.restore_json(4)  # the prompt iterator's position

    # load_vlm: the run's final parameters and the tokenizer of the SFT run it started from
    model, tok = load_vlm(str(straight))
    sft_model, sft_tok = load_vlm(sft_run)
    assert tok.get_vocab() == sft_tok.get_vocab()
    with Checkpointer(os.path.join(straight, "checkpoints")) as ca:
        saved = ca.restore_raw(4)["params"]
    got = model.language_model.layers[0].mlp.up_proj.kernel[...]
    np.testing.assert_array_equal(
        got, saved["language_model"]["layers"]["0"]["mlp"]["up_proj"]["kernel"]["value"])
    assert np.abs(np.asarray(got) - np.asarray(
        sft_model.language_model.layers[0].mlp.up_proj.kernel[...])).max() > 0
    hf.save_vlm(model, None, tmp_path / "export")  # a run's model exports to HF and loads back
    tok.save_pretrained(tmp_path / "export")
    again, _ = load_vlm(str(tmp_path / "export"))
    np.testing.assert_array_equal(again.language_model.norm.weight[...],
                                  model.language_model.norm.weight[...])


def _toy_run(tmp_path):
    path = tmp_path / "toy_run"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model": {"name": "toy_lm"}}))
    return str(path)


@pytest.mark.parametrize("field, value, match", [
    ("grpo.n", 1, "config.grpo.n=1: must be an int >= 2"),
    ("grpo.rollout_prompts", 3, "rollout_prompts=3 must be divisible by config.grpo.global"),
    ("init_from", "/no/such/dir", "config.init_from='/no/such/dir': no such directory"),
    ("init_from", "TOY", "a 'toy_lm' run, not a VLM"),
    ("data.package_dir", "/no/such/pkg", "config.data.package_dir='/no/such/pkg': no 'grpo'"),
    ("grpo.max_answer", 3, "config.grpo: unknown field\\(s\\) \\['max_answer'\\]"),
])
def test_config_errors_name_the_field(pkg, tmp_path, field, value, match, monkeypatch):
    config = vlm_configs.get_config("grpo_tiny")
    config.data.package_dir = pkg
    if value == "TOY":
        value = _toy_run(tmp_path)
    section, _, key = field.rpartition(".")
    target = config[section] if section else config
    if key not in target:
        with target.unlocked():
            target[key] = value
    else:
        setattr(target, key, value)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("got past validation"))
    with pytest.raises(ValueError, match=match):
        train_from_config(config, str(tmp_path / "run"))
