"""Loaders for the official benchmark files a user holds locally (nothing is downloaded).

Each returns items in the suite schema (``store.FIELDS``) that run through the same runner and
scoring as the procedural suites:

- :func:`load_sat` — Hugging Face ``array/SAT`` parquet files (columns ``image_bytes`` (a list of
  images: ``{"bytes", "path"}`` structs or raw bytes), ``question``, ``answers``,
  ``correct_answer``, ``question_type``). ``split="val"`` is the SAT-Synthesized pool (suite
  ``sat_synth``), ``split="test"`` SAT-Real (suite ``sat_real``); ``mindjourney_subset`` draws
  MindJourney's 500 questions (``random.seed(10); random.sample(questions, 500)`` over the split
  in file order).
- :func:`load_vsibench` — VSI-Bench's test parquet or JSONL (``id``, ``dataset``, ``scene_name``,
  ``question_type``, ``question``, ``options``, ``ground_truth``) plus the videos
  ``VIDEO_ROOT/<dataset>/<scene_name>.mp4``, from which ``num_frames`` frames are sampled
  uniformly (PyAV, the optional extra ``pip install 'w2v_jax[video]'``); suite ``vsibench``.
- :func:`load_mindcube` — ``MindCube_tinybench.jsonl`` (``id``, ``question`` with the options
  inline, ``gt_answer``, ``images``) plus its image folder; the setting comes from the id as in
  MindCube's ``get_setting_from_id``; suite ``mindcube``.
- :func:`load_tasks` — the ``eval`` split of a distillation package (the training-task mirror);
  suite ``tasks``.
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any, Sequence

import numpy as np


def _read_table(path: str) -> list[dict]:
    """Rows of a parquet file, a directory of parquet files (sorted) or a JSONL file."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".parquet"))
        if not files:
            raise ValueError(f"{path!r} holds no .parquet files")
        return [row for f in files for row in _read_table(f)]
    if not os.path.isfile(path):
        raise ValueError(f"benchmark file {path!r} does not exist")
    if path.endswith(".jsonl"):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"benchmark file {path!r}: expected .parquet, .jsonl or a directory")


def _need(row: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: missing columns {missing} (has {sorted(row)})")


def _sat_image(value: Any):
    return (value.get("bytes") or value.get("path")) if isinstance(value, dict) else value


def load_sat(path: str, split: str = "test") -> list[dict]:
    """SAT items of one split's parquet file(s) (``split`` names the suite: test -> sat_real,
    val -> sat_synth)."""
    suites = {"test": "sat_real", "val": "sat_synth"}
    if split not in suites:
        raise ValueError(f"split must be 'test' (SAT-Real) or 'val' (SAT-Synthesized), got "
                         f"{split!r}")
    items = []
    for i, row in enumerate(_read_table(path)):
        _need(row, ("image_bytes", "question", "answers", "correct_answer", "question_type"),
              f"SAT row {i}")
        choices = [str(c) for c in row["answers"]]
        items.append(dict(id=f"{suites[split]}-{i:05d}", suite=suites[split],
                          category=str(row["question_type"]),
                          images=[_sat_image(im) for im in row["image_bytes"]],
                          question=str(row["question"]), choices=choices,
                          answer=str(row["correct_answer"]), meta={"database_idx": i}))
    return items


def mindjourney_subset(items: Sequence[dict], k: int = 500, seed: int = 10) -> list[dict]:
    """MindJourney's subset: ``random.seed(seed); random.sample(items, k)``."""
    return random.Random(seed).sample(list(items), k=min(int(k), len(items)))


def sample_frames(video_path: str, num_frames: int) -> list[np.ndarray]:
    """``num_frames`` RGB frames (H, W, 3) uint8 at ``linspace(0, n - 1, num_frames)`` rounded."""
    try:
        import av
    except ImportError as err:
        raise ValueError("reading VSI-Bench videos needs PyAV: pip install 'w2v_jax[video]'"
                         ) from err
    if not os.path.isfile(video_path):
        raise ValueError(f"video {video_path!r} does not exist")
    with av.open(video_path) as container:
        total = sum(1 for _ in container.decode(video=0))
    if total == 0:
        raise ValueError(f"video {video_path!r} has no frames")
    wanted = np.linspace(0, total - 1, int(num_frames)).round().astype(int)
    keep = {int(f) for f in wanted}
    frames = {}
    with av.open(video_path) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in keep:
                frames[k] = frame.to_ndarray(format="rgb24")
    return [frames[int(f)] for f in wanted]


def load_vsibench(path: str, video_root: str, num_frames: int = 16) -> list[dict]:
    """VSI-Bench items; frames are decoded once per video."""
    cache: dict = {}
    items = []
    for i, row in enumerate(_read_table(path)):
        _need(row, ("dataset", "scene_name", "question_type", "question", "ground_truth"),
              f"VSI-Bench row {i}")
        video = os.path.join(video_root, str(row["dataset"]), f"{row['scene_name']}.mp4")
        if video not in cache:
            cache[video] = sample_frames(video, num_frames)
        options = row.get("options")
        items.append(dict(id=f"vsibench-{row.get('id', i)}", suite="vsibench",
                          category=str(row["question_type"]), images=list(cache[video]),
                          question=str(row["question"]),
                          choices=[str(o) for o in options] if options is not None else [],
                          answer=str(row["ground_truth"]),
                          meta={"dataset": str(row["dataset"]),
                                "scene_name": str(row["scene_name"])}))
    return items


def mindcube_setting(item_id: str) -> str:
    """MindCube's ``get_setting_from_id``: around / rotation / translation / among / other."""
    low = (item_id or "").lower()
    for name in ("around", "rotation", "translation", "among"):
        if name in low:
            return name
    return "other"


_OPTION = re.compile(r"(?:^|\s)([A-E])\.\s+(.*?)(?=\s+[A-E]\.\s|$)", re.S)


def load_mindcube(path: str, image_root: str) -> list[dict]:
    """MindCube items of a JSONL file; image paths are resolved against ``image_root``."""
    items = []
    for i, row in enumerate(_read_table(path)):
        _need(row, ("id", "question", "gt_answer", "images"), f"MindCube row {i}")
        choices = [f"{m.group(1)}. {m.group(2).strip()}"
                   for m in _OPTION.finditer(str(row["question"]))]
        images = [p if os.path.isabs(p) else os.path.join(image_root, p) for p in row["images"]]
        missing = [p for p in images if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"MindCube row {i} ({row['id']}): images not found: {missing[:3]}")
        items.append(dict(id=str(row["id"]), suite="mindcube", category=mindcube_setting(
            str(row["id"])), images=images, question=str(row["question"]), choices=choices,
            answer=str(row["gt_answer"]).strip(), meta={}))
    return items


def load_tasks(package_dir: str, split: str = "eval", max_items: int | None = None
               ) -> list[dict]:
    """Training-task mirror: the records of a distillation package's held-out split."""
    from w2v_jax.data.distill import decode_record, open_split

    source = open_split(package_dir, split)
    records = sorted((decode_record(source[k]) for k in range(len(source))),
                     key=lambda r: r["id"])
    items = [dict(id=f"tasks-{r['id']}", suite="tasks", category=r["task_type"],
                  images=r["images"], question=r["prompt"], choices=[], answer=r["answer"],
                  meta={"scene_id": r["scene_id"], "trajectory": r["trajectory"]})
             for r in records]
    return items[:max_items] if max_items else items
