"""Per-scene supervision build, shards, resume, failure atomicity, fidelity and the launcher."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from w2v_jax import actions as actions_lib
from w2v_jax.sim import clips
from w2v_jax.sim import scene as scene_lib
from w2v_jax.sim.render import render_cameras
from w2v_jax.supervision import build, tasks, teachers, templates
from w2v_jax.supervision.reward import score

# one cheap render compilation (chunk 16, 1 ray per pixel) for the whole file
CONFIG = build.BuildConfig(clip=clips.ClipConfig(supersample=1, render_chunk=16))
COLOR = build.BuildConfig(clip=CONFIG.clip, detector="color")
RENDERER = teachers.RendererTeacher(supersample=1, render_chunk=16)


class FakeTeacher:
    """A model-like teacher: ``fn(image, trajectory, key_frames)`` gives the views."""

    def __init__(self, fn, name="fake"):
        self.fn, self.name = fn, name

    def views(self, image, K, trajectory, *, scene, c2w_source, seed, key_frames=False):
        return self.fn(image, trajectory, key_frames)


@pytest.fixture(scope="module")
def built():
    seeds = build.scene_seeds(0, 3)
    return seeds, [build.build_scene(s, CONFIG, RENDERER) for s in seeds]


def _all_records(results):
    cands = [c for r in results for c in r["a4_candidates"]]
    return [rec for r in results for rec in r["records"]] + build.label_a4(cands, seed=42)


def test_every_record_parses_and_scores_its_own_answer_fully(built):
    _, results = built
    records = _all_records(results)
    assert {r["task_type"] for r in records} >= {"A1", "A2", "A3", "A4", "D1", "D2", "D3"}
    for rec in records:
        task = rec["task_type"]
        assert score(rec["answer"], task, rec["answer"])["overall"] == 1.0, rec
        n_images = rec["prompt"].count("<image>")
        assert n_images == len(rec["images"]) == len(rec["image_files"]) == (1 if task == "D2"
                                                                             else 2)
        assert rec["images"][0] == 0 and rec["source"] == "renderer"
        if task != "A4":  # (an A4 prompt carries the claim, possibly false)
            assert rec["prompt"] in [t.fill(_slots(rec))[0] for t in templates.TEMPLATES[task]]
        assert actions_lib.parse_actions(rec["trajectory"])
        if task in ("A1", "A2", "A3"):
            assert rec["answer"] == actions_lib.format_actions(
                tasks.as_actions(actions_lib.parse_actions(rec["trajectory"])))
        json.dumps(rec)
    ids = [(r["meta"]["traj_id"], r["task_type"], r["meta"].get("box_last") is not None,
            r["meta"].get("same")) for r in records]
    assert len(ids) == len(set(ids))


def _slots(rec):
    """Template slots recomputed from the record's meta (checks prompt wording)."""
    meta = rec["meta"]
    slots = {"ACTION_SEQ": meta["actions"]}
    acts = actions_lib.parse_actions(meta["actions"])
    slots["ACTION_COUNT"] = str(len(acts))
    if "label" in meta:
        slots.update(OBJECT=meta["label"], BBOX_1=templates.box_text(meta["box_first"]),
                     BBOX_2=templates.box_text(meta["box_last"] or meta["box_first"]),
                     ACTION_SEQ_NL=templates.natural_sequence_text(acts))
        for key in ("YN", "VIS_CHOICE", "VIS_NL", "IDENTITY_CHOICE", "IDENTITY_NL"):
            slots[key] = ""
    elif len(acts) == 1:
        a = acts[0]
        slots.update(DIR=a.name, DIST=templates.format_number(a.value),
                     TURN_DIR=a.name.split("_")[-1], ANGLE=templates.format_number(a.value))
    return slots


