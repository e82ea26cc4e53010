"""View-synthesis metrics against the renderer's ground truth.

Images are float RGB in [0, 1], (..., H, W, 3). Geometry follows geometry.py: OpenCV camera frames,
``depth`` is the OpenCV z-depth in metres, ``T_rel = relative_pose(c2w_src, c2w_tgt)`` is the target
camera in the source frame, ``K`` (3, 3) in pixels is shared by both views.

- :func:`psnr`, :func:`ssim` (own JAX implementation, 11-tap gaussian window sigma 1.5, 'valid'
  filtering as in Wang et al. 2004), both with an optional pixel mask (masked mean of the squared
  error / of the SSIM map).
- :func:`covisible_mask`: target pixels whose surface point is visible in the source view.
- :func:`forward_warp`: the source splatted into the target with true source depth (z-buffer);
  :func:`warp_baseline` fills the holes with the source pixel at the same location.
- :func:`reprojection_error`: L1 between the source and a (generated) target view sampled at the
  source pixels' true reprojections, over source pixels visible in the target.
- :func:`match_boxes`: a colour/instance box matcher for object-box IoU and visibility agreement.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from w2v_jax import geometry

# ----------------------------------------------------------------------------------- PSNR / SSIM


def psnr(pred, truth, mask=None, max_val: float = 1.0):
    """Peak signal-to-noise ratio in dB, per image: (..., H, W, C) -> (...).

    ``mask`` (..., H, W) selects pixels (all channels of a selected pixel count); an image with an
    empty mask gives NaN, so average with ``nanmean``.
    """
    se = jnp.square(jnp.asarray(pred, jnp.float32) - jnp.asarray(truth, jnp.float32))
    if mask is None:
        mse = jnp.mean(se, axis=(-3, -2, -1))
    else:
        m = jnp.asarray(mask, jnp.float32)[..., None]
        count = jnp.sum(m, axis=(-3, -2, -1)) * se.shape[-1]
        mse = jnp.where(count > 0, jnp.sum(se * m, axis=(-3, -2, -1)) / jnp.maximum(count, 1.0),
                        jnp.nan)
    return 10.0 * jnp.log10(max_val ** 2 / jnp.maximum(mse, 1e-10))


def _gaussian_window(size: int, sigma: float):
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
    w = jnp.exp(-0.5 * jnp.square(x / sigma))
    return w / jnp.sum(w)


def _blur_valid(x, window):
    """Separable 'valid' filtering of (N, H, W, C) by a 1-D window along H then W."""
    n, h, w, c = x.shape
    k = window.shape[0]
    x = x.transpose(0, 3, 1, 2).reshape(n * c, 1, h, w)
    dn = ("NCHW", "OIHW", "NCHW")
    x = jax.lax.conv_general_dilated(x, window.reshape(1, 1, k, 1), (1, 1), "VALID",
                                     dimension_numbers=dn)
    x = jax.lax.conv_general_dilated(x, window.reshape(1, 1, 1, k), (1, 1), "VALID",
                                     dimension_numbers=dn)
    return x.reshape(n, c, h - k + 1, w - k + 1).transpose(0, 2, 3, 1)


def ssim_map(pred, truth, max_val: float = 1.0, window_size: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03):
    """SSIM map (..., H - window + 1, W - window + 1), averaged over channels."""
    pred = jnp.asarray(pred, jnp.float32)
    truth = jnp.asarray(truth, jnp.float32)
    lead, (h, w, c) = pred.shape[:-3], pred.shape[-3:]
    if h < window_size or w < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size}, got {h}x{w}")
    x, y = pred.reshape((-1, h, w, c)), truth.reshape((-1, h, w, c))
    win = _gaussian_window(window_size, sigma)
    mu_x, mu_y = _blur_valid(x, win), _blur_valid(y, win)
    sxx = _blur_valid(x * x, win) - mu_x * mu_x
    syy = _blur_valid(y * y, win) - mu_y * mu_y
    sxy = _blur_valid(x * y, win) - mu_x * mu_y
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    s = num / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    s = jnp.mean(s, axis=-1)
    return s.reshape(lead + s.shape[1:])


def ssim(pred, truth, mask=None, max_val: float = 1.0, window_size: int = 11, sigma: float = 1.5):
    """Structural similarity per image: (..., H, W, C) -> (...).

    With ``mask`` (..., H, W) the SSIM map is averaged over the masked window centres (the mask is
    cropped like the 'valid' map); an empty mask gives NaN.
    """
    s = ssim_map(pred, truth, max_val, window_size, sigma)
    if mask is None:
        return jnp.mean(s, axis=(-2, -1))
    r = window_size // 2
    m = jnp.asarray(mask, jnp.float32)[..., r:r + s.shape[-2], r:r + s.shape[-1]]
    count = jnp.sum(m, axis=(-2, -1))
    return jnp.where(count > 0, jnp.sum(s * m, axis=(-2, -1)) / jnp.maximum(count, 1.0), jnp.nan)


# ------------------------------------------------------------------------------------ geometry


def _unproject(depth, K):
    """Camera-frame points (H, W, 3) of a z-depth map (H, W)."""
    h, w = depth.shape
    _, dirs = geometry.pixel_rays(np.asarray(K, np.float32), np.eye(4, dtype=np.float32), h, w)
    return dirs * depth[..., None]


def _to_other(points, T):
    """Points (..., 3) in frame a -> frame b, for ``T`` = pose of b in a (so apply inv(T))."""
    Tinv = geometry.invert_pose(np.asarray(T, np.float64))
    return points @ Tinv[:3, :3].T + Tinv[:3, 3]


def _project_cam(points, K):
    """Camera points (..., 3) -> (u, v, z); u, v in pixels (pixel (i, j) centred at j+.5, i+.5)."""
    z = points[..., 2]
    safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
    return K[0, 0] * points[..., 0] / safe + K[0, 2], K[1, 1] * points[..., 1] / safe + K[1, 2], z


def _visible_in(points_b, depth_b, K, rel_tol: float, abs_tol: float):
    """Which points (H, W, 3) in camera b's frame are inside b's image and not occluded there."""
    h, w = depth_b.shape
    u, v, z = _project_cam(points_b, K)
    j, i = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    inside = (z > 1e-6) & (j >= 0) & (j < w) & (i >= 0) & (i < h)
    d = depth_b[np.clip(i, 0, h - 1), np.clip(j, 0, w - 1)]
    return inside & (np.abs(d - z) <= abs_tol + rel_tol * z)


def covisible_mask(depth_tgt, depth_src, K, T_rel, rel_tol: float = 0.03, abs_tol: float = 0.05):
    """Bool (H, W): target pixels whose surface point projects into the source image and is not
    occluded there (source depth at that pixel within ``abs_tol + rel_tol * z`` metres)."""
    depth_tgt = np.asarray(depth_tgt, np.float64)
    T_inv = geometry.invert_pose(np.asarray(T_rel, np.float64))
    pts_src = _to_other(_unproject(depth_tgt, K), T_inv)
    return _visible_in(pts_src, np.asarray(depth_src, np.float64), np.asarray(K, np.float64),
                       rel_tol, abs_tol)


def forward_warp(rgb_src, depth_src, K, T_rel, subsamples: int = 3):
    """Splat the source into the target camera with the source's true depth.

    Each source pixel is split into ``subsamples**2`` points (same colour and depth) so that a
    magnified surface leaves no cracks; a z-buffer keeps the nearest point per target pixel.
    Returns ``(rgb (H, W, 3), valid (H, W) bool)``; invalid pixels (holes) are 0.
    """
    rgb_src = np.asarray(rgb_src, np.float32)
    depth_src = np.asarray(depth_src, np.float64)
    K = np.asarray(K, np.float64)
    h, w = depth_src.shape
    s = int(subsamples)
    offs = (np.arange(s) + 0.5) / s
    jj = (np.arange(w)[None, :, None, None] + offs[None, None, None, :])
    ii = (np.arange(h)[:, None, None, None] + offs[None, None, :, None])
    jj, ii = np.broadcast_to(jj, (h, w, s, s)), np.broadcast_to(ii, (h, w, s, s))
    z = np.broadcast_to(depth_src[:, :, None, None], (h, w, s, s))
    pts = np.stack([(jj - K[0, 2]) / K[0, 0] * z, (ii - K[1, 2]) / K[1, 1] * z, z], -1)
    u, v, zt = _project_cam(_to_other(pts, T_rel), K)
    j, i = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    ok = (zt > 1e-6) & (j >= 0) & (j < w) & (i >= 0) & (i < h)
    flat = (i * w + j)[ok]
    zt = zt[ok]
    colour = np.broadcast_to(rgb_src[:, :, None, None, :], (h, w, s, s, 3))[ok]
    order = np.lexsort((-zt, flat))  # by pixel, farthest first: the last write per pixel is nearest
    flat, colour = flat[order], colour[order]
    last = np.ones(flat.shape, bool)
    last[:-1] = flat[1:] != flat[:-1]
    out = np.zeros((h * w, 3), np.float32)
    valid = np.zeros(h * w, bool)
    out[flat[last]] = colour[last]
    valid[flat[last]] = True
    return out.reshape(h, w, 3), valid.reshape(h, w)


def warp_baseline(rgb_src, depth_src, K, T_rel, subsamples: int = 3):
    """Warp-with-true-depth baseline: :func:`forward_warp`, holes filled with the source pixel."""
    warped, valid = forward_warp(rgb_src, depth_src, K, T_rel, subsamples)
    return np.where(valid[..., None], warped, np.asarray(rgb_src, np.float32))


def _bilinear(img, u, v):
    """Sample img (H, W, C) at pixel coordinates u, v (pixel centres at +0.5), edge-clamped."""
    h, w = img.shape[:2]
    x, y = np.clip(u - 0.5, 0, w - 1), np.clip(v - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def reprojection_error(view_tgt, rgb_src, depth_src, depth_tgt, K, T_rel,
                       rel_tol: float = 0.03, abs_tol: float = 0.05):
    """Mean absolute RGB error (in [0, 1] units) between the source view and the target view
    ``view_tgt`` (e.g. a generated one) sampled bilinearly at each source pixel's true position in
    the target, over source pixels visible in the target. NaN when none is."""
    depth_src = np.asarray(depth_src, np.float64)
    K = np.asarray(K, np.float64)
    pts_tgt = _to_other(_unproject(depth_src, K), T_rel)
    visible = _visible_in(pts_tgt, np.asarray(depth_tgt, np.float64), K, rel_tol, abs_tol)
    if not visible.any():
        return float("nan")
    u, v, _ = _project_cam(pts_tgt, K)
    sampled = _bilinear(np.asarray(view_tgt, np.float64), u, v)
    err = np.abs(sampled - np.asarray(rgb_src, np.float64)).mean(-1)
    return float(err[visible].mean())


# -------------------------------------------------------------------------------- box matcher


def _box_of(mask):
    """Pixel box [x1, y1, x2, y2) of a non-empty bool mask (H, W): x2/y2 one past the last
    pixel, so ``geometry.box_iou`` counts whole pixels."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def kmeans_colors(colors, k: int, iters: int = 10) -> np.ndarray:
    """Up to ``k`` cluster centres (k', 3) of RGB ``colors`` (P, 3): farthest-point init + Lloyd."""
    colors = np.asarray(colors, np.float64).reshape(-1, 3)
    if len(colors) == 0:
        return np.zeros((0, 3))
    centres = [colors[0]]
    for _ in range(1, k):
        d = np.min(np.square(colors[:, None] - np.asarray(centres)[None]).sum(-1), axis=1)
        if d.max() < 1e-6:
            break
        centres.append(colors[int(np.argmax(d))])
    centres = np.asarray(centres)
    for _ in range(iters):
        assign = np.argmin(np.square(colors[:, None] - centres[None]).sum(-1), axis=1)
        centres = np.stack([colors[assign == j].mean(0) if np.any(assign == j) else centres[j]
                            for j in range(len(centres))])
    return centres


