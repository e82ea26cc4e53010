"""Packaging of the distillation set (TFDS + JSONL) and its Grain SFT / GRPO pipelines.

The scenes here are built by the real `build.build_scene` with the renderer replaced by synthetic
render outputs (random sharp views, random boxes), so this file runs without JAX rendering.
"""

import collections
import json
import os

import numpy as np
import pytest
from PIL import Image

from w2v_jax.data import array_record, distill
from w2v_jax.processing import ImageConfig, train_tokenizer
from w2v_jax.sim.clips import ClipConfig
from w2v_jax.supervision import build, package, teachers
from w2v_jax.supervision.reward import compute_score

RES = 32
NUM_SCENES = 6
PER_TASK = 4


def fake_render_cameras(scene, c2ws, K, height, width, supersample=1, chunk=16):
    """Stand-in for the renderer: per camera a random view and random visible boxes (0-1000)."""
    rng = np.random.default_rng(int(abs(np.asarray(c2ws)).sum() * 1000) % 2**32)
    n, k = len(c2ws), scene.max_objects
    x1 = rng.integers(20, 600, (n, k))
    y1 = rng.integers(20, 600, (n, k))
    boxes = np.stack([x1, y1, x1 + rng.integers(110, 350, (n, k)),
                      y1 + rng.integers(110, 350, (n, k))], -1)
    pixels = np.where(rng.random((n, k)) < 0.3, 0, rng.integers(5, 200, (n, k)))
    return {"rgb": rng.random((n, height, width, 3)).astype(np.float32),
            "visible_pixels": pixels, "visible": pixels > 0,
            "box": np.where(pixels[..., None] > 0, boxes, -1)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    config = build.BuildConfig(clip=ClipConfig(resolution=RES, render_chunk=16))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "render_cameras", fake_render_cameras)
        mp.setattr(teachers, "render_cameras", fake_render_cameras)
        done = build.build_shards(root, build.scene_seeds(3, NUM_SCENES), config,
                                  teachers.RendererTeacher(), progress=False)
    return done["shards"]


