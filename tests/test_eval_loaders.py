"""Real-benchmark loaders on small fixture files written here in the official layouts."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_distill_data import pkg, shards  # noqa: F401  (distillation-package fixtures)

from w2v_jax.eval import loaders, runner, store
from w2v_jax.eval.inference import Answer
from w2v_jax.processing.image import load_image


class Oracle:
    """Answers every prompt with the answer the item expects (looked up by id)."""

    def __init__(self, items, as_letter=False):
        self.answers = {i["id"]: i["answer"] for i in items}
        self.as_letter = as_letter

    def __call__(self, prompts, max_new_tokens):
        out = []
        for p in prompts:
            a = self.answers[p.item_id]
            out.append(Answer(f"<answer>{a}. x</answer>" if self.as_letter else a, 5, 1, 1.0, 0))
        return out


def _png(value):
    return store.encode_png(np.full((12, 10, 3), value, np.uint8))


def test_sat_parquet(tmp_path):
    rows = [{"image_bytes": [{"bytes": _png(k), "path": None}] * (1 + k % 2),
             "question": f"Q{k}?", "answers": ["left", "right"],
             "correct_answer": ["left", "right"][k % 2], "question_type": "goal_aim"}
            for k in range(6)]
    path = str(tmp_path / "val-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    items = loaders.load_sat(str(tmp_path), "val")
    assert [i["suite"] for i in items] == ["sat_synth"] * 6
    assert len(items[1]["images"]) == 2 and load_image(items[3]["images"][0])[0, 0, 0] == 3
    for item in items:
        store.check_item(item)
    res = runner.aggregate(items, runner.run(Oracle(items), items))["sat_synth"]
    assert res["categories"]["goal_aim"]["circular"] == 1.0
    sub = loaders.mindjourney_subset(items, k=4)
    assert [i["id"] for i in sub] == [i["id"] for i in random.Random(10).sample(items, 4)]
    with pytest.raises(ValueError, match="split must be"):
        loaders.load_sat(path, "train")
    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), str(tmp_path / "bad.parquet"))
    with pytest.raises(ValueError, match="missing columns"):
        loaders.load_sat(str(tmp_path / "bad.parquet"), "test")


def test_vsibench_jsonl_and_video(tmp_path):
    av = pytest.importorskip("av")
    video_dir = tmp_path / "videos" / "scannet"
    video_dir.mkdir(parents=True)
    with av.open(str(video_dir / "scene0.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * k, np.uint8), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    rows = [dict(id=1, dataset="scannet", scene_name="scene0", question_type="object_counting",
                 question="How many chairs are in this room?", options=None, ground_truth="4"),
            dict(id=2, dataset="scannet", scene_name="scene0", question_type="route_planning",
                 question="Which turn?", options=["A. turn left", "B. turn right"],
                 ground_truth="B")]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = loaders.load_vsibench(str(path), str(tmp_path / "videos"), num_frames=4)
    assert [len(i["images"]) for i in items] == [4, 4]
    means = [float(f.mean()) for f in items[0]["images"]]
    assert means[0] < 30 and means[-1] > 150 and means == sorted(means)  # frames 0 .. 9 in order
    res = runner.aggregate(items, runner.run(Oracle(items), items))["vsibench"]
    assert res["categories"]["object_counting"]["score"] == 1.0
    assert res["summary"]["overall"] == 1.0


def test_mindcube_jsonl(tmp_path):
    (tmp_path / "imgs").mkdir()
    for k in range(2):
        (tmp_path / "imgs" / f"{k}.png").write_bytes(_png(k))
    rows = [{"id": "around_0001_q", "question": "Where is it? A. left B. right C. front D. back",
             "gt_answer": "C", "images": ["imgs/0.png", "imgs/1.png"]},
            {"id": "among_0002_q", "question": "Which? A. cube B. sphere", "gt_answer": "A",
             "images": ["imgs/1.png"]}]
    path = tmp_path / "MindCube_tinybench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = loaders.load_mindcube(str(path), str(tmp_path))
    assert [i["category"] for i in items] == ["around", "among"]
    assert items[0]["choices"] == ["A. left", "B. right", "C. front", "D. back"]
    res = runner.aggregate(items, runner.run(Oracle(items, as_letter=True), items))["mindcube"]
    assert res["summary"]["overall"] == 1.0
    rows[0]["images"] = ["imgs/missing.png"]
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="images not found"):
        loaders.load_mindcube(str(path), str(tmp_path))


def test_tasks_mirror_from_the_package(pkg):  # noqa: F811
    out, _, splits = pkg
    items = loaders.load_tasks(out)
    assert len(items) == len(splits["eval"]) and {i["suite"] for i in items} == {"tasks"}
    res = runner.aggregate(items, runner.run(Oracle(items), items))["tasks"]
    assert res["summary"]["reward"] == pytest.approx(1.0)
    assert res["summary"]["exact"] == 1.0
    assert all(e["chance"] is None for e in res["categories"].values())
