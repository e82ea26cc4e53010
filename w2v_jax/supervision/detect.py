"""Object detection and instance matching on teacher views (the role of YOLO-World + ByteTrack).

A detection is a plain dict (what `w2v_jax.supervision.tasks` consumes):
  {"label": str, "box": [x1, y1, x2, y2] ints 0-1000, "score": float in [0, 1],
   "track_id": int | None, "color": str, "shape": str, "pixels": int}
(`color` / `shape` / `pixels` are the appearance the matcher uses; the task builders ignore them).

Label vocabulary (used in the prompts): the object's SHAPE CLASS, "cube" / "sphere" / "cylinder",
the analogue of YOLO's class names. A scene may hold several objects of one class, so D4 has real
negatives ("a cube" that is another cube) and the bbox in the prompt is what singles an object out.
`vocabulary="color_shape"` gives "red cube"-style labels instead (near-unique per scene, so D4
negatives become rare).

Detectors (`Detector` protocol: `detect(x) -> list[dict]`):
  OracleDetector     ground truth of the renderer: one detection per visible object (modal box of
                     its instance mask), track_id = the object's slot (perfect tracking), score 1,
                     ordered by visible pixels (largest first). Its input is a render dict of ONE
                     view (`w2v_jax.sim.render` outputs), not an image.
  ColorShapeDetector images only (generated or rendered views; never the renderer's truth): pixels
                     are classified by chromaticity against the fixed 8-colour object palette and
                     the fixed room colours, connected components become instances, and the shape
                     comes from the shading inside the mask (Lambert shading: a sphere varies down
                     every column, a cylinder's lit side ramps across each row, cube faces are
                     flat). No track ids: `match_instances` links two frames.

`detection_metrics` scores detections against the oracle (precision / recall / IoU / label
accuracy at IoU >= 0.5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from w2v_jax import geometry
from w2v_jax.geometry import box_iou
from w2v_jax.processing.image import to_unit_float
from w2v_jax.sim.scene import COLORS, FLOOR_COLORS, PALETTE, SHAPES, WALL_TINTS

VOCABULARIES = ("shape", "color_shape")


def object_label(shape: str, color: str, vocabulary: str = "shape") -> str:
    """The prompt label of an object: its shape class, or "color shape" (see module doc)."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    return shape if vocabulary == "shape" else f"{color} {shape}"


class Detector(Protocol):
    """Anything with `detect(x) -> list of detection dicts` (module doc)."""

    def detect(self, x: Any) -> list[dict]: ...


# ----------------------------------------------------------------------------- oracle
class OracleDetector:
    """Ground-truth detections of one rendered view of `scene` (a `w2v_jax.sim.Scene`).

    `detect(render)` takes the dict `w2v_jax.sim.render` returns for ONE view (numpy or jax
    arrays; needs `visible_pixels` (K,) and `box` (K, 4) 0-1000) and returns one detection per
    object slot with at least `min_pixels` visible pixels: label from the scene's shape/colour ids,
    modal box, score 1.0, track_id = slot. Ordered by visible pixels, largest first (ties by slot),
    so "the top detection" is the most visible object.
    """

    def __init__(self, scene, vocabulary: str = "shape", min_pixels: int = 1):
        if vocabulary not in VOCABULARIES:
            raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}")
        if int(min_pixels) != min_pixels or min_pixels < 1:
            raise ValueError(f"min_pixels must be an integer >= 1, got {min_pixels!r}")
        self.vocabulary, self.min_pixels = vocabulary, int(min_pixels)
        self.valid = np.asarray(scene.valid, bool)
        self.shapes = [SHAPES[int(t)] for t in np.asarray(scene.type)]
        self.colors = [COLORS[int(c)] for c in np.asarray(scene.color_id)]

    def detect(self, render: Mapping[str, Any]) -> list[dict]:
        if not isinstance(render, Mapping) or "visible_pixels" not in render or "box" not in render:
            raise ValueError("OracleDetector.detect needs a render dict of one view with "
                             "'visible_pixels' (K,) and 'box' (K, 4)")
        pixels = np.asarray(render["visible_pixels"])
        boxes = np.asarray(render["box"])
        if pixels.shape != self.valid.shape or boxes.shape != self.valid.shape + (4,):
            raise ValueError(f"render['visible_pixels'] / render['box'] must have shapes "
                             f"{self.valid.shape} / {self.valid.shape + (4,)} (one view of this "
                             f"scene), got {pixels.shape} / {boxes.shape}")
        slots = [k for k in range(len(pixels)) if self.valid[k] and pixels[k] >= self.min_pixels]
        slots.sort(key=lambda k: (-int(pixels[k]), k))
        return [
            {
                "label": object_label(self.shapes[k], self.colors[k], self.vocabulary),
                "box": [int(v) for v in boxes[k]],
                "score": 1.0,
                "track_id": int(k),
                "color": self.colors[k],
                "shape": self.shapes[k],
                "pixels": int(pixels[k]),
            }
            for k in slots
        ]


