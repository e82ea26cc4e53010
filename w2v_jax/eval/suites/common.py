"""What the procedural suites share: eval scene seeds, rendering, object geometry, balanced labels.

Scene seeds (disjoint from every training split). Training scenes come from
``sim.clips.scene_seeds`` (posed clips for the world model) and ``supervision.build.scene_seeds``
(the distillation set); both draw ``np.random.SeedSequence(...).generate_state(1)[0]``, a uint32,
so every training scene seed lies in ``[0, 2**32)`` whatever the run seed. Eval scenes use seeds
in ``[2**32, 2**33)``: ``EVAL_SEED_BASE + uint32`` drawn from a stream keyed by the suite, the
build seed, the category and the attempt number. ``sim.sample_scene`` accepts any non-negative
int, so the ranges never meet.

Geometry conventions are DESIGN.md's (Z-up world, OpenCV cameras, c2w poses). Horizontal
bearings are measured in the floor plane from a camera's heading (its optical axis projected on
the floor), positive to the right, in degrees in (-180, 180].
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from w2v_jax.sim.render import RenderConfig, render_cameras
from w2v_jax.sim import scene as scene_lib

EVAL_SEED_BASE = 2**32
SUITE_CODES = {"sat_like": 0x5A7, "vsi_like": 0x751, "mindcube_like": 0x3C0BE}


def eval_scene_seed(suite: str, seed: int, stream: int, attempt: int) -> int:
    """Scene seed in ``[2**32, 2**33)`` for ``attempt`` of ``stream`` (a category) of ``suite``."""
    if suite not in SUITE_CODES:
        raise ValueError(f"suite must be one of {sorted(SUITE_CODES)}, got {suite!r}")
    state = np.random.SeedSequence([SUITE_CODES[suite], int(seed), int(stream), int(attempt)])
    return EVAL_SEED_BASE + int(state.generate_state(1)[0])


RENDER_CHUNK = 4  # cameras per jitted render call: one compilation for every suite


def render(scene, c2ws: np.ndarray, config: RenderConfig) -> dict:
    """Views of ``scene`` from cameras (N,4,4): numpy outputs of ``sim.render_cameras`` (chunks
    of ``RENDER_CHUNK`` cameras) plus ``image`` (N,H,W,3) uint8."""
    res = config.resolution
    out = render_cameras(scene, c2ws, config.K, res, res, config.supersample, RENDER_CHUNK)
    out["image"] = np.round(np.clip(out["rgb"], 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def objects_meta(scene) -> list[dict]:
    """``[{name, center, size, shape, slot}]``: metres, ``size`` the full extents (x, y, z)."""
    meta = scene_lib.scene_metadata(scene)
    return [dict(name=o["name"], center=o["center"],
                 size=[round(2 * h, 4) for h in o["half_extents"]], shape=o["shape"],
                 yaw_deg=o["yaw_deg"], slot=o["slot"]) for o in meta["objects"]]


def item_meta(c2ws, config: RenderConfig, objects: Sequence[dict], **quantities) -> dict:
    """An item's ``meta``: one c2w per image, K, the objects (name, centre, size, shape, yaw) and
    the category's quantities."""
    return dict(c2w=np.asarray(c2ws, np.float64).round(6).tolist(),
                K=np.asarray(config.K, np.float64).round(6).tolist(),
                objects=[{k: o[k] for k in ("name", "center", "size", "shape", "yaw_deg")}
                         for o in objects], **quantities)


def by_name(objects: Sequence[dict]) -> dict:
    return {o["name"]: o for o in objects}


def heading_basis(c2w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position xy, unit forward xy, unit right xy) of a camera in the floor plane."""
    c2w = np.asarray(c2w, np.float64)
    fwd = c2w[:2, 2] / np.linalg.norm(c2w[:2, 2])
    right = np.array([fwd[1], -fwd[0]])  # forward turned clockwise: the camera's right (Z-up)
    return c2w[:2, 3], fwd, right


def bearing_deg(c2w, point) -> float:
    """Horizontal angle from the camera's heading to ``point`` (world xyz), positive right."""
    pos, fwd, right = heading_basis(c2w)
    d = np.asarray(point, np.float64)[:2] - pos
    return math.degrees(math.atan2(float(d @ right), float(d @ fwd)))


