"""Procedural CLEVR-like rooms as fixed-shape pytrees, plus their plain-python metadata.

World frame (DESIGN.md): right-handed, Z-up, metres. A room is the box
``[-hx, hx] x [-hy, hy] x [0, height]`` with the floor at z = 0. Objects stand on the floor; each
occupies one of ``K`` slots (``valid`` marks the used ones) so every scene has the same array shapes
and a batch of scenes is a pytree with a leading axis.

Vocabulary (CLEVR): shapes cube / sphere / cylinder, eight colours, two sizes. Every object of a
scene has a unique (shape, colour, size) triple, so it has a unique name: ``"red cube"``, or
``"large red cube"`` / ``"small red cube"`` when the scene holds both sizes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

from w2v_jax import geometry

SHAPES = ("cube", "sphere", "cylinder")
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SIZES = ("small", "large")

# CLEVR's palette (sRGB 0-255 / 255).
PALETTE = (
    np.array(
        [
            [87, 87, 87],
            [173, 35, 35],
            [42, 75, 215],
            [29, 105, 20],
            [129, 74, 25],
            [129, 38, 192],
            [41, 208, 208],
            [255, 238, 51],
        ],
        np.float32,
    )
    / 255.0
)

# Half-size r in metres per size: cubes have half-extents (r, r, r), spheres radius r, cylinders
# radius r and half-height r. Every object's centre sits at z = r.
SIZE_RADIUS_M = (0.25, 0.4)

# Pale wall tints; four distinct ones are drawn per scene so the four walls never look alike.
WALL_TINTS = np.array(
    [
        [0.86, 0.80, 0.66],  # cream
        [0.60, 0.71, 0.86],  # pale blue
        [0.66, 0.82, 0.64],  # pale green
        [0.87, 0.66, 0.69],  # pale pink
        [0.75, 0.69, 0.87],  # lavender
        [0.60, 0.83, 0.80],  # pale teal
    ],
    np.float32,
)
FLOOR_COLORS = np.array([[0.56, 0.54, 0.50], [0.38, 0.36, 0.34]], np.float32)  # checker pair
CEILING_COLOR = np.array([0.92, 0.92, 0.92], np.float32)
ROOM_HEIGHT_M = 3.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Scene:
    """A room with up to K objects. All fields are arrays; a batch adds a leading axis to each.

    Per object slot (K,...):
      type          int32 (K,)     index into SHAPES (0 cube, 1 sphere, 2 cylinder)
      center        float32 (K,3)  world metres; z = half height (resting on the floor)
      half_extents  float32 (K,3)  local-frame half sizes along x, y, z (metres)
      yaw           float32 (K,)   radians, counter-clockwise about world +z
      color         float32 (K,3)  rgb in [0, 1]
      color_id      int32 (K,)     index into COLORS
      size_id       int32 (K,)     index into SIZES
      valid         bool (K,)      slot holds an object
    Room:
      room          float32 (3,)   (half_x, half_y, height) metres
      wall_color    float32 (4,3)  tints of the walls at x=+hx, x=-hx, y=+hy, y=-hy
      floor_color   float32 (2,3)  the two checker colours of the floor
      ceiling_color float32 (3,)
    """

    type: np.ndarray
    center: np.ndarray
    half_extents: np.ndarray
    yaw: np.ndarray
    color: np.ndarray
    color_id: np.ndarray
    size_id: np.ndarray
    valid: np.ndarray
    room: np.ndarray
    wall_color: np.ndarray
    floor_color: np.ndarray
    ceiling_color: np.ndarray

    @property
    def max_objects(self) -> int:
        """K, the number of object slots."""
        return int(np.shape(self.valid)[-1])

    @property
    def num_objects(self) -> int:
        """Valid objects of an unbatched scene (a batch gives the total)."""
        return int(np.sum(np.asarray(self.valid)))


def stack_scenes(scenes: Sequence[Scene]) -> Scene:
    """Batch scenes with the same K into one Scene whose fields have a leading axis (B, ...)."""
    if not scenes:
        raise ValueError("stack_scenes needs at least one scene, got an empty sequence")
    ks = {s.max_objects for s in scenes}
    if len(ks) != 1:
        raise ValueError(f"scenes must share max_objects to be stacked, got {sorted(ks)}")
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *scenes)


def footprint_radius(shape: str, size: str) -> float:
    """Radius (metres) of the floor circle that contains the object for any yaw."""
    r = SIZE_RADIUS_M[SIZES.index(size)]
    return r * math.sqrt(2.0) if shape == "cube" else r


def _check_choice(field: str, value, allowed: Sequence[str]) -> int:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {tuple(allowed)}, got {value!r}")
    return allowed.index(value)


def _room_array(room) -> np.ndarray:
    room = np.asarray(room, np.float32).reshape(-1)
    if room.shape != (3,) or not np.all(room > 0):
        raise ValueError(f"room must be (half_x, half_y, height) with positive metres, got {room}")
    return room


def make_scene(
    objects: Sequence[dict],
    room=(3.0, 3.0, ROOM_HEIGHT_M),
    max_objects: int = 10,
    wall_tints: Sequence[int] = (0, 1, 2, 3),
    wall_margin: float = 0.05,
    min_gap: float = 0.0,
) -> Scene:
    """Scene from hand-placed objects.

    ``objects``: dicts with ``shape`` (SHAPES), ``color`` (COLORS), ``size`` (SIZES), ``xy`` (world
    metres on the floor) and optional ``yaw`` (degrees, counter-clockwise, default 0).
    ``room``: (half_x, half_y, height) metres. ``wall_tints``: four distinct indices into WALL_TINTS
    for the walls at +x, -x, +y, -y. Raises ValueError for unknown words, a (shape, colour, size)
    used twice, an object crossing a wall (closer than ``wall_margin``) or two footprints
    closer than ``min_gap``.
    """
    room = _room_array(room)
    if not 1 <= max_objects:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if len(objects) > max_objects:
        raise ValueError(f"got {len(objects)} objects but max_objects={max_objects}")
    tints = [int(t) for t in wall_tints]
    if len(tints) != 4 or len(set(tints)) != 4 or not all(0 <= t < len(WALL_TINTS) for t in tints):
        raise ValueError(
            f"wall_tints must be 4 distinct indices in [0, {len(WALL_TINTS)}), got {wall_tints}"
        )
    K = max_objects
    out = dict(
        type=np.zeros(K, np.int32),
        center=np.zeros((K, 3), np.float32),
        half_extents=np.zeros((K, 3), np.float32),
        yaw=np.zeros(K, np.float32),
        color=np.zeros((K, 3), np.float32),
        color_id=np.zeros(K, np.int32),
        size_id=np.zeros(K, np.int32),
        valid=np.zeros(K, bool),
    )
    seen, placed = set(), []
    for k, obj in enumerate(objects):
        unknown = set(obj) - {"shape", "color", "size", "xy", "yaw"}
        if unknown:
            raise ValueError(
                f"objects[{k}] has unknown keys {sorted(unknown)}; allowed: shape, "
                "color, size, xy, yaw"
            )
        shape_id = _check_choice(f"objects[{k}].shape", obj.get("shape"), SHAPES)
        color_id = _check_choice(f"objects[{k}].color", obj.get("color"), COLORS)
        size_id = _check_choice(f"objects[{k}].size", obj.get("size"), SIZES)
        triple = (shape_id, color_id, size_id)
        if triple in seen:
            raise ValueError(
                f"objects[{k}] repeats {obj['size']} {obj['color']} {obj['shape']}; "
                "each (shape, color, size) may appear once so names stay unique"
            )
        seen.add(triple)
        xy = np.asarray(obj.get("xy"), np.float64).reshape(-1)
        if xy.shape != (2,) or not np.all(np.isfinite(xy)):
            raise ValueError(
                f"objects[{k}].xy must be two finite numbers (metres), got {obj.get('xy')!r}"
            )
        rad = footprint_radius(obj["shape"], obj["size"])
        if np.any(np.abs(xy) + rad + wall_margin > room[:2]):
            raise ValueError(
                f"objects[{k}].xy={xy.tolist()} with footprint radius {rad:.3f} m does "
                f"not fit inside the room half-extents {room[:2].tolist()}"
            )
        for j, (pxy, prad) in enumerate(placed):
            if np.linalg.norm(xy - pxy) < rad + prad + min_gap:
                raise ValueError(
                    f"objects[{k}] at {xy.tolist()} overlaps objects[{j}] at {pxy.tolist()}"
                )
        placed.append((xy, rad))
        r = SIZE_RADIUS_M[size_id]
        out["type"][k] = shape_id
        out["center"][k] = (xy[0], xy[1], r)
        out["half_extents"][k] = (r, r, r)
        out["yaw"][k] = np.deg2rad(float(obj.get("yaw", 0.0)))
        out["color"][k] = PALETTE[color_id]
        out["color_id"][k] = color_id
        out["size_id"][k] = size_id
        out["valid"][k] = True
    return Scene(
        **out,
        room=room,
        wall_color=WALL_TINTS[tints].copy(),
        floor_color=FLOOR_COLORS.copy(),
        ceiling_color=CEILING_COLOR.copy(),
    )


def sample_scene(
    seed: int,
    num_objects: tuple[int, int] = (3, 10),
    max_objects: int = 10,
    room: tuple[tuple[float, float], tuple[float, float], float] = (
        (2.5, 4.0),
        (2.5, 4.0),
        ROOM_HEIGHT_M,
    ),
    wall_margin: float = 0.3,
    min_gap: float = 0.15,
    max_tries: int = 2000,
) -> Scene:
    """Random scene, a pure function of ``seed``.

    ``num_objects``: inclusive (min, max) object count, ``max <= max_objects``. ``room``: ranges of
    the half-extents along x and y (metres, uniform) and the height. Objects get unique
    (shape, colour, size) triples, a uniform yaw, and positions rejection-sampled on the floor so
    footprints keep ``wall_margin`` from the walls and ``min_gap`` from each other.
    """
    lo, hi = int(num_objects[0]), int(num_objects[1])
    if not 1 <= lo <= hi <= max_objects:
        raise ValueError(
            f"num_objects must satisfy 1 <= min <= max <= max_objects={max_objects}, "
            f"got {num_objects}"
        )
    rng = np.random.default_rng(seed)
    (x_lo, x_hi), (y_lo, y_hi), height = room
    half = (float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi)), float(height))
    tints = rng.permutation(len(WALL_TINTS))[:4]
    n = int(rng.integers(lo, hi + 1))
    triples = rng.permutation(len(SHAPES) * len(COLORS) * len(SIZES))[:n]
    objects, placed = [], []
    for t in triples:
        shape, color, size = SHAPES[t // 16], COLORS[(t // 2) % 8], SIZES[t % 2]
        rad = footprint_radius(shape, size)
        span = np.array(half[:2]) - rad - wall_margin
        for _ in range(max_tries):
            xy = rng.uniform(-span, span)
            if all(np.linalg.norm(xy - p) >= rad + pr + min_gap for p, pr in placed):
                break
        else:
            raise RuntimeError(
                f"sample_scene(seed={seed}) could not place {n} objects in a room of "
                f"half-extents {half[:2]} after {max_tries} tries each"
            )
        placed.append((xy, rad))
        objects.append(
            dict(shape=shape, color=color, size=size, xy=xy, yaw=float(rng.uniform(0.0, 360.0)))
        )
    return make_scene(
        objects,
        room=half,
        max_objects=max_objects,
        wall_tints=tints,
        wall_margin=wall_margin - 1e-4,
        min_gap=min_gap - 1e-4,
    )


def object_names(scene: Scene) -> list[str]:
    """Unique names of the valid objects, in slot order: colour + shape, with the size word when the
    scene holds the same colour and shape in both sizes."""
    valid = np.asarray(scene.valid)
    types, colors, sizes = (np.asarray(a) for a in (scene.type, scene.color_id, scene.size_id))
    names = []
    for k in np.flatnonzero(valid):
        base = f"{COLORS[colors[k]]} {SHAPES[types[k]]}"
        twins = np.sum(valid & (types == types[k]) & (colors == colors[k]))
        names.append(f"{SIZES[sizes[k]]} {base}" if twins > 1 else base)
    return names


def box_corners(center, half_extents, yaw) -> np.ndarray:
    """The 8 corners (8,3) of an oriented 3D box (yaw radians about world +z), world metres.

    Order: x-sign, y-sign, z-sign with z fastest: (-,-,-), (-,-,+), (-,+,-), ... (+,+,+).
    """
    signs = np.array(
        [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64
    )
    local = signs * np.asarray(half_extents, np.float64)
    c, s = math.cos(float(yaw)), math.sin(float(yaw))
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return local @ R.T + np.asarray(center, np.float64)


def scene_metadata(scene: Scene) -> dict:
    """Plain-python description for QA and JSON: room and, per valid object, slot, name, words,
    centre, half-extents, yaw (degrees), footprint radius and the 8 corners of its 3D box."""
    names = object_names(scene)
    objects = []
    for name, k in zip(names, np.flatnonzero(np.asarray(scene.valid))):
        shape, color, size = (
            SHAPES[int(scene.type[k])],
            COLORS[int(scene.color_id[k])],
            SIZES[int(scene.size_id[k])],
        )
        center = np.asarray(scene.center[k], np.float64)
        half = np.asarray(scene.half_extents[k], np.float64)
        yaw = float(scene.yaw[k])
        objects.append(
            dict(
                slot=int(k),
                name=name,
                shape=shape,
                color=color,
                size=size,
                center=[round(float(v), 4) for v in center],
                half_extents=[round(float(v), 4) for v in half],
                yaw_deg=round(math.degrees(yaw) % 360.0, 3),
                footprint_radius=round(footprint_radius(shape, size), 4),
                corners=np.round(box_corners(center, half, yaw), 4).tolist(),
            )
        )
    room = np.asarray(scene.room, np.float64)
    return dict(
        room=dict(
            half_extents=[round(float(room[0]), 4), round(float(room[1]), 4)],
            height=round(float(room[2]), 4),
            wall_colors=np.round(np.asarray(scene.wall_color, np.float64), 4).tolist(),
        ),
        objects=objects,
    )


def free_space(
    scene: Scene, xy, wall_margin: float = 0.3, object_margin: float = 0.3
) -> np.ndarray:
    """Whether floor points ``xy`` (N,2) keep ``wall_margin`` from every wall and ``object_margin``
    from every object footprint (metres). Returns bool (N,)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    room = np.asarray(scene.room, np.float64)
    ok = np.all(np.abs(xy) <= room[:2] - wall_margin, axis=-1)
    valid = np.asarray(scene.valid)
    for k in np.flatnonzero(valid):
        rad = footprint_radius(SHAPES[int(scene.type[k])], SIZES[int(scene.size_id[k])])
        dist = np.linalg.norm(xy - np.asarray(scene.center[k][:2], np.float64), axis=-1)
        ok &= dist >= rad + object_margin
    return ok


