"""Teacher runs -> detection + tracking -> QC -> A/D task records, per procedural scene.

One scene (`build_scene`):
  1. `sim.sample_scene(scene_seed)`; every trajectory kind of the room config once
     (`sim.clips.plan_clip`: the same collision-free start cameras and grids as the posed clips the
     world model is trained on).
  2. The source view is the true render at the start camera. The teacher (required; the seam of
     `supervision.teachers`: the renderer oracle or the world model) gives the views at the
     trajectory's key frames (the end of every action; the last one is the end of the trajectory).
     Views are stored as uint8; everything downstream sees exactly the stored pixels.
  3. QC (`qc.check_views`) on [source, key views]; a failing trajectory is dropped whole.
  4. Detection on the first and last frame: `detector="oracle"` reads the renderer's truth of the
     true render at the same camera (only meaningful with the renderer teacher);
     `detector="color"` runs `detect.ColorShapeDetector` on the stored images and links the frames
     with `detect.match_instances`. Degenerate boxes are dropped (`qc.filter_degenerate`).
  5. Records: A1 / A2 (single moves / turns), A3 (multi-step), D1-D4 (`tasks.build_object_records`)
     with the requested actions as ground truth. A4 needs a global true/false split (official:
     shuffle all candidates, even positions true), so a scene returns its A4 candidates and
     `label_a4` labels a whole split at packaging time.
  With `fidelity=True` and a non-oracle pipeline, D records are also built from the true renders
  with the oracle detector for the same trajectories (`oracle_records`); `label_fidelity`
  compares the two, and `agreement_rates` scores the detections against the oracle's.

Identifiers: scene_id = "%010d" % scene_seed; traj_id = "{scene_id}_{index:02d}" (the D-variant key
uses it, like the official trajectory directory name without "traj_"); a record's `images` are
real frame indices of its trajectory (0 and the last frame), `image_files` the PNG paths
"{scene_id}/{index:02d}_f{frame:03d}.png" relative to an image root.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from w2v_jax import actions as actions_lib
from w2v_jax import fileio
from w2v_jax.geometry import box_iou
from w2v_jax.sim import clips as clips_lib
from w2v_jax.sim import scene as scene_lib
from w2v_jax.sim.render import render_cameras
from w2v_jax.supervision import detect, qc, tasks
from w2v_jax.supervision.teachers import RENDERER, Teacher

DETECTORS = ("oracle", "color")
TASK_TYPES = ("A1", "A2", "A3", "A4", "D1", "D2", "D3", "D4")
SHARD_FILE = "scene.json"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Static options of a supervision build.

    clip: scenes, cameras and trajectories (`sim.clips.ClipConfig`: the same ones the posed clips
      of the world model use; its resolution / hfov / supersample are the rendered views'). With a
      world-model teacher, `clip.resolution` must be the model's image size.
    key_frames: ask the teacher for every key frame (else only the last view).
    detector: "oracle" (renderer truth) or "color" (images only); vocabulary: label words
      (`detect.VOCABULARIES`). filter: the official detection filter. qc: QC thresholds.
    fidelity: also build oracle D records from true renders when the pipeline is not the oracle.
    """

    clip: clips_lib.ClipConfig = clips_lib.ClipConfig(render_chunk=16)
    key_frames: bool = True
    detector: str = "oracle"
    vocabulary: str = "shape"
    filter: tasks.DetectionFilter = tasks.DetectionFilter()
    qc: qc.QCConfig = qc.QCConfig()
    fidelity: bool = True

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"BuildConfig.detector must be one of {DETECTORS}, got "
                             f"{self.detector!r}")
        if self.vocabulary not in detect.VOCABULARIES:
            raise ValueError(f"BuildConfig.vocabulary must be one of {detect.VOCABULARIES}, got "
                             f"{self.vocabulary!r}")


SCENE_STREAM = 0xD157  # `sim.clips.scene_seeds` stream of the distillation scenes


def scene_seeds(seed: int, num_scenes: int) -> list[int]:
    """`num_scenes` distinct scene seeds of a build with run `seed`: `sim.clips.scene_seeds` on
    stream `SCENE_STREAM`, so the distillation scenes differ from the posed clips a world model
    was trained on with the same --seed."""
    return clips_lib.scene_seeds(seed, num_scenes, stream=SCENE_STREAM)


def scene_id(scene_seed: int) -> str:
    return f"{int(scene_seed):010d}"


