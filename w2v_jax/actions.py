"""The action grammar of World2VLM: parse, format, canonicalise, integrate and sample trajectories.

Six primitives, all egocentric and horizontal (paper.md §3):

============  ===========  =================================================
name          unit         effect in the current OpenCV camera frame
============  ===========  =================================================
forward       metres       +z
backward      metres       -z
right         metres       +x
left          metres       -x
turn_right    degrees      yaw about camera +y, view swings toward +x
turn_left     degrees      the opposite turn
============  ===========  =================================================

Text form (case-insensitive on input, this exact form on output):
``move forward 1.5 meters; turn left 30 degrees``. Numbers print with at most 3 decimals and
trailing zeros stripped.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from w2v_jax import geometry

MOVES = ("forward", "backward", "left", "right")
TURNS = ("turn_left", "turn_right")
NAMES = MOVES + TURNS

# axis and sign of each primitive: z = forward, x = right, yaw = turn right
_AXIS = {
    "forward": ("z", 1.0),
    "backward": ("z", -1.0),
    "right": ("x", 1.0),
    "left": ("x", -1.0),
    "turn_right": ("yaw", 1.0),
    "turn_left": ("yaw", -1.0),
}
_FROM_AXIS = {("z", 1.0): "forward", ("z", -1.0): "backward", ("x", 1.0): "right",
              ("x", -1.0): "left", ("yaw", 1.0): "turn_right", ("yaw", -1.0): "turn_left"}

GRAMMAR = (
    "actions separated by ',', ';', 'then' or 'and', each either "
    "'move forward|backward|left|right <number> meter(s)' or "
    "'turn left|right <number> degree(s)', e.g. 'move forward 1.5 meters; turn left 30 degrees'"
)

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
# re.ASCII: the grammar is ASCII (\d must not match '５' or '١٥', which float() would accept)
_ACTION_RE = re.compile(
    rf"^(?:move\s+(forward|backward|left|right)\s+{_NUM}\s*meters?"
    rf"|turn\s+(left|right)\s+{_NUM}\s*degrees?)$", re.ASCII
)
_SEPARATOR_RE = re.compile(
    r"\s*(?:[,;]\s*(?:and\s+then|then|and)?|\band\s+then\b|\bthen\b|\band\b)\s*", re.ASCII)


@dataclasses.dataclass(frozen=True)
class Action:
    """One primitive: ``name`` in :data:`NAMES`, ``value`` >= 0 in metres (moves) or degrees (turns)."""

    name: str
    value: float

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"Action.name must be one of {NAMES}, got {self.name!r}")
        value = float(self.value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"Action.value must be a finite number >= 0 (metres or degrees), got {self.value!r} "
                f"for {self.name!r}"
            )
        object.__setattr__(self, "value", value)

    @property
    def is_turn(self) -> bool:
        return self.name in TURNS

    @property
    def axis(self) -> str:
        """'z' (forward/backward), 'x' (right/left) or 'yaw' (turns)."""
        return _AXIS[self.name][0]

    @property
    def signed(self) -> float:
        """Value along the axis: forward, right and turn_right positive."""
        return _AXIS[self.name][1] * self.value

    @staticmethod
    def from_signed(axis: str, amount: float) -> "Action":
        """The action moving ``amount`` along ``axis`` ('z', 'x' or 'yaw'; sign picks the direction)."""
        if axis not in ("z", "x", "yaw"):
            raise ValueError(f"axis must be 'z', 'x' or 'yaw', got {axis!r}")
        return Action(_FROM_AXIS[(axis, 1.0 if amount >= 0 else -1.0)], abs(float(amount)))

    def text(self) -> str:
        return format_actions([self])


# --------------------------------------------------------------------------- text


def format_number(x: float) -> str:
    """At most 3 decimals, trailing zeros (and a bare point) stripped: 1.5 -> '1.5', 40.0 -> '40'."""
    s = f"{float(x):.3f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def format_actions(actions: Iterable[Action]) -> str:
    """``move forward 1.5 meters; turn left 30 degrees`` (joined with '; ')."""
    parts = []
    for a in actions:
        if a.is_turn:
            parts.append(f"turn {a.name.split('_')[1]} {format_number(a.value)} degrees")
        else:
            parts.append(f"move {a.name} {format_number(a.value)} meters")
    return "; ".join(parts)


def parse_actions(text: str) -> list[Action]:
    """Parse the action grammar (see :data:`GRAMMAR`). Raises ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"parse_actions expects a string, got {type(text).__name__}; grammar: {GRAMMAR}")
    if not text.isascii():
        bad = next(c for c in text if not c.isascii())
        raise ValueError(f"non-ASCII character {bad!r} in {text!r}; the grammar is ASCII: {GRAMMAR}")
    body = " ".join(text.strip().lower().split()).rstrip(".").strip()
    if not body:
        raise ValueError(f"no actions in {text!r}; expected {GRAMMAR}")
    actions = []
    for piece in _SEPARATOR_RE.split(body):
        m = _ACTION_RE.match(piece.strip())
        if m is None:
            raise ValueError(f"cannot parse action {piece!r} in {text!r}; expected {GRAMMAR}")
        if m.group(1):
            actions.append(Action(m.group(1), float(m.group(2))))
        else:
            actions.append(Action("turn_" + m.group(3), float(m.group(4))))
    return actions