def signed_angle_deg(from_xy, to_xy) -> float:
    """Turn (degrees, positive = clockwise = right in a Z-up world) from direction ``from_xy`` to
    direction ``to_xy`` in the floor plane."""
    a = math.atan2(from_xy[1], from_xy[0]) - math.atan2(to_xy[1], to_xy[0])
    return math.degrees((a + math.pi) % (2 * math.pi) - math.pi)


def floor_distance(a, b) -> float:
    """Distance between the floor projections of two world points (metres)."""
    return float(np.linalg.norm(np.asarray(a, np.float64)[:2] - np.asarray(b, np.float64)[:2]))


def _square(obj: dict) -> np.ndarray:
    c, s = math.cos(math.radians(obj["yaw_deg"])), math.sin(math.radians(obj["yaw_deg"]))
    hx, hy = obj["size"][0] / 2, obj["size"][1] / 2
    local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
    return local @ np.array([[c, s], [-s, c]]) + np.asarray(obj["center"][:2])


def _point_segment(p, a, b) -> float:
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(p - (a + t * ab)))


def _point_footprint(p, obj: dict) -> float:
    """Floor distance from point ``p`` (xy) to the footprint of ``obj`` (0 inside)."""
    if obj["shape"] != "cube":
        gap = float(np.linalg.norm(p - np.asarray(obj["center"][:2])))
        return max(0.0, gap - obj["size"][0] / 2)
    sq = _square(obj)
    edges = [(sq[i], sq[(i + 1) % 4]) for i in range(4)]
    inside = all(np.cross(b - a, p - a) >= 0 for a, b in edges)
    return 0.0 if inside else min(_point_segment(p, a, b) for a, b in edges)


def closest_distance(a: dict, b: dict) -> float:
    """Closest-point distance (metres) between two objects standing on the floor (meta dicts).

    Exact for this world: cubes and cylinders are vertical prisms from the floor up, and every
    sphere's centre lies below the top of every prism, so prism-prism and sphere-prism distances
    are floor-plane distances between footprints (a sphere's footprint is its centre, less r);
    sphere-sphere is the 3D centre distance less both radii. Overlap gives 0.
    """
    if a["shape"] == "sphere" and b["shape"] == "sphere":
        d = np.linalg.norm(np.subtract(a["center"], b["center"]))
        return max(0.0, float(d) - a["size"][0] / 2 - b["size"][0] / 2)
    if a["shape"] == "sphere" or (a["shape"] == "cylinder" and b["shape"] != "sphere"):
        a, b = b, a  # now b is the sphere or disc when one of them is
    if b["shape"] in ("sphere", "cylinder"):
        return max(0.0, _point_footprint(np.asarray(b["center"][:2]), a) - b["size"][0] / 2)
    sa, sb = _square(a), _square(b)
    d = min(min(_point_segment(p, sb[i], sb[(i + 1) % 4]) for i in range(4)) for p in sa)
    d = min(d, min(min(_point_segment(p, sa[i], sa[(i + 1) % 4]) for i in range(4)) for p in sb))
    overlap = any(_point_footprint(p, b) == 0.0 for p in sa) or any(
        _point_footprint(p, a) == 0.0 for p in sb)
    return 0.0 if overlap else d


def balanced(n: int, classes: Sequence, rng: np.random.Generator) -> list:
    """``n`` labels with every class ``n // len(classes)`` or one more times, shuffled."""
    labels = [classes[i % len(classes)] for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]