# ----------------------------------------------------------------------------- colour + shape
def _chroma(rgb: np.ndarray) -> np.ndarray:
    return rgb / np.maximum(rgb.sum(-1, keepdims=True), 1e-6)


# Background chromaticities of the procedural rooms (a fixed vocabulary, like the palette): wall
# tints, the two floor tiles; the ceiling is neutral and is told from gray objects by brightness.
_BACKGROUND = np.concatenate([WALL_TINTS, FLOOR_COLORS]).astype(np.float64)
_GRAY = COLORS.index("gray")


@dataclasses.dataclass(frozen=True)
class ColorShapeConfig:
    """Thresholds of `ColorShapeDetector` (calibrated on 64-px renders of `w2v_jax.sim`).

    chroma_tol: max chromaticity distance of an object pixel to its palette colour (and it must be
      nearer to it than to every room colour); gray pixels instead need chroma spread (max - min of
      r, g, b over their sum) <= gray_spread and mean brightness in gray_brightness (the floor's
      spread is ~0.04; the ceiling is neutral at brightness 0.368, brighter than any gray object).
    min_shading / max_shading: allowed brightness relative to the palette colour (Lambert shading
      is 0.4-1.0; anti-aliased edges go lower).
    min_pixels: smallest connected component kept as an instance.
    flat_step: shading step below which two neighbouring pixels count as "flat".
    sphere_max_vflat: below this fraction of vertically flat interior pairs the object is a
      sphere (its shading varies down every column; cubes and cylinders are flat vertically).
    ramp_step / cylinder_min_ramp: above cylinder_min_ramp of the horizontally adjacent interior
      pairs below the top face ramping (shading step in (ramp_step, 0.1)) a non-sphere is a
      cylinder; cube faces are flat with one edge between.
    shape_min_pixels: components with fewer interior (eroded) pixels get no shape evidence: label
      cube with shape confidence 0.
    The shape thresholds were chosen on the true masks of 806 objects (box >= 1 % of the image)
    in 320 renders of 40 scenes: vflat < 0.6 tells spheres from the rest for 97 % of them, ramp
    > 0.36 cylinders from cubes for 81 % (cylinders seen from their unlit side look flat).
    """

    chroma_tol: float = 0.08
    gray_spread: float = 0.02
    gray_brightness: tuple[float, float] = (0.08, 0.355)
    min_shading: float = 0.25
    max_shading: float = 1.15
    min_pixels: int = 3
    flat_step: float = 0.02
    ramp_step: float = 0.008
    sphere_max_vflat: float = 0.6
    cylinder_min_ramp: float = 0.36
    shape_min_pixels: int = 4

    def __post_init__(self):
        if not 0 < self.chroma_tol < 1 or not 0 < self.gray_spread < 1:
            raise ValueError(f"chroma_tol and gray_spread must be in (0, 1), got "
                             f"{self.chroma_tol}, {self.gray_spread}")
        if int(self.min_pixels) != self.min_pixels or self.min_pixels < 1:
            raise ValueError(f"min_pixels must be an integer >= 1, got {self.min_pixels!r}")


def classify_pixels(image, config: ColorShapeConfig = ColorShapeConfig()) -> np.ndarray:
    """Colour class per pixel (H, W) int: index into COLORS, -1 for background."""
    img = to_unit_float(image)
    chroma = _chroma(img)
    pal = PALETTE.astype(np.float64)
    d_obj = np.linalg.norm(chroma[..., None, :] - _chroma(pal)[None, None], axis=-1)  # (H,W,8)
    d_bg = np.linalg.norm(chroma[..., None, :] - _chroma(_BACKGROUND)[None, None], axis=-1).min(-1)
    shading = (img @ pal.T) / np.sum(pal * pal, -1)  # (H,W,8): best scale of each palette colour
    chromatic = [i for i in range(len(COLORS)) if i != _GRAY]
    d_chr = d_obj[..., chromatic]
    best = np.argmin(d_chr, -1)
    best_d = np.take_along_axis(d_chr, best[..., None], -1)[..., 0]
    best_s = np.take_along_axis(shading[..., chromatic], best[..., None], -1)[..., 0]
    ok = ((best_d <= config.chroma_tol) & (best_d < d_bg)
          & (best_s >= config.min_shading) & (best_s <= config.max_shading))
    out = np.where(ok, np.asarray(chromatic)[best], -1)
    spread = (img.max(-1) - img.min(-1)) / np.maximum(img.sum(-1), 1e-6)
    bright = img.mean(-1)
    lo, hi = config.gray_brightness
    gray = (spread <= config.gray_spread) & (bright >= lo) & (bright <= hi) & (out < 0)
    return np.where(gray, _GRAY, out).astype(np.int32)