def sample_camera(
    seed: int,
    scene: Scene,
    height_range: tuple[float, float] = (1.2, 1.6),
    pitch_range: tuple[float, float] = (5.0, 20.0),
    heading_jitter_deg: float = 20.0,
    wall_margin: float = 0.5,
    object_margin: float = 0.5,
    max_tries: int = 1000,
) -> np.ndarray:
    """Start pose c2w (4,4) float32, a pure function of (seed, scene).

    The camera stands in free floor space (``free_space`` with the given margins) at a height drawn
    from ``height_range`` (metres), faces a randomly chosen object (heading jittered by up to
    ``heading_jitter_deg``) and looks down by a pitch drawn from ``pitch_range`` (degrees).
    """
    valid = np.flatnonzero(np.asarray(scene.valid))
    if valid.size == 0:
        raise ValueError("sample_camera needs a scene with at least one valid object, got none")
    rng = np.random.default_rng(seed)
    room = np.asarray(scene.room, np.float64)
    for _ in range(max_tries):
        xy = rng.uniform(-room[:2] + wall_margin, room[:2] - wall_margin)
        if free_space(scene, xy[None], wall_margin, object_margin)[0]:
            break
    else:
        raise RuntimeError(
            f"sample_camera(seed={seed}) found no free position in {max_tries} tries"
        )
    target = np.asarray(scene.center[int(rng.choice(valid))], np.float64)
    heading = math.degrees(math.atan2(target[1] - xy[1], target[0] - xy[0]))
    heading += float(rng.uniform(-heading_jitter_deg, heading_jitter_deg))
    z = float(rng.uniform(*height_range))
    pitch = float(rng.uniform(*pitch_range))
    return geometry.look_c2w([xy[0], xy[1], z], heading, pitch)