def fmt(x: float, decimals: int = 2) -> str:
    """Number text with at most ``decimals`` decimals, trailing zeros stripped (1.50 -> '1.5')."""
    s = f"{float(x):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def draw_cross(image: np.ndarray, uv, color=(255, 0, 255), arm: int = 2) -> np.ndarray:
    """Copy of ``image`` (H,W,3) uint8 with an 'X' of half-size ``arm`` px centred at pixel
    coordinates ``uv`` (u along width)."""
    out = image.copy()
    h, w = out.shape[:2]
    j0, i0 = int(math.floor(uv[0])), int(math.floor(uv[1]))
    for k in range(-arm, arm + 1):
        for i, j in ((i0 + k, j0 + k), (i0 + k, j0 - k)):
            if 0 <= i < h and 0 <= j < w:
                out[i, j] = color
    return out


def build_items(suite: str, seed: int, stream: int, n: int, classes: Sequence, make,
                num_options: int = 2, max_attempts: int = 300, desc: str = "") -> list[dict]:
    """``n`` items of one category: labels balanced over ``classes``, the correct option's
    position balanced over ``range(num_options)``.

    ``make(scene_seed, label, position, rng)`` returns an item dict (without ``id``/``suite``/
    ``category``) plus its images, ``(item, {name: uint8 image})``, or None when the draw fails a
    margin; each item gets fresh scene seeds (``eval_scene_seed``) until one succeeds.
    Deterministic in (suite, seed, stream, n)."""
    from tqdm import tqdm

    rng = np.random.default_rng([SUITE_CODES[suite], int(seed), int(stream), 0xBA1])
    labels = balanced(n, list(classes), rng)
    positions = balanced(n, list(range(num_options)), rng)
    out, attempt = [], 0
    for k in tqdm(range(n), desc=desc or f"{suite}/{stream}", leave=False, disable=n < 50):
        for _ in range(max_attempts):
            scene_seed = eval_scene_seed(suite, seed, stream, attempt)
            attempt += 1
            got = make(scene_seed, labels[k], positions[k], np.random.default_rng(scene_seed))
            if got is not None:
                got[0]["meta"]["scene_seed"] = scene_seed
                out.append(got)
                break
        else:
            raise RuntimeError(f"{suite} stream {stream}: no valid item with label {labels[k]!r} "
                               f"after {max_attempts} scenes")
    return out


def build_categories(suite: str, seed: int, per_category: int, config: RenderConfig,
                     categories: Sequence[str], wanted: Sequence[str], classes: dict, makers: dict,
                     num_options: int) -> tuple[list[dict], dict]:
    """``(items, images)`` of the ``wanted`` categories, each from its own seed stream (its index
    in ``categories``); ``makers[cat](config, scene_seed, label, position, rng)`` as in
    :func:`build_items`. Image names are ``<item id>_<k>.png``."""
    unknown = sorted(set(wanted) - set(categories))
    if unknown:
        raise ValueError(f"unknown {suite} categories {unknown}; allowed {tuple(categories)}")
    items, images = [], {}
    for stream, category in enumerate(categories):
        if category not in wanted:
            continue
        make = makers[category]
        built = build_items(suite, seed, stream, per_category, classes[category],
                            lambda s, lab, pos, rng, make=make: make(config, s, lab, pos, rng),
                            num_options=num_options, desc=f"{suite}/{category}")
        for k, (item, views) in enumerate(built):
            item_id = f"{suite}-{category}-{k:04d}"
            names = [f"{item_id}_{v}.png" for v in range(len(views))]
            images.update(zip(names, views))
            items.append(dict(id=item_id, suite=suite, category=category, images=names, **item))
    return items, images


def place_answer(correct: str, distractors: Sequence[str], position: int,
                 rng: np.random.Generator) -> list[str]:
    """Options: the distractors in a random order, ``correct`` inserted at index ``position`` (a
    fixed distractor order would let the position of the odd one out give the answer away)."""
    options = [distractors[i] for i in rng.permutation(len(distractors))]
    options.insert(int(position), correct)
    return options
