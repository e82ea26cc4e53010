"""Camera maths: the one place for intrinsics, poses, projection and rays.

Conventions (DESIGN.md):
- Camera frame is OpenCV: x right, y down, z forward.
- World is right-handed and Z-up, floor at z = 0.
- Poses are 4x4 camera-to-world matrices (``c2w``); ``inv(c2w)`` maps world to camera.
- Intrinsics ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``; pixel (row i, col j) has its centre at
  image coordinates ``(u, v) = (j + 0.5, i + 0.5)``.
- Relative pose of ``b`` seen from ``a``: ``inv(c2w_a) @ c2w_b``. Its yaw ``atan2(R[0,2], R[2,2])`` is
  positive when ``b`` is turned to the right of ``a``.
- Units are metres and degrees, never renormalised.

Every function accepts numpy arrays (returns numpy) or jax arrays (returns jax, usable under ``jit``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _xp(*arrays):
    """numpy for numpy/python inputs, jax.numpy as soon as one input is a jax array or tracer."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def intrinsics_from_hfov(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Pinhole K (3,3) with square pixels, principal point at the image centre.

    ``fx = fy = (width / 2) / tan(hfov / 2)``; ``cx = width / 2``, ``cy = height / 2`` (pixel units).
    """
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got width={width}, height={height}")
    if not 0.0 < float(hfov_deg) < 180.0:
        raise ValueError(f"hfov_deg must be in (0, 180) degrees, got {hfov_deg}")
    f = (width / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], np.float32)


def scale_intrinsics(K, sx: float, sy: float | None = None):
    """K for an image resized by factors (sx, sy) (pixel centres stay consistent)."""
    xp = _xp(K)
    sy = sx if sy is None else sy
    return xp.asarray(K) * xp.asarray([[sx], [sy], [1.0]], dtype=xp.asarray(K).dtype)


def look_c2w(position_xyz, heading_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """Camera-to-world (4,4) of a camera at ``position_xyz`` (world metres).

    ``heading_deg`` is counter-clockwise from world +x about world +z (0: looking along +x, 90: along
    +y). ``pitch_deg`` tilts the view down when positive. No roll: the camera x axis stays horizontal.
    """
    p = np.asarray(position_xyz, np.float64).reshape(3)
    psi, phi = np.deg2rad(heading_deg), np.deg2rad(pitch_deg)
    x_c = np.array([np.sin(psi), -np.cos(psi), 0.0])
    y_c = np.array([-np.sin(phi) * np.cos(psi), -np.sin(phi) * np.sin(psi), -np.cos(phi)])
    z_c = np.array([np.cos(phi) * np.cos(psi), np.cos(phi) * np.sin(psi), -np.sin(phi)])
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x_c, y_c, z_c, p
    return c2w.astype(np.float32)


def yaw_rotation(yaw_right_deg):
    """Rotation (3,3) about the camera's +y (down) axis; positive angle turns the view right.

    ``R_y(a) = [[cos a, 0, sin a], [0, 1, 0], [-sin a, 0, cos a]]``: the new forward axis is
    ``(sin a, 0, cos a)`` in the old camera frame.
    """
    xp = _xp(yaw_right_deg)
    a = xp.deg2rad(xp.asarray(yaw_right_deg, dtype=xp.float32))
    c, s = xp.cos(a), xp.sin(a)
    zero, one = xp.zeros_like(a), xp.ones_like(a)
    return xp.stack(
        [xp.stack([c, zero, s], -1), xp.stack([zero, one, zero], -1), xp.stack([-s, zero, c], -1)],
        -2,
    )


def egocentric_step(right_m=0.0, forward_m=0.0, yaw_right_deg=0.0):
    """Local camera motion (4,4): translate by (right, 0, forward) in the current camera frame, then
    turn by ``yaw_right_deg`` about the camera's vertical axis. Compose as ``c2w_new = c2w @ step``.
    """
    xp = _xp(right_m, forward_m, yaw_right_deg)
    T = xp.eye(4, dtype=xp.float32)
    R = yaw_rotation(xp.asarray(yaw_right_deg, dtype=xp.float32))
    t = xp.asarray([right_m, 0.0, forward_m], dtype=xp.float32)
    if xp is np:
        T[:3, :3], T[:3, 3] = R, t
        return T
    return T.at[:3, :3].set(R).at[:3, 3].set(t)


def invert_pose(T):
    """Inverse of a rigid 4x4 transform (or a batch (..., 4, 4))."""
    xp = _xp(T)
    T = xp.asarray(T)
    R, t = T[..., :3, :3], T[..., :3, 3]
    Rt = xp.swapaxes(R, -1, -2)
    t_inv = -xp.einsum("...ij,...j->...i", Rt, t)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], T.dtype), T.shape[:-2] + (1, 4))
    return xp.concatenate([xp.concatenate([Rt, t_inv[..., None]], -1), bottom], -2)


def relative_pose(c2w_a, c2w_b):
    """Pose of camera b in camera a's frame: ``inv(c2w_a) @ c2w_b`` (4,4), batched over leading dims."""
    return invert_pose(c2w_a) @ _xp(c2w_a, c2w_b).asarray(c2w_b)


