"""Builders of the eight World2VLM tasks from plain trajectory data (paper.md §5).

Inputs (all plain data; nothing here runs a teacher or a detector):
  actions        the requested canonical action list of a trajectory, from its first frame to its
                 last (`w2v_jax.actions.Action`, `(name, value)` pairs or `{"name", "value"}`
                 dicts; names forward/backward/left/right/turn_left/turn_right, value >= 0 in
                 meters or degrees). It is canonicalised again here (idempotent).
  target_frame   index of the last frame in the trajectory's frame list (>= 1); every task pairs
                 frame 0 with it ("max displacement"). With a teacher returning only the first and
                 last views, pass 1.
  detections     per frame, a list of dicts `{"label": str, "box": [x1, y1, x2, y2] ints in
                 0-1000, "score": float in [0, 1], "track_id": int | None}`; track ids link the
                 same instance across the first and last frame (the instance matcher's output).
  traj_id        the trajectory name; it keys the D-variant choice.
  seed           every random choice (template pick, A4 shuffle and perturbation) comes from it.

Output records (JSON-able dicts):
  {"task_type": "A1".."D4", "prompt": str (with <image> tags), "answer": str,
   "images": [frame indices], "meta": {...}}
A builder returns None (or an empty list) when its task does not apply to the trajectory.

Selection rules follow the official `*_max_dist.py` generators, with these fixes (paper.md §12):
  §12.8  A4 false claims differ from the truth by more than the reward's full-credit tolerance
         (0.5 m / 5 deg): a direction flip only when that moves the claim by more than the
         tolerance (2·value > tol), otherwise a magnitude change of 0.6-1.5 m / 10-45 deg, up or
         down (the official +0.1 m / +5 deg is indistinguishable and always an increase).
  §12.4  every D2/D4 variant answer (yes/no, A/B, sentence) is scorable by
         `w2v_jax.supervision.reward` (its fix); D3 answers always parse as actions.
  §12.7  D2 and D4 need a tracked first-frame object (no same-label fallback for D4 positives);
         D2 decides visibility on the last frame and drops ambiguous cases (the track is still
         detected there but fails the filters: cut by the image edge, too small/large, score
         < 0.3) instead of calling them "disappears"; partners must carry the same label; a D4
         negative must have a track id of its own.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from typing import Any, Iterable, Mapping, Sequence

from w2v_jax import actions as actions_lib
from w2v_jax.actions import Action, format_actions
from w2v_jax.supervision import templates as T

# Full-credit tolerances of the reward (w2v_jax.supervision.reward); A4 false claims exceed them.
MOVE_TOLERANCE_M = 0.5
TURN_TOLERANCE_DEG = 5.0
# Magnitude changes of a false A4 claim: all strictly beyond the tolerance.
_MOVE_DELTAS_M = tuple(round(0.6 + 0.1 * k, 1) for k in range(10))  # 0.6 .. 1.5
_TURN_DELTAS_DEG = tuple(float(d) for d in range(10, 50, 5))  # 10 .. 45
_MIN_MOVE_M = 0.1
_MIN_TURN_DEG = 10.0


# ----------------------------------------------------------------------------- inputs
@dataclasses.dataclass(frozen=True)
class DetectionFilter:
    """Official keep-filter: score >= min_score, area / image in [min_area, max_area], the box
    inside an `edge_margin` border; boxes in 0-1000 units (the image is 1000 x 1000)."""

    min_score: float = 0.3
    min_area: float = 0.01
    max_area: float = 0.6
    edge_margin: float = 0.01

    def __post_init__(self):
        if not 0.0 <= self.min_area <= self.max_area <= 1.0:
            raise ValueError(
                f"need 0 <= min_area <= max_area <= 1, got {self.min_area}, {self.max_area}"
            )
        if not 0.0 <= self.edge_margin < 0.5:
            raise ValueError(f"edge_margin must be in [0, 0.5), got {self.edge_margin}")

    def keeps(self, det: Mapping[str, Any]) -> bool:
        x1, y1, x2, y2 = det["box"]
        if det["score"] < self.min_score or x2 <= x1 or y2 <= y1:
            return False
        if not self.min_area <= (x2 - x1) * (y2 - y1) / 1e6 <= self.max_area:
            return False
        low, high = self.edge_margin * 1000.0, (1.0 - self.edge_margin) * 1000.0
        return x1 >= low and y1 >= low and x2 <= high and y2 <= high


def as_actions(actions: Iterable[Any]) -> list[Action]:
    """Canonical `Action` list of a task (``actions_lib.as_actions(..., canonical=True)``)."""
    return actions_lib.as_actions(actions, canonical=True)


def validate_detections(detections: Iterable[Mapping[str, Any]], field: str) -> list[dict]:
    """Checked copies `{label, box (4 ints in 0-1000), score, track_id}`; ValueError names the
    offending field."""
    if isinstance(detections, (str, bytes, Mapping)):
        raise ValueError(
            f"{field} must be a list of detection dicts, got {type(detections).__name__}"
        )
    out = []
    for i, det in enumerate(detections):
        where = f"{field}[{i}]"
        if not isinstance(det, Mapping):
            raise ValueError(f"{where} must be a dict, got {det!r}")
        label, box, score = det.get("label"), det.get("box"), det.get("score")
        track_id = det.get("track_id")
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{where}.label must be a non-empty string, got {label!r}")
        if (
            not isinstance(box, Sequence)
            or len(box) != 4
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in box)
            or not all(0 <= v <= 1000 for v in box)
        ):
            raise ValueError(f"{where}.box must be 4 integers in [0, 1000], got {box!r}")
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not 0 <= score <= 1:
            raise ValueError(f"{where}.score must be a number in [0, 1], got {score!r}")
        if track_id is not None and (
            isinstance(track_id, bool) or not isinstance(track_id, numbers.Integral)
        ):
            raise ValueError(f"{where}.track_id must be an int or None, got {track_id!r}")
        out.append(
            {
                "label": label,
                "box": [int(v) for v in box],
                "score": float(score),
                "track_id": None if track_id is None else int(track_id),
            }
        )
    return out


def filter_detections(
    detections: Iterable[Mapping[str, Any]], filt: DetectionFilter = DetectionFilter()
) -> list[dict]:
    """The detections passing `filt` (score >= 0.3, area 1-60 %, 1 % edge margin), in order."""
    return [d for d in validate_detections(detections, "detections") if filt.keeps(d)]


def _check_frame(target_frame: int) -> int:
    if (
        isinstance(target_frame, bool)
        or not isinstance(target_frame, numbers.Integral)
        or target_frame < 1
    ):
        raise ValueError(f"target_frame must be an int >= 1, got {target_frame!r}")
    return int(target_frame)


def _record(
    task_type: str, template: T.Template, slots: Mapping[str, str], images: list[int], meta: dict
) -> dict:
    prompt, answer = template.fill(slots)
    return {
        "task_type": task_type,
        "prompt": prompt,
        "answer": answer,
        "images": images,
        "meta": meta,
    }


# ----------------------------------------------------------------------------- A1 - A4
def _sums(actions: Sequence[Action]) -> dict[str, float]:
    sums = {"x": 0.0, "z": 0.0, "yaw": 0.0}
    for a in actions:
        sums[a.axis] += a.signed
    return sums


def build_a1(actions, *, target_frame: int = 1, seed: int = 0, traj_id: str = "") -> dict | None:
    """A1 distance, for translation-only trajectories (the official T2/T3 single moves).

    The dominant axis of the summed translation (forward/backward when |z| >= |x|) is answered as
    `move {dir} {dist} meters`; the prompt reveals the direction, as the official one does.
    """
    acts = as_actions(actions)
    if any(a.is_turn for a in acts):
        return None
    sums = _sums(acts)
    axis = "z" if abs(sums["z"]) >= abs(sums["x"]) else "x"
    if abs(sums[axis]) < 1e-6:
        return None
    move = Action.from_signed(axis, sums[axis])
    rng = random.Random(seed)
    slots = {"DIR": move.name, "DIST": T.format_number(move.value)}
    meta = {"traj_id": traj_id, "actions": format_actions(acts)}
    return _record(
        "A1", rng.choice(T.A_TEMPLATES["A1"]), slots, [0, _check_frame(target_frame)], meta
    )


def build_a2(actions, *, target_frame: int = 1, seed: int = 0, traj_id: str = "") -> dict | None:
    """A2 angle, for rotation-only trajectories (official T1): `turn {dir} {angle} degrees`."""
    acts = as_actions(actions)
    if not all(a.is_turn for a in acts):
        return None
    yaw = _sums(acts)["yaw"]
    if abs(yaw) < 1e-6:
        return None
    turn = Action.from_signed("yaw", yaw)
    rng = random.Random(seed)
    slots = {"TURN_DIR": turn.name.split("_")[1], "ANGLE": T.format_number(turn.value)}
    meta = {"traj_id": traj_id, "actions": format_actions(acts)}
    return _record(
        "A2", rng.choice(T.A_TEMPLATES["A2"]), slots, [0, _check_frame(target_frame)], meta
    )


def build_a3(actions, *, target_frame: int = 1, seed: int = 0, traj_id: str = "") -> dict | None:
    """A3 action sequence, for multi-step trajectories (>= 2 canonical actions, official T4)."""
    acts = as_actions(actions)
    if len(acts) < 2:
        return None
    rng = random.Random(seed)
    slots = {"ACTION_SEQ": format_actions(acts), "ACTION_COUNT": str(len(acts))}
    meta = {"traj_id": traj_id, "actions": format_actions(acts)}
    return _record(
        "A3", rng.choice(T.A_TEMPLATES["A3"]), slots, [0, _check_frame(target_frame)], meta
    )


def _tolerance(action: Action) -> float:
    return TURN_TOLERANCE_DEG if action.is_turn else MOVE_TOLERANCE_M


def is_false_claim(truth: Sequence[Action], claim: Sequence[Action]) -> bool:
    """True when `claim` differs from `truth` by more than the reward tolerance somewhere: another
    length, another axis at a position, or a signed value off by > 0.5 m / 5 deg."""
    truth, claim = list(truth), list(claim)
    if len(truth) != len(claim):
        return True
    for t, c in zip(truth, claim):
        if t.axis != c.axis or abs(t.signed - c.signed) > _tolerance(t):
            return True
    return False


def false_claim(actions, rng: random.Random) -> list[Action]:
    """The official negative (one random action perturbed), made really false (paper.md §12.8).

    With p = 0.5 the direction flips (when 2·value exceeds the tolerance), otherwise the magnitude
    moves up or down by 0.6-1.5 m / 10-45 deg (down only while it stays >= 0.1 m / 10 deg).
    """
    acts = as_actions(actions)
    pick = rng.randrange(len(acts))
    action = acts[pick]
    flip = rng.random() < 0.5
    if flip and 2.0 * action.value > _tolerance(action):
        changed = Action.from_signed(action.axis, -action.signed)
    else:
        delta = rng.choice(_TURN_DELTAS_DEG if action.is_turn else _MOVE_DELTAS_M)
        floor = _MIN_TURN_DEG if action.is_turn else _MIN_MOVE_M
        down = rng.random() < 0.5 and action.value - delta >= floor
        changed = Action(
            action.name, round(action.value - delta if down else action.value + delta, 3)
        )
    out = list(acts)
    out[pick] = changed
    if not is_false_claim(acts, out):  # guaranteed by the choices above
        raise AssertionError(f"false claim {out} is within tolerance of {acts}")
    return out


def build_a4(
    actions,
    *,
    claim_true: bool,
    target_frame: int = 1,
    seed: int = 0,
    traj_id: str = "",
    rng: random.Random | None = None,
) -> dict:
    """A4 true/false claim; a false claim comes from `false_claim` (with `rng`, else `seed`)."""
    acts = as_actions(actions)
    rng = random.Random(seed) if rng is None else rng
    claimed = acts if claim_true else false_claim(acts, rng)
    slots = {"CLAIM_ACTION": T.claim_text(claimed), "TF": T.true_false(claim_true)}
    meta = {
        "traj_id": traj_id,
        "actions": format_actions(acts),
        "claim": format_actions(claimed),
        "claim_true": bool(claim_true),
    }
    return _record(
        "A4", rng.choice(T.A_TEMPLATES["A4"]), slots, [0, _check_frame(target_frame)], meta
    )


def build_a4_set(candidates: Sequence[Mapping[str, Any]], seed: int) -> list[dict]:
    """Official A4 labelling: shuffle the candidates with `seed`; even positions true, odd false.

    candidates: dicts {"actions", "target_frame" (default 1), "traj_id" (default "")}.
    """
    rng = random.Random(seed)
    order = list(candidates)
    rng.shuffle(order)
    return [
        build_a4(
            c["actions"],
            claim_true=(i % 2 == 0),
            target_frame=c.get("target_frame", 1),
            traj_id=c.get("traj_id", ""),
            rng=rng,
        )
        for i, c in enumerate(order)
    ]


def build_motion_record(actions, *, target_frame: int = 1, seed: int = 0,
                        traj_id: str = "") -> tuple[dict | None, dict | None]:
    """The official routing of one trajectory: ``(record, a4_candidate)``. One canonical turn ->
    A2; one canonical move -> A1; two or more -> A3 plus an A4 candidate ``{actions,
    target_frame, traj_id}`` (A4 needs a pair not used by A1/A2; candidates are labelled per
    split by `build_a4_set`)."""
    acts = as_actions(actions)
    kwargs = {"target_frame": target_frame, "traj_id": traj_id, "seed": seed}
    if len(acts) == 1:
        builder = build_a2 if acts[0].is_turn else build_a1
        return builder(acts, **kwargs), None
    candidate = {"actions": acts, "target_frame": target_frame, "traj_id": traj_id}
    return build_a3(acts, **kwargs), candidate


def build_motion_records(trajectories: Sequence[Mapping[str, Any]], seed: int) -> list[dict]:
    """A1-A4 for a list of trajectories (`build_motion_record` each, then `build_a4_set`).

    trajectories: dicts {"actions", "target_frame" (default 1), "traj_id" (default "")}.
    """
    rng = random.Random(seed)
    records, a4_candidates = [], []
    for traj in trajectories:
        record, candidate = build_motion_record(
            traj["actions"], target_frame=traj.get("target_frame", 1),
            traj_id=traj.get("traj_id", ""), seed=rng.randrange(2**31))
        records.append(record)
        if candidate is not None:
            a4_candidates.append(candidate)
    return records + build_a4_set(a4_candidates, rng.randrange(2**31))


# ----------------------------------------------------------------------------- D1 - D4
def _best(dets: Iterable[dict], filt: DetectionFilter) -> dict | None:
    """Highest-score detection passing `filt` (first one on ties), as the official `_find_det`."""
    best = None
    for d in dets:
        if filt.keeps(d) and (best is None or d["score"] > best["score"]):
            best = d
    return best


def _partner(start: dict, last: Sequence[dict], filt: DetectionFilter) -> dict | None:
    return _best(
        (d for d in last if d["track_id"] == start["track_id"] and d["label"] == start["label"]),
        filt,
    )


def _best_track_pair(first: Sequence[dict], last: Sequence[dict], filt: DetectionFilter):
    """Tracked pair with the highest summed score, both passing `filt` (official D1/D3 rule)."""
    best, best_score = None, -math.inf
    for start in first:
        if start["track_id"] is None or not filt.keeps(start):
            continue
        partner = _partner(start, last, filt)
        if partner is not None and start["score"] + partner["score"] > best_score:
            best, best_score = (start, partner), start["score"] + partner["score"]
    return best


def _d_context(actions, first_detections, last_detections, target_frame):
    acts = as_actions(actions)
    first = validate_detections(first_detections, "first_detections")
    last = validate_detections(last_detections, "last_detections")
    return acts, first, last, _check_frame(target_frame)


def _d_template(task_type: str, key: str) -> tuple[T.Template, int]:
    variants = T.D_TEMPLATES[task_type]
    index = T.variant_index(key, len(variants))
    return variants[index], index


def _d_meta(traj_id, acts, start, partner, variant) -> dict:
    return {
        "traj_id": traj_id,
        "actions": format_actions(acts),
        "label": start["label"],
        "track_id": start["track_id"],
        "box_first": list(start["box"]),
        "box_last": None if partner is None else list(partner["box"]),
        "variant": variant,
    }


def build_d1(
    actions,
    first_detections,
    last_detections,
    *,
    target_frame: int = 1,
    traj_id: str = "",
    filt: DetectionFilter = DetectionFilter(),
) -> dict | None:
    """D1: the box of the best tracked pair in the last frame, given its first-frame box."""
    acts, first, last, target_frame = _d_context(
        actions, first_detections, last_detections, target_frame
    )
    pair = _best_track_pair(first, last, filt)
    if pair is None:
        return None
    start, partner = pair
    template, variant = _d_template("D1", T.d_variant_key(traj_id, start["label"], target_frame))
    slots = {
        "OBJECT": start["label"],
        "BBOX_1": T.box_text(start["box"]),
        "BBOX_2": T.box_text(partner["box"]),
        "ACTION_SEQ": format_actions(acts),
    }
    return _record(
        "D1", template, slots, [0, target_frame], _d_meta(traj_id, acts, start, partner, variant)
    )


def build_d2(
    actions,
    first_detections,
    last_detections,
    *,
    target_frame: int = 1,
    traj_id: str = "",
    filt: DetectionFilter = DetectionFilter(),
) -> dict | None:
    """D2: does the top first-frame object disappear in the last frame? Shows the first image only.

    "no" (remains) when a filtered detection of its track and label is in the last frame; "yes"
    (disappears) when its track is not detected there at all; None when ambiguous or untracked.
    """
    acts, first, last, target_frame = _d_context(
        actions, first_detections, last_detections, target_frame
    )
    start = _best(first, filt)
    if start is None or start["track_id"] is None:
        return None
    partner = _partner(start, last, filt)
    disappears = partner is None
    if disappears and any(d["track_id"] == start["track_id"] for d in last):
        return None
    template, variant = _d_template("D2", T.d_variant_key(traj_id, start["label"], target_frame))
    slots = {
        "OBJECT": start["label"],
        "BBOX_1": T.box_text(start["box"]),
        "ACTION_SEQ": format_actions(acts),
        "YN": T.yes_no(disappears),
        "VIS_CHOICE": T.visibility_choice(disappears),
        "VIS_NL": T.visibility_sentence(disappears, start["label"]),
    }
    meta = {**_d_meta(traj_id, acts, start, partner, variant), "disappears": disappears}
    return _record("D2", template, slots, [0], meta)


def build_d3(
    actions,
    first_detections,
    last_detections,
    *,
    target_frame: int = 1,
    traj_id: str = "",
    filt: DetectionFilter = DetectionFilter(),
) -> dict | None:
    """D3: the 1-2 canonical actions, given the same tracked object in both frames."""
    acts, first, last, target_frame = _d_context(
        actions, first_detections, last_detections, target_frame
    )
    if len(acts) > 2:
        return None
    pair = _best_track_pair(first, last, filt)
    if pair is None:
        return None
    start, partner = pair
    template, variant = _d_template("D3", T.d_variant_key(traj_id, start["label"], target_frame))
    slots = {
        "OBJECT": start["label"],
        "BBOX_1": T.box_text(start["box"]),
        "BBOX_2": T.box_text(partner["box"]),
        "ACTION_SEQ": format_actions(acts),
        "ACTION_COUNT": str(len(acts)),
        "ACTION_SEQ_NL": T.natural_sequence_text(acts),
    }
    return _record(
        "D3", template, slots, [0, target_frame], _d_meta(traj_id, acts, start, partner, variant)
    )


def build_d4(
    actions,
    first_detections,
    last_detections,
    *,
    target_frame: int = 1,
    traj_id: str = "",
    filt: DetectionFilter = DetectionFilter(),
) -> list[dict]:
    """D4: same instance? Up to two records for the top tracked first-frame object: a positive
    (its own track in the last frame) and a negative (the best other tracked same-label object)."""
    acts, first, last, target_frame = _d_context(
        actions, first_detections, last_detections, target_frame
    )
    start = _best(first, filt)
    if start is None or start["track_id"] is None:
        return []
    positive = _partner(start, last, filt)
    negative = _best(
        (
            d
            for d in last
            if d["label"] == start["label"]
            and d["track_id"] is not None
            and d["track_id"] != start["track_id"]
        ),
        filt,
    )
    out = []
    for partner, same in ((positive, True), (negative, False)):
        if partner is None:
            continue
        key = T.d_variant_key(traj_id, start["label"], target_frame, "pos" if same else "neg")
        template, variant = _d_template("D4", key)
        slots = {
            "OBJECT": start["label"],
            "BBOX_1": T.box_text(start["box"]),
            "BBOX_2": T.box_text(partner["box"]),
            "ACTION_SEQ": format_actions(acts),
            "YN": T.yes_no(same),
            "IDENTITY_CHOICE": T.identity_choice(same),
            "IDENTITY_NL": T.identity_sentence(same),
        }
        meta = {**_d_meta(traj_id, acts, start, partner, variant), "same": same}
        out.append(_record("D4", template, slots, [0, target_frame], meta))
    return out


def build_object_records(
    actions,
    first_detections,
    last_detections,
    *,
    target_frame: int = 1,
    traj_id: str = "",
    filt: DetectionFilter = DetectionFilter(),
) -> list[dict]:
    """D1, D2, D3 and D4 of one trajectory (those that apply), in that order."""
    kwargs = {"target_frame": target_frame, "traj_id": traj_id, "filt": filt}
    args = (actions, first_detections, last_detections)
    single = [build_d1(*args, **kwargs), build_d2(*args, **kwargs), build_d3(*args, **kwargs)]
    return [r for r in single if r is not None] + build_d4(*args, **kwargs)
