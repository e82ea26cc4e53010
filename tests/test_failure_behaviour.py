"""Faults and bad input lose nothing and never pass silently: one test per class of failure.

Non-finite values (training stop, save refusal, finite restore, fallback past damaged steps),
validate-before-destroy of every CLI with --overwrite, workdir config mismatch, atomic save_vlm,
numeric flag ranges (NaN included), one-line user errors, stale temporaries, path containment,
guarded world-model clip reads, named errors of the reward and the action grammar.
"""
import contextlib
import glob
import importlib
import io
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from flax import nnx
from PIL import Image

from w2v_jax import cli, fileio
from w2v_jax import sharding as shd
from w2v_jax.models.toy import ToyLM, ToyLMConfig
from w2v_jax.train import checkpoint
from w2v_jax.train.checkpoint import Checkpointer, DamagedCheckpointError
from w2v_jax.train.trainer import NonFiniteError, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ("data_gen.build_supervision", "data_gen.render_clips", "experiments.train",
             "experiments.eval_world_model")
TOY = ToyLMConfig(vocab_size=32, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=16)


# ----------------------------------------------------------------------------- helpers
def _unload(name):
    """Removes launcher ``name``'s flags and module; returns them for ``_reload``."""
    removed = [f for f in flags.FLAGS.get_key_flags_for_module(name) if f.name in flags.FLAGS]
    for flag in removed:
        delattr(flags.FLAGS, flag.name)
    package, _, child = name.rpartition(".")
    if hasattr(sys.modules.get(package), child):
        delattr(sys.modules[package], child)  # else `from package import child` finds it
    return removed, sys.modules.pop(name, None)


def _reload(name, removed, module):
    for flag in removed:
        flags.FLAGS[flag.name] = flag
        flags.FLAGS.register_flag_by_module(name, flag)
    if module is not None:
        sys.modules[name] = module
        package, _, child = name.rpartition(".")
        setattr(sys.modules[package], child, module)


@contextlib.contextmanager
def launcher(name, *args):
    """The launcher module ``name`` imported alone (launchers share flag names), its flags
    parsed from ``args``; afterwards it is unloaded and the launchers other tests imported are
    put back as they were."""
    flags.FLAGS.unparse_flags()
    others = {other: _unload(other) for other in LAUNCHERS}
    module = importlib.import_module(name)
    try:
        flags.FLAGS([name, *args])
        yield module
    finally:
        flags.FLAGS.unparse_flags()
        _unload(name)
        for other, (removed, old) in others.items():
            _reload(other, removed, old)


def _trainer(lr=1e-2):
    model = shd.create_unsharded(lambda: ToyLM(TOY, rngs=nnx.Rngs(0)))
    return Trainer(model, {"learning_rate": lr}, "next_token", total_steps=100)


def _batches():
    rng = np.random.default_rng(0)
    while True:
        t = rng.integers(0, 32, (8, 17)).astype(np.int32)
        yield {"inputs": t[:, :-1], "targets": t[:, 1:], "mask": np.ones((8, 16), np.float32)}


def _tree(root):
    return sorted(os.path.relpath(p, root) for p in glob.glob(f"{root}/**", recursive=True))