def relative_yaw_deg(T_rel):
    """Yaw of a relative pose in degrees, ``atan2(R[0,2], R[2,2])``; positive = turned right."""
    xp = _xp(T_rel)
    T_rel = xp.asarray(T_rel)
    return xp.rad2deg(xp.arctan2(T_rel[..., 0, 2], T_rel[..., 2, 2]))


def world_to_camera(c2w, points):
    """World points (N,3) -> camera-frame points (N,3) (OpenCV)."""
    xp = _xp(c2w, points)
    w2c = invert_pose(xp.asarray(c2w))
    pts = xp.asarray(points)
    return pts @ w2c[:3, :3].T + w2c[:3, 3]


def project(K, c2w, points):
    """Project world points (N,3) into the image.

    Returns ``(uv, depth)``: ``uv`` (N,2) pixel coordinates (u along width, v along height, pixel centre
    of (i, j) at (j+0.5, i+0.5)) and ``depth`` (N,) the OpenCV z-depth in metres (<= 0: behind the
    camera; its uv is then meaningless).
    """
    xp = _xp(K, c2w, points)
    K = xp.asarray(K)
    p_cam = world_to_camera(c2w, points)
    z = p_cam[:, 2]
    safe_z = xp.where(xp.abs(z) < 1e-9, 1e-9, z)
    u = K[0, 0] * p_cam[:, 0] / safe_z + K[0, 2]
    v = K[1, 1] * p_cam[:, 1] / safe_z + K[1, 2]
    return xp.stack([u, v], -1), z


def pixel_rays(K, c2w, height: int, width: int):
    """Per-pixel rays of a camera: ``(origins (H,W,3), dirs (H,W,3))`` in the frame of ``c2w``.

    ``dirs = R @ K^-1 [u, v, 1]`` is NOT normalised: its camera-frame z component is 1, so the ray
    parameter of a hit equals the OpenCV z-depth.
    """
    xp = _xp(K, c2w)
    K = xp.asarray(K, dtype=xp.float32)
    c2w = xp.asarray(c2w, dtype=xp.float32)
    j, i = xp.meshgrid(
        xp.arange(width, dtype=xp.float32) + 0.5, xp.arange(height, dtype=xp.float32) + 0.5
    )
    x = (j - K[0, 2]) / K[0, 0]
    y = (i - K[1, 2]) / K[1, 1]
    d_cam = xp.stack([x, y, xp.ones_like(x)], -1)
    dirs = d_cam @ c2w[:3, :3].T
    origins = xp.broadcast_to(c2w[:3, 3], dirs.shape)
    return origins, dirs


def plucker_rays(K, c2w_rel, height: int, width: int):
    """Plücker ray map (H,W,6) = (d̂, o × d̂) of a camera whose pose is ``c2w_rel`` in a reference
    frame (usually the first source camera: ``relative_pose(c2w_src, c2w_tgt)``).

    ``d̂`` is the unit ray direction, ``o`` the camera centre, both in the reference frame and in metres
    (not renormalised). For ``c2w_rel = I`` the moment is zero and ``d̂ = normalize(K^-1 [u, v, 1])``.
    """
    xp = _xp(K, c2w_rel)
    origins, dirs = pixel_rays(K, c2w_rel, height, width)
    d = dirs / xp.linalg.norm(dirs, axis=-1, keepdims=True)
    m = xp.cross(origins, d)
    return xp.concatenate([d, m], -1)


def box_iou(a, b) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes (any consistent units, x2/y2 exclusive); 0 when the
    union is empty. The official reward's IoU (``supervision.reward``) is this function."""
    def area(box):
        return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def boxes_to_1000(boxes_xyxy, width: int, height: int):
    """Pixel boxes (..., 4) [x1, y1, x2, y2] -> int32 in 0..1000 (``round(v / size * 1000)``, clamped).

    Rounds half to even like Python's ``round`` in the official code; numpy or jax (jit-able).
    """
    xp = _xp(boxes_xyxy)
    b = xp.asarray(boxes_xyxy, dtype=xp.float32 if xp is jnp else np.float64)
    scale = xp.asarray([width, height, width, height], dtype=b.dtype)
    return xp.clip(xp.rint(b / scale * 1000.0), 0, 1000).astype(xp.int32)
