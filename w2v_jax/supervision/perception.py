"""The base VLM's static perception set: single rendered views (and view pairs) of procedural rooms
with questions about what one view shows. No camera motion anywhere: every question is answered
from one still view (or, for ``which_image``, by comparing two unrelated still views).

Tasks (answer formats of the eval suites, so the base knows the formats before post-training):
  objects         free text  "Which objects are in the image? List them from left to right."
                             -> "red cube, blue sphere" (left to right by image position)
  grounding       free text  box of a named object -> "[x1, y1, x2, y2]" (integers, 0-1000)
  counting        free text  "How many cubes ...?" -> "2" (a single number)
  existence       yes / no   "Is there a red cube in the image?"
  left_right      2 options  SAT's "Choose between the following options: left, or right"
  nearer          2 options  which of two named objects is closer to the camera
  nearest_choice  A-D        VSI-Bench's letter format: which object is closest to the camera
  which_image     2 options  two views: "Which image shows the X?" the first / the second image
  statement       2 options  "Which statement about the image is true?" between two sentences
                             (one relation above, true and flipped): SAT's long options, copied
                             whole into the answer

Geometry (DESIGN.md conventions): an object is *visible* in a view when its instance mask covers
at least ``min_visible_frac`` of the pixels; a question whose answer depends on an object covering
fewer (but more than zero) pixels is not asked (ambiguous). Left / right compares the horizontal
image coordinate x/z of the object centres in the OpenCV camera frame (at least ``lr_margin``
apart); nearer compares the Euclidean camera-to-centre distances (ratio at least ``near_ratio``).

Scenes use ``sim.clips.scene_seeds(seed, n, stream=SCENE_STREAM)``: uint32 seeds on a stream of
their own, so they differ from the posed clips (stream None) and the distillation scenes
(``supervision.build.SCENE_STREAM``) built with the same run seed; the eval suites draw from
``[2**32, 2**33)``. Output: scene shards in ``supervision.build``'s shard format (one directory per
scene, renamed into place whole; resumable), packaged by ``supervision.package.write_package``
into the same TFDS layout as the distillation set, so ``data.distill.sft_pipeline`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from w2v_jax import fileio
from w2v_jax.sim import clips as clips_lib
from w2v_jax.sim import render_cameras
from w2v_jax.sim.render import RenderConfig
from w2v_jax.sim import scene as scene_lib
from w2v_jax.supervision import build
from w2v_jax.supervision.templates import box_text

BUILD_FILE = "build.json"  # the options of a build directory (marks it as this builder's)
SCENE_STREAM = 0xBA5E  # `sim.clips.scene_seeds` stream of the perception scenes
TASKS = ("objects", "grounding", "counting", "existence", "left_right", "nearer",
         "nearest_choice", "which_image", "statement")
LETTERS = "ABCD"
# the eval suites' answer phrasings (w2v_jax.eval.formats; a test keeps the two equal)
SAT_OPTIONS = " Choose between the following options: "
SHORT_ANSWER = "Please answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
IMAGES = ("the first image", "the second image")


@dataclasses.dataclass(frozen=True)
class PerceptionConfig:
    """resolution: square view side (px); hfov_deg: field of view; supersample: anti-aliasing rays
    per pixel side; views_per_scene: still cameras per scene (even: views 2i, 2i+1 pair up for
    which_image); num_objects / max_objects: objects per scene; min_visible_frac: share of the
    pixels an object must cover to count as visible; lr_margin: minimum |x/z| gap for left/right;
    near_ratio: minimum distance ratio for nearer / nearest_choice."""

    resolution: int = 64
    hfov_deg: float = 90.0
    supersample: int = 2
    views_per_scene: int = 4
    num_objects: tuple[int, int] = (3, 10)
    max_objects: int = 10
    min_visible_frac: float = 0.005
    lr_margin: float = 0.15
    near_ratio: float = 1.25

    def __post_init__(self):
        for name in ("resolution", "supersample", "views_per_scene", "max_objects"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"PerceptionConfig.{name} must be a positive integer, got {v!r}")
        if self.views_per_scene % 2:
            raise ValueError("PerceptionConfig.views_per_scene must be even (views pair up for "
                             f"which_image), got {self.views_per_scene}")
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"PerceptionConfig.hfov_deg must be in (0, 180), got {self.hfov_deg}")
        if not 0.0 < self.min_visible_frac < 1.0:
            raise ValueError("PerceptionConfig.min_visible_frac must be in (0, 1), got "
                             f"{self.min_visible_frac}")
        if self.near_ratio < 1.0 or self.lr_margin < 0.0:
            raise ValueError(f"PerceptionConfig: near_ratio >= 1 and lr_margin >= 0 needed, got "
                             f"{self.near_ratio}, {self.lr_margin}")

    @property
    def view(self) -> RenderConfig:
        """The rendered views' settings (``sim.render.RenderConfig``: K, visibility pixels)."""
        return RenderConfig(self.resolution, self.hfov_deg, self.supersample,
                            self.min_visible_frac)

    @property
    def K(self) -> np.ndarray:
        return self.view.K

    @property
    def min_pixels(self) -> int:
        return self.view.min_pixels

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def scene_seeds(seed: int, num_scenes: int) -> list[int]:
    """The perception scenes of run ``seed`` (module doc)."""
    return clips_lib.scene_seeds(seed, num_scenes, stream=SCENE_STREAM)