# ---------------------------------------------------------------------- canonical


def canonicalize(
    actions: Sequence[Action], yaw_eps_deg: float = 1.0, trans_eps_m: float = 0.02
) -> list[Action]:
    """Merge adjacent same-axis actions (signed sum), drop |yaw| < 1 deg and |t| < 0.02 m.

    Repeats until nothing changes, so ``forward 1, turn left 0.5, forward 1`` becomes ``forward 2``.
    """
    signed = [(a.axis, a.signed) for a in actions]
    while True:
        merged: list[tuple[str, float]] = []
        for axis, amount in signed:
            if merged and merged[-1][0] == axis:
                merged[-1] = (axis, merged[-1][1] + amount)
            else:
                merged.append((axis, amount))
        kept = [
            (axis, amount)
            for axis, amount in merged
            if abs(amount) >= (yaw_eps_deg if axis == "yaw" else trans_eps_m)
        ]
        if kept == signed:
            break
        signed = kept
    return [Action.from_signed(axis, round(amount, 9)) for axis, amount in signed]


# ---------------------------------------------------------------------- integrate


def segment_frames(action: Action, max_step_m: float = 0.2, max_step_deg: float = 5.0,
                   min_frames: int = 8) -> int:
    """Frames of one segment, both ends included: ``max(ceil(|m| / max_step) + 1, min_frames)``."""
    step = max_step_deg if action.is_turn else max_step_m
    return max(int(math.ceil(action.value / step - 1e-9)) + 1, int(min_frames))


def integrate(
    actions: Sequence[Action],
    c2w0=None,
    max_step_m: float = 0.2,
    max_step_deg: float = 5.0,
    min_frames: int = 8,
) -> tuple[np.ndarray, list[int]]:
    """Camera poses along a trajectory.

    Each action is a segment of ``n = segment_frames(...)`` frames sharing its first frame with the end
    of the previous segment; within a segment every step changes one primitive by ``m / (n - 1)``.

    Returns ``(c2w (N,4,4) float32, key_frames)`` where ``c2w[0] = c2w0`` (identity by default) and
    ``key_frames = [0, end of segment 1, end of segment 2, ...]``.
    """
    if len(actions) == 0:
        raise ValueError("integrate needs at least one action; got an empty list")
    if not (0 < max_step_m < math.inf and 0 < max_step_deg < math.inf and min_frames >= 2):
        raise ValueError(
            f"need max_step_m > 0, max_step_deg > 0, min_frames >= 2; got {max_step_m}, "
            f"{max_step_deg}, {min_frames}"
        )
    c2w = np.eye(4, dtype=np.float64) if c2w0 is None else np.asarray(c2w0, np.float64)
    poses, key_frames = [c2w], [0]
    for a in actions:
        n = segment_frames(a, max_step_m, max_step_deg, min_frames)
        delta = a.signed / (n - 1)
        if a.axis == "yaw":
            step = geometry.egocentric_step(yaw_right_deg=delta)
        elif a.axis == "x":
            step = geometry.egocentric_step(right_m=delta)
        else:
            step = geometry.egocentric_step(forward_m=delta)
        step = step.astype(np.float64)
        for _ in range(n - 1):
            poses.append(poses[-1] @ step)
        key_frames.append(len(poses) - 1)
    return np.stack(poses).astype(np.float32), key_frames


def _as_action(item: Any, where: str) -> Action:
    if isinstance(item, Action):
        return item
    if isinstance(item, Mapping):
        name, value = item.get("name"), item.get("value")
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        name, value = item
    else:
        raise ValueError(
            f"{where} must be an Action, (name, value) or {{name, value}}, got {item!r}")
    if name not in NAMES:
        raise ValueError(f"{where}.name must be one of {NAMES}, got {name!r}")
    return Action(name, value)


def as_actions(trajectory: Any, *, canonical: bool = False) -> list[Action]:
    """A list of :class:`Action` from a :class:`Trajectory`, action text, or a non-empty sequence
    of Actions / ``(name, value)`` pairs / ``{name, value}`` dicts; ValueError otherwise.

    ``canonical=True`` also merges and drops as :func:`canonicalize` and refuses a result without
    motion (task records); the default keeps the actions as given (a teacher's key frames are the
    ends of the given segments).
    """
    if isinstance(trajectory, Trajectory):
        out = list(trajectory.actions)
    elif isinstance(trajectory, str):
        out = parse_actions(trajectory)
    elif isinstance(trajectory, (bytes, Mapping)) or not isinstance(trajectory, Iterable):
        raise ValueError(f"actions must be a Trajectory, action text or a sequence of actions, "
                         f"got {type(trajectory).__name__}")
    else:
        out = [_as_action(a, f"actions[{i}]") for i, a in enumerate(trajectory)]
    given = out
    if canonical:
        out = canonicalize(out)
    if not out:
        raise ValueError(f"actions must describe some motion, got {given!r}")
    return out


