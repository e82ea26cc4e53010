"""Package built scene shards into the distillation set: SFT / GRPO / eval splits, TFDS + JSONL.

Splits (paper.md §1 stage 2d, plus a held-out eval split):
  sft   every record of the training scenes, shuffled with `seed` (official: seed 42);
  grpo  after a second shuffle of the SFT pool, the first `grpo_per_task` records of each task
        type (official: 125 x 8 = 1000); a subset of sft, as in the official pipeline;
  eval  every record of the held-out scenes (`eval_fraction` of the scenes, chosen by seed).
A4 records are labelled per split over all its candidates (`build.label_a4`: the official global
shuffle, even positions true), so each split's A4 is balanced.

Layout written under `out_dir` (atomically: built in a temporary sibling directory, renamed;
every `image_files` entry must resolve inside its scene's shard and be a complete PNG):
  world2vlm_distill/1.0.0/    TFDS array_record dataset with splits sft / grpo / eval; fields:
      id, task_type, prompt (user text with <image> tags), answer, messages (JSON: the Qwen chat
      [{"role": "user", ...}, {"role": "assistant", ...}]), ground_truth (JSON {task_type,
      answer}, what `reward.compute_score` reads), images (PNG bytes, one per <image>),
      image_files (JSON list of paths under images/), trajectory (action text), source (teacher),
      scene_id, traj_id, meta (JSON of the builder's meta).
  images/<scene_id>/<index>_f<frame>.png     every referenced frame once.
  sft.jsonl    ms-swift {task_type, messages, images: ["images/..."]}
  grpo.jsonl   EasyR1 {prompt, answer: '{"task_type": T, "answer": A}', images, task_type}
  eval.jsonl   EasyR1 format, like grpo.jsonl (scorable by the reward).
  stats.json   `compute_stats`.
Read with `tfds.data_source("world2vlm_distill", data_dir=out_dir, split=...)` or
`w2v_jax.data.distill`.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from w2v_jax import fileio
from w2v_jax.data.distill import DATASET_NAME, VERSION
from w2v_jax.sim.clips import split_scenes
from w2v_jax.supervision import build
from w2v_jax.supervision.reward import ground_truth_json

SPLITS = ("sft", "grpo", "eval")
IMAGE_DIR = "images"
BINARY_LABELS = {"A4": ("claim_true", "true", "false"), "D2": ("disappears", "yes", "no"),
                 "D4": ("same", "yes", "no")}


@dataclasses.dataclass(frozen=True)
class PackageConfig:
    """seed: shuffles, A4 labelling and the eval-scene choice; grpo_per_task: GRPO records per
    task type; eval_fraction: share of scenes held out (0 = no eval split); jsonl: also write the
    JSONL exports and the images/ directory; tasks: keep only these task types in every split
    (empty: all; the forward-only / inverse-only ablations)."""

    seed: int = 42
    grpo_per_task: int = 125
    eval_fraction: float = 0.1
    jsonl: bool = True
    tasks: tuple[str, ...] = ()

    def __post_init__(self):
        if int(self.grpo_per_task) != self.grpo_per_task or self.grpo_per_task < 1:
            raise ValueError(f"grpo_per_task must be an integer >= 1, got {self.grpo_per_task!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        unknown = sorted(set(self.tasks) - set(build.TASK_TYPES))
        if unknown:
            raise ValueError(f"tasks has unknown task types {unknown}; allowed {build.TASK_TYPES}")
        object.__setattr__(self, "tasks", tuple(self.tasks))


# ----------------------------------------------------------------------------- record formats
def chat_messages(record: Mapping[str, Any]) -> list[dict]:
    """The Qwen chat of a record: user prompt (with <image> tags), assistant answer."""
    return [{"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["answer"]}]


def image_paths(record: Mapping[str, Any]) -> list[str]:
    return [f"{IMAGE_DIR}/{f}" for f in record["image_files"]]


def sft_json(record: Mapping[str, Any]) -> dict:
    """ms-swift SFT line: {task_type, messages, images} (paths relative to the package)."""
    return {"task_type": record["task_type"], "messages": chat_messages(record),
            "images": image_paths(record)}


def grpo_json(record: Mapping[str, Any]) -> dict:
    """EasyR1 line: {prompt, answer (JSON {task_type, answer}), images, task_type}."""
    return {"prompt": record["prompt"],
            "answer": ground_truth_json(record["task_type"], record["answer"]),
            "images": image_paths(record), "task_type": record["task_type"]}


def _with_ids(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    counts: dict = collections.Counter()
    out = []
    for rec in records:
        key = (rec["meta"]["traj_id"], rec["task_type"])
        out.append({**rec, "id": f"{key[0]}_{key[1]}_{counts[key]}"})
        counts[key] += 1
    return out


# ----------------------------------------------------------------------------- splits
def load_shards(shard_dirs: Sequence[str]) -> list[dict]:
    """`build.read_shard` of every directory, with its path under "path"."""
    return [{**build.read_shard(d), "path": d} for d in shard_dirs]


def make_splits(shards: Sequence[Mapping[str, Any]], config: PackageConfig = PackageConfig()
                ) -> dict[str, list[dict]]:
    """{"sft", "grpo", "eval"} record lists (module doc) from loaded shards."""
    if not shards:
        raise ValueError("no scene shards to package")
    seeds = [int(s["scene_seed"]) for s in shards]
    train_seeds, eval_seeds = split_scenes(seeds, config.eval_fraction, config.seed)
    by_seed = {int(s["scene_seed"]): s for s in shards}

    def records_of(seed_list, a4_seed):
        recs, cands = [], []
        for s in seed_list:
            recs.extend(by_seed[s]["records"])
            cands.extend(by_seed[s]["a4_candidates"])
        out = _with_ids(recs + build.label_a4(cands, a4_seed))
        return [r for r in out if not config.tasks or r["task_type"] in config.tasks]

    rng = random.Random(config.seed)
    sft = records_of(train_seeds, config.seed)
    rng.shuffle(sft)
    pool = list(sft)
    rng.shuffle(pool)
    taken: dict = collections.Counter()
    grpo = []
    for rec in pool:
        if taken[rec["task_type"]] < config.grpo_per_task:
            taken[rec["task_type"]] += 1
            grpo.append(rec)
    evals = records_of(eval_seeds, config.seed + 1)
    random.Random(config.seed + 2).shuffle(evals)
    return {"sft": sft, "grpo": grpo, "eval": evals}


# ----------------------------------------------------------------------------- statistics
def split_stats(records: Sequence[Mapping[str, Any]]) -> dict:
    """Records per task, label balance of the binary tasks, D-template variant counts."""
    per_task = collections.Counter(r["task_type"] for r in records)
    balance = {}
    for task, (key, pos, neg) in BINARY_LABELS.items():
        values = [bool(r["meta"][key]) for r in records if r["task_type"] == task]
        balance[task] = {pos: sum(values), neg: len(values) - sum(values)}
    variants = {}
    for task in ("D2", "D3", "D4"):
        c = collections.Counter(r["meta"]["variant"] for r in records if r["task_type"] == task)
        variants[task] = {str(k): c[k] for k in sorted(c)}
    return {"records": len(records),
            "per_task": {t: per_task.get(t, 0) for t in build.TASK_TYPES},
            "label_balance": balance, "d_variants": variants}


def compute_stats(shards: Sequence[Mapping[str, Any]], splits: Mapping[str, Sequence[Mapping]],
                  config: PackageConfig = PackageConfig()) -> dict:
    """Build statistics: scenes, trajectories, QC rejections by kind, degenerate boxes,
    detections, per-split record statistics and, when the shards carry oracle records, the label
    fidelity of the D tasks (`build.label_fidelity`) and the agreement of the detections with the
    oracle on the first / last frames (`build.agreement_rates`)."""
    qc_reasons: dict = collections.Counter()
    for s in shards:
        qc_reasons.update(s["stats"]["qc_reasons"])
    eval_ids = {r["scene_id"] for r in splits["eval"]}
    out = {
        "teacher": sorted({s["teacher"] for s in shards}),
        "detector": sorted({s["detector"] for s in shards}),
        "scenes": {"total": len(shards),
                   "eval": sum(1 for s in shards if s["scene_id"] in eval_ids)},
        "trajectories": sum(s["stats"]["trajectories"] for s in shards),
        "qc_rejected": sum(s["stats"]["qc_rejected"] for s in shards),
        "qc_reasons": dict(sorted(qc_reasons.items())),
        "degenerate_boxes": sum(s["stats"]["degenerate_boxes"] for s in shards),
        "detections": sum(s["stats"]["detections"] for s in shards),
        "package": dataclasses.asdict(config),
        "splits": {name: split_stats(recs) for name, recs in splits.items()},
    }
    if all(s.get("oracle_records") is not None for s in shards):
        mine = [r for s in shards for r in s["records"]]
        theirs = [r for s in shards for r in s["oracle_records"]]
        out["label_fidelity"] = build.label_fidelity(mine, theirs)
        counts = {k: sum(s["stats"]["detector_vs_oracle"][k] for s in shards)
                  for k in build.AGREEMENT_KEYS}
        out["detector_vs_oracle"] = build.agreement_rates(counts)
    return out


# ----------------------------------------------------------------------------- writing
def _features():
    from w2v_jax.data import array_record as ar

    text = ar.text_feature
    return {
        "id": text(), "task_type": text(), "prompt": text(), "answer": text(),
        "messages": text(), "ground_truth": text(),
        "images": ar.tensor_feature((None,), np.object_), "image_files": text(),
        "trajectory": text(), "source": text(), "scene_id": text(), "traj_id": text(),
        "meta": text(),
    }


def _example(record: Mapping[str, Any], png: Mapping[str, bytes]) -> dict:
    return {
        "id": record["id"],
        "task_type": record["task_type"],
        "prompt": record["prompt"],
        "answer": record["answer"],
        "messages": json.dumps(chat_messages(record), ensure_ascii=False),
        "ground_truth": ground_truth_json(record["task_type"], record["answer"]),
        "images": np.array([png[f] for f in record["image_files"]], dtype=object),
        "image_files": json.dumps(image_paths(record)),
        "trajectory": record["trajectory"],
        "source": record["source"],
        "scene_id": record["scene_id"],
        "traj_id": record["meta"]["traj_id"],
        "meta": json.dumps(record["meta"], ensure_ascii=False),
    }


def _read_frame(shard_of: Mapping[str, str], name: Any, record: Mapping[str, Any]) -> bytes:
    """PNG bytes of an `image_files` entry "<scene_id>/<file>": the file must resolve inside
    that scene's shard and be a complete PNG; else ValueError naming the record."""
    what = f"record {record['id']!r} image_files entry {name!r}"
    sid, _, rel = str(name).partition("/")
    if sid not in shard_of:
        raise ValueError(f"{what}: no shard of scene {sid!r}")
    path = fileio.resolve_inside(shard_of[sid], rel, what)
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # every chunk's CRC up to IEND: a truncated file fails
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what}: {path} is not a complete PNG ({e})") from e
    return data


