"""SAT-like suite: the five dynamic SAT categories with exact labels (benchmarks.md §1, §7).

Every item has two text options (SAT's "Choose between the following options: X, or Y");
the correct one is first in half of the items of each category. Categories (classes in brackets,
balanced by construction):

- ``ego_movement`` (2 images; left / right): the camera turns 20-50° (steps of 10) and, in half
  the items, then moves forward 0.25-0.4 m. "rotated left [and moved forward]" vs the other turn.
- ``object_movement`` (2 images; left / right): one visible object is moved by ±{0.25, 0.5} m
  sideways and ±{0.25, 0.5} m in depth in the first camera's floor frame; in 70 % of the items the
  camera also turns 5-15° or moves 0.2 m. "the X moved left and away from the camera" vs the
  option with one of the two parts flipped. Towards/away = the change of the object's floor
  distance to the first camera, at least 0.2 m.
- ``goal_aim`` (1 image; left / right / straight): "which way should I turn to face the X?"
  "turn left by N degrees" (N = the rounded bearing, |bearing| >= 15°) or "look straight"
  (|bearing| <= 5°): SAT's ±10° band with a 5° margin on each side.
- ``action_consequence`` (1 image; closer / further): "if I turn θ and move forward d, will I get
  closer to or further from the X?" The floor distance must change by >= 0.2 m.
- ``perspective`` (1 image; left / right / closer / further): a magenta X is drawn on a floor
  point; "if I go to the X mark and turn left/right 90 degrees, is the Y to my left or right?"
  (bearing kept 15° away from straight ahead and behind) or "... will the Y be closer to me or
  further away than now?" (floor distance change >= 0.5 m).

``relabel(item)`` recomputes every answer from ``item["meta"]`` alone (poses, objects, the mark,
the actions); the tests check it against the stored answers.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from w2v_jax import actions, geometry
from w2v_jax.eval.suites import common
from w2v_jax.sim import scene as scene_lib

SUITE = "sat_like"
CATEGORIES = ("ego_movement", "object_movement", "goal_aim", "action_consequence", "perspective")
CLASSES = {
    "ego_movement": ("left", "right"),
    "object_movement": ("left", "right"),
    "goal_aim": ("left", "right", "straight"),
    "action_consequence": ("closer", "further"),
    "perspective": ("left", "right", "closer", "further"),
}
NUM_OBJECTS = (3, 6)
STRAIGHT_BAND_DEG = 10.0
BAND_MARGIN_DEG = 5.0
MIN_DISTANCE_CHANGE_M = 0.2
PERS_MIN_DISTANCE_CHANGE_M = 0.5
PERS_SIDE_MARGIN_DEG = 15.0


def _scene_and_camera(scene_seed: int):
    scene = scene_lib.sample_scene(scene_seed, num_objects=NUM_OBJECTS)
    cam_seed = int(np.random.SeedSequence([scene_seed, 1]).generate_state(1)[0])
    return scene, scene_lib.sample_camera(cam_seed, scene)


def _free(scene, poses) -> bool:
    return bool(np.all(scene_lib.free_space(scene, np.asarray(poses)[:, :2, 3], 0.3, 0.3)))


def _visible(pixels, objects: list, config) -> list[dict]:
    """The objects covering at least ``config.min_pixels`` of a view (``pixels``: (K,) counts)."""
    return [o for o in objects if pixels[o["slot"]] >= config.min_pixels]


_base_meta = common.item_meta


def _first_view(config, scene_seed, rng):
    """Scene, start camera, its objects and view, and the objects seen in it (None if none)."""
    scene, c2w0 = _scene_and_camera(scene_seed)
    objects = common.objects_meta(scene)
    view = common.render(scene, c2w0[None], config)
    visible = _visible(view["visible_pixels"][0], objects, config)
    if not visible:
        return None
    return scene, c2w0, objects, view, visible


def _two_options(correct: str, other: str, position: int) -> list[str]:
    return [other, correct] if position else [correct, other]


# ----------------------------------------------------------------------------- ego movement
def _ego_choices(direction: str, moved: bool) -> tuple[str, str]:
    tail = " and moved forward" if moved else ""
    other = "right" if direction == "left" else "left"
    return f"rotated {direction}{tail}", f"rotated {other}{tail}"


def _make_ego(config, scene_seed, label, position, rng):
    scene, c2w0 = _scene_and_camera(scene_seed)
    yaw = float(rng.choice([20, 30, 40, 50]))
    forward = round(float(rng.uniform(0.25, 0.4)), 2) if rng.random() < 0.5 else 0.0
    acts = [actions.Action(f"turn_{label}", yaw)]
    if forward:
        acts.append(actions.Action("forward", forward))
    poses, _ = actions.integrate(acts, c2w0)
    if not _free(scene, poses):
        return None
    c2ws = np.stack([c2w0, poses[-1]])
    views = common.render(scene, c2ws, config)
    objects = common.objects_meta(scene)
    if not _visible(views["visible_pixels"][0], objects, config):
        return None
    correct, other = _ego_choices(label, bool(forward))
    item = dict(
        question="The first image is from the beginning of a video and the second image is from "
                 "the end. How did the camera move?",
        choices=_two_options(correct, other, position), answer=correct,
        meta=_base_meta(c2ws, config, objects, target=None, actions=actions.format_actions(acts),
                        yaw_deg=yaw if label == "right" else -yaw, forward_m=forward, label=label))
    return item, list(views["image"])


def _relabel_ego(meta) -> str:
    motion = actions.relative_motion(meta["c2w"][0], meta["c2w"][1])
    moved = math.hypot(motion["right_m"], motion["forward_m"]) > 0.1
    return _ego_choices("right" if motion["yaw_right_deg"] > 0 else "left", moved)[0]


# -------------------------------------------------------------------------- object movement
def _objm_text(name: str, side: str, towards: bool) -> str:
    return f"the {name} moved {side} and {'towards' if towards else 'away from'} the camera"


def _make_objm(config, scene_seed, label, position, rng):
    first = _first_view(config, scene_seed, rng)
    if first is None:
        return None
    scene, c2w0, objects, view0, visible = first
    target = visible[int(rng.integers(len(visible)))]
    pos0, fwd0, right0 = common.heading_basis(c2w0)
    lateral = float(rng.choice([0.25, 0.5])) * (1.0 if label == "right" else -1.0)
    depth = float(rng.choice([-0.5, -0.25, 0.25, 0.5]))
    old = np.asarray(target["center"], np.float64)
    new = old.copy()
    new[:2] += lateral * right0 + depth * fwd0
    radius = scene_lib.footprint_radius(target["shape"], "small" if target["size"][0] < 0.6
                                        else "large")
    room = np.asarray(scene.room, np.float64)
    if np.any(np.abs(new[:2]) + radius + 0.1 > room[:2]):
        return None
    for o in objects:
        if o["name"] != target["name"]:
            other_r = scene_lib.footprint_radius(o["shape"], "small" if o["size"][0] < 0.6
                                                 else "large")
            if np.linalg.norm(new[:2] - np.asarray(o["center"][:2])) < radius + other_r + 0.1:
                return None
    change = common.floor_distance(new, pos0) - common.floor_distance(old, pos0)
    if abs(change) < MIN_DISTANCE_CHANGE_M:
        return None
    moved_scene = dataclasses.replace(scene, center=np.asarray(scene.center).copy())
    moved_scene.center[target["slot"]] = new.astype(np.float32)
    cam_moved = rng.random() >= 0.3
    c2w1 = np.asarray(c2w0)
    if cam_moved:
        kind = int(rng.integers(3))
        acts = []
        if kind in (0, 2):
            acts.append(actions.Action(str(rng.choice(["turn_left", "turn_right"])),
                                       float(rng.choice([5, 10, 15]))))
        if kind in (1, 2):
            acts.append(actions.Action("forward", 0.2))
        poses, _ = actions.integrate(acts, c2w0)
        if not _free(moved_scene, poses) or not _free(scene, poses):
            return None
        c2w1 = poses[-1]
    view1 = common.render(moved_scene, np.asarray(c2w1)[None], config)
    if view1["visible_pixels"][0][target["slot"]] < config.min_pixels:
        return None
    towards = change < 0
    correct = _objm_text(target["name"], label, towards)
    if rng.random() < 0.5:
        other = _objm_text(target["name"], "right" if label == "left" else "left", towards)
    else:
        other = _objm_text(target["name"], label, not towards)
    item = dict(
        question="The first image is from the beginning of a video and the second image is from "
                 "the end. Which object moved, and how?",
        choices=_two_options(correct, other, position), answer=correct,
        meta=_base_meta(np.stack([c2w0, c2w1]), config, objects, target=target["name"],
                        target_center_after=[round(float(v), 4) for v in new],
                        lateral_m=lateral, distance_change_m=round(change, 4),
                        camera_moved=bool(cam_moved), label=label))
    return item, [view0["image"][0], view1["image"][0]]


def _relabel_objm(meta) -> str:
    target = common.by_name(meta["objects"])[meta["target"]]
    pos0, _, right0 = common.heading_basis(meta["c2w"][0])
    old, new = np.asarray(target["center"]), np.asarray(meta["target_center_after"])
    side = "right" if float((new - old)[:2] @ right0) > 0 else "left"
    towards = common.floor_distance(new, pos0) < common.floor_distance(old, pos0)
    return _objm_text(meta["target"], side, towards)


# -------------------------------------------------------------------------------- goal aim
def _aim_text(bearing: float) -> str:
    if abs(bearing) <= STRAIGHT_BAND_DEG:
        return "look straight"
    return f"turn {'right' if bearing > 0 else 'left'} by {int(round(abs(bearing)))} degrees"


def _make_aim(config, scene_seed, label, position, rng):
    scene, c2w0 = _scene_and_camera(scene_seed)
    objects = common.objects_meta(scene)
    target = objects[int(rng.integers(len(objects)))]
    if label == "straight":
        bearing = float(rng.uniform(-(STRAIGHT_BAND_DEG - BAND_MARGIN_DEG),
                                    STRAIGHT_BAND_DEG - BAND_MARGIN_DEG))
    else:
        bearing = float(rng.uniform(STRAIGHT_BAND_DEG + BAND_MARGIN_DEG, 40.0))
        bearing *= 1.0 if label == "right" else -1.0
    pos = np.asarray(c2w0, np.float64)[:3, 3]
    to = np.asarray(target["center"][:2]) - pos[:2]
    heading = math.degrees(math.atan2(to[1], to[0])) + bearing  # turning right lowers heading
    if common.floor_distance(pos, target["center"]) < 1.0:
        return None
    pitch = math.degrees(math.asin(-float(np.asarray(c2w0)[2, 2])))
    c2w = geometry.look_c2w(pos, heading, pitch)
    view = common.render(scene, c2w[None], config)
    if view["visible_pixels"][0][target["slot"]] < config.min_pixels:
        return None
    bearing = common.bearing_deg(c2w, target["center"])
    if abs(abs(bearing) % 1.0 - 0.5) < 0.05:  # the rounded degrees must not hinge on float noise
        return None
    correct = _aim_text(bearing)
    if label == "straight":
        other = f"turn {rng.choice(['left', 'right'])} by {int(rng.integers(20, 41))} degrees"
    elif rng.random() < 0.5:
        other = _aim_text(-bearing)
    else:
        other = "look straight"
    item = dict(
        question=f"I need to go to the {target['name']}. Which direction should I turn to face "
                 "the object?",
        choices=_two_options(correct, other, position), answer=correct,
        meta=_base_meta(c2w[None], config, objects, target=target["name"],
                        angle_deg=round(bearing, 3), label=label))
    return item, [view["image"][0]]


def _relabel_aim(meta) -> str:
    target = common.by_name(meta["objects"])[meta["target"]]
    return _aim_text(common.bearing_deg(meta["c2w"][0], target["center"]))


# ---------------------------------------------------------------------- action consequence
def _make_act(config, scene_seed, label, position, rng):
    first = _first_view(config, scene_seed, rng)
    if first is None:
        return None
    scene, c2w0, objects, view, visible = first
    target = visible[int(rng.integers(len(visible)))]
    for _ in range(20):
        turn = str(rng.choice(["left", "right"]))
        acts = [actions.Action(f"turn_{turn}", float(rng.choice([20, 30, 40, 50, 60]))),
                actions.Action("forward", round(float(rng.choice(np.arange(5, 16))) / 10, 1))]
        poses, _ = actions.integrate(acts, c2w0)
        d0 = common.floor_distance(poses[0, :3, 3], target["center"])
        d1 = common.floor_distance(poses[-1, :3, 3], target["center"])
        if (abs(d1 - d0) >= MIN_DISTANCE_CHANGE_M and _free(scene, poses)
                and (d1 < d0) == (label == "closer")):
            break
    else:
        return None
    a, f = acts
    item = dict(
        question=f"If I turn {a.name.split('_')[1]} by {actions.format_number(a.value)} degrees "
                 f"and then move forward {actions.format_number(f.value)} meters, will I get "
                 f"closer to or further from the {target['name']}?",
        choices=_two_options(label, "further" if label == "closer" else "closer", position),
        answer=label,
        meta=_base_meta(c2w0[None], config, objects, target=target["name"],
                        actions=actions.format_actions(acts),
                        c2w_after=np.asarray(poses[-1], np.float64).round(6).tolist(),
                        distance_before_m=round(d0, 4), distance_after_m=round(d1, 4),
                        label=label))
    return item, [view["image"][0]]


def _relabel_act(meta) -> str:
    target = common.by_name(meta["objects"])[meta["target"]]
    poses, _ = actions.integrate(actions.parse_actions(meta["actions"]), meta["c2w"][0])
    d0 = common.floor_distance(poses[0, :3, 3], target["center"])
    d1 = common.floor_distance(poses[-1, :3, 3], target["center"])
    return "closer" if d1 < d0 else "further"


# ----------------------------------------------------------------------------- perspective
def _pers_pose(c2w0, mark, turn_deg: float) -> np.ndarray:
    """Standing on ``mark`` with the heading of ``c2w0`` turned right by ``turn_deg``."""
    _, fwd, _ = common.heading_basis(c2w0)
    heading = math.degrees(math.atan2(fwd[1], fwd[0])) - turn_deg
    return geometry.look_c2w([mark[0], mark[1], float(np.asarray(c2w0)[2, 3])], heading, 0.0)


def _pers_label(meta) -> str:
    target = common.by_name(meta["objects"])[meta["target"]]
    if meta["variant"] == "side":
        pose = _pers_pose(meta["c2w"][0], meta["mark"], meta["turn_deg"])
        return "right" if common.bearing_deg(pose, target["center"]) > 0 else "left"
    now = common.floor_distance(np.asarray(meta["c2w"][0])[:3, 3], target["center"])
    return "closer" if common.floor_distance(meta["mark"], target["center"]) < now else "further"


def _make_pers(config, scene_seed, label, position, rng):
    first = _first_view(config, scene_seed, rng)
    if first is None:
        return None
    scene, c2w0, objects, view, visible = first
    res = config.resolution
    origins, dirs = geometry.pixel_rays(config.K, c2w0, res, res)
    points = origins + view["depth"][0][..., None] * dirs
    lo, hi = int(0.2 * res), int(0.8 * res)
    ii, jj = np.meshgrid(np.arange(lo, hi), np.arange(lo, hi), indexing="ij")
    floor = (view["instance"][0][ii, jj] < 0) & (np.abs(points[ii, jj, 2]) < 1e-3)
    cand = np.flatnonzero(floor)
    if cand.size == 0:
        return None
    variant = "side" if label in ("left", "right") else "distance"
    for pick in rng.permutation(cand)[:15]:
        i, j = int(ii.flat[pick]), int(jj.flat[pick])
        mark = points[i, j].astype(np.float64)
        mark[2] = 0.0
        if not scene_lib.free_space(scene, mark[None, :2], 0.3, 0.4)[0]:
            continue
        if common.floor_distance(mark, c2w0[:3, 3]) < 0.8:
            continue
        target = visible[int(rng.integers(len(visible)))]
        turn = float(rng.choice([-90.0, 90.0]))
        meta = _base_meta(c2w0[None], config, objects, target=target["name"],
                          mark=[round(float(v), 4) for v in mark], mark_uv=[j + 0.5, i + 0.5],
                          turn_deg=turn, variant=variant, label=label)
        if variant == "side":
            bearing = common.bearing_deg(_pers_pose(c2w0, mark, turn), target["center"])
            if not PERS_SIDE_MARGIN_DEG <= abs(bearing) <= 180 - PERS_SIDE_MARGIN_DEG:
                continue
            meta["bearing_after_deg"] = round(bearing, 3)
        else:
            now = common.floor_distance(c2w0[:3, 3], target["center"])
            after = common.floor_distance(mark, target["center"])
            if abs(after - now) < PERS_MIN_DISTANCE_CHANGE_M:
                continue
            meta.update(distance_now_m=round(now, 4), distance_after_m=round(after, 4))
        if _pers_label(meta) != label:
            continue
        break
    else:
        return None
    image = common.draw_cross(view["image"][0], (j + 0.5, i + 0.5))
    name = target["name"]
    if variant == "side":
        side = "right" if turn > 0 else "left"
        question = (f"If I go to the X mark on the floor and turn {side} by 90 degrees, will the "
                    f"{name} be to my left or to my right?")
        options = ("left", "right")
    else:
        question = (f"If I go to the X mark on the floor, will the {name} be closer to me or "
                    "further away than it is now?")
        options = ("closer", "further")
    other = options[1] if label == options[0] else options[0]
    item = dict(question=question, choices=_two_options(label, other, position), answer=label,
                meta=meta)
    return item, [image]


MAKERS = {"ego_movement": (_make_ego, _relabel_ego), "object_movement": (_make_objm, _relabel_objm),
          "goal_aim": (_make_aim, _relabel_aim), "action_consequence": (_make_act, _relabel_act),
          "perspective": (_make_pers, _pers_label)}


def relabel(item: dict) -> str:
    """The answer of ``item`` recomputed from its ``meta`` only."""
    return MAKERS[item["category"]][1](item["meta"])


def build(seed: int, per_category: int, config: common.RenderConfig = common.RenderConfig(),
          categories=CATEGORIES) -> tuple[list[dict], dict]:
    """``(items, images)``: ``per_category`` items of each category; ``images`` maps the names
    in the items' ``images`` lists to uint8 arrays (H, W, 3)."""
    return common.build_categories(SUITE, seed, per_category, config, CATEGORIES, categories,
                                   CLASSES, {c: m[0] for c, m in MAKERS.items()}, num_options=2)