@pytest.fixture(scope="module")
def pkg(shards, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pkg") / "package")
    config = package.PackageConfig(grpo_per_task=PER_TASK, eval_fraction=0.34)
    stats = package.write_package(shards, out, config, extra_stats={"note": "test"})
    splits = package.make_splits(package.load_shards(shards), config)
    return out, stats, splits


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_splits(pkg, shards):
    _, stats, splits = pkg
    sft_ids = [r["id"] for r in splits["sft"]]
    assert len(sft_ids) == len(set(sft_ids)) and len(sft_ids) > 100
    assert {r["id"] for r in splits["grpo"]} <= set(sft_ids)
    available = collections.Counter(r["task_type"] for r in splits["sft"])
    taken = collections.Counter(r["task_type"] for r in splits["grpo"])
    assert taken == {t: min(PER_TASK, n) for t, n in available.items()}
    assert set(available) == set(build.TASK_TYPES)
    eval_scenes = {r["scene_id"] for r in splits["eval"]}
    assert len(eval_scenes) == 2 and not eval_scenes & {r["scene_id"] for r in splits["sft"]}
    for name in ("sft", "eval"):
        a4 = [r["meta"]["claim_true"] for r in splits[name] if r["task_type"] == "A4"]
        assert a4 and abs(2 * sum(a4) - len(a4)) <= 1
    assert [r["task_type"] for r in splits["sft"]] != sorted(r["task_type"] for r in splits["sft"])
    for name, recs in splits.items():
        assert stats["splits"][name]["records"] == len(recs)
    assert stats["note"] == "test" and stats["scenes"] == {"total": NUM_SCENES, "eval": 2}
    no_eval = package.make_splits(package.load_shards(shards),
                                  package.PackageConfig(eval_fraction=0.0))
    assert no_eval["eval"] == [] and len(no_eval["sft"]) > len(splits["sft"])


def test_tfds_round_trip(pkg):
    import tensorflow_datasets as tfds

    out, _, splits = pkg
    for name, recs in splits.items():
        source = tfds.data_source(package.DATASET_NAME, data_dir=out, split=name)
        assert len(source) == len(recs)
        by_id = {r["id"]: r for r in recs}
        for i in range(len(source)):
            got = distill.decode_record(source[i])
            want = by_id[got["id"]]
            assert got["task_type"] == want["task_type"]
            assert got["prompt"] == want["prompt"] and got["answer"] == want["answer"]
            assert got["messages"] == package.chat_messages(want)
            assert json.loads(got["ground_truth"]) == {"task_type": want["task_type"],
                                                       "answer": want["answer"]}
            assert got["meta"] == want["meta"] and got["trajectory"] == want["trajectory"]
            assert len(got["images"]) == want["prompt"].count("<image>")
            for png, path in zip(got["images"], package.image_paths(want)):
                with open(os.path.join(out, path), "rb") as f:
                    assert png == f.read()
    assert not os.path.exists(os.path.join(out, "downloads"))


def test_jsonl_exports_in_the_official_formats(pkg):
    out, _, splits = pkg
    sft = _lines(os.path.join(out, "sft.jsonl"))
    assert len(sft) == len(splits["sft"])
    for line in sft:
        assert set(line) == {"task_type", "messages", "images"}
        user, assistant = line["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].count("<image>") == len(line["images"])
        for path in line["images"]:
            with Image.open(os.path.join(out, path)) as im:
                assert im.size == (RES, RES)
    for name in ("grpo", "eval"):
        lines = _lines(os.path.join(out, f"{name}.jsonl"))
        assert len(lines) == len(splits[name])
        for line in lines:
            assert set(line) == {"prompt", "answer", "images", "task_type"}
            truth = json.loads(line["answer"])
            assert truth["task_type"] == line["task_type"]
            assert line["prompt"].count("<image>") == len(line["images"])
        scores = compute_score([{"response": json.loads(x["answer"])["answer"],
                                 "ground_truth": x["answer"]} for x in lines])
        assert all(s["overall"] == 1.0 for s in scores)
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)
    assert stats["splits"]["grpo"]["per_task"] == dict(collections.Counter(
        x["task_type"] for x in _lines(os.path.join(out, "grpo.jsonl"))))


@pytest.fixture(scope="module")
def tokenizer(pkg):
    _, _, splits = pkg
    corpus = [r["prompt"] + " " + r["answer"] for r in splits["sft"]]
    tok, _ = train_tokenizer(corpus, 800)
    return tok


IMAGES = ImageConfig()  # 32 px views -> 56 x 56 -> 16 patches, 4 image tokens each


def test_sft_batches_have_fixed_shapes_and_answer_targets(pkg, tokenizer):
    out, _, _ = pkg
    L = 320
    ds = distill.sft_pipeline(out, tokenizer, batch_size=4, max_length=L, seed=0,
                              image_config=IMAGES)
    it = iter(ds)
    batch = next(it)
    assert batch["input_ids"].shape == batch["loss_mask"].shape == (4, L)
    assert batch["position_ids"].shape == (3, 4, L) and batch["rope_deltas"].shape == (4, 1)
    assert batch["pixel_values"].shape == (4, 32, 3 * 2 * 14 * 14)
    assert batch["image_grid_thw"].shape == (4, 2, 3) and batch["example_mask"].all()
    source = distill.open_split(out, "sft")
    answers = {distill.decode_record(source[i])["answer"] for i in range(len(source))}
    for b in range(4):
        target = batch["input_ids"][b][batch["loss_mask"][b] == 1]
        text = tokenizer.decode(target)
        assert text.endswith("<|im_end|>") and text[: -len("<|im_end|>")] in answers
        n_img = int((batch["image_grid_thw"][b].sum(-1) > 0).sum())
        assert int(batch["mm_token_type_ids"][b].sum()) == 4 * n_img
    state = it.get_state()
    expected = next(it)
    it2 = iter(distill.sft_pipeline(out, tokenizer, batch_size=4, max_length=L, seed=0,
                                    image_config=IMAGES))
    it2.set_state(state)
    resumed = next(it2)
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key])
    # max_target_tokens: target_index points at the logits that predict the answer tokens
    packed = next(iter(distill.sft_pipeline(out, tokenizer, batch_size=4, max_length=L, seed=0,
                                            image_config=IMAGES, max_target_tokens=48)))
    for b in range(4):
        index = packed["target_index"][b][packed["target_valid"][b] == 1]
        np.testing.assert_array_equal(packed["input_ids"][b][index + 1],
                                      packed["input_ids"][b][packed["loss_mask"][b] == 1])
    with pytest.raises(Exception, match="max_target_tokens=2"):
        next(iter(distill.sft_pipeline(out, tokenizer, batch_size=4, max_length=L, seed=0,
                                       image_config=IMAGES, max_target_tokens=2)))