def test_a4_negatives_are_really_false_and_balanced(built):
    _, results = built
    a4 = [r for r in _all_records(results) if r["task_type"] == "A4"]
    assert len(a4) == 3 * len(built[0])  # one per preset trajectory
    truths = [r["meta"]["claim_true"] for r in a4]
    assert abs(sum(truths) - (len(a4) - sum(truths))) <= 1
    for rec in a4:
        truth = actions_lib.parse_actions(rec["meta"]["actions"])
        claim = actions_lib.parse_actions(rec["meta"]["claim"])
        assert tasks.is_false_claim(truth, claim) == (not rec["meta"]["claim_true"])
        assert rec["answer"] == ("true" if rec["meta"]["claim_true"] else "false")


def test_d_labels_agree_with_the_renderer(built):
    """Oracle teacher: D2 "disappears" iff the object has no visible pixel in the true last view;
    D1's answer is the object's true box there."""
    seeds, results = built
    ccfg = CONFIG.clip
    checked = 0
    for seed, result in zip(seeds, results):
        scene = scene_lib.sample_scene(seed)
        by_index = {t["index"]: t for t in result["trajectories"]}
        d_records = [r for r in result["records"] if r["task_type"] in ("D1", "D2")]
        poses = []
        for rec in d_records:
            traj = by_index[int(rec["meta"]["traj_id"].split("_")[1])]
            _, c2w, _ = clips.plan_clip(scene, seed, traj["index"], traj["kind"], ccfg)
            poses.append(c2w[traj["frame_ids"][-1]])
        if not poses:
            continue
        truth = render_cameras(scene, np.stack(poses), ccfg.K, ccfg.resolution, ccfg.resolution,
                               ccfg.supersample, ccfg.render_chunk)
        for i, rec in enumerate(d_records):
            slot = rec["meta"]["track_id"]
            assert rec["meta"]["label"] == scene_lib.SHAPES[int(scene.type[slot])]
            if rec["task_type"] == "D2":
                assert rec["meta"]["disappears"] == (not truth["visible"][i][slot])
                assert rec["meta"]["disappears"] == (truth["visible_pixels"][i][slot] == 0)
            else:
                assert rec["meta"]["box_last"] == truth["box"][i][slot].tolist()
            checked += 1
    assert checked >= 4


def test_shards_hold_the_views_and_records(built, tmp_path):
    _, results = built
    result = results[0]
    path = build.write_shard(str(tmp_path), result)
    body = build.read_shard(path)
    assert body["records"] == json.loads(json.dumps(result["records"]))
    assert body["stats"] == result["stats"]
    for traj in result["trajectories"]:
        frames = result["views"][traj["traj_id"]]
        assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3)
        for frame, image in zip(traj["frame_ids"], frames):
            png = np.asarray(Image.open(os.path.join(path, f"{traj['index']:02d}_f{frame:03d}.png")))
            np.testing.assert_array_equal(png, image)
    for rec in result["records"]:
        for f in rec["image_files"]:
            assert os.path.isfile(os.path.join(path, f.split("/", 1)[1]))
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


def test_resume_skips_finished_scenes(built, tmp_path):
    seeds, results = built
    root = str(tmp_path)
    path = build.write_shard(root, results[0])
    stamp = os.path.getmtime(os.path.join(path, build.SHARD_FILE))
    done = build.build_shards(root, seeds[:1], CONFIG, RENDERER, progress=False)
    assert done == {"built": 0, "skipped": 1, "shards": [path]}
    assert os.path.getmtime(os.path.join(path, build.SHARD_FILE)) == stamp


def test_failures_leave_nothing_half_written(built, tmp_path, monkeypatch):
    seeds, results = built
    calls = []

    def flaky(image, trajectory, key_frames):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("teacher crashed")
        return np.repeat(np.asarray(image)[None], len(trajectory.actions), 0)

    root = str(tmp_path / "shards")
    with pytest.raises(RuntimeError, match="crashed"):
        build.build_shards(root, seeds[:1], COLOR, FakeTeacher(flaky), progress=False)
    assert not os.path.exists(root) or os.listdir(root) == []

    saved = []

    def failing_save(self, path, *a, **k):
        saved.append(path)
        if len(saved) == 5:
            raise OSError("disk full")
        return original(self, path, *a, **k)

    original = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        build.write_shard(root, results[0])
    assert os.listdir(root) == []
    assert not build.is_finished(root, seeds[0])


