"""The static perception set: answers re-derived from the scene geometry, no motion, disjoint
scene seeds, the distillation package format, the launcher."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from w2v_jax import geometry
from w2v_jax.eval import formats
from w2v_jax.eval.suites.common import EVAL_SEED_BASE
from w2v_jax.sim import clips
from w2v_jax.sim import render as render_view
from w2v_jax.sim import scene as scene_lib
from w2v_jax.supervision import build, package, perception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = perception.PerceptionConfig(resolution=32, supersample=1, views_per_scene=4)
MOTION = re.compile(r"\b(move[sd]?|moving|turn(s|ed|ing)?|rotat\w*|forward|backward|walk\w*|"
                    r"meters?|metres?|degrees?|trajector\w*|after|then|camera (goes|pans))\b",
                    re.IGNORECASE)


@pytest.fixture(scope="module")
def built():
    seeds = perception.scene_seeds(3, 4)
    return [perception.build_scene(s, CONFIG) for s in seeds]


def _records(built):
    return [r for res in built for r in res["records"]]


def _truth(rec):
    """Per view of the record: (names, shapes, mask pixels, centres in the camera frame)
    recomputed from the scene seed and the stored cameras, independently of the builder."""
    scene = scene_lib.sample_scene(rec["meta"]["scene_seed"], num_objects=CONFIG.num_objects,
                                   max_objects=CONFIG.max_objects)
    meta = scene_lib.scene_metadata(scene)
    names = [o["name"] for o in meta["objects"]]
    shapes = [o["shape"] for o in meta["objects"]]
    slots = [o["slot"] for o in meta["objects"]]
    centres = np.array([o["center"] for o in meta["objects"]], np.float64)
    out = []
    for c2w in rec["meta"]["c2w"]:
        c2w = np.asarray(c2w, np.float64)
        view = render_view(scene, np.float32(c2w), CONFIG.K, 32, 32, 1)
        instance = np.asarray(view["instance"])
        pixels = np.array([(instance == k).sum() for k in slots])
        w2c = np.linalg.inv(c2w)
        cam = centres @ w2c[:3, :3].T + w2c[:3, 3]
        mask_boxes = []
        for k in slots:
            ys, xs = np.nonzero(instance == k)
            mask_boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else None)
        out.append(dict(names=names, shapes=shapes, pixels=pixels, cam=cam, boxes=mask_boxes))
    return out


def test_every_answer_is_rederivable_from_the_scene_geometry(built):
    seen = set()
    lo = CONFIG.min_pixels
    for rec in _records(built):
        task, ans, truth = rec["task_type"], rec["answer"], _truth(rec)
        seen.add(task)
        v = truth[0]
        idx = {n: i for i, n in enumerate(v["names"])}
        x = v["cam"][:, 0] / v["cam"][:, 2]
        dist = np.linalg.norm(v["cam"], axis=1)
        objs = rec["meta"]["objects"]
        if task == "objects":
            visible = [i for i in range(len(v["names"])) if v["pixels"][i] >= lo]
            assert ans == ", ".join(v["names"][i] for i in sorted(visible, key=lambda i: x[i]))
        elif task == "grounding":
            box = v["boxes"][idx[objs[0]]]
            want = geometry.boxes_to_1000(np.array(box, np.float64), 32, 32).tolist()
            assert ans == "[" + ", ".join(map(str, want)) + "]"
        elif task == "counting":
            shape = rec["meta"]["shape"]
            assert int(ans) == sum(1 for i, s in enumerate(v["shapes"])
                                   if s == shape and v["pixels"][i] >= lo)
        elif task == "existence":
            name = objs[0]
            present = name in idx and v["pixels"][idx[name]] >= lo
            assert ans == ("yes" if present else "no")
            assert name not in idx or present or v["pixels"][idx[name]] == 0
        elif task == "left_right":
            a, b = (idx[n] for n in objs)
            assert ans == ("left" if x[a] < x[b] else "right")
            assert abs(x[a] - x[b]) >= CONFIG.lr_margin
        elif task == "nearer":
            a, b = (idx[n] for n in objs)
            assert ans == (objs[0] if dist[a] < dist[b] else objs[1])
        elif task == "nearest_choice":
            d = [dist[idx[n]] for n in objs]
            assert ans == perception.LETTERS[int(np.argmin(d))]
            assert all(v["pixels"][idx[n]] >= lo for n in objs)
        elif task == "which_image":
            k = idx[objs[0]]
            shown = [t["pixels"][k] >= lo for t in truth]
            hidden = [t["pixels"][k] == 0 for t in truth]
            i = perception.IMAGES.index(ans)
            assert shown[i] and hidden[1 - i]
        elif task == "statement":
            meta, kind = rec["meta"], rec["meta"]["kind"]
            assert ans in meta["choices"] and len(set(meta["choices"])) == 2
            assert rec["prompt"].endswith(" Choose between the following options: "
                                          + ", or ".join(meta["choices"]))
            if kind == "left_right":
                a, b = (idx[n] for n in objs)
                side = "left" if x[a] < x[b] else "right"
                assert ans == f"the {objs[0]} is to the {side} of the {objs[1]}"
            elif kind == "nearer":
                a, b = (idx[n] for n in objs)
                near, far = (objs[0], objs[1]) if dist[a] < dist[b] else (objs[1], objs[0])
                assert ans == f"the {near} is closer to the camera than the {far}"
            elif kind == "existence":
                present = objs[0] in idx and v["pixels"][idx[objs[0]]] >= lo
                assert ans == f"there is {'a' if present else 'no'} {objs[0]} in the image"
            else:
                shape = meta["shape"]
                n = sum(1 for i, s in enumerate(v["shapes"]) if s == shape and v["pixels"][i] >= lo)
                assert ans == perception.count_sentence(n, shape) and kind == "counting"
        else:
            raise AssertionError(f"unknown task {task}")
    assert seen == set(perception.TASKS)


def test_no_prompt_or_answer_mentions_motion(built):
    for rec in _records(built):
        assert not MOTION.search(rec["prompt"]), rec["prompt"]
        assert not MOTION.search(rec["answer"]), rec["answer"]
        assert rec["trajectory"] == ""
        assert rec["prompt"].count("<image>") == len(rec["image_files"])
    assert MOTION.search("If I move forward 1 meter")  # the pattern does catch motion


def test_answer_formats_are_the_eval_suites(built):
    assert perception.sat_question("Q?", ["a", "b"]) == formats.sat_text("Q?", ["a", "b"])
    assert perception.LETTER_ANSWER == formats.VSI_MCA_POST
    assert perception.SHORT_ANSWER == formats.VSI_NA_POST
    for rec in _records(built):
        if "choices" in rec["meta"]:
            if rec["task_type"] == "nearest_choice":
                assert rec["answer"] in perception.LETTERS[:len(rec["meta"]["choices"])]
            else:
                assert rec["answer"] in rec["meta"]["choices"]
                assert rec["prompt"].endswith(formats.sat_text("", rec["meta"]["choices"]))
        if rec["task_type"] == "existence":
            assert rec["answer"] in ("yes", "no")


@pytest.mark.parametrize("seed", [0, 1, 17])
def test_scene_seeds_are_disjoint_from_clips_distillation_and_eval(seed):
    mine = perception.scene_seeds(seed, 400)
    assert len(set(mine)) == 400 and max(mine) < EVAL_SEED_BASE
    assert not set(mine) & set(clips.scene_seeds(seed, 400))
    assert not set(mine) & set(build.scene_seeds(seed, 400))


def test_config_validation():
    with pytest.raises(ValueError, match="views_per_scene must be even"):
        perception.PerceptionConfig(views_per_scene=3)
    with pytest.raises(ValueError, match="resolution"):
        perception.PerceptionConfig(resolution=0)


def test_package_loads_through_sft_pipeline_and_resumes(tmp_path, capsys):
    from w2v_jax.data import distill
    from w2v_jax.processing import train_tokenizer

    seeds = perception.scene_seeds(5, 3)
    config = package.PackageConfig(eval_fraction=0.34, jsonl=False)
    stats = perception.build_dataset(str(tmp_path), seeds, CONFIG, config, progress=False)
    assert stats["scenes"] == {"total": 3, "eval": 1}
    assert sum(stats["perception_tasks"].values()) == sum(
        s["records"] for k, s in stats["splits"].items() if k != "grpo")
    records = [distill.decode_record(e) for e in distill.open_split(str(tmp_path / "package"),
                                                                    "sft")]
    tok, _ = train_tokenizer([r["prompt"] + " " + r["answer"] for r in records], 500)
    batch = next(iter(distill.sft_pipeline(str(tmp_path / "package"), tok, batch_size=4,
                                           max_length=192, seed=0, shuffle=False)))
    assert batch["input_ids"].shape == (4, 192) and batch["pixel_values"].shape[0] == 4
    ids = batch["input_ids"][0][batch["loss_mask"][0] > 0]
    assert records[0]["answer"] in tok.decode(ids)
    capsys.readouterr()
    perception.build_dataset(str(tmp_path), seeds, CONFIG, config, progress=False)
    assert "scenes built 0, skipped (already finished) 3" in capsys.readouterr().out


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "data_gen.build_perception", *args], cwd=ROOT,
                          env=env, timeout=600, capture_output=True, text=True)


def test_launcher_help_build_and_one_line_errors(tmp_path):
    helped = _run("--help")  # absl prints the module doc and the flags (exit status 1)
    assert "No camera motion anywhere" in helped.stdout
    assert "--views_per_scene" in helped.stdout
    out = str(tmp_path / "p")
    done = _run("--num_scenes=2", f"--out={out}", "--resolution=32", "--supersample=1",
                "--eval_fraction=0", "--noprogress", "--nojsonl")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote" in done.stdout
    with open(os.path.join(out, "package", "stats.json")) as f:
        assert json.load(f)["scenes"]["total"] == 2
    other = _run("--num_scenes=2", f"--out={out}", "--resolution=64", "--noprogress")
    assert other.returncode == 2 and "resolution" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    missing = _run("--num_scenes=2")
    assert missing.returncode == 2 and "--out and --num_scenes are required" in missing.stderr


@pytest.mark.slow
def test_base_tiny_pretrains_on_the_perception_package_and_loads_for_sft(tmp_path):
    from experiments.configs import vlm as vlm_configs
    from w2v_jax.train.metrics import read_metrics
    from w2v_jax.train.run import train_from_config
    from w2v_jax.train.runs import load_vlm

    perception.build_dataset(str(tmp_path / "per"), perception.scene_seeds(9, 2), CONFIG,
                             package.PackageConfig(eval_fraction=0.0, jsonl=False),
                             progress=False)
    config = vlm_configs.get_config("base_tiny")
    assert config.trainable == "all" and not config.init_from  # from scratch, full parameter
    assert config.data.max_target_tokens >= 48  # object lists are the longest answers
    config.data.package_dir = str(tmp_path / "per" / "package")
    config.eval_every_steps = 0
    config.total_steps = 3
    train_from_config(config, str(tmp_path / "base"))
    assert [r["step"] for r in read_metrics(str(tmp_path / "base")) if "loss" in r] == [1, 2, 3]
    model, tok = load_vlm(str(tmp_path / "base"))
    assert "cylinder" in tok.decode(tok("a purple cylinder")["input_ids"])
    sft = vlm_configs.get_config("sft_tiny")
    assert sft.trainable == "all"  # the SFT recipe the base is handed to (init_from=BASE)