def test_grpo_prompt_batches(pkg, tokenizer):
    out, _, splits = pkg
    L = 320
    ds = distill.grpo_pipeline(out, tokenizer, batch_size=3, max_prompt_length=L, seed=1,
                               num_epochs=1, drop_remainder=False, image_config=IMAGES)
    rows = 0
    for batch in ds:
        assert batch["input_ids"].shape == (3, L) and batch["position_ids"].shape == (3, 3, L)
        for b in np.flatnonzero(batch["example_mask"]):
            ids = batch["input_ids"][b][batch["attention_mask"][b] == 1]
            assert batch["attention_mask"][b][-1] == 1  # left padded
            assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
            assert batch["loss_mask"][b].sum() == 0
            truth = json.loads(str(batch["ground_truth"][b]))
            assert truth == {"task_type": str(batch["task_type"][b]),
                             "answer": str(batch["answer"][b])}
            assert compute_score([{"response": truth["answer"],
                                   "ground_truth": str(batch["ground_truth"][b])}])[0][
                "overall"] == 1.0
            rows += 1
    assert rows == len(splits["grpo"])


def test_overlong_examples_are_malformed(pkg, tokenizer):
    from w2v_jax.data.pipeline import MalformedRecordError

    out, _, _ = pkg
    with pytest.raises(MalformedRecordError, match="max_length"):
        next(iter(distill.sft_pipeline(out, tokenizer, batch_size=2, max_length=16,
                                       image_config=IMAGES)))


