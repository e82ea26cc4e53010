"""Posed-clip dataset: TFDS array_record, readable by tfds + grain, split by scene, atomic."""

import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from w2v_jax import actions, geometry, sim
from w2v_jax.data import posed_clips
from w2v_jax.sim import clips

CONFIG = clips.ClipConfig(
    resolution=16, supersample=1, max_frames=32, max_objects=6, num_objects=(3, 6)
)
NUM_KINDS = len(CONFIG.trajectory.kinds)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips") / "ds"
    info = posed_clips.write_clips(
        str(out), num_scenes=3, seed=7, config=CONFIG, eval_fraction=0.34, progress=False
    )
    return out, info


def test_splits_are_disjoint_by_scene_and_complete(dataset):
    out, info = dataset
    assert info["splits"] == {"train": 2 * NUM_KINDS, "eval": NUM_KINDS}
    seen = {}
    for split in ("train", "eval"):
        src = tfds.data_source("posed_clips", data_dir=str(out), split=split)
        seen[split] = {int(src[i]["scene_seed"]) for i in range(len(src))}
        kinds = sorted(src[i]["kind"].decode() for i in range(len(src)))
        assert kinds == sorted(CONFIG.trajectory.kinds * len(seen[split]))
    assert seen["train"].isdisjoint(seen["eval"])
    assert seen["train"] == set(info["scene_seeds"]["train"])
    assert seen["eval"] == set(info["scene_seeds"]["eval"])
    gen = json.loads((out / "generation.json").read_text())
    assert gen["scene_seeds"] == info["scene_seeds"] and gen["clips"] == info["splits"]
    assert sorted(os.listdir(out)) == ["generation.json", "posed_clips"]


def test_clip_contents_are_consistent(dataset):
    out, _ = dataset
    src = posed_clips.load_clips(str(out), "train")
    T, R = CONFIG.max_frames, CONFIG.resolution
    for i in range(len(src)):
        ex = src[i]
        n = int(ex["num_frames"])
        assert ex["frames"].shape == (T, R, R, 3) and ex["frames"].dtype == np.uint8
        assert ex["depth"].shape == (T, R, R) and ex["instance"].shape == (T, R, R)
        np.testing.assert_array_equal(ex["frame_mask"], np.arange(T) < n)
        assert not ex["frames"][n:].any()
        # the action text integrates from the first pose to every stored pose (nothing dropped)
        acts = actions.parse_actions(ex["actions"].decode())
        poses, keys = actions.integrate(acts, ex["c2w"][0])
        assert len(poses) == n
        np.testing.assert_array_equal(ex["frame_index"][:n], np.arange(n))
        np.testing.assert_allclose(ex["c2w"][:n], poses, atol=1e-4)
        np.testing.assert_array_equal(ex["key_frames"][: len(keys)], keys)
        assert np.all(ex["key_frames"][len(keys) :] == -1)
        meta = json.loads(ex["scene"])
        assert len({o["name"] for o in meta["objects"]}) == len(meta["objects"]) >= 3
    # frames, depth, instance and boxes are the renderer's output for the stored pose and scene
    ex = src[0]
    scene = sim.sample_scene(
        int(ex["scene_seed"]), num_objects=CONFIG.num_objects, max_objects=CONFIG.max_objects
    )
    t = int(ex["num_frames"]) - 1
    view = sim.render(scene, ex["c2w"][t], ex["K"], R, R)
    np.testing.assert_array_equal(
        ex["frames"][t], np.round(np.asarray(view["rgb"]) * 255).astype(np.uint8)
    )
    np.testing.assert_allclose(ex["depth"][t], np.asarray(view["depth"]), rtol=2e-3)
    np.testing.assert_array_equal(ex["instance"][t], np.asarray(view["instance"]))
    np.testing.assert_array_equal(ex["box"][t], np.asarray(view["box"]))
    np.testing.assert_allclose(ex["K"], geometry.intrinsics_from_hfov(R, R, 90.0))