def test_qc_rejects_a_teacher_that_copies_the_source(built):
    seeds, _ = built

    def copy(image, trajectory, key_frames):
        n = len(trajectory.actions) if key_frames else 1
        return np.repeat(np.asarray(image, np.float32)[None] / 255.0, n, 0)

    result = build.build_scene(seeds[0], COLOR, FakeTeacher(copy, "copy"))
    assert result["stats"]["qc_rejected"] == result["stats"]["trajectories"] == 9
    assert set(result["stats"]["qc_reasons"]) == {"static"}
    assert result["records"] == [] and result["a4_candidates"] == []
    assert all(t["qc"] for t in result["trajectories"])


def test_color_detector_pipeline_and_label_fidelity(built):
    seeds, results = built
    result = build.build_scene(seeds[0], COLOR, RENDERER)
    assert result["oracle_records"] is not None
    oracle_d = [r for r in results[0]["records"] if r["task_type"].startswith("D")]
    strip = lambda recs: [{k: v for k, v in r.items() if k != "source"} for r in recs]
    assert strip(result["oracle_records"]) == strip(oracle_d)  # same trajectories and renders
    fid = build.label_fidelity(result["records"], result["oracle_records"])
    assert fid["D1"]["matched"] >= 1 and fid["D1"]["mean_iou"] >= 0.5
    assert fid["D3"]["exact"] == 1.0 or fid["D3"]["matched"] == 0
    same = build.label_fidelity(oracle_d, oracle_d)
    for task in ("D1", "D2", "D3", "D4"):
        if same[task]["oracle_records"]:
            assert same[task]["coverage"] == 1.0
    assert same["D1"]["mean_iou"] == 1.0 and same["D2"]["accuracy"] == 1.0


def _d2(traj, disappears, box=(100, 100, 300, 300), label="cube"):
    return {"task_type": "D2", "meta": {"traj_id": traj, "label": label, "box_first": list(box),
                                        "box_last": None, "disappears": disappears}}


def test_label_fidelity_hand_case():
    oracle = [_d2("a", True), _d2("b", False), _d2("c", False)]
    mine = [_d2("a", True), _d2("b", True), _d2("c", False, box=(600, 600, 700, 700)),
            _d2("d", True)]
    fid = build.label_fidelity(mine, oracle)["D2"]
    assert fid == {"records": 4, "oracle_records": 3, "matched": 2, "coverage": 2 / 3,
                   "label_agreement": 1.0, "accuracy": 0.5}
    renamed = [_d2("a", True, label="sphere")]
    assert build.label_fidelity(renamed, oracle)["D2"]["label_agreement"] == 0.0


def test_scene_seeds_and_config_validation():
    assert build.scene_seeds(0, 3) == build.scene_seeds(0, 5)[:3]
    assert not set(build.scene_seeds(0, 20)) & set(clips.scene_seeds(0, 20))
    with pytest.raises(ValueError, match="detector"):
        build.BuildConfig(detector="yolo")
    with pytest.raises(ValueError, match="vocabulary"):
        build.BuildConfig(vocabulary="words")
    with pytest.raises(ValueError, match="detector='oracle' reads the renderer's truth"):
        build.build_scene(1, CONFIG, FakeTeacher(lambda *a: None, "world_model"))
    wrong = FakeTeacher(lambda image, trajectory, key_frames: np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"teacher 'fake' returned views of shape \(1, 8, 8, 3\)"):
        build.build_scene(build.scene_seeds(0, 1)[0], COLOR, wrong)