def _write_jsonl(path: str, rows) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_package(
    shard_dirs: Sequence[str],
    out_dir: str,
    config: PackageConfig = PackageConfig(),
    *,
    extra_stats: Mapping[str, Any] | None = None,
) -> dict:
    """Package the shards into `out_dir` (module doc); replaces an existing package atomically.
    Returns the statistics (also written to stats.json, merged with `extra_stats`)."""
    from w2v_jax.data import array_record as ar

    shards = load_shards(shard_dirs)
    splits = make_splits(shards, config)
    stats = {**compute_stats(shards, splits, config), **dict(extra_stats or {})}
    shard_of = {s["scene_id"]: s["path"] for s in shards}
    png = {}
    for recs in splits.values():
        for r in recs:
            for f in r["image_files"]:
                if f not in png:
                    png[f] = _read_frame(shard_of, f, r)
    files = sorted(png)

    with fileio.atomic_dir(out_dir) as tmp:
        present = {name: recs for name, recs in splits.items() if recs}
        ar.write_dataset(
            tmp, DATASET_NAME, _features(),
            {name: [_example(r, png) for r in recs] for name, recs in present.items()},
            version=VERSION,
            description="World2VLM distillation set (w2v_jax.supervision.package).")
        if config.jsonl:
            for f in files:
                path = fileio.resolve_inside(os.path.join(tmp, IMAGE_DIR), f, f"image {f!r}")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(png[f])
            _write_jsonl(os.path.join(tmp, "sft.jsonl"), (sft_json(r) for r in splits["sft"]))
            _write_jsonl(os.path.join(tmp, "grpo.jsonl"), (grpo_json(r) for r in splits["grpo"]))
            _write_jsonl(os.path.join(tmp, "eval.jsonl"), (grpo_json(r) for r in splits["eval"]))
        with open(os.path.join(tmp, "stats.json"), "w") as f:
            json.dump(stats, f, indent=1)
    return stats
