"""MindCube-like suite: 2-4 views of a room, options A-D (benchmarks.md §3, §7).

Settings (the item ``category``; MindCube's own setting names), classes balanced, the correct
letter balanced over A-D:

- ``rotation`` (4 views from one spot, turning right 90° between consecutive views): "when I face
  the way of image j, which object is behind me / on my left / on my right?" The four options are
  one object per view, each within 30° of its view's centre (15° from the 45° view boundary) and
  seen in that view.
- ``around`` (2-4 views walking a quarter circle around a central object, always facing it,
  counter-clockwise seen from above): "from the viewpoint of image j, where is the X relative to
  the C?" left of it / right of it / in front of it / behind it, by the dominant horizontal
  offset in camera j's frame (at least 1.5 times the other one and 0.3 m). X is seen in image 1.
- ``among`` (2-4 views from the four sides of the scene, each facing its centre): "standing where
  image j was taken, is the X to my front-left, front-right, back-left or back-right?" (bearing
  10° away from the quadrant boundaries). X is seen in image 1.

Prompts are MindCube's raw-QA template with the options inline ("... A. red cube B. ...").
``relabel(item)`` recomputes answers from ``meta``.
"""

from __future__ import annotations

import math

import numpy as np

from w2v_jax import geometry
from w2v_jax.eval.suites import common
from w2v_jax.sim import scene as scene_lib

SUITE = "mindcube_like"
CATEGORIES = ("rotation", "around", "among")
LETTERS = "ABCD"
CLASSES = {
    "rotation": ("behind", "left", "right"),
    "around": ("left of it", "right of it", "in front of it", "behind it"),
    "among": ("front-left", "front-right", "back-left", "back-right"),
}
NUM_OBJECTS = (4, 8)
ROTATION_HALF_WIDTH_DEG = 30.0
QUADRANT_MARGIN_DEG = 10.0
DOMINANCE = 1.5
MIN_OFFSET_M = 0.3
_ROTATION_OFFSET = {"right": 1, "behind": 2, "left": 3}  # view index offset when turning right


_meta = common.item_meta


def _question(text: str, options: list[str]) -> str:
    return text + " " + " ".join(options)


def _lettered(correct: str, distractors, position: int, rng) -> list[str]:
    texts = common.place_answer(correct, list(distractors), position, rng)
    return [f"{LETTERS[i]}. {t}" for i, t in enumerate(texts)]


def _heading(c2w) -> float:
    _, fwd, _ = common.heading_basis(c2w)
    return math.degrees(math.atan2(fwd[1], fwd[0]))


# ------------------------------------------------------------------------------- rotation
def _rotation_owner(c2ws, obj) -> int | None:
    """The view whose centre is within 30° of the object's bearing, if any."""
    for v, c2w in enumerate(c2ws):
        if abs(common.bearing_deg(c2w, obj["center"])) <= ROTATION_HALF_WIDTH_DEG:
            return v
    return None


def _make_rotation(config, scene_seed, label, position, rng):
    scene = scene_lib.sample_scene(scene_seed, num_objects=NUM_OBJECTS)
    xy = np.asarray(scene_lib.sample_camera(int(rng.integers(2**31)), scene)[:2, 3])
    h0 = float(rng.uniform(0, 360))
    c2ws = np.stack([geometry.look_c2w([xy[0], xy[1], 1.4], h0 - 90 * k, 10.0) for k in range(4)])
    views = common.render(scene, c2ws, config)
    objects = common.objects_meta(scene)
    per_view = {v: [] for v in range(4)}
    for o in objects:
        v = _rotation_owner(c2ws, o)
        if v is not None and views["visible_pixels"][v][o["slot"]] >= config.min_pixels:
            per_view[v].append(o["name"])
    if not all(per_view.values()):
        return None
    j = int(rng.integers(4))
    pick = [str(rng.choice(per_view[v])) for v in range(4)]
    correct = pick[(j + _ROTATION_OFFSET[label]) % 4]
    options = _lettered(correct, [p for p in pick if p != correct], position, rng)
    where = {"behind": "behind me", "left": "on my left", "right": "on my right"}[label]
    text = (f"These four images are taken from the same spot: after each image I turn right by "
            f"90 degrees. When I face the same way as in image {j + 1}, which object is {where}?")
    item = dict(question=_question(text, options), choices=options, answer=LETTERS[position],
                meta=_meta(c2ws, config, objects, target=None, view=j + 1, relation=label,
                           candidates=[o[3:] for o in options], label=label))
    return item, list(views["image"])


def _relabel_rotation(meta) -> str:
    objs = common.by_name(meta["objects"])
    want = (meta["view"] - 1 + _ROTATION_OFFSET[meta["relation"]]) % 4
    for k, name in enumerate(meta["candidates"]):
        if _rotation_owner(meta["c2w"], objs[name]) == want:
            return LETTERS[k]
    raise ValueError("no candidate lies in the asked view")