# ----------------------------------------------------------------------------- non-finite values
def test_nonfinite_never_saved_restore_checks_finite_and_falls_back(tmp_path, monkeypatch,
                                                                     caplog):
    good = _trainer()
    with Checkpointer(tmp_path / "ckpt", max_to_keep=3, async_save=False) as ckpt:
        good.fit(_batches(), 4, checkpointer=ckpt, checkpoint_every=2, progress=False)
        # a diverging continuation stops naming step and metric; the good steps stay
        bad = _trainer(lr=1e30)
        bad.restore(ckpt)
        with pytest.raises(NonFiniteError, match=r"step \d+: (loss|grad_norm)"):
            bad.fit(_batches(), 10, checkpointer=ckpt, checkpoint_every=2, progress=False)
        assert ckpt.all_steps() == [2, 4]
        # the checkpoint layer itself refuses NaN / inf arrays, naming the first
        with pytest.raises(ValueError, match=r"refusing to save checkpoint step 6: (params|opt_state)/\S+ is not finite"):
            ckpt.save(6, bad.state)

        # NaN weights written behind the check's back are found on restore, by name
        monkeypatch.setattr(checkpoint, "first_nonfinite", lambda tree: None)
        ckpt.save(6, bad.state)
        monkeypatch.undo()
    reopened = Checkpointer(tmp_path / "ckpt", async_save=False)
    with pytest.raises(DamagedCheckpointError, match=r"restored array \S+ of step 6 is not fin"):
        reopened.restore(6, good.abstract_state())
    # flipped data bytes in step 4 too: restores fall back to step 2, in one warning line
    for data in glob.glob(f"{tmp_path}/ckpt/4/state/**/d/*", recursive=True):
        raw = open(data, "rb").read()
        open(data, "wb").write(bytes(b ^ 0xFF for b in raw))
    with caplog.at_level(logging.WARNING, logger="w2v_jax.train.checkpoint"):
        good.restore(reopened)
    assert good.step == 2
    line = [r.getMessage() for r in caplog.records if "using step 2" in r.getMessage()]
    assert len(line) == 1 and "step 6 unusable" in line[0] and "step 4 unusable" in line[0]
    assert "\n" not in line[0]
    assert "params" in reopened.restore_raw() and reopened.restored_step == 2  # run loaders
    # a new save at a damaged step number replaces it
    good.fit(_batches(), 4, checkpointer=reopened, checkpoint_every=2, progress=False)
    reopened.wait()
    step, *_ = reopened.restore_latest(good.abstract_state())
    assert step == 4
    reopened.close()


def test_every_validated_number_refuses_nan_and_inf():
    from w2v_jax.sim.clips import ClipConfig
    from w2v_jax.supervision.package import PackageConfig
    from w2v_jax.supervision.qc import QCConfig
    from w2v_jax.train.optim import OptimizerConfig

    cases = [(OptimizerConfig, f) for f in ("learning_rate", "end_lr_ratio", "b1", "b2", "eps",
                                           "weight_decay", "clip_norm", "warmup_steps")]
    cases += [(QCConfig, f) for f in ("blur_min", "change_min", "change_max", "min_box_side",
                                      "max_box_aspect", "max_box_area")]
    cases += [(PackageConfig, "eval_fraction"), (ClipConfig, "hfov_deg")]
    for cls, field in cases:
        for value in (math.nan, math.inf):
            with pytest.raises(ValueError, match=field):
                cls(**{field: value})
    with pytest.raises(ValueError, match="param_groups"):
        OptimizerConfig(param_groups=(("x", math.nan),))


# ----------------------------------------------------------------------------- launchers
def test_every_numeric_flag_of_every_launcher_has_a_checked_range():
    checked = 0
    for name in LAUNCHERS:
        with launcher(name) as module:
            for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
                kind = flag.parser.flag_type()
                if kind not in ("int", "float"):
                    continue
                bad = ("nan", "inf", "-1e300") if kind == "float" else (str(-10**12),)
                for value in bad:
                    with pytest.raises(ValueError):
                        flag.parser.parse(value)
                checked += 1
    assert checked >= 25
    with launcher("experiments.eval_world_model"):
        for argv in (["--max_pairs=-1"], ["--batch_size=0"], ["--cfg=nan"]):
            with pytest.raises(flags.IllegalFlagValueError):
                flags.FLAGS(["eval_world_model", *argv])
    with launcher("data_gen.build_supervision"):
        with pytest.raises(flags.IllegalFlagValueError, match="qc_blur_min"):
            flags.FLAGS(["build_supervision", "--qc_blur_min=nan"])


def test_overwrite_validates_everything_first_and_replaces_only_own_outputs(tmp_path):
    prior = tmp_path / "build"
    (prior / "shards").mkdir(parents=True)
    (prior / "build.json").write_text("{}")
    (prior / "shards" / "keep.txt").write_text("hours of teacher views")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a build")
    before = {d: _tree(d) for d in (prior, foreign)}
    refused = [
        (["--teacher=world_model", "--overwrite", f"--out={prior}"], "world_model_dir"),
        ([f"--out={prior}", "--overwrite", "--eval_fraction=1.0"], "eval_fraction"),
        ([f"--out={prior}", "--overwrite", "--resolution=4096"], "GiB"),
        ([f"--out={foreign}", "--overwrite"], "build.json"),
        ([f"--out={foreign}"], "build.json"),
        ([f"--out={prior}", "--vocabulary=color_shape"], "other options"),
    ]
    for argv, match in refused:
        with launcher("data_gen.build_supervision", "--num_scenes=1", *argv) as module:
            with pytest.raises(cli.UserError, match=match):
                module.main(["build_supervision"])
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "generation.json").write_text("{}")  # an earlier render_clips output
    for argv, match in (([f"--out={foreign}", "--overwrite"], "generation.json"),
                        ([f"--out={clips}", "--overwrite", "--resolution=4096"], "GiB"),
                        ([f"--out={clips}"], "overwrite")):
        with launcher("data_gen.render_clips", *argv) as module:
            with pytest.raises(cli.UserError, match=match):
                module.main(["render_clips"])
    assert {d: _tree(d) for d in (prior, foreign)} == before
    assert sorted(os.listdir(tmp_path)) == ["build", "clips", "mine"]  # nothing else written