def shape_features(image, mask: np.ndarray, color_id: int,
                   config: ColorShapeConfig = ColorShapeConfig()) -> dict[str, float]:
    """Shading cues of one instance mask (H, W) of palette colour `color_id`.

    vflat: fraction of vertically adjacent interior pixel pairs whose shading differs by less than
      flat_step; ramp: fraction of horizontally adjacent interior pairs below the top face (shading
      < 0.85) whose shading differs by (ramp_step, 0.1); interior: eroded pixel count.
    """
    img = to_unit_float(image)
    c = PALETTE[int(color_id)].astype(np.float64)
    shading = (img @ c) / float(c @ c)
    inner = ndimage.binary_erosion(mask)
    vpair = inner[:-1] & inner[1:]
    dv = np.abs(shading[1:] - shading[:-1])[vpair]
    side = inner & (shading < 0.85)
    hpair = side[:, :-1] & side[:, 1:]
    dh = np.abs(shading[:, 1:] - shading[:, :-1])[hpair]
    return {
        "vflat": float(np.mean(dv < config.flat_step)) if dv.size else float("nan"),
        "ramp": float(np.mean((dh > config.ramp_step) & (dh < 0.1))) if dh.size else 0.0,
        "interior": float(inner.sum()),
    }


def classify_shape(features: Mapping[str, float],
                   config: ColorShapeConfig = ColorShapeConfig()) -> tuple[str, float]:
    """(shape, confidence in [0, 1]) from `shape_features`; confidence grows with the margin of
    the deciding feature from its threshold (0 without interior evidence)."""
    vflat = features["vflat"]
    if features["interior"] < config.shape_min_pixels or not np.isfinite(vflat):
        return "cube", 0.0
    if vflat < config.sphere_max_vflat:
        return "sphere", min(1.0, (config.sphere_max_vflat - vflat) / config.sphere_max_vflat * 2)
    margin = features["ramp"] - config.cylinder_min_ramp
    conf = min(1.0, abs(margin) / max(config.cylinder_min_ramp, 1 - config.cylinder_min_ramp) * 2)
    return ("cylinder" if margin > 0 else "cube"), conf


class ColorShapeDetector:
    """Detector on images only (module doc). `detect(image)` with image (H, W, 3) uint8 or float
    in [0, 1]; returns detections sorted by score (then pixels), track_id None.

    score = colour purity * (0.5 + 0.5 * shape confidence), where colour purity is the fraction of
    the component's pixels within half the chroma tolerance of the palette colour.
    """

    def __init__(self, vocabulary: str = "shape", config: ColorShapeConfig = ColorShapeConfig()):
        if vocabulary not in VOCABULARIES:
            raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}")
        self.vocabulary, self.config = vocabulary, config

    def detect(self, image) -> list[dict]:
        img = to_unit_float(image)
        h, w = img.shape[:2]
        classes = classify_pixels(img, self.config)
        chroma = _chroma(img)
        pal_chroma = _chroma(PALETTE.astype(np.float64))
        out = []
        for color_id in np.unique(classes):
            if color_id < 0:
                continue
            components, _ = ndimage.label(classes == color_id, structure=np.ones((3, 3)))
            for index, rows_cols in enumerate(ndimage.find_objects(components), start=1):
                if rows_cols is None:
                    continue
                mask = components == index
                pixels = int(mask.sum())
                if pixels < self.config.min_pixels:
                    continue
                rows, cols = rows_cols
                box_px = [cols.start, rows.start, cols.stop, rows.stop]
                shape, shape_conf = classify_shape(
                    shape_features(img, mask, color_id, self.config), self.config)
                if color_id == _GRAY:
                    spread = ((img.max(-1) - img.min(-1)) / np.maximum(img.sum(-1), 1e-6))[mask]
                    purity = float(np.mean(spread <= self.config.gray_spread / 2))
                else:
                    dist = np.linalg.norm(chroma[mask] - pal_chroma[color_id], axis=-1)
                    purity = float(np.mean(dist <= self.config.chroma_tol / 2))
                color = COLORS[int(color_id)]
                out.append({
                    "label": object_label(shape, color, self.vocabulary),
                    "box": [int(v) for v in geometry.boxes_to_1000(box_px, w, h)],
                    "score": round(purity * (0.5 + 0.5 * shape_conf), 4),
                    "track_id": None,
                    "color": color,
                    "shape": shape,
                    "pixels": pixels,
                })
        out.sort(key=lambda d: (-d["score"], -d["pixels"], d["box"]))
        return out