# ----------------------------------------------------------------------- around / among
def _around_class(c2w, center, point) -> str | None:
    _, fwd, right = common.heading_basis(c2w)
    d = np.asarray(point, np.float64)[:2] - np.asarray(center, np.float64)[:2]
    lat, dep = float(d @ right), float(d @ fwd)
    if abs(lat) >= DOMINANCE * abs(dep) and abs(lat) >= MIN_OFFSET_M:
        return "right of it" if lat > 0 else "left of it"
    if abs(dep) >= DOMINANCE * abs(lat) and abs(dep) >= MIN_OFFSET_M:
        return "behind it" if dep > 0 else "in front of it"
    return None


def _quadrant(c2w, point) -> str | None:
    b = common.bearing_deg(c2w, point)
    a = abs(b)
    if min(a, abs(a - 90), 180 - a) < QUADRANT_MARGIN_DEG:
        return None
    return ("front-" if a < 90 else "back-") + ("right" if b > 0 else "left")


def _ring(scene, center_xy, radius, phase, n) -> np.ndarray | None:
    """``n`` cameras on a circle around ``center_xy``, quarter turns counter-clockwise, facing
    the centre; None when one is not in free space."""
    poses = []
    for k in range(n):
        a = phase + 90.0 * k
        xy = np.asarray(center_xy) + radius * np.array([math.cos(math.radians(a)),
                                                         math.sin(math.radians(a))])
        poses.append(geometry.look_c2w([xy[0], xy[1], 1.3], a + 180.0, 15.0))
    poses = np.stack(poses)
    return poses if np.all(scene_lib.free_space(scene, poses[:, :2, 3], 0.3, 0.3)) else None


def _make_ring_item(config, scene_seed, label, position, rng, setting):
    scene = scene_lib.sample_scene(scene_seed, num_objects=NUM_OBJECTS)
    objects = common.objects_meta(scene)
    n = int(rng.integers(2, 5))
    if setting == "around":
        center_obj = objects[int(rng.integers(len(objects)))]
        center = np.asarray(center_obj["center"][:2])
        radius = float(rng.uniform(1.6, 2.0))
    else:
        center_obj = None
        center = rng.uniform(-0.3, 0.3, 2) * np.asarray(scene.room)[:2]
        radius = float(rng.uniform(1.5, 2.0))
    c2ws = _ring(scene, center, radius, float(rng.uniform(0, 360)), n)
    if c2ws is None:
        return None
    views = common.render(scene, c2ws, config)
    seen1 = [o for o in objects if views["visible_pixels"][0][o["slot"]] >= config.min_pixels
             and (center_obj is None or o["name"] != center_obj["name"])]
    if setting == "around" and views["visible_pixels"][:, center_obj["slot"]].min() < \
            config.min_pixels:
        return None
    j = int(rng.integers(1, n))
    for x in rng.permutation(len(seen1)):
        obj = seen1[int(x)]
        cls = (_around_class(c2ws[j], center_obj["center"], obj["center"]) if setting == "around"
               else _quadrant(c2ws[j], obj["center"]))
        if cls == label:
            break
    else:
        return None
    classes = CLASSES[setting]
    options = _lettered(label, [c for c in classes if c != label], position, rng)
    if setting == "around":
        text = (f"These {n} images show the {center_obj['name']} from different sides: before "
                "each new image I walk a quarter circle around it to my right, still facing it. "
                f"From the viewpoint of image {j + 1}, where is the {obj['name']} relative to the "
                f"{center_obj['name']}?")
    else:
        text = (f"These {n} images are taken from different sides of the scene, each facing its "
                f"centre. If I stand where image {j + 1} was taken and face the same way, is the "
                f"{obj['name']} to my front-left, front-right, back-left, or back-right?")
    item = dict(question=_question(text, options), choices=options, answer=LETTERS[position],
                meta=_meta(c2ws, config, objects, target=obj["name"], view=j + 1,
                           center_object=None if center_obj is None else center_obj["name"],
                           label=label))
    return item, list(views["image"])


def _relabel_ring(meta, setting) -> str:
    objs = common.by_name(meta["objects"])
    c2w = meta["c2w"][meta["view"] - 1]
    point = objs[meta["target"]]["center"]
    cls = (_around_class(c2w, objs[meta["center_object"]]["center"], point)
           if setting == "around" else _quadrant(c2w, point))
    return cls


MAKERS = {
    "rotation": _make_rotation,
    "around": lambda *a: _make_ring_item(*a, setting="around"),
    "among": lambda *a: _make_ring_item(*a, setting="among"),
}


def relabel(item: dict) -> str:
    """The answer letter recomputed from ``meta``."""
    meta, cat = item["meta"], item["category"]
    if cat == "rotation":
        return _relabel_rotation(meta)
    cls = _relabel_ring(meta, cat)
    return LETTERS[[c[3:] for c in item["choices"]].index(cls)]


def build(seed: int, per_category: int, config: common.RenderConfig = common.RenderConfig(),
          categories=CATEGORIES) -> tuple[list[dict], dict]:
    """``(items, images)`` with ``per_category`` items of each setting."""
    return common.build_categories(SUITE, seed, per_category, config, CATEGORIES, categories,
                                   CLASSES, MAKERS, num_options=4)