def test_workdir_with_another_config_is_refused_before_anything_is_written(tmp_path):
    from experiments.configs import toy
    from w2v_jax.train import run

    config = toy.get_config()
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    saved = (workdir / "config.json").read_bytes()
    other = toy.get_config()
    other.model.width = 2 * config.model.width
    other.loss = "flow_matching"
    other.total_steps = config.total_steps + 10  # may change on resume
    with pytest.raises(ValueError, match=r"differing fields: loss: 'next_token' -> "
                                         r"'flow_matching'; model.width: 64 -> 128\."):
        run.train_from_config(other, str(workdir))
    assert (workdir / "config.json").read_bytes() == saved and os.listdir(workdir) == [
        "config.json"]
    longer = toy.get_config()
    longer.total_steps += 10
    longer.data.num_workers = 2  # loading options may change too
    run.check_resume_config(longer, str(workdir))


def test_user_errors_are_one_line_with_exit_status_2(tmp_path):
    with pytest.raises(cli.UserError, match="bad --x"):
        with cli.checking():
            raise ValueError("bad --x")
    with pytest.raises(cli.UserError, match="No such file"):
        with cli.checking():
            open(tmp_path / "missing.json")
    with pytest.raises(KeyError):  # not a user error: keeps its traceback
        with cli.checking():
            raise KeyError("bug")
    with launcher("experiments.eval_world_model", f"--workdir={tmp_path}") as module:
        with pytest.raises(cli.UserError, match="no config.json"):  # before any model loads
            module.main(["eval_world_model"])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "experiments.eval_world_model",
                           f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "config.json" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- files
def test_atomic_save_vlm_survives_a_failed_write_and_names_bad_json(tmp_path, monkeypatch):
    import vlm_fixtures as vf
    from w2v_jax import hf

    _, src = vf.save_hf_model(tmp_path, seed=0)
    model, config = hf.load_vlm(src)
    out = tmp_path / "export"
    hf.save_vlm(model, config, out, max_shard_bytes=400_000)
    (out / "tokenizer.json").write_text("{}")  # not save_vlm's: carried over by every save
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            open(filename, "wb").write(b"\0" * 10)
            raise OSError(28, "No space left on device")
        return vf_save(tensors, filename, metadata=metadata)

    vf_save = hf.save_file
    monkeypatch.setattr(hf, "save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        hf.save_vlm(model, config, out, max_shard_bytes=400_000)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["export", "hf"]  # no temporary left
    reloaded, _ = hf.load_vlm(out)
    assert reloaded.lm_head.kernel[...].shape == model.lm_head.kernel[...].shape
    hf.save_vlm(model, config, out)  # single file now: the old shards and index are gone
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json",
                                       "model.safetensors", "tokenizer.json"]
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json' is not valid JSON"):
        hf.load_vlm(out)