def match_boxes(pred_rgb, truth_rgb, truth_instance, min_pixels: int = 4, extra_prototypes=None,
                room_clusters: int = 6, object_clusters: int = 3, same_color: float = 0.12):
    """Colour/instance detector + matcher on a (generated) view.

    Detector: colour prototypes from the true render — up to ``object_clusters`` k-means colours
    per object instance (>= 0; lit and shaded faces) and up to ``room_clusters`` for the room
    pixels (< 0: walls, floor checker, ceiling); each pixel of ``pred_rgb`` takes the label of the
    nearest prototype. Objects whose mean colours are within ``same_color`` (RGB distance) form one
    colour class, and the detections of a class are the 8-connected components of its pixels with
    at least ``min_pixels`` pixels. ``extra_prototypes`` ({object id: RGB}) adds objects absent from
    the truth (e.g. seen in the source view only) so a hallucinated object counts against
    visibility agreement.

    Matcher, per colour class: truly visible objects (>= ``min_pixels`` pixels) take detections
    greedily by IoU (each detection once); an object is predicted visible when it got a detection,
    and a truly invisible object of the class when an unmatched detection is left for it.

    Returns per-object arrays: ``ids``, ``iou`` (NaN where not truly visible, 0 when undetected),
    ``visible_true``, ``visible_pred``.
    """
    pred = np.asarray(pred_rgb, np.float64)
    truth = np.asarray(truth_rgb, np.float64)
    inst = np.asarray(truth_instance)
    ids = [int(o) for o in np.unique(inst) if o >= 0]
    means = {o: truth[inst == o].mean(0) for o in ids}
    labels, protos = [], []
    for o in ids:
        for centre in kmeans_colors(truth[inst == o], object_clusters):
            labels.append(o)
            protos.append(centre)
    for centre in kmeans_colors(truth[inst < 0], room_clusters):
        labels.append(-1)
        protos.append(centre)
    for obj, rgb in (extra_prototypes or {}).items():
        if int(obj) < 0 or int(obj) in ids:
            raise ValueError(f"extra_prototypes id {obj} must be an object id >= 0 absent from "
                             f"truth_instance (present: {ids})")
        ids.append(int(obj))
        means[int(obj)] = np.asarray(rgb, np.float64).reshape(3)
        labels.append(int(obj))
        protos.append(means[int(obj)])
    dist = np.square(pred[:, :, None, :] - np.stack(protos)[None, None]).sum(-1)
    assigned = np.asarray(labels)[np.argmin(dist, axis=-1)]

    # colour classes: connected groups of objects with near-identical mean colours
    group = {o: o for o in ids}
    for a in ids:
        for b in ids:
            if a < b and np.linalg.norm(means[a] - means[b]) < same_color:
                ga, gb = group[a], group[b]
                group = {o: (ga if g == gb else g) for o, g in group.items()}
    iou = {o: float("nan") for o in ids}
    vis_true = {o: int((inst == o).sum()) >= min_pixels for o in ids}
    vis_pred = {o: False for o in ids}
    for g in sorted(set(group.values())):
        members = [o for o in ids if group[o] == g]
        comps, n = ndimage.label(np.isin(assigned, members), structure=np.ones((3, 3)))
        sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
        dets = [_box_of(comps == k + 1) for k in range(n) if sizes[k] >= min_pixels]
        visible = [o for o in members if vis_true[o]]
        pairs = sorted(((geometry.box_iou(_box_of(inst == o), d), o, j) for o in visible
                        for j, d in enumerate(dets)), reverse=True)
        used_obj, used_det = set(), set()
        for value, o, j in pairs:
            if o not in used_obj and j not in used_det:
                used_obj.add(o)
                used_det.add(j)
                iou[o], vis_pred[o] = value, True
        for o in visible:
            if o not in used_obj:
                iou[o] = 0.0
        spare = len(dets) - len(used_det)
        for o in members:
            if not vis_true[o] and spare > 0:
                vis_pred[o] = True
                spare -= 1
    return {"ids": np.asarray(ids, np.int64), "iou": np.asarray([iou[o] for o in ids], np.float64),
            "visible_true": np.asarray([vis_true[o] for o in ids], bool),
            "visible_pred": np.asarray([vis_pred[o] for o in ids], bool)}


psnr_jit = jax.jit(psnr, static_argnames=("max_val",))
ssim_jit = jax.jit(ssim, static_argnames=("max_val", "window_size", "sigma"))
