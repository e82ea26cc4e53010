"""Analytic ray casting of a Scene in JAX: rgb, z-depth, instance ids and per-object boxes.

Rays come from ``geometry.pixel_rays``: their direction has camera-frame z = 1, so the ray parameter
of a hit IS the OpenCV z-depth. Every primitive is intersected in its own local frame, scaled so the
object is a unit primitive (a ray stays a ray under an affine map and keeps its parameter t):
  cube      = slab x AND slab y AND slab z   (|x|, |y|, |z| <= 1)
  cylinder  = disc  AND slab z               (x^2 + y^2 <= 1, |z| <= 1)
  sphere    = ball                           (x^2 + y^2 + z^2 <= 1)
(the slabs are applied to every shape: they contain the disc and the ball, so they change nothing).
Each test gives an (enter, exit) interval of t; the object is hit where the intersection of its
intervals is non-empty and in front of the camera. A scan over the K slots keeps only the
nearest hit per ray. The room is the inside of an axis-aligned box: the smallest exit t over the
three axes, its axis and sign naming the face.

Shading: Lambert with one directional light plus ambient; the floor has a 0.5 m checker, the walls
a dark skirting band and vertical seams every metre (parallax cues), each wall its own tint.

Entry points are jitted per (height, width, supersample, batching); the object count K comes from
the Scene's shapes, so scenes of one K share a compilation. Per-pixel work is written as
structure-of-arrays (x, y, z as separate (P,) arrays) and table lookups as select chains, which XLA
fuses into a few vectorised loops (stacking channels or gathering would make it recompute them).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from w2v_jax import geometry
from w2v_jax.sim.scene import Scene

LIGHT_DIR = np.array([0.35, 0.25, 1.0], np.float32) / np.linalg.norm([0.35, 0.25, 1.0])
AMBIENT = 0.4
DIFFUSE = 0.6
FLOOR_TILE_M = 0.5
WALL_SEAM_EVERY_M = 1.0
WALL_SEAM_WIDTH_M = 0.03
SKIRTING_HEIGHT_M = 0.1
NEAR_M = 0.01  # hits closer than this are ignored; amodal boxes clip the 3D box at this depth
_EPS = 1e-12


def _safe_inv(x):
    """1 / x with |x| lifted to at least _EPS (keeps the sign): finite for axis-parallel rays."""
    return 1.0 / jnp.where(jnp.abs(x) < _EPS, jnp.where(x < 0, -_EPS, _EPS), x)


def _pick(values, slot):
    """values[slot] for a static-length table (K, ...) and per-ray slots (P,) (or (P,1) against a
    table (K,C)), as a chain of selects: elementwise, so XLA fuses it (a gather splits fusions)."""
    out = jnp.broadcast_to(values[0], jnp.broadcast_shapes(slot.shape, values.shape[1:]))
    for k in range(1, values.shape[0]):
        out = jnp.where(slot == k, values[k], out)
    return out


def _to_local(center, half, yaw, origin, dirs):
    """World ray -> an object's scaled local frame, where it is the unit cube / cylinder / ball.

    Structure of arrays: every argument is a tuple of 3 components (``yaw`` one value) that
    broadcast against each other, scalars per object or (P,) per ray. Returns (o, d) tuples."""
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    rx, ry, rz = (origin[i] - center[i] for i in range(3))
    o = ((c * rx + s * ry) / half[0], (-s * rx + c * ry) / half[1], rz / half[2])
    d = (
        (c * dirs[0] + s * dirs[1]) / half[0],
        (-s * dirs[0] + c * dirs[1]) / half[1],
        dirs[2] / half[2],
    )
    return o, d


def _slab(o, d):
    """Interval of t with |o + t d| <= 1 for one component -> (enter, exit)."""
    inv = _safe_inv(d)
    t1, t2 = (-1.0 - o) * inv, (1.0 - o) * inv
    return jnp.minimum(t1, t2), jnp.maximum(t1, t2)


def _object_t(params, origin, dirs):
    """Hit parameter t (P,) of one object; +inf where missed, closer than NEAR_M or slot invalid.

    ``params`` = (center (3,), half_extents (3,), yaw, type, valid) of the slot. All three slabs
    apply to every shape (a unit ball or cylinder lies inside the unit cube, so the slabs never cut
    it); the quadric is the ball for spheres (weights 1,1,1), the disc for cylinders (1,1,0) and
    switched off for cubes.
    """
    center, half, yaw, kind, valid = params
    o, d = _to_local(tuple(center), tuple(half), yaw, origin, dirs)
    ex, xx = _slab(o[0], d[0])
    ey, xy = _slab(o[1], d[1])
    ez, xz = _slab(o[2], d[2])
    w_xy = (kind != 0).astype(jnp.float32)
    w_z = (kind == 1).astype(jnp.float32)
    a = jnp.maximum(w_xy * (d[0] * d[0] + d[1] * d[1]) + w_z * d[2] * d[2], _EPS)
    b = w_xy * (o[0] * d[0] + o[1] * d[1]) + w_z * o[2] * d[2]
    c = w_xy * (o[0] * o[0] + o[1] * o[1]) + w_z * o[2] * o[2] - 1.0  # per object: shared origin
    disc = b * b - a * c
    sq = jnp.sqrt(jnp.maximum(disc, 0.0))
    inv_a = 1.0 / a
    use_q = (kind != 0) & (disc >= 0.0)
    eq = jnp.where(kind == 0, -jnp.inf, jnp.where(use_q, (-b - sq) * inv_a, jnp.inf))
    xq = jnp.where(kind == 0, jnp.inf, jnp.where(use_q, (-b + sq) * inv_a, -jnp.inf))
    enter = jnp.maximum(jnp.maximum(ex, ey), jnp.maximum(ez, eq))
    leave = jnp.minimum(jnp.minimum(xx, xy), jnp.minimum(xz, xq))
    hit = (enter <= leave) & (enter > NEAR_M) & valid
    return jnp.where(hit, enter, jnp.inf)


def _nearest_object(scene: Scene, origin, dirs):
    """Nearest object hit per ray: (t (P,), slot (P,) int32); t = +inf where no object is hit.

    A ``lax.scan`` over the K slots keeps a running minimum: one small fused loop body, never a
    (K, P) array (measured ~8x faster on CPU than unrolling the slots, and compiles in a fraction
    of the time). Ties keep the lower slot."""

    def step(carry, params):
        best, slot = carry
        t = _object_t(params[:-1], origin, dirs)
        closer = t < best
        return (jnp.where(closer, t, best), jnp.where(closer, params[-1], slot)), None

    init = (jnp.full(dirs[0].shape, jnp.inf, jnp.float32), jnp.zeros(dirs[0].shape, jnp.int32))
    slots = jnp.arange(scene.valid.shape[-1], dtype=jnp.int32)
    xs = (scene.center, scene.half_extents, scene.yaw, scene.type, scene.valid, slots)
    return jax.lax.scan(step, init, xs)[0]


def _room_hit(scene: Scene, origin, dirs):
    """Exit of the room box. Returns t (P,) and face (P,) int32: 0 wall +x, 1 wall -x, 2 wall +y,
    3 wall -y, 4 floor, 5 ceiling."""
    hi = (scene.room[0], scene.room[1], scene.room[2])
    lo = (-scene.room[0], -scene.room[1], 0.0)
    t_axis = [
        jnp.where(dirs[i] > 0, hi[i] - origin[i], lo[i] - origin[i]) * _safe_inv(dirs[i])
        for i in range(3)
    ]
    t = jnp.minimum(jnp.minimum(t_axis[0], t_axis[1]), t_axis[2])
    face = jnp.where(
        t_axis[0] == t,
        jnp.where(dirs[0] > 0, 0, 1),
        jnp.where(t_axis[1] == t, jnp.where(dirs[1] > 0, 2, 3), jnp.where(dirs[2] > 0, 5, 4)),
    )
    return t, face.astype(jnp.int32)


def _room_albedo_normal(scene: Scene, point, face):
    """Room surface at ``point`` (3 (P,) arrays) on ``face`` (P,): albedo (P,3) and inward normal
    (3 (P,) arrays)."""
    x, y, z = point
    checker = (jnp.floor(x / FLOOR_TILE_M) + jnp.floor(y / FLOOR_TILE_M)) % 2.0
    along = jnp.where(face < 2, y, x)  # horizontal coordinate within the wall
    seam = (
        jnp.abs(along / WALL_SEAM_EVERY_M - jnp.round(along / WALL_SEAM_EVERY_M))
        * WALL_SEAM_EVERY_M
    )
    wall_factor = jnp.where(
        z < SKIRTING_HEIGHT_M, 0.6, jnp.where(seam < WALL_SEAM_WIDTH_M / 2, 0.85, 1.0)
    )
    wall = _pick(scene.wall_color, jnp.minimum(face, 3)[:, None]) * wall_factor[:, None]
    floor = jnp.where(checker[:, None] < 0.5, scene.floor_color[0], scene.floor_color[1])
    albedo = jnp.where(
        face[:, None] == 4, floor, jnp.where(face[:, None] == 5, scene.ceiling_color, wall)
    )
    one = jnp.ones_like(x)
    normal = (
        jnp.where(face == 0, -one, jnp.where(face == 1, one, 0.0)),
        jnp.where(face == 2, -one, jnp.where(face == 3, one, 0.0)),
        jnp.where(face == 4, one, jnp.where(face == 5, -one, 0.0)),
    )
    return albedo, normal


def _object_normal(scene: Scene, origin, dirs, slot, t):
    """World unit normal (tuple of 3 (P,)) where the rays meet object ``slot`` (P,) at t (P,)."""
    half = tuple(_pick(scene.half_extents[:, i], slot) for i in range(3))
    center = tuple(_pick(scene.center[:, i], slot) for i in range(3))
    yaw = _pick(scene.yaw, slot)
    kind = _pick(scene.type, slot)
    o, d = _to_local(center, half, yaw, origin, dirs)
    px, py, pz = (o[i] + t * d[i] for i in range(3))  # hit point on the unit primitive
    ax, ay, az = jnp.abs(px), jnp.abs(py), jnp.abs(pz)
    # cube: the face of the largest coordinate; cylinder: cap if |z| beats the radius, else side
    cube_x = (ax >= ay) & (ax >= az)
    cube_y = ~cube_x & (ay >= az)
    cap = az > jnp.sqrt(px * px + py * py)
    is_cube, is_cyl = kind == 0, kind == 2
    nx = jnp.where(is_cube, jnp.where(cube_x, jnp.sign(px), 0.0), jnp.where(is_cyl & cap, 0.0, px))
    ny = jnp.where(is_cube, jnp.where(cube_y, jnp.sign(py), 0.0), jnp.where(is_cyl & cap, 0.0, py))
    nz = jnp.where(
        is_cube,
        jnp.where(cube_x | cube_y, 0.0, jnp.sign(pz)),
        jnp.where(is_cyl, jnp.where(cap, jnp.sign(pz), 0.0), pz),
    )
    nx, ny, nz = nx / half[0], ny / half[1], nz / half[2]  # inverse transpose of the scaling
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    wx, wy = c * nx - s * ny, s * nx + c * ny
    inv_norm = 1.0 / jnp.maximum(jnp.sqrt(wx * wx + wy * wy + nz * nz), _EPS)
    return wx * inv_norm, wy * inv_norm, nz * inv_norm


def _rays(K, c2w, height: int, width: int):
    """Camera centre (3 scalars) and per-pixel ray directions (3 (P,) arrays, camera z = 1)."""
    origins, dirs = geometry.pixel_rays(K, c2w, height, width)
    return tuple(origins[0, 0, i] for i in range(3)), tuple(
        dirs[..., i].reshape(-1) for i in range(3)
    )


def _geometry(scene: Scene, c2w, K, height: int, width: int) -> dict:
    """Ray casting: per pixel (P = H*W) the nearest object (t_obj, slot) and the room exit
    (t_room, face)."""
    origin, dirs = _rays(K, c2w, height, width)
    t_obj, slot = _nearest_object(scene, origin, dirs)
    t_room, face = _room_hit(scene, origin, dirs)
    return dict(t_obj=t_obj, slot=slot, t_room=t_room, face=face)


def _shade(scene: Scene, c2w, K, height: int, width: int, geo: dict):
    """rgb (H,W,3) in [0,1] from the ray-casting results ``geo`` of the same camera and size."""
    origin, dirs = _rays(K, c2w, height, width)
    t_obj, slot, t_room, face = geo["t_obj"], geo["slot"], geo["t_room"], geo["face"]
    is_obj = t_obj < t_room
    depth = jnp.where(is_obj, t_obj, t_room)
    point = tuple(origin[i] + depth * dirs[i] for i in range(3))
    room_albedo, room_normal = _room_albedo_normal(scene, point, face)
    obj_normal = _object_normal(scene, origin, dirs, slot, jnp.where(is_obj, t_obj, 0.0))
    lambert = sum(
        jnp.where(is_obj, obj_normal[i], room_normal[i]) * float(LIGHT_DIR[i]) for i in range(3)
    )
    light = AMBIENT + DIFFUSE * jnp.maximum(lambert, 0.0)
    # (P,3) from (P,) factors by broadcasting, not by stacking channels: XLA then keeps the
    # per-pixel work out of the per-channel loop instead of repeating it for every channel
    albedo = jnp.where(is_obj[:, None], _pick(scene.color, slot[:, None]), room_albedo)
    return jnp.clip(albedo * light[:, None], 0.0, 1.0).reshape(height, width, 3)


def _modal_boxes(instance, num_slots: int):
    """Per slot: visible pixel count (K,) and tight pixel box (K,4) [x1, y1, x2, y2] of its mask
    (pixel edges, so a single pixel (i, j) gives [j, i, j+1, i+1])."""
    height, width = instance.shape
    mask = instance[None] == jnp.arange(num_slots, dtype=jnp.int32)[:, None, None]  # (K,H,W)
    rows, cols = jnp.any(mask, 2), jnp.any(mask, 1)
    y1 = jnp.argmax(rows, 1)
    y2 = height - jnp.argmax(rows[:, ::-1], 1)
    x1 = jnp.argmax(cols, 1)
    x2 = width - jnp.argmax(cols[:, ::-1], 1)
    count = jnp.sum(mask, (1, 2)).astype(jnp.int32)
    return count, jnp.stack([x1, y1, x2, y2], -1).astype(jnp.float32)


_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float32)
_EDGES = np.array([(i, i | bit) for bit in (4, 2, 1) for i in range(8) if not i & bit], np.int32)


def _amodal_boxes(scene: Scene, c2w, K, height: int, width: int):
    """Box (K,4) in pixels of each object's 3D box clipped to depth >= NEAR_M, clipped to the image,
    and in_frustum (K,): that clipped projection overlaps the image."""
    c, s = jnp.cos(scene.yaw), jnp.sin(scene.yaw)
    local = _SIGNS[None] * scene.half_extents[:, None, :]  # (K,8,3)
    world = (
        jnp.stack(
            [
                c[:, None] * local[..., 0] - s[:, None] * local[..., 1],
                s[:, None] * local[..., 0] + c[:, None] * local[..., 1],
                local[..., 2],
            ],
            -1,
        )
        + scene.center[:, None, :]
    )
    num = world.shape[0]
    _, z = geometry.project(K, c2w, world.reshape(-1, 3))
    z = z.reshape(num, 8)
    a, b = world[:, _EDGES[:, 0]], world[:, _EDGES[:, 1]]  # (K,12,3)
    za, zb = z[:, _EDGES[:, 0]], z[:, _EDGES[:, 1]]
    crosses = (za - NEAR_M) * (zb - NEAR_M) < 0
    f = (NEAR_M - za) / jnp.where(crosses, zb - za, 1.0)
    cut = a + f[..., None] * (b - a)  # on the near plane
    points = jnp.concatenate([world, cut], 1)  # (K,20,3)
    ok = jnp.concatenate([z >= NEAR_M, crosses], 1)
    uv, _ = geometry.project(K, c2w, points.reshape(-1, 3))
    uv = uv.reshape(num, 20, 2)
    big = 1e9
    u_min = jnp.min(jnp.where(ok, uv[..., 0], big), 1)
    u_max = jnp.max(jnp.where(ok, uv[..., 0], -big), 1)
    v_min = jnp.min(jnp.where(ok, uv[..., 1], big), 1)
    v_max = jnp.max(jnp.where(ok, uv[..., 1], -big), 1)
    in_frustum = (
        jnp.any(ok, 1)
        & (u_min < width)
        & (u_max > 0)
        & (v_min < height)
        & (v_max > 0)
        & scene.valid
    )
    box = jnp.stack(
        [
            jnp.clip(u_min, 0, width),
            jnp.clip(v_min, 0, height),
            jnp.clip(u_max, 0, width),
            jnp.clip(v_max, 0, height),
        ],
        -1,
    )
    return box, in_frustum


def _render_one(scene: Scene, c2w, K, height: int, width: int, supersample: int) -> dict:
    """Every output of :func:`render` for one camera (pure; jit/vmap it)."""
    K = jnp.asarray(K, jnp.float32)
    c2w = jnp.asarray(c2w, jnp.float32)
    geo = _geometry(scene, c2w, K, height, width)
    is_obj = geo["t_obj"] < geo["t_room"]
    instance = jnp.where(is_obj, geo["slot"], -1).reshape(height, width)
    if supersample == 1:
        rgb = _shade(scene, c2w, K, height, width, geo)
    else:
        s = supersample
        K_fine = geometry.scale_intrinsics(K, float(s))
        fine = _geometry(scene, c2w, K_fine, height * s, width * s)
        rgb = _shade(scene, c2w, K_fine, height * s, width * s, fine)
        rgb = rgb.reshape(height, s, width, s, 3).mean((1, 3))
    visible_pixels, modal = _modal_boxes(instance, scene.valid.shape[-1])
    visible = (visible_pixels > 0) & scene.valid
    amodal, in_frustum = _amodal_boxes(scene, c2w, K, height, width)
    return dict(
        rgb=rgb,
        depth=jnp.where(is_obj, geo["t_obj"], geo["t_room"]).reshape(height, width),
        instance=instance,
        visible_pixels=visible_pixels,
        visible=visible,
        box=jnp.where(visible[:, None], geometry.boxes_to_1000(modal, width, height), -1),
        amodal_box=jnp.where(in_frustum[:, None], geometry.boxes_to_1000(amodal, width, height), -1),
        in_frustum=in_frustum,
        center_cam=geometry.world_to_camera(c2w, scene.center),
    )


@functools.lru_cache(maxsize=None)
def _program(batching: str, height: int, width: int, supersample: int):
    """Jitted f(scene, c2w, K) for ``batching``: 'one' (c2w (4,4)), 'views' (c2w (N,4,4)),
    'scenes' (scene and c2w with a leading B) or 'scene_views' (B on the scene, (B,N) on c2w)."""
    fn = functools.partial(_render_one, height=height, width=width, supersample=supersample)
    views = jax.vmap(fn, in_axes=(None, 0, None))
    return jax.jit(
        {
            "one": fn,
            "views": views,
            "scenes": jax.vmap(fn, in_axes=(0, 0, None)),
            "scene_views": jax.vmap(views, in_axes=(0, 0, None)),
        }[batching]
    )


def _render(batching: str, scene: Scene, c2w, K, height, width, supersample) -> dict:
    for name, v in (("height", height), ("width", width), ("supersample", supersample)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return _program(batching, int(height), int(width), int(supersample))(scene, c2w, K)


def render(scene: Scene, c2w, K, height: int, width: int, supersample: int = 1) -> dict:
    """Render one view of ``scene`` from camera-to-world ``c2w`` (4,4) with intrinsics ``K`` (3,3)
    (for an image of ``height`` x ``width`` pixels).

    Returns a dict of jax arrays:
      rgb (H,W,3) float32 in [0,1] (averaged over supersample^2 rays per pixel);
      depth (H,W) OpenCV z-depth in metres at the pixel centre; instance (H,W) int32 slot, -1 room;
    per object slot (K,...):
      visible_pixels int32; visible bool; box int32 [x1,y1,x2,y2] 0-1000 modal box of the instance
      mask (-1s when not visible); amodal_box int32 0-1000 of the projected 3D box corners, clipped
      to the image (-1s when not in_frustum); in_frustum bool; center_cam float32 (3,) camera frame.
    """
    return _render("one", scene, c2w, K, height, width, supersample)


def render_views(scene: Scene, c2ws, K, height: int, width: int, supersample: int = 1) -> dict:
    """One scene from N cameras ``c2ws`` (N,4,4): the outputs of :func:`render`, leading N."""
    return _render("views", scene, c2ws, K, height, width, supersample)


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Settings of rendered still views (eval suites, the perception set).

    resolution: square image side (64 px -> 56x56 after the Qwen processor, 4 image tokens);
    hfov_deg: field of view; supersample: anti-aliasing rays per pixel side; min_visible_frac:
    an object counts as visible in a view when it covers at least this fraction of the pixels."""

    resolution: int = 64
    hfov_deg: float = 90.0
    supersample: int = 2
    min_visible_frac: float = 0.005

    def __post_init__(self):
        if int(self.resolution) != self.resolution or self.resolution < 16:
            raise ValueError(f"resolution must be an integer >= 16, got {self.resolution!r}")

    @property
    def K(self) -> np.ndarray:
        return geometry.intrinsics_from_hfov(self.resolution, self.resolution, self.hfov_deg)

    @property
    def min_pixels(self) -> int:
        return max(1, int(round(self.min_visible_frac * self.resolution**2)))