def to_uint8(views) -> np.ndarray:
    """Views as stored: uint8 kept, floats in [0, 1] rounded to uint8."""
    v = np.asarray(views)
    if v.dtype == np.uint8:
        return v
    return np.round(np.clip(v.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class TrajectoryPlan:
    """One trajectory of a scene: `c2w` (F, 4, 4) world poses of its stored frames `frame_ids`
    (0 = the source view, then the key frames the teacher is asked for)."""

    index: int
    trajectory: actions_lib.Trajectory
    c2w: np.ndarray
    frame_ids: list[int]


def plan_scene(scene_seed: int, config: BuildConfig) -> tuple[Any, list[TrajectoryPlan]]:
    """Step 1: the scene and every trajectory kind of the room config once, planned exactly as
    the posed clips (`sim.clips.plan_clip`: collision-free start cameras and grids)."""
    ccfg = config.clip
    scene = scene_lib.sample_scene(int(scene_seed), num_objects=tuple(ccfg.num_objects),
                                   max_objects=ccfg.max_objects)
    plans = []
    traj_rng = np.random.default_rng([int(scene_seed), 7])
    for index, traj in enumerate(actions_lib.sample_scene_trajectories(traj_rng, ccfg.trajectory)):
        traj, poses, keys = clips_lib.plan_clip(scene, int(scene_seed), index, traj.kind, ccfg)
        frame_ids = list(keys) if config.key_frames else [keys[0], keys[-1]]
        plans.append(TrajectoryPlan(index, traj, poses[frame_ids], [int(f) for f in frame_ids]))
    return scene, plans


def render_truth(scene, plans: Sequence[TrajectoryPlan], config: BuildConfig) -> list[dict]:
    """Step 2: true renders (rgb, instance, boxes, ...) of every plan's frames, all cameras of the
    scene in fixed-size chunks; one dict of numpy arrays with leading F per plan."""
    c = config.clip
    truth = render_cameras(scene, np.concatenate([p.c2w for p in plans]), c.K, c.resolution,
                           c.resolution, c.supersample, c.render_chunk)
    out, start = [], 0
    for p in plans:
        out.append({k: x[start:start + len(p.frame_ids)] for k, x in truth.items()})
        start += len(p.frame_ids)
    return out


def teacher_frames(teacher: Teacher, scene, plan: TrajectoryPlan, source: np.ndarray, K,
                   seed: int, key_frames: bool, traj_id: str) -> np.ndarray:
    """Step 3: the stored frames of a trajectory, uint8 (F, H, W, 3): the true source view, then
    the teacher's views at the key frames."""
    views = to_uint8(teacher.views(source, K, plan.trajectory, scene=scene,
                                   c2w_source=plan.c2w[0], seed=seed, key_frames=key_frames))
    want = (len(plan.frame_ids) - 1,) + source.shape
    if views.shape != want:
        raise ValueError(f"teacher {teacher.name!r} returned views of shape {views.shape}, "
                         f"expected {want} for trajectory {traj_id}")
    return np.concatenate([source[None], views])


def _detections(frames, first_render, last_render, oracle, color, config: BuildConfig):
    """Step 5: tracked detections of the first and last frame after QC of degenerate boxes;
    returns (first, last, number of dropped boxes)."""
    if config.detector == "oracle":
        first, last = oracle.detect(first_render), oracle.detect(last_render)
    else:
        first, last = detect.match_instances(color.detect(frames[0]), color.detect(frames[-1]))
    first, dropped_first = qc.filter_degenerate(first, config.qc)
    last, dropped_last = qc.filter_degenerate(last, config.qc)
    return first, last, len(dropped_first) + len(dropped_last)


def _object_records(acts, first, last, target_frame, traj_id, config):
    return tasks.build_object_records(acts, first, last, target_frame=target_frame,
                                      traj_id=traj_id, filt=config.filter)


def build_scene(scene_seed: int, config: BuildConfig, teacher: Teacher) -> dict:
    """All supervision of one scene (module doc) with `teacher` (`supervision.teachers`).
    Returns a JSON-able dict plus uint8 views:

      scene_id, scene_seed, teacher, detector,
      trajectories: [{traj_id, index, kind, actions (text), frame_ids, qc (reasons)}],
      views: {traj_id: uint8 (V + 1, H, W, 3)}  (source + teacher views, by frame_ids),
      records: A1-A3 and D1-D4 records (tasks.py format plus scene_id, trajectory, source,
        image_files), a4_candidates: [{actions, target_frame, traj_id, trajectory, image_files}],
      oracle_records: D records from true renders + the oracle (fidelity), or None,
      stats: {trajectories, qc_rejected, qc_reasons: {kind: n}, degenerate_boxes, detections,
        and with oracle records detector_vs_oracle (counts for `agreement_rates`)}.
    """
    oracle_teacher = teacher.name == RENDERER
    if config.detector == "oracle" and not oracle_teacher:
        raise ValueError("detector='oracle' reads the renderer's truth and only describes the "
                         "renderer teacher's views; use detector='color' with a model teacher")
    K = config.clip.K
    scene, plans = plan_scene(scene_seed, config)
    truths = render_truth(scene, plans, config)
    sid = scene_id(scene_seed)
    oracle = detect.OracleDetector(scene, config.vocabulary)
    color = detect.ColorShapeDetector(config.vocabulary)
    use_fidelity = config.fidelity and (not oracle_teacher or config.detector != "oracle")
    stats = {"trajectories": 0, "qc_rejected": 0, "qc_reasons": {}, "degenerate_boxes": 0,
             "detections": 0}
    if use_fidelity:
        stats["detector_vs_oracle"] = {k: 0.0 for k in AGREEMENT_KEYS}
    trajectories, views_out, records, a4_candidates = [], {}, [], []
    oracle_records = [] if use_fidelity else None
    seed_rng = random.Random(int(scene_seed))
    for plan, truth in zip(plans, truths):
        traj, index = plan.trajectory, plan.index
        traj_id = f"{sid}_{index:02d}"
        teacher_seed, template_seed = seed_rng.randrange(2**31), seed_rng.randrange(2**31)
        frames = teacher_frames(teacher, scene, plan, to_uint8(truth["rgb"][0]), K, teacher_seed,
                                config.key_frames, traj_id)
        views_out[traj_id] = frames
        # step 4: QC of the teacher's views; a failing trajectory is dropped whole
        reasons = qc.check_views(frames[0], frames[1:], config.qc)
        stats["trajectories"] += 1
        trajectories.append({"traj_id": traj_id, "index": index, "kind": traj.kind,
                             "actions": traj.text(), "frame_ids": plan.frame_ids, "qc": reasons})
        if reasons:
            stats["qc_rejected"] += 1
            for r in reasons:
                kind = qc.reason_kind(r)
                stats["qc_reasons"][kind] = stats["qc_reasons"].get(kind, 0) + 1
            continue
        first_render = {k: x[0] for k, x in truth.items()}
        last_render = {k: x[-1] for k, x in truth.items()}
        first, last, dropped = _detections(frames, first_render, last_render, oracle, color,
                                           config)
        stats["degenerate_boxes"] += dropped
        stats["detections"] += len(first) + len(last)
        # step 6: records (A1-A3 here, A4 candidates labelled per split by `label_a4`, D1-D4)
        target = plan.frame_ids[-1]
        acts = list(traj.actions)
        common = {"scene_id": sid, "trajectory": traj.text(), "source": teacher.name}
        motion, candidate = tasks.build_motion_record(acts, target_frame=target, traj_id=traj_id,
                                                      seed=template_seed)
        if candidate is not None:
            a4_candidates.append({"actions": traj.text(), "target_frame": target,
                                  "traj_id": traj_id, **common,
                                  "image_files": _files(sid, index, {"images": [0, target]})})
        for rec in [motion] + _object_records(acts, first, last, target, traj_id, config):
            if rec is not None:
                records.append({**rec, **common, "image_files": _files(sid, index, rec)})
        # step 7: fidelity — the same D records from true renders and the oracle detector
        if oracle_records is not None:
            o_first, _ = qc.filter_degenerate(oracle.detect(first_render), config.qc)
            o_last, _ = qc.filter_degenerate(oracle.detect(last_render), config.qc)
            for rec in _object_records(acts, o_first, o_last, target, traj_id, config):
                oracle_records.append({**rec, **common, "source": "renderer_oracle",
                                       "image_files": _files(sid, index, rec)})
            _count_agreement(stats["detector_vs_oracle"], [first, last], [o_first, o_last],
                             config.filter)
    return {
        "scene_id": sid,
        "scene_seed": int(scene_seed),
        "teacher": teacher.name,
        "detector": config.detector,
        "trajectories": trajectories,
        "views": views_out,
        "records": records,
        "a4_candidates": a4_candidates,
        "oracle_records": oracle_records,
        "stats": stats,
    }


AGREEMENT_KEYS = ("true", "found", "found_labeled", "found_iou_sum", "kept", "real",
                  "real_labeled")


def _count_agreement(counts: dict, preds, truths, filt: tasks.DetectionFilter) -> None:
    """Add the first/last-frame detections' agreement with the oracle to `counts`: recall side
    over the oracle objects the task filter keeps (matched by any detection, IoU >= 0.5),
    precision side over the detections the filter keeps (matched by any true object)."""
    kept = lambda dets: [[d for d in ds if filt.keeps(d)] for ds in dets]
    found = detect.detection_metrics(preds, kept(truths))
    real = detect.detection_metrics(kept(preds), truths)
    counts["true"] += found["true"]
    counts["found"] += found["matched"]
    counts["found_labeled"] += found["recall_labeled"] * found["true"]
    counts["found_iou_sum"] += found["mean_iou"] * found["matched"]
    counts["kept"] += real["predicted"]
    counts["real"] += real["matched"]
    counts["real_labeled"] += real["precision_labeled"] * real["predicted"]


def agreement_rates(counts: Mapping[str, float]) -> dict:
    """Rates from summed `_count_agreement` counts: recall (and with the right label), precision
    (and with the right label), mean IoU of the recall matches."""
    def ratio(a, b):
        return float(counts[a] / counts[b]) if counts[b] else 0.0
    return {"true_objects": int(counts["true"]), "kept_detections": int(counts["kept"]),
            "recall": ratio("found", "true"), "recall_labeled": ratio("found_labeled", "true"),
            "precision": ratio("real", "kept"), "precision_labeled": ratio("real_labeled", "kept"),
            "mean_iou": ratio("found_iou_sum", "found")}


def _files(sid: str, index: int, record: Mapping[str, Any]) -> list[str]:
    return [f"{sid}/{index:02d}_f{int(f):03d}.png" for f in record["images"]]


def label_a4(candidates: Sequence[Mapping[str, Any]], seed: int) -> list[dict]:
    """A4 records of a whole split: the official global labelling (`tasks.build_a4_set`: shuffle
    with `seed`, even positions true, odd false; false claims beyond the reward tolerance), with
    each candidate's scene_id / trajectory / source / image_files carried over."""
    by_traj = {c["traj_id"]: c for c in candidates}
    if len(by_traj) != len(candidates):
        raise ValueError("A4 candidates must have distinct traj_id values")
    plain = [{"actions": actions_lib.parse_actions(c["actions"]), "target_frame":
              c["target_frame"], "traj_id": c["traj_id"]} for c in candidates]
    out = []
    for rec in tasks.build_a4_set(plain, seed):
        cand = by_traj[rec["meta"]["traj_id"]]
        out.append({**rec, "scene_id": cand["scene_id"], "trajectory": cand["trajectory"],
                    "source": cand["source"], "image_files": list(cand["image_files"])})
    return out


# ----------------------------------------------------------------------------- shards
def shard_dir(shards_root: str, scene_seed: int) -> str:
    return os.path.join(shards_root, f"scene_{scene_id(scene_seed)}")


def is_finished(shards_root: str, scene_seed: int) -> bool:
    """A shard exists only once complete (it is renamed into place as a whole)."""
    return os.path.isfile(os.path.join(shard_dir(shards_root, scene_seed), SHARD_FILE))


def write_shard(shards_root: str, result: Mapping[str, Any]) -> str:
    """Write one `build_scene` result atomically: PNG frames "{index:02d}_f{frame:03d}.png" and
    scene.json (everything but the pixels) in a temporary directory renamed into
    `shards_root/scene_{scene_id}`. Returns that path."""
    from PIL import Image

    final = shard_dir(shards_root, result["scene_seed"])
    with fileio.atomic_dir(final) as tmp:
        for traj in result["trajectories"]:
            frames = result["views"][traj["traj_id"]]
            for frame, image in zip(traj["frame_ids"], frames):
                Image.fromarray(np.asarray(image, np.uint8)).save(
                    os.path.join(tmp, f"{traj['index']:02d}_f{int(frame):03d}.png"))
        body = {k: v for k, v in result.items() if k != "views"}
        with open(os.path.join(tmp, SHARD_FILE), "w") as f:
            json.dump(body, f)
    return final


def read_shard(path: str) -> dict:
    """scene.json of a shard directory (records, candidates, stats; no pixels)."""
    with open(os.path.join(path, SHARD_FILE)) as f:
        return json.load(f)


def build_shards(
    shards_root: str,
    seeds: Iterable[int],
    config: BuildConfig,
    teacher: Teacher,
    progress: bool = True,
) -> dict:
    """`build_scene` + `write_shard` for every seed whose shard is missing (resumable: finished
    scenes are skipped). Returns {"built": n, "skipped": n, "shards": [paths in seed order]}."""
    from tqdm.auto import tqdm

    seeds = [int(s) for s in seeds]
    fileio.sweep_stale(shards_root)  # temporaries of a killed run
    todo = [s for s in seeds if not is_finished(shards_root, s)]
    with tqdm(total=len(seeds), initial=len(seeds) - len(todo), desc="scenes", unit="scene",
              disable=not progress) as bar:
        for s in todo:
            write_shard(shards_root, build_scene(s, config, teacher))
            bar.update(1)
    return {"built": len(todo), "skipped": len(seeds) - len(todo),
            "shards": [shard_dir(shards_root, s) for s in seeds]}


BUILD_FILE = "build.json"


def build_dataset(root: str, seeds: Sequence[int], config: BuildConfig, teacher: Teacher,
                  package_config=None, *, options: Mapping[str, Any] | None = None,
                  progress: bool = True) -> dict:
    """The whole distillation set under ``root``: BUILD_FILE (``options``, written once: it marks
    the directory as a build's), shards/ (missing scenes only: resumable) and package/
    (``supervision.package.write_package``, rebuilt atomically). Returns the package
    statistics."""
    from w2v_jax.supervision import package

    package_config = package_config or package.PackageConfig()
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, BUILD_FILE)
    if not os.path.exists(marker):
        fileio.atomic_write_json(marker, dict(options or {}))
    done = build_shards(os.path.join(root, "shards"), seeds, config, teacher, progress=progress)
    print(f"scenes built {done['built']}, skipped (already finished) {done['skipped']}")
    return package.write_package(
        done["shards"], os.path.join(root, "package"), package_config,
        extra_stats={"build": dict(options or {}), "num_scenes": len(seeds)})


# ----------------------------------------------------------------------------- fidelity
def _same_object(a: Mapping[str, Any], b: Mapping[str, Any], min_iou: float,
                 check_last: bool) -> bool:
    ma, mb = a["meta"], b["meta"]
    if box_iou(ma["box_first"], mb["box_first"]) < min_iou:
        return False
    return not check_last or box_iou(ma["box_last"], mb["box_last"]) >= min_iou


def label_fidelity(
    records_wm: Sequence[Mapping[str, Any]],
    records_oracle: Sequence[Mapping[str, Any]],
    *,
    min_iou: float = 0.5,
) -> dict:
    """Agreement of D-task labels built from teacher views (world model and/or image detector)
    with those built from true renders + the oracle detector for the SAME trajectories.

    A record pair matches when it has the same traj_id and task type and first-frame boxes with
    IoU >= min_iou (D4: the second-frame boxes too), i.e. it asks about the same object. Per task:
    {"records": n (teacher), "oracle_records": n, "matched": n, "coverage": matched / oracle
    records, "label_agreement": matched pairs naming the object alike} and the agreement of the
    answers over matched pairs: D1 "mean_iou" of the answer boxes (and "iou_at_0.5", the
    fraction >= 0.5), D2 / D4 "accuracy" of disappears / same, D3 "exact" (identical actions).
    """
    oracle_by = {}
    for rec in records_oracle:
        oracle_by.setdefault((rec["meta"]["traj_id"], rec["task_type"]), []).append(rec)
    out = {}
    for task in ("D1", "D2", "D3", "D4"):
        mine = [r for r in records_wm if r["task_type"] == task]
        theirs = [r for r in records_oracle if r["task_type"] == task]
        agree, labels, used = [], [], set()
        for rec in mine:
            for cand in oracle_by.get((rec["meta"]["traj_id"], task), []):
                if id(cand) in used or not _same_object(rec, cand, min_iou, task == "D4"):
                    continue
                used.add(id(cand))
                labels.append(float(rec["meta"]["label"] == cand["meta"]["label"]))
                if task == "D1":
                    agree.append(box_iou(rec["meta"]["box_last"], cand["meta"]["box_last"]))
                elif task == "D2":
                    agree.append(float(rec["meta"]["disappears"] == cand["meta"]["disappears"]))
                elif task == "D3":
                    agree.append(float(actions_lib.parse_actions(rec["meta"]["actions"])
                                       == actions_lib.parse_actions(cand["meta"]["actions"])))
                else:
                    agree.append(float(rec["meta"]["same"] == cand["meta"]["same"]))
                break
        entry = {"records": len(mine), "oracle_records": len(theirs), "matched": len(agree),
                 "coverage": len(agree) / len(theirs) if theirs else 0.0,
                 "label_agreement": float(np.mean(labels)) if labels else 0.0}
        value = float(np.mean(agree)) if agree else 0.0
        if task == "D1":
            entry["mean_iou"] = value
            entry["iou_at_0.5"] = float(np.mean([a >= 0.5 for a in agree])) if agree else 0.0
        elif task == "D3":
            entry["exact"] = value
        else:
            entry["accuracy"] = value
        out[task] = entry
    return out