def target_poses(trajectory: Any, key_frames: bool = False) -> np.ndarray:
    """Poses (V, 4, 4) float32 of the views at the end of ``trajectory`` (V = 1) or, with
    ``key_frames``, at the end of every action segment, in the start camera's frame (the start
    camera is the identity): what a teacher is asked to show."""
    poses, keys = integrate(as_actions(trajectory))
    picks = keys[1:] if key_frames else [keys[-1]]
    return poses[picks].astype(np.float32)


def relative_motion(c2w_a, c2w_b) -> dict:
    """Motion from pose a to pose b in a's frame: ``{'right_m', 'forward_m', 'yaw_right_deg'}``."""
    T = np.asarray(geometry.relative_pose(np.asarray(c2w_a), np.asarray(c2w_b)), np.float64)
    return {
        "right_m": float(T[0, 3]),
        "forward_m": float(T[2, 3]),
        "yaw_right_deg": float(geometry.relative_yaw_deg(T)),
    }


# ------------------------------------------------------------------------ sample


@dataclasses.dataclass(frozen=True)
class Range:
    """Grid ``min + k * unit`` for k uniform in ``{0, ..., round((max - min) / unit)}``."""

    min: float
    max: float
    unit: float

    def __post_init__(self):
        if not (self.unit > 0 and 0 <= self.min <= self.max):
            raise ValueError(f"Range needs 0 <= min <= max and unit > 0, got {self}")

    def sample(self, rng: np.random.Generator) -> float:
        k = int(rng.integers(0, int(round((self.max - self.min) / self.unit)) + 1))
        return round(self.min + k * self.unit, 6)


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
    """Trajectory grids. ``paper()`` is the official teacher config; ``room()`` fits small rooms."""

    distance: Range = Range(0.1, 6.0, 0.1)
    angle: Range = Range(10.0, 100.0, 10.0)
    # preset name -> ((action name, Range), ...)
    presets: tuple = (
        ("forward_turn_left", (("forward", Range(0.5, 3.5, 0.1)), ("turn_left", Range(20, 80, 10)))),
        ("turn_right_forward", (("turn_right", Range(20, 80, 10)), ("forward", Range(0.3, 3.0, 0.1)))),
        ("left_forward_turn_right", (("left", Range(0.3, 3.0, 0.1)), ("forward", Range(0.5, 3.5, 0.1)),
                                     ("turn_right", Range(20, 60, 10)))),
    )

    @staticmethod
    def paper() -> "TrajectoryConfig":
        return TrajectoryConfig()

    @staticmethod
    def room() -> "TrajectoryConfig":
        """Scaled to the procedural rooms (half-extents 2.5-4 m): moves up to 1.5 m, turns to 90 deg."""
        return TrajectoryConfig(
            distance=Range(0.1, 1.5, 0.1),
            angle=Range(10.0, 90.0, 10.0),
            presets=(
                ("forward_turn_left", (("forward", Range(0.3, 1.2, 0.1)), ("turn_left", Range(20, 60, 10)))),
                ("turn_right_forward", (("turn_right", Range(20, 60, 10)), ("forward", Range(0.3, 1.2, 0.1)))),
                ("left_forward_turn_right", (("left", Range(0.2, 0.8, 0.1)), ("forward", Range(0.3, 1.0, 0.1)),
                                             ("turn_right", Range(20, 60, 10)))),
            ),
        )

    @property
    def kinds(self) -> tuple[str, ...]:
        """Trajectory kinds: the six single actions, then the preset names."""
        return NAMES + tuple(name for name, _ in self.presets)


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """A sampled trajectory: its kind ('forward', ..., or a preset name) and its actions."""

    kind: str
    actions: tuple[Action, ...]

    @property
    def is_multi(self) -> bool:
        return len(self.actions) > 1

    def text(self) -> str:
        return format_actions(self.actions)


def sample_trajectory(rng, config: TrajectoryConfig | None = None, kind: str | None = None) -> Trajectory:
    """Sample one trajectory of ``kind`` (random kind when None) on the config's grids.

    ``rng`` is a ``numpy.random.Generator`` or an int seed.
    """
    config = TrajectoryConfig.room() if config is None else config
    rng = np.random.default_rng(rng)
    kinds = config.kinds
    if kind is None:
        kind = kinds[int(rng.integers(0, len(kinds)))]
    if kind in NAMES:
        grid = config.angle if kind in TURNS else config.distance
        return Trajectory(kind, (Action(kind, grid.sample(rng)),))
    for name, steps in config.presets:
        if name == kind:
            return Trajectory(kind, tuple(Action(a, r.sample(rng)) for a, r in steps))
    raise ValueError(f"trajectory kind must be one of {kinds}, got {kind!r}")


def sample_scene_trajectories(rng, config: TrajectoryConfig | None = None) -> list[Trajectory]:
    """Every kind once (six single actions + each preset), as the official teacher does per scene."""
    config = TrajectoryConfig.room() if config is None else config
    rng = np.random.default_rng(rng)
    return [sample_trajectory(rng, config, kind) for kind in config.kinds]