def test_launcher_builds_resumes_and_refuses_other_options(built, tmp_path, capsys):
    from absl import flags

    from data_gen import build_supervision as launcher
    from w2v_jax import cli

    out = str(tmp_path / "run")
    argv = ["build_supervision", "--num_scenes=2", f"--out={out}", "--supersample=1",
            "--grpo_per_task=3", "--noprogress"]
    try:
        flags.FLAGS(argv)
        launcher.main(["build_supervision"])
        first = capsys.readouterr().out
        assert "scenes built 2, skipped (already finished) 0" in first
        with open(os.path.join(out, "package", "stats.json")) as f:
            stats = json.load(f)
        assert stats["scenes"]["total"] == 2 and stats["teacher"] == ["renderer"]
        assert stats["splits"]["grpo"]["records"] <= 3 * 8
        assert os.path.isdir(os.path.join(out, "package", "world2vlm_distill", "1.0.0"))
        launcher.main(["build_supervision"])
        assert "scenes built 0, skipped (already finished) 2" in capsys.readouterr().out
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv + ["--vocabulary=color_shape"])
        with pytest.raises(cli.UserError, match="vocabulary"):
            launcher.main(["build_supervision"])
    finally:
        flags.FLAGS.unparse_flags()
    assert sorted(os.listdir(out)) == ["build.json", "package", "shards"]


def test_launcher_help_documents_every_flag():
    from absl import flags

    from data_gen import build_supervision as launcher

    text = " ".join(flags.FLAGS.module_help(launcher.__name__).split())  # unwrapped
    for flag in ("teacher", "world_model_dir", "num_scenes", "out", "seed", "resolution",
                 "grpo_per_task", "overwrite"):
        assert re.search(rf"--(\[no\])?{flag}:", text), flag
        assert " ".join(flags.FLAGS[flag].help.split()) in text
    assert "a rerun skips finished scenes" in launcher.__doc__


def test_renderer_teacher_views_are_the_true_renders(built):
    """The stored renderer-teacher views equal the true renders at the planned key-frame
    cameras (the trajectory integrated from the start camera hits the planned poses)."""
    seeds, results = built
    scene = scene_lib.sample_scene(seeds[0])
    traj = results[0]["trajectories"][6]  # a multi-step preset
    _, c2w, _ = clips.plan_clip(scene, seeds[0], traj["index"], traj["kind"], CONFIG.clip)
    views = results[0]["views"][traj["traj_id"]]
    c = CONFIG.clip
    truth = render_cameras(scene, c2w[traj["frame_ids"]], c.K, c.resolution, c.resolution,
                           c.supersample, c.render_chunk)["rgb"]
    np.testing.assert_array_equal(build.to_uint8(truth), views)


@pytest.mark.slow
def test_world_model_teacher_runs_through_the_pipeline():
    """An (untrained) world model as the teacher: views of the model's size, colour detector,
    QC counted, oracle records for the fidelity. Its near-uniform outputs fail the blur test."""
    from w2v_jax.models.world_model import WorldModelConfig
    from w2v_jax.models.world_model import build as wm_build

    model = wm_build(WorldModelConfig.preset("tiny"))
    teacher = teachers.WorldModelTeacher(model, steps=2)
    config = build.BuildConfig(clip=clips.ClipConfig(resolution=16, supersample=1),
                               detector="color")
    result = build.build_scene(build.scene_seeds(0, 1)[0], config, teacher)
    assert all(v.shape[1:] == (16, 16, 3) for v in result["views"].values())
    stats = result["stats"]
    assert stats["trajectories"] == 9 and result["oracle_records"] is not None
    assert stats["qc_rejected"] == 9 and stats["qc_reasons"].get("blur", 0) >= 9


def test_task_subsets_keep_only_their_tasks_with_the_full_sets_ids(built):
    from w2v_jax.supervision import package

    _, results = built
    shards = [dict(r, scene_seed=s) for s, r in zip(built[0], results)]
    full = package.make_splits(shards, package.PackageConfig(eval_fraction=0.34))
    forward = package.make_splits(shards, package.PackageConfig(eval_fraction=0.34,
                                                                tasks=("A4", "D1", "D2", "D4")))
    for split in ("sft", "eval"):
        want = {r["id"] for r in full[split] if r["task_type"] in ("A4", "D1", "D2", "D4")}
        assert want and {r["id"] for r in forward[split]} == want
    with pytest.raises(ValueError, match="unknown task types \\['A9'\\]"):
        package.PackageConfig(tasks=("A9",))
