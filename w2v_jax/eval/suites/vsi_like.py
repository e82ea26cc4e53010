"""VSI-like suite: 16-32-frame room tours, the eight VSI-Bench task types (benchmarks.md §2, §7).

A tour is one procedural room (5-8 objects) filmed along a smooth closed path: the camera walks an
ellipse at 55 % of the room's half-extents, looking 45° inward from its direction of travel,
1.4 m high and pitched 15° down, every position clear of walls and objects. One tour gives at most
one question of each category (question types as in VSI-Bench's ``question_type``):

numeric (MRA): ``object_counting`` (objects of one shape; every one of them seen in the tour),
``object_abs_distance`` (closest-point distance of two objects, metres, >= 0.3 m),
``object_size_estimation`` (longest dimension, centimetres), ``room_size_estimation`` (floor
area, m²); multiple choice (first-token letter): ``object_rel_distance`` (which of 4 objects is
closest to a target; runner-up at least 0.2 m further), ``object_rel_direction_easy`` /
``_medium`` / ``_hard`` (standing by A facing B, where is C: left/right; left/right/back with the
135° rule; the four quadrants; 10° away from every boundary), ``route_planning`` (the two turns
of a route A -> B -> C -> D, each left / right / back, 10° from the 45° and 135° boundaries),
``obj_appearance_order`` (first frame with >= min_pixels; distinct first frames, and below a third
of that before).

Only objects seen in the tour (>= ``min_pixels`` in some frame) are asked about. Question
wordings follow VSI-Bench's templates. ``relabel(item)`` recomputes answers from ``meta``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from w2v_jax import geometry
from w2v_jax.eval.suites import common
from w2v_jax.sim import scene as scene_lib

SUITE = "vsi_like"
NUMERIC = ("object_counting", "object_abs_distance", "object_size_estimation",
           "room_size_estimation")
CHOICE = ("object_rel_distance", "object_rel_direction_easy", "object_rel_direction_medium",
          "object_rel_direction_hard", "route_planning", "obj_appearance_order")
CATEGORIES = NUMERIC + CHOICE
# the 8 task scores of lmms-eval (relative direction = mean of its three levels)
TASKS = ("object_counting", "object_abs_distance", "object_size_estimation",
         "room_size_estimation", "object_rel_distance", "object_rel_direction", "route_planning",
         "obj_appearance_order")
NUM_OBJECTS = (5, 8)
ANGLE_MARGIN_DEG = 10.0
MIN_ABS_DISTANCE_M = 0.3
REL_DISTANCE_GAP_M = 0.2
LETTERS = "ABCD"
PLURAL = {"cube": "cubes", "sphere": "spheres", "cylinder": "cylinders"}
TURNS = ("turn left", "turn right", "turn back")


def tour_poses(scene, num_frames: int, phase: float) -> np.ndarray:
    """(T,4,4) c2w of the tour: an ellipse at 55 % of the half-extents from angle ``phase``
    (radians, counter-clockwise from +x), walked counter-clockwise."""
    hx, hy = (float(v) * 0.55 for v in np.asarray(scene.room)[:2])
    poses = []
    for t in range(num_frames):
        a = phase + 2 * math.pi * t / num_frames
        pos = (hx * math.cos(a), hy * math.sin(a), 1.4)
        travel = math.degrees(math.atan2(hy * math.cos(a), -hx * math.sin(a)))
        poses.append(geometry.look_c2w(pos, travel + 45.0, 15.0))  # +45: toward the centre
    return np.stack(poses)


def _options(correct: str, distractors, position: int, rng) -> list[str]:
    texts = common.place_answer(correct, list(distractors), position, rng)
    return [f"{LETTERS[i]}. {t}" for i, t in enumerate(texts)]


def _direction_class(theta: float, level: str) -> str | None:
    """Class of a signed angle (degrees, + right) or None inside a margin."""
    a, m = abs(theta), ANGLE_MARGIN_DEG
    side = "right" if theta > 0 else "left"
    if level == "easy":
        return side if m <= a <= 180 - m else None
    if level == "medium":
        if a >= 135 + m:
            return "back"
        return side if m <= a <= 135 - m else None
    if min(a, abs(a - 90), 180 - a) < m:
        return None
    return ("front-" if a < 90 else "back-") + side


def _turn_class(theta: float) -> str | None:
    a, m = abs(theta), ANGLE_MARGIN_DEG
    if a >= 135 + m:
        return "turn back"
    if 45 + m <= a <= 135 - m:
        return "turn right" if theta > 0 else "turn left"
    return None


def _xy(obj) -> np.ndarray:
    return np.asarray(obj["center"][:2], np.float64)


def _facing_angle(a, b, c) -> float:
    """Standing at a facing b: signed angle of c (degrees, + right)."""
    return common.signed_angle_deg(_xy(b) - _xy(a), _xy(c) - _xy(a))


def _route_turns(names, objs) -> list[str | None]:
    pts = [_xy(objs[n]) for n in names]
    return [_turn_class(common.signed_angle_deg(pts[i + 1] - pts[i], pts[i + 2] - pts[i + 1]))
            for i in range(len(pts) - 2)]


# ------------------------------------------------------------------------------ questions
def _q_count(tour, rng, position, want=None):
    seen = tour["seen"]
    shapes = sorted({o["shape"] for o in tour["objects"]})
    rng.shuffle(shapes)
    for shape in shapes:
        members = [o["name"] for o in tour["objects"] if o["shape"] == shape]
        if all(m in seen for m in members):
            return dict(question=f"How many {PLURAL[shape]} are in this room?",
                        answer=str(len(members)), extra=dict(shape=shape))
    return None


def _q_abs_distance(tour, rng, position, want=None):
    for a, b in rng.permutation(list(itertools.combinations(sorted(tour["seen"]), 2))):
        d = common.closest_distance(tour["by_name"][a], tour["by_name"][b])
        if d >= MIN_ABS_DISTANCE_M:
            return dict(question=f"Measuring from the closest point of each object, what is the "
                                 f"distance between the {a} and the {b} (in meters)?",
                        answer=common.fmt(d), extra=dict(target=[str(a), str(b)]))
    return None


def _q_size(tour, rng, position, want=None):
    name = str(rng.choice(sorted(tour["seen"])))
    size_cm = 100.0 * max(tour["by_name"][name]["size"])
    return dict(question=f"What is the length of the longest dimension (length, width, or height) "
                         f"of the {name}, measured in centimeters?",
                answer=common.fmt(size_cm), extra=dict(target=name))


def _q_room(tour, rng, position, want=None):
    hx, hy = tour["room"]
    return dict(question="What is the size of this room (in square meters)? If multiple rooms "
                         "are shown, estimate the size of the combined space.",
                answer=common.fmt(4 * hx * hy), extra={})


def _q_rel_distance(tour, rng, position, want=None):
    seen = sorted(tour["seen"])
    if len(seen) < 5:
        return None
    for target in rng.permutation(seen):
        others = [n for n in seen if n != target]
        cands = [str(c) for c in rng.permutation(others)[:4]]
        d = sorted((common.closest_distance(tour["by_name"][target], tour["by_name"][c]), c)
                   for c in cands)
        if d[1][0] - d[0][0] >= REL_DISTANCE_GAP_M:
            correct = d[0][1]
            distractors = [c for c in cands if c != correct]
            options = _options(correct, distractors, position, rng)
            return dict(question=f"Measuring from the closest point of each object, which of "
                                 f"these objects ({', '.join(o[3:] for o in options)}) is the "
                                 f"closest to the {target}?",
                        choices=options, answer=LETTERS[position],
                        extra=dict(target=str(target), candidates=[o[3:] for o in options]))
    return None


_DIRECTION_TEXT = {
    "easy": ("is the {c} to my left or the right?", ("left", "right")),
    "medium": ("is the {c} to my left, right, or back? An object is to my back if I would have "
               "to turn at least 135 degrees in order to face it.", ("left", "right", "back")),
    "hard": ("is the {c} to my front-left, front-right, back-left, or back-right? The directions "
             "refer to the quadrants of a Cartesian plane (if I am standing at the origin and "
             "facing along the positive y-axis).",
             ("front-left", "front-right", "back-left", "back-right")),
}


def _q_direction(level):
    def make(tour, rng, position, want):
        text, classes = _DIRECTION_TEXT[level]
        triples = list(itertools.permutations(sorted(tour["seen"]), 3))
        for i in rng.permutation(len(triples)):
            a, b, c = triples[i]
            if common.floor_distance(_xy(tour["by_name"][a]), _xy(tour["by_name"][b])) < 0.5:
                continue
            cls = _direction_class(_facing_angle(*(tour["by_name"][n] for n in (a, b, c))), level)
            if cls != want:
                continue
            options = _options(cls, [k for k in classes if k != cls], position, rng)
            return dict(question=f"If I am standing by the {a} and facing the {b}, "
                                 + text.format(c=c),
                        choices=options, answer=LETTERS[position],
                        extra=dict(target=[a, b, c], label=cls))
        return None
    return make


def _q_route(tour, rng, position, want=None):
    seen = sorted(tour["seen"])
    routes = list(itertools.permutations(seen, 4))
    for i in rng.permutation(len(routes))[:400]:
        names = routes[i]
        turns = _route_turns(names, tour["by_name"])
        if None in turns:
            continue
        correct = ", ".join(turns)
        pool = [", ".join(t) for t in itertools.product(TURNS, repeat=2) if ", ".join(t) != correct]
        distractors = [pool[j] for j in rng.permutation(len(pool))[:3]]
        options = _options(correct, distractors, position, rng)
        a, b, c, d = names
        return dict(question=f"You are a robot beginning at the {a} facing the {b}. You want to "
                             f"navigate to the {d}. You will perform the following actions (Note: "
                             "for each [please fill in], choose either 'turn back,' 'turn left,' "
                             f"or 'turn right.'): 1. Go forward until the {b}. 2. [please fill "
                             f"in] 3. Go forward until the {c}. 4. [please fill in] 5. Go "
                             f"forward until the {d}. You have reached the final destination.",
                    choices=options, answer=LETTERS[position], extra=dict(target=list(names)))
    return None


def _appearance(pixels: np.ndarray, min_pixels: int) -> int | None:
    """First frame with >= min_pixels, if every earlier frame shows < min_pixels / 3."""
    hits = np.flatnonzero(pixels >= min_pixels)
    if hits.size == 0:
        return None
    first = int(hits[0])
    return first if np.all(pixels[:first] < min_pixels / 3.0) else None


def _q_order(tour, rng, position, want=None):
    firsts = {n: f for n, f in tour["first"].items() if f is not None}
    names = sorted(firsts)
    for i in rng.permutation(len(names) * 20)[:60]:
        pick = [str(x) for x in rng.permutation(names)[:4]]
        if len(pick) < 4 or len({firsts[n] for n in pick}) < 4:
            continue
        correct = sorted(pick, key=lambda n: firsts[n])
        perms = [list(p) for p in itertools.permutations(pick) if list(p) != correct]
        distractors = [", ".join(perms[j]) for j in rng.permutation(len(perms))[:3]]
        options = _options(", ".join(correct), distractors, position, rng)
        return dict(question="What will be the first-time appearance order of the following "
                             f"categories in the video: {', '.join(pick)}?",
                    choices=options, answer=LETTERS[position], extra=dict(target=pick))
    return None


MAKERS = {
    "object_counting": _q_count, "object_abs_distance": _q_abs_distance,
    "object_size_estimation": _q_size, "room_size_estimation": _q_room,
    "object_rel_distance": _q_rel_distance, "object_rel_direction_easy": _q_direction("easy"),
    "object_rel_direction_medium": _q_direction("medium"),
    "object_rel_direction_hard": _q_direction("hard"), "route_planning": _q_route,
    "obj_appearance_order": _q_order,
}
NUM_OPTIONS = {"object_rel_distance": 4, "object_rel_direction_easy": 2,
               "object_rel_direction_medium": 3, "object_rel_direction_hard": 4,
               "route_planning": 4, "obj_appearance_order": 4}


def _clear_path_scene(scene_seed: int, num_frames: int):
    """A scene whose tour path is clear: ``sample_scene`` with up to 10 objects, minus those whose
    footprint comes within 0.3 m of the path (densely sampled); None when fewer than
    ``NUM_OBJECTS[0]`` remain."""
    full = scene_lib.sample_scene(scene_seed, num_objects=(NUM_OBJECTS[0] + 1, 10))
    dense = tour_poses(full, 8 * num_frames, 0.0)[:, :2, 3]
    kept = []
    for o in scene_lib.scene_metadata(full)["objects"]:
        gap = np.linalg.norm(dense - np.asarray(o["center"][:2]), axis=-1).min()
        if gap >= o["footprint_radius"] + 0.3:
            kept.append(dict(shape=o["shape"], color=o["color"], size=o["size"],
                             xy=o["center"][:2], yaw=o["yaw_deg"]))
    if not NUM_OBJECTS[0] <= len(kept):
        return None
    kept = kept[:NUM_OBJECTS[1]]
    tints = [int(np.argmin(np.abs(scene_lib.WALL_TINTS - w).sum(-1)))
             for w in np.asarray(full.wall_color)]
    room = np.asarray(full.room, np.float64)
    return scene_lib.make_scene(kept, room=room, max_objects=full.max_objects, wall_tints=tints,
                                wall_margin=0.2)


def make_tour(scene_seed: int, num_frames: int, config: common.RenderConfig) -> dict | None:
    """A rendered tour of a fresh scene, or None when too few objects clear the path or too few
    are seen."""
    scene = _clear_path_scene(scene_seed, num_frames)
    if scene is None:
        return None
    poses = tour_poses(scene, num_frames, 0.0)
    views = common.render(scene, poses, config)
    objects = common.objects_meta(scene)
    pixels = {o["name"]: views["visible_pixels"][:, o["slot"]] for o in objects}
    seen = {n for n, p in pixels.items() if p.max() >= config.min_pixels}
    if len(seen) < 3:
        return None
    return dict(scene_seed=scene_seed, poses=poses, images=views["image"], objects=objects,
                by_name=common.by_name(objects), seen=seen,
                first={n: _appearance(p, config.min_pixels) for n, p in pixels.items()},
                pixels={n: p.tolist() for n, p in pixels.items()},
                room=[float(v) for v in np.asarray(scene.room)[:2]])


def relabel(item: dict) -> str:
    """The answer recomputed from ``meta`` (poses, objects, room, per-frame pixel counts)."""
    meta, cat = item["meta"], item["category"]
    objs = common.by_name(meta["objects"])
    target = meta.get("target")
    if cat == "object_counting":
        return str(sum(o["shape"] == meta["shape"] for o in meta["objects"]))
    if cat == "object_abs_distance":
        return common.fmt(common.closest_distance(objs[target[0]], objs[target[1]]))
    if cat == "object_size_estimation":
        return common.fmt(100.0 * max(objs[target]["size"]))
    if cat == "room_size_estimation":
        return common.fmt(4 * meta["room_half_extents"][0] * meta["room_half_extents"][1])
    texts = [c[3:] for c in item["choices"]]
    if cat == "object_rel_distance":
        best = min(meta["candidates"], key=lambda c: common.closest_distance(objs[target], objs[c]))
        return LETTERS[texts.index(best)]
    if cat.startswith("object_rel_direction"):
        cls = _direction_class(_facing_angle(*(objs[n] for n in target)), cat.split("_")[-1])
        return LETTERS[texts.index(cls)]
    if cat == "route_planning":
        return LETTERS[texts.index(", ".join(_route_turns(target, objs)))]
    if cat == "obj_appearance_order":
        mp = int(meta["min_pixels"])
        firsts = {n: _appearance(np.asarray(meta["pixels"][n]), mp) for n in target}
        return LETTERS[texts.index(", ".join(sorted(target, key=lambda n: firsts[n])))]
    raise ValueError(f"unknown vsi_like category {cat!r}")


def build(seed: int, per_category: int, config: common.RenderConfig = common.RenderConfig(),
          num_frames: int = 16, categories=CATEGORIES, max_tours: int | None = None
          ) -> tuple[list[dict], dict]:
    """``(items, images)`` with ``per_category`` items of each category (see the module doc)."""
    from tqdm import tqdm

    if not 16 <= num_frames <= 32:
        raise ValueError(f"num_frames must be in [16, 32] (VSI-like tours), got {num_frames}")
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown vsi_like categories {sorted(unknown)}; allowed {CATEGORIES}")
    rng = np.random.default_rng([common.SUITE_CODES[SUITE], int(seed), 0xBA1])
    positions = {c: common.balanced(per_category, list(range(NUM_OPTIONS.get(c, 1))), rng)
                 for c in categories}
    wanted = {c: common.balanced(per_category, list(_DIRECTION_TEXT[c.split("_")[-1]][1]), rng)
              for c in categories if c.startswith("object_rel_direction")}
    counts = {c: 0 for c in categories}
    items, images = [], {}
    max_tours = max_tours or 40 * per_category
    bar = tqdm(total=per_category * len(categories), desc=SUITE, leave=False,
               disable=per_category < 50)
    for t in range(max_tours):
        if all(v >= per_category for v in counts.values()):
            break
        tour = make_tour(common.eval_scene_seed(SUITE, seed, 0, t), num_frames, config)
        if tour is None:
            continue
        tour_id = f"{SUITE}-tour{t:05d}"
        names = [f"{tour_id}_f{f:02d}.png" for f in range(num_frames)]
        used = False
        q_rng = np.random.default_rng(tour["scene_seed"])
        for cat in categories:
            if counts[cat] >= per_category:
                continue
            k = counts[cat]
            want = wanted[cat][k] if cat in wanted else None
            q = MAKERS[cat](tour, q_rng, positions[cat][k], want)
            if q is None:
                continue
            extra = q.pop("extra")
            meta = common.item_meta(tour["poses"], config, tour["objects"],
                        room_half_extents=[round(v, 4) for v in tour["room"]],
                        target=extra.pop("target", None), tour=tour_id,
                        scene_seed=tour["scene_seed"], **extra)
            if cat == "obj_appearance_order":
                meta.update(pixels={n: tour["pixels"][n] for n in meta["target"]},
                            min_pixels=config.min_pixels)
            meta["label"] = meta.pop("label", q["answer"])
            items.append(dict(id=f"{SUITE}-{cat}-{counts[cat]:04d}", suite=SUITE, category=cat,
                              images=names, choices=q.pop("choices", []), **q, meta=meta))
            counts[cat] += 1
            bar.update(1)
            used = True
        if used:
            images.update(zip(names, tour["images"]))
    bar.close()
    short = {c: n for c, n in counts.items() if n < per_category}
    if short:
        raise RuntimeError(f"vsi_like: only {short} items after {max_tours} tours")
    return items, images