def test_stale_temporaries_are_swept_and_modes_follow_the_umask(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    (tmp_path / "out").mkdir()
    stale_tmp = tmp_path / f".out.tmp-{dead}-0123abcd"
    stale_old = tmp_path / f".out.old-{dead}-0123abcd"
    alive = tmp_path / f".out.tmp-{os.getpid()}-0123abcd"
    orphan = tmp_path / f".pkg.old-{dead}-89abcdef"  # killed between the two renames
    for d in (stale_tmp, stale_old, alive, orphan):
        d.mkdir()
    (orphan / "stats.json").write_text("{}")
    removed = fileio.sweep_stale(tmp_path)
    assert sorted(map(os.path.basename, removed)) == [stale_old.name, stale_tmp.name]
    assert sorted(os.listdir(tmp_path)) == [alive.name, "out", "pkg"]
    assert os.listdir(tmp_path / "pkg") == ["stats.json"]
    old = os.umask(0o022)
    try:
        with fileio.atomic_dir(tmp_path / "new") as tmp:
            fileio.atomic_write(os.path.join(tmp, "a.json"), "{}")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o755
    assert os.stat(tmp_path / "new" / "a.json").st_mode & 0o777 == 0o644


def test_paths_from_records_and_shards_stay_inside_their_root(tmp_path):
    from w2v_jax.processing.chat import encode_record
    from w2v_jax.supervision import package

    root = tmp_path / "root"
    (root / "scene").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    secret.write_bytes(buf.getvalue())
    (root / "scene" / "ok.png").write_bytes(buf.getvalue())
    (root / "scene" / "cut.png").write_bytes(buf.getvalue()[:-20])  # truncated
    os.symlink(secret, root / "scene" / "link.png")
    escapes = ("../secret.png", str(secret), "scene/link.png", "scene/../../secret.png")
    for rel in escapes:
        with pytest.raises(ValueError, match="outside|relative"):
            fileio.resolve_inside(root, rel, "test")
        record = {"id": "r7", "prompt": "<image>what?", "images": [rel]}
        with pytest.raises(ValueError, match=r"record 'r7' images\[0\]"):
            encode_record(record, tokenizer=None, image_root=root)
    assert fileio.resolve_inside(root, "scene/ok.png", "t") == str(root / "scene" / "ok.png")
    shards = {"scene": str(root / "scene")}
    rec = {"id": "A1_3"}
    assert package._read_frame(shards, "scene/ok.png", rec) == buf.getvalue()
    for entry, match in (("scene/../../secret.png", "outside"), ("scene/link.png", "outside"),
                         ("other/ok.png", "no shard"), ("scene/cut.png", "not a complete PNG")):
        with pytest.raises(ValueError, match=rf"record 'A1_3' image_files entry .*{match}"):
            package._read_frame(shards, entry, rec)


# ----------------------------------------------------------------------------- data and text
class _Clips:
    """Random-access clips; index 2 is damaged (reading it raises)."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i == 2:
            raise RuntimeError("zlib: invalid stored block lengths")
        eye = np.repeat(np.eye(4, dtype=np.float32)[None], 4, 0)
        eye[:, 2, 3] = np.arange(4)
        return {"frames": np.full((4, 8, 8, 3), i, np.uint8), "c2w": eye, "num_frames": 4,
                "K": np.array([[8, 0, 4], [0, 8, 4], [0, 0, 1]], np.float32)}


def test_world_model_clip_reads_are_guarded_and_skippable():
    from w2v_jax.data.pipeline import MalformedRecordError
    from w2v_jax.data.view_pairs import pair_dataset

    it = iter(pair_dataset(_Clips(), batch_size=6, shuffle=False, num_epochs=1,
                           drop_remainder=False))
    with pytest.raises(MalformedRecordError, match=r"malformed record 2 .*zlib"):
        next(it)
    it = iter(pair_dataset(_Clips(), batch_size=5, shuffle=False, num_epochs=1,
                           skip_malformed=True))
    batch = next(it)
    assert batch["source"].shape[0] == 5 and it.num_skipped == 1


def test_reward_and_grammar_name_bad_input():
    from w2v_jax.actions import parse_actions
    from w2v_jax.supervision.reward import compute_score

    gt = json.dumps({"task_type": "A1", "answer": "move forward 1 meters"})
    with pytest.raises(ValueError, match=r"reward_inputs\[1\] must be a dict"):
        compute_score([{"response": "x", "ground_truth": gt}, "oops"])
    with pytest.raises(ValueError, match=r"reward_inputs\[0\]\['response'\] must be a str"):
        compute_score([{"response": 3, "ground_truth": gt}])
    for text in ("move forward ١٥ meters", "turn left ５ degrees", "\x00\ud800 move"):
        assert compute_score([{"response": text, "ground_truth": gt}])[0]["overall"] <= 1.0
    for text in ("move forward ١٥ meters", "turn left ５ degrees"):
        with pytest.raises(ValueError, match="ASCII"):
            parse_actions(text)