# ----------------------------------------------------------------------------- tracking
def match_instances(
    first: Sequence[Mapping[str, Any]],
    last: Sequence[Mapping[str, Any]],
    *,
    min_iou: float = 0.3,
    iou_weight: float = 0.5,
) -> tuple[list[dict], list[dict]]:
    """Assign track ids across two frames (the role ByteTrack plays in the official pipeline).

    A pair may match only with the same label, and then only with the same appearance (equal
    `color` when both carry one) or, without appearance, with box IoU >= min_iou. Pairs are taken
    greedily by similarity = [same colour] + iou_weight * IoU (ties: first-frame order, then
    last-frame order), each detection at most once. First-frame detections get track ids 0..n-1
    in order; a matched last-frame detection takes its partner's id, an unmatched one a fresh id.
    The camera may move far between the frames, so appearance, not overlap, carries the match; IoU
    only breaks ties between look-alikes. Returns copies of both lists with `track_id` set.
    """
    first = [dict(d) for d in first]
    last = [dict(d) for d in last]
    pairs = []
    for i, a in enumerate(first):
        for j, b in enumerate(last):
            if a["label"] != b["label"]:
                continue
            iou = box_iou(a["box"], b["box"])
            has_color = "color" in a and "color" in b
            if has_color and a["color"] != b["color"]:
                continue
            if not has_color and iou < min_iou:
                continue
            pairs.append((-(float(has_color) + iou_weight * iou), i, j))
    pairs.sort()
    taken_i, taken_j = set(), set()
    for d_index, det in enumerate(first):
        det["track_id"] = d_index
    for _, i, j in pairs:
        if i in taken_i or j in taken_j:
            continue
        taken_i.add(i)
        taken_j.add(j)
        last[j]["track_id"] = i
    fresh = len(first)
    for j, det in enumerate(last):
        if j not in taken_j:
            det["track_id"] = fresh
            fresh += 1
    return first, last


# ----------------------------------------------------------------------------- evaluation
def detection_metrics(
    predicted: Sequence[Sequence[Mapping[str, Any]]],
    truth: Sequence[Sequence[Mapping[str, Any]]],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Detections vs ground truth over many images (lists of per-image detection lists).

    Per image, pairs are matched greedily by IoU (>= iou_threshold), ignoring labels. Returns
    counts and: precision / recall (matched / predicted, matched / true), mean_iou of the matches,
    label_accuracy (matches whose labels agree), and precision_labeled / recall_labeled (a match
    counts only with the right label).
    """
    if len(predicted) != len(truth):
        raise ValueError(f"predicted has {len(predicted)} images but truth has {len(truth)}")
    n_pred = n_true = matched = labeled = 0
    ious = []
    for preds, trues in zip(predicted, truth):
        n_pred += len(preds)
        n_true += len(trues)
        pairs = sorted(
            ((box_iou(p["box"], t["box"]), i, j) for i, p in enumerate(preds)
             for j, t in enumerate(trues)),
            key=lambda x: (-x[0], x[1], x[2]),
        )
        used_p, used_t = set(), set()
        for iou, i, j in pairs:
            if iou < iou_threshold:
                break
            if i in used_p or j in used_t:
                continue
            used_p.add(i)
            used_t.add(j)
            matched += 1
            ious.append(iou)
            labeled += preds[i]["label"] == trues[j]["label"]
    return {
        "images": len(truth),
        "predicted": n_pred,
        "true": n_true,
        "matched": matched,
        "precision": matched / n_pred if n_pred else 0.0,
        "recall": matched / n_true if n_true else 0.0,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "label_accuracy": labeled / matched if matched else 0.0,
        "precision_labeled": labeled / n_pred if n_pred else 0.0,
        "recall_labeled": labeled / n_true if n_true else 0.0,
    }