def render_cameras(scene: Scene, c2ws, K, height: int, width: int, supersample: int = 1,
                   chunk: int = 16) -> dict:
    """:func:`render_views` of N cameras in fixed-size chunks of ``chunk`` (the last one padded
    by repeating its final camera), so every call compiles once per process whatever N is.
    Numpy outputs with leading N."""
    c2ws = np.asarray(c2ws, np.float32)
    if c2ws.ndim != 3 or c2ws.shape[1:] != (4, 4) or not len(c2ws):
        raise ValueError(f"c2ws must be (N, 4, 4) with N >= 1, got shape {c2ws.shape}")
    n = len(c2ws)
    padded = np.concatenate([c2ws, np.repeat(c2ws[-1:], (-n) % chunk, 0)])
    parts = []
    for start in range(0, len(padded), chunk):
        out = render_views(scene, padded[start:start + chunk], K, height, width, supersample)
        parts.append({k: np.asarray(v) for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def render_batch(scenes: Scene, c2ws, K, height: int, width: int, supersample: int = 1) -> dict:
    """B scenes (a Scene with leading axis B, see ``stack_scenes``), each from its own camera
    ``c2ws`` (B,4,4) or cameras (B,N,4,4); outputs of :func:`render` with leading (B,) or (B,N)."""
    if np.ndim(c2ws) not in (3, 4):
        raise ValueError(f"c2ws must be (B,4,4) or (B,N,4,4), got shape {np.shape(c2ws)}")
    return _render(
        "scenes" if np.ndim(c2ws) == 3 else "scene_views",
        scenes,
        c2ws,
        K,
        height,
        width,
        supersample,
    )