def test_grain_map_dataset_batches(dataset):
    out, _ = dataset
    src = tfds.builder_from_directory(posed_clips.builder_dir(str(out))).as_data_source(split="train")
    ds = grain.MapDataset.source(src).shuffle(seed=0).batch(4, drop_remainder=True)
    batch = ds[0]
    assert batch["frames"].shape == (4, CONFIG.max_frames, 16, 16, 3)
    assert batch["c2w"].shape == (4, CONFIG.max_frames, 4, 4)
    assert len(ds) == (2 * NUM_KINDS) // 4


def test_refuses_overwrite_and_replaces_with_flag(dataset, tmp_path):
    out, _ = dataset
    with pytest.raises(FileExistsError, match="overwrite"):
        posed_clips.write_clips(str(out), num_scenes=1, seed=0, config=CONFIG, progress=False)
    target = tmp_path / "again"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with pytest.raises(ValueError, match="generation.json"):  # not written by this tool: kept
        posed_clips.write_clips(str(target), num_scenes=1, seed=1, config=CONFIG, overwrite=True,
                                progress=False)
    assert os.listdir(target) == ["stale.txt"]
    (target / "generation.json").write_text("{}")  # an earlier output of write_clips
    info = posed_clips.write_clips(
        str(target),
        num_scenes=1,
        seed=1,
        config=CONFIG,
        eval_fraction=0.0,
        overwrite=True,
        progress=False,
    )
    assert info["splits"] == {"train": NUM_KINDS}
    assert sorted(os.listdir(target)) == ["generation.json", "posed_clips"]
    assert sorted(os.listdir(tmp_path)) == ["again"]  # no temporary or backup directories left


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    real = clips.make_scene_clips
    calls = []

    def fail_on_second(seed, config):
        calls.append(seed)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(seed, config)

    monkeypatch.setattr(clips, "make_scene_clips", fail_on_second)
    with pytest.raises(RuntimeError, match="boom"):
        posed_clips.write_clips(str(tmp_path / "ds"), num_scenes=3, seed=0, config=CONFIG, progress=False)
    assert os.listdir(tmp_path) == []


def test_select_frames_keeps_key_frames():
    idx = clips.select_frames(40, [0, 9, 25, 39], 12)
    assert len(idx) == 12 and np.all(np.diff(idx) > 0)
    assert {0, 9, 25, 39} <= set(idx.tolist())
    np.testing.assert_array_equal(clips.select_frames(10, [0, 9], 12), np.arange(10))
    with pytest.raises(ValueError, match="max_frames"):
        clips.select_frames(40, [0, 5, 9, 20, 39], 4)


def test_room_trajectories_fit_in_max_frames_without_dropping():
    """The longest room trajectory (every grid at its maximum) has 27 frames <= 32."""
    cfg = actions.TrajectoryConfig.room()
    longest = 0
    for kind in cfg.kinds:
        if kind in actions.NAMES:
            grid = cfg.angle if kind in actions.TURNS else cfg.distance
            acts = [actions.Action(kind, grid.max)]
        else:
            acts = [actions.Action(a, r.max) for a, r in dict(cfg.presets)[kind]]
        longest = max(longest, len(actions.integrate(acts)[0]))
    assert longest == 27 <= clips.ClipConfig().max_frames


def test_split_scenes_is_disjoint_and_deterministic():
    seeds = clips.scene_seeds(3, 20)
    assert len(set(seeds)) == 20
    train, evals = clips.split_scenes(seeds, 0.1, 3)
    assert (
        len(evals) == 2 and set(train).isdisjoint(evals) and set(train) | set(evals) == set(seeds)
    )
    assert clips.split_scenes(seeds, 0.1, 3) == (train, evals)
    with pytest.raises(ValueError, match="eval_fraction"):
        clips.split_scenes(seeds, 1.0, 3)


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "data_gen.render_clips",
        f"--out={out}",
        "--num_scenes=1",
        "--resolution=8",
        "--supersample=1",
        "--max_objects=3",
        "--eval_fraction=0",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"'train': {NUM_KINDS}" in done.stdout
    again = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "--overwrite" in again.stderr