# ----------------------------------------------------------------------------- prompts
def sat_question(question: str, options: Sequence[str]) -> str:
    """SAT's two-option phrasing (``eval.formats.sat_text``)."""
    return question + SAT_OPTIONS + ", or ".join(options)


def letter_question(question: str, options: Sequence[str]) -> str:
    """VSI-Bench's multiple-choice phrasing: lettered options, then the letter instruction."""
    lines = [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join([question, "Options:", *lines, LETTER_ANSWER])


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


# ----------------------------------------------------------------------------- one view
@dataclasses.dataclass(frozen=True)
class View:
    """What one still camera sees, per valid object (in slot order): names, shapes (str),
    pixels (visible mask pixels), centre_cam (N, 3) centres in the OpenCV camera frame, box (N, 4)
    0-1000 modal boxes; plus the camera c2w (4, 4) and the visibility threshold."""

    names: list
    shapes: list
    pixels: np.ndarray
    centre_cam: np.ndarray
    box: np.ndarray
    c2w: np.ndarray
    min_pixels: int

    @property
    def clear(self) -> np.ndarray:
        return self.pixels >= self.min_pixels

    @property
    def ambiguous(self) -> np.ndarray:
        return (self.pixels > 0) & ~self.clear

    @property
    def image_x(self) -> np.ndarray:
        """Horizontal image coordinate x/z of each centre (tan of the bearing; right positive)."""
        z = np.maximum(self.centre_cam[:, 2], 1e-6)
        return self.centre_cam[:, 0] / z

    @property
    def distance(self) -> np.ndarray:
        return np.linalg.norm(self.centre_cam, axis=1)


def view_of(scene, render: Mapping[str, np.ndarray], index: int, c2w, min_pixels: int) -> View:
    slots = np.flatnonzero(np.asarray(scene.valid))
    return View(names=scene_lib.object_names(scene),
                shapes=[scene_lib.SHAPES[int(scene.type[k])] for k in slots],
                pixels=np.asarray(render["visible_pixels"][index])[slots].astype(int),
                centre_cam=np.asarray(render["center_cam"][index], np.float64)[slots],
                box=np.asarray(render["box"][index])[slots].astype(int),
                c2w=np.asarray(c2w, np.float64), min_pixels=min_pixels)


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _objects(view: View, rng, config) -> dict | None:
    if view.ambiguous.any() or not view.clear.any():
        return None
    order = sorted(np.flatnonzero(view.clear), key=lambda k: view.image_x[k])
    return dict(prompt="Which objects are in the image? List them from left to right.",
                answer=", ".join(view.names[k] for k in order), objects=[view.names[k]
                                                                         for k in order])


def _grounding(view: View, rng, config) -> dict | None:
    clear = np.flatnonzero(view.clear)
    if not len(clear):
        return None
    k = int(_pick(rng, clear))
    return dict(prompt=f"Output the bounding box of the {view.names[k]} in the image as "
                       "[x1, y1, x2, y2] with integer coordinates from 0 to 1000.",
                answer=box_text(view.box[k]), objects=[view.names[k]])


def _counting(view: View, rng, config) -> dict | None:
    shapes = [s for s in scene_lib.SHAPES
              if not any(view.ambiguous[k] for k, t in enumerate(view.shapes) if t == s)]
    if not shapes:
        return None
    shape = _pick(rng, shapes)
    n = sum(1 for k, t in enumerate(view.shapes) if t == shape and view.clear[k])
    return dict(prompt=f"How many {_plural(shape)} are there in the image? {SHORT_ANSWER}",
                answer=str(n), objects=[], shape=shape)


def _existence(view: View, rng, config) -> dict | None:
    present = [view.names[k] for k in np.flatnonzero(view.clear)]
    unseen = [view.names[k] for k in np.flatnonzero(view.pixels == 0)]
    absent = [f"{c} {s}" for c in scene_lib.COLORS for s in scene_lib.SHAPES
              if not any(n.endswith(f"{c} {s}") for n in view.names)]
    want_yes = bool(rng.integers(2))
    if want_yes and present:
        name, answer = _pick(rng, present), "yes"
    else:
        pool = unseen + absent if rng.integers(2) or not unseen else unseen
        name, answer = _pick(rng, pool), "no"
    return dict(prompt=f"Is there a {name} in the image? Answer yes or no.", answer=answer,
                objects=[name])


def _two_clear(view: View, rng, ok) -> tuple[int, int] | None:
    clear = np.flatnonzero(view.clear)
    pairs = [(int(a), int(b)) for a in clear for b in clear if a != b and ok(a, b)]
    return _pick(rng, pairs) if pairs else None


def _left_right(view: View, rng, config) -> dict | None:
    x = view.image_x
    pair = _two_clear(view, rng, lambda a, b: abs(x[a] - x[b]) >= config.lr_margin)
    if pair is None:
        return None
    a, b = pair
    answer = "left" if x[a] < x[b] else "right"
    options = ["left", "right"] if rng.integers(2) else ["right", "left"]
    q = f"Is the {view.names[a]} to the left or to the right of the {view.names[b]}?"
    return dict(prompt=sat_question(q, options), answer=answer, choices=options,
                objects=[view.names[a], view.names[b]])


def _nearer(view: View, rng, config) -> dict | None:
    d = view.distance
    pair = _two_clear(view, rng, lambda a, b: max(d[a], d[b]) >= config.near_ratio
                      * min(d[a], d[b]))
    if pair is None:
        return None
    a, b = (view.names[k] for k in pair)
    answer = a if d[pair[0]] < d[pair[1]] else b
    q = f"Which is closer to the camera, the {a} or the {b}?"
    return dict(prompt=sat_question(q, [a, b]), answer=answer, choices=[a, b], objects=[a, b])


def _nearest_choice(view: View, rng, config) -> dict | None:
    clear = np.flatnonzero(view.clear)
    if len(clear) < 3:
        return None
    pick = [int(k) for k in rng.permutation(clear)[:len(LETTERS)]]
    d = sorted(view.distance[k] for k in pick)
    if d[1] < config.near_ratio * d[0]:
        return None
    options = [view.names[k] for k in pick]
    nearest = int(np.argmin([view.distance[k] for k in pick]))
    return dict(prompt=letter_question("Which object is closest to the camera?", options),
                answer=LETTERS[nearest], choices=options, objects=options)


def _which_image(first: View, second: View, rng, config) -> dict | None:
    only = [(i, k) for i, (v, w) in enumerate([(first, second), (second, first)])
            for k in range(len(v.names)) if v.clear[k] and w.pixels[k] == 0]
    if not only:
        return None
    i, k = _pick(rng, only)
    options = list(IMAGES) if rng.integers(2) else list(IMAGES[::-1])
    return dict(prompt=sat_question(f"Which image shows the {first.names[k]}?", options),
                answer=IMAGES[i], choices=options, objects=[first.names[k]])


def _sentences(kind: str, q: dict, rng) -> tuple[str, str]:
    """(true, false) sentences of a ``left_right`` / ``nearer`` / ``existence`` / ``counting``
    question ``q``: its answer stated, and another answer stated."""
    objs, ans = q["objects"], q["answer"]
    if kind == "left_right":
        other = "right" if ans == "left" else "left"
        return (f"the {objs[0]} is to the {ans} of the {objs[1]}",
                f"the {objs[0]} is to the {other} of the {objs[1]}")
    if kind == "nearer":
        other = objs[1] if ans == objs[0] else objs[0]
        return (f"the {ans} is closer to the camera than the {other}",
                f"the {other} is closer to the camera than the {ans}")
    if kind == "existence":
        yes, no = f"there is a {objs[0]} in the image", f"there is no {objs[0]} in the image"
        return (yes, no) if ans == "yes" else (no, yes)
    n = int(ans)
    wrong = n + 1 if n == 0 or rng.integers(2) else n - 1
    return count_sentence(n, q["shape"]), count_sentence(wrong, q["shape"])


def count_sentence(n: int, shape: str) -> str:
    return f"there is 1 {shape}" if n == 1 else f"there are {n} {_plural(shape)}"


STATEMENT_KINDS = ("left_right", "nearer", "existence", "counting")


def _statement(view: View, rng, config) -> dict | None:
    """One of ``STATEMENT_KINDS`` (tried in a random order until one can be asked) as two
    sentences in a random order; the answer is the true sentence."""
    for kind in rng.permutation(STATEMENT_KINDS):
        q = ONE_VIEW[str(kind)](view, rng, config)
        if q is None:
            continue
        true, false = _sentences(str(kind), q, rng)
        options = [true, false] if rng.integers(2) else [false, true]
        return dict(prompt=sat_question("Which statement about the image is true?", options),
                    answer=true, choices=options, objects=q["objects"], kind=str(kind),
                    fact=q["answer"], **({"shape": q["shape"]} if "shape" in q else {}))
    return None


ONE_VIEW = {"objects": _objects, "grounding": _grounding, "counting": _counting,
            "existence": _existence, "left_right": _left_right, "nearer": _nearer,
            "nearest_choice": _nearest_choice, "statement": _statement}


# ----------------------------------------------------------------------------- one scene
def view_file(index: int) -> str:
    return f"view_{index:02d}.png"


def cameras(scene, scene_seed: int, config: PerceptionConfig) -> np.ndarray:
    """(V, 4, 4) still cameras of a scene, each facing a random object (``sim.sample_camera``)."""
    seeds = [int(np.random.SeedSequence([scene_seed, v, SCENE_STREAM]).generate_state(1)[0])
             for v in range(config.views_per_scene)]
    return np.stack([scene_lib.sample_camera(s, scene) for s in seeds])


def _record(sid: str, scene_seed: int, task: str, q: dict, views: Sequence[int],
            c2ws: Sequence[np.ndarray]) -> dict:
    tags = "<image>" * len(views)
    group = f"v{views[0]:02d}" if len(views) == 1 else f"p{views[0]:02d}"
    meta = {k: v for k, v in q.items() if k not in ("prompt", "answer")}
    meta.update(traj_id=f"{sid}_{group}", scene_seed=int(scene_seed), views=list(views),
                c2w=[np.asarray(c, np.float64).tolist() for c in c2ws])
    return dict(task_type=task, prompt=tags + q["prompt"], answer=q["answer"],
                image_files=[f"{sid}/{view_file(v)}" for v in views], scene_id=sid,
                trajectory="", source="renderer", meta=meta)


def build_scene(scene_seed: int, config: PerceptionConfig) -> dict:
    """Views and records of one scene: {scene_seed, scene_id, views (V,H,W,3) uint8, records,
    plus the fields ``supervision.package`` reads from a shard}."""
    scene = scene_lib.sample_scene(scene_seed, num_objects=config.num_objects,
                                   max_objects=config.max_objects)
    c2ws = cameras(scene, scene_seed, config)
    res = config.resolution
    out = render_cameras(scene, c2ws, config.K, res, res, config.supersample,
                         chunk=config.views_per_scene)
    views = [view_of(scene, out, v, c2ws[v], config.min_pixels) for v in range(len(c2ws))]
    sid = build.scene_id(scene_seed)
    rng = np.random.default_rng([scene_seed, SCENE_STREAM, 1])
    records = []
    for v, view in enumerate(views):
        for task, make in ONE_VIEW.items():
            q = make(view, rng, config)
            if q is not None:
                records.append(_record(sid, scene_seed, task, q, [v], [c2ws[v]]))
    for v in range(0, len(views), 2):
        q = _which_image(views[v], views[v + 1], rng, config)
        if q is not None:
            records.append(_record(sid, scene_seed, "which_image", q, [v, v + 1],
                                   [c2ws[v], c2ws[v + 1]]))
    return dict(scene_seed=int(scene_seed), scene_id=sid, teacher="renderer", detector="oracle",
                records=records, a4_candidates=[],
                views=np.round(np.clip(out["rgb"], 0.0, 1.0) * 255.0).astype(np.uint8),
                stats=dict(trajectories=0, qc_rejected=0, qc_reasons={}, degenerate_boxes=0,
                           detections=0, views=len(views)))


def write_shard(shards_root: str, result: Mapping[str, Any]) -> str:
    """One ``build_scene`` result as a shard directory (PNG views + scene.json), atomically."""
    from PIL import Image

    final = build.shard_dir(shards_root, result["scene_seed"])
    with fileio.atomic_dir(final) as tmp:
        for v, image in enumerate(result["views"]):
            Image.fromarray(image).save(os.path.join(tmp, view_file(v)))
        with open(os.path.join(tmp, build.SHARD_FILE), "w") as f:
            json.dump({k: v for k, v in result.items() if k != "views"}, f)
    return final


def build_shards(shards_root: str, seeds: Iterable[int], config: PerceptionConfig,
                 progress: bool = True) -> dict:
    """``build_scene`` + ``write_shard`` for every seed without a finished shard (resumable).
    Returns {"built": n, "skipped": n, "shards": [paths in seed order]}."""
    from tqdm.auto import tqdm

    seeds = [int(s) for s in seeds]
    fileio.sweep_stale(shards_root)
    todo = [s for s in seeds if not build.is_finished(shards_root, s)]
    with tqdm(total=len(seeds), initial=len(seeds) - len(todo), desc="perception scenes",
              unit="scene", disable=not progress) as bar:
        for s in todo:
            write_shard(shards_root, build_scene(s, config))
            bar.update(1)
    return {"built": len(todo), "skipped": len(seeds) - len(todo),
            "shards": [build.shard_dir(shards_root, s) for s in seeds]}


def task_counts(shard_dirs: Sequence[str]) -> dict:
    """Records per perception task over the shards."""
    counts = dict.fromkeys(TASKS, 0)
    for d in shard_dirs:
        for r in build.read_shard(d)["records"]:
            counts[r["task_type"]] += 1
    return counts


def build_dataset(root: str, seeds: Sequence[int], config: PerceptionConfig,
                  package_config=None, *, options: Mapping[str, Any] | None = None,
                  progress: bool = True) -> dict:
    """The whole set under ``root``: BUILD_FILE (``options``, written once), shards/ (missing
    scenes only: resumable) and package/ (``supervision.package.write_package``, rebuilt
    atomically). Returns the package statistics with the records per perception task."""
    from w2v_jax.supervision import package

    # the grpo split is unused for pretraining: one record per task
    package_config = package_config or package.PackageConfig(grpo_per_task=1, eval_fraction=0.05)
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, BUILD_FILE)
    if not os.path.exists(marker):
        fileio.atomic_write_json(marker, dict(options or {"config": config.to_json()}))
    done = build_shards(os.path.join(root, "shards"), seeds, config, progress=progress)
    print(f"scenes built {done['built']}, skipped (already finished) {done['skipped']}")
    return package.write_package(
        done["shards"], os.path.join(root, "package"), package_config,
        extra_stats={"build": dict(options or {}), "num_scenes": len(seeds),
                     "perception_tasks": task_counts(done["shards"])})