def test_failed_packaging_leaves_the_old_package(pkg, shards, tmp_path, monkeypatch):
    out = str(tmp_path / "package")
    config = package.PackageConfig(grpo_per_task=PER_TASK, jsonl=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(array_record, "write_dataset", broken)
    with pytest.raises(OSError, match="disk full"):
        package.write_package(shards, out, config)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    package.write_package(shards[:3], out, config)
    before = sorted(os.listdir(out))
    monkeypatch.setattr(array_record, "write_dataset", broken)
    with pytest.raises(OSError):
        package.write_package(shards, out, config)
    assert sorted(os.listdir(tmp_path)) == ["package"] and sorted(os.listdir(out)) == before
    with open(os.path.join(out, "stats.json")) as f:
        assert json.load(f)["scenes"]["total"] == 3


def test_tasks_keep_only_those_task_types(pkg, tokenizer):
    out, _, splits = pkg
    kept = splits["sft"][0]["task_type"]
    ds = distill.sft_pipeline(out, tokenizer, batch_size=2, max_length=320, seed=0,
                              num_epochs=1, drop_remainder=False, image_config=IMAGES,
                              tasks=(kept,))
    rows = sum(int(b["example_mask"].sum()) for b in ds)
    assert rows == sum(r["task_type"] == kept for r in splits["sft"]) < len(splits["sft"])
    source = distill.TaskSubset(distill.open_split(out, "sft"), (kept,), "sft")
    assert {distill.decode_record(source[i])["task_type"] for i in range(len(source))} == {kept}
    with pytest.raises(ValueError, match=r"data.tasks=.*the sft split holds no records of "
                                         r"\['objects'\]"):
        distill.TaskSubset(distill.open_split(out, "sft"), (kept, "objects"), "sft")


def _tiny_student(tokenizer):
    from flax import nnx

    from experiments.configs.vlm import PRESETS
    from w2v_jax import sharding
    from w2v_jax.models.vlm import Qwen2_5_VL, VLMConfig
    from w2v_jax.models.vlm.config import fit_to_tokenizer
    from w2v_jax.processing.tokenizer import special_token_ids

    d = fit_to_tokenizer(PRESETS["tiny"], len(tokenizer), special_token_ids(tokenizer))
    return sharding.create_unsharded(lambda: Qwen2_5_VL(VLMConfig.from_hf_dict(d),
                                                        rngs=nnx.Rngs(0)))


def test_image_use_tells_a_seeing_student_from_a_blind_one(pkg, tokenizer):
    import jax.numpy as jnp

    from w2v_jax.data.sft_batch import sft_batch
    from w2v_jax.train.image_use import image_use, roll_images

    out, _, _ = pkg
    batches = list(distill.sft_pipeline(out, tokenizer, batch_size=4, max_length=320, seed=0,
                                        image_config=IMAGES, num_epochs=1).map(sft_batch))[:2]
    rolled = roll_images(batches[0])
    keys = [tuple(g.reshape(-1)) for g in batches[0]["image_grid_thw"]]
    for i, k in enumerate(keys):  # the next example's views among those sharing the grid
        group = [j for j, kk in enumerate(keys) if kk == k]
        nxt = group[(group.index(i) + 1) % len(group)]
        np.testing.assert_array_equal(rolled["pixel_values"][i], batches[0]["pixel_values"][nxt])
    assert any(len([kk for kk in keys if kk == k]) > 1 for k in keys)  # something was rolled
    model = _tiny_student(tokenizer)
    seeing = image_use(model, batches)
    assert seeing["tokens"] > 0 and seeing["pixel_grad_norm"] > 0 and seeing["feature_spread"] > 0
    assert seeing["loss_real"] != seeing["loss_rolled"]
    # a merger that outputs a constant: the language model gets the same tokens for every view
    fc2 = model.visual.merger.fc2
    fc2.kernel.value = jnp.zeros_like(fc2.kernel.value)
    fc2.bias.value = jnp.ones_like(fc2.bias.value)
    blind = image_use(model, batches)
    assert blind["loss_real"] == blind["loss_rolled"]
    assert blind["correct_real"] == blind["correct_rolled"]
    assert blind["pixel_grad_norm"] == 0.0 and blind["feature_spread"] == 0.0
    with pytest.raises(ValueError, match="no batches"):
        image_use(model, [])


def test_image_use_launcher(pkg, tmp_path):
    import subprocess
    import sys

    out, _, splits = pkg
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = os.path.join(root, "results", "models", "vlm_base_small")
    task = splits["eval"][0]["task_type"]
    cmd = [sys.executable, "-m", "experiments.image_use", f"--model={model}"]

    def run(*flags):
        return subprocess.run(cmd + list(flags), cwd=root, capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})

    done = run(f"--package={out}", f"--tasks={task}", "--max_batches=1", "--max_length=512",
               f"--out={tmp_path / 'use.json'}")
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "use.json") as f:
        result = json.load(f)
    assert list(result["tasks"]) == [task] and result["tasks"][task]["tokens"] > 0
    bad = run(f"--package={out}", "--tasks=nope")
    assert bad.returncode != 0 and "--tasks: ['nope'] not in the eval split" in bad.stderr
    missing = run(f"--package={tmp_path / 'none'}")
    assert missing.returncode != 0 and "no readable eval split" in missing.stderr
