"""Quality control of teacher views and their detections (paper.md §6; on by default here).

The official generation QC (Laplacian-variance blur test, temporal-change bounds) exists but is
switched off in both official configs (paper.md §12.9); here it runs by default and every rejection
is counted with its reason.

Checks (thresholds in `QCConfig`):
  blur        variance of the 4-neighbour Laplacian of the grey image (0-255 scale, edge pixels
              replicated) must be >= blur_min for every teacher view (the official test).
              Calibration on 64-px renders of `w2v_jax.sim` (supersample 2): over the 1100 true
              views of a 50-scene build the variance is 11-1128 (1 % quantile 181); 6 views
              (0.5 %, frames filled by a bare wall) fall below 100. After a Gaussian blur of
              sigma 0.75 / 1 / 1.5 px it is at most 123 / 59 / 20 (320 views); a 32-px view
              upsampled to 64 px at most 40; the near-uniform grey 32-px views of an untrained
              world model 6-92. blur_min = 100 (the official value) so rejects blur of sigma
              >= 1 px and collapsed outputs, at the price of ~1 % of true trajectories. At 32 px
              (the small world model's size; 27 renders) crisp views give 549-1450, sigma 0.75
              61-182, sigma 1 26-84: the same threshold serves. The variance grows with detail
              per pixel: recalibrate at other resolutions with `laplacian_variance`.
  change      mean |difference| (0-1 scale) between consecutive views [source, view 1, ...] must
              lie in [change_min, change_max] (official bounds 0.01 / 0.4). The smallest motions
              of the room trajectory grid (0.1 m forward) give >= 0.011 on 64-px renders; a copied
              source view gives 0.
  boxes       a detection is degenerate when its box has a side below min_box_side (0-1000 units),
              an aspect ratio above max_box_aspect, or covers more than max_box_area of the image;
              degenerate detections are dropped (and counted), the view is kept.
A trajectory whose views fail blur or change is dropped whole (all its A and D records).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from w2v_jax.processing.image import to_unit_float

_LUMA = np.array([0.299, 0.587, 0.114])


@dataclasses.dataclass(frozen=True)
class QCConfig:
    """Thresholds of the view and box checks (module doc). `enabled=False` turns all off."""

    enabled: bool = True
    blur_min: float = 100.0
    change_min: float = 0.01
    change_max: float = 0.4
    min_box_side: int = 10
    max_box_aspect: float = 8.0
    max_box_area: float = 0.9

    def __post_init__(self):
        if not 0 <= self.blur_min < math.inf:  # "not in range": NaN is refused too
            raise ValueError(f"QCConfig.blur_min must be a finite number >= 0, got {self.blur_min}")
        if not 0 <= self.change_min <= self.change_max <= 1:
            raise ValueError(f"QCConfig needs 0 <= change_min <= change_max <= 1, got "
                             f"{self.change_min}, {self.change_max}")
        if (not 0 <= self.min_box_side < math.inf or not 1 <= self.max_box_aspect < math.inf
                or not 0 < self.max_box_area <= 1):
            raise ValueError(f"QCConfig box thresholds out of range: min_box_side="
                             f"{self.min_box_side}, max_box_aspect={self.max_box_aspect}, "
                             f"max_box_area={self.max_box_area}")


def laplacian_variance(image) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image on the 0-255 scale (OpenCV's
    `Laplacian(gray, CV_64F).var()` with ksize 1, borders replicated). image (H, W, 3) uint8 or
    float in [0, 1]."""
    grey = to_unit_float(image) @ _LUMA * 255.0
    padded = np.pad(grey, 1, mode="edge")
    lap = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
           - 4.0 * grey)
    return float(lap.var())


def mean_abs_change(a, b) -> float:
    """Mean |a - b| on the 0-1 scale of two (H, W, 3) views of the same size."""
    a, b = to_unit_float(a), to_unit_float(b)
    if a.shape != b.shape:
        raise ValueError(f"views must have the same shape, got {a.shape} and {b.shape}")
    return float(np.mean(np.abs(a - b)))


def check_views(source, views: Sequence[Any], config: QCConfig = QCConfig()) -> list[str]:
    """Reasons (empty = pass) why the teacher `views` (V, H, W, 3) of one trajectory fail QC.

    Each reason starts with its kind ("blur", "static", "change") followed by the measured value.
    """
    if not config.enabled:
        return []
    reasons = []
    previous = source
    for i, view in enumerate(views):
        lap = laplacian_variance(view)
        if lap < config.blur_min:
            reasons.append(f"blur: view {i} Laplacian variance {lap:.1f} < {config.blur_min:g}")
        change = mean_abs_change(previous, view)
        if change < config.change_min:
            reasons.append(f"static: view {i} mean change {change:.4f} < {config.change_min:g}")
        elif change > config.change_max:
            reasons.append(f"change: view {i} mean change {change:.4f} > {config.change_max:g}")
        previous = view
    return reasons


def reason_kind(reason: str) -> str:
    """The kind of a reason string ("blur", "static", "change", "degenerate_box")."""
    return reason.split(":", 1)[0]


def degenerate_reason(det: Mapping[str, Any], config: QCConfig = QCConfig()) -> str | None:
    """Why a detection's box (0-1000) is degenerate, or None when it is fine (module doc)."""
    x1, y1, x2, y2 = (float(v) for v in det["box"])
    w, h = x2 - x1, y2 - y1
    if w < config.min_box_side or h < config.min_box_side:
        return f"degenerate_box: side {min(w, h):g} < {config.min_box_side}"
    if max(w / h, h / w) > config.max_box_aspect:
        return f"degenerate_box: aspect {max(w / h, h / w):.1f} > {config.max_box_aspect:g}"
    if w * h / 1e6 > config.max_box_area:
        return f"degenerate_box: area {w * h / 1e6:.2f} > {config.max_box_area:g}"
    return None


def filter_degenerate(
    detections: Sequence[Mapping[str, Any]], config: QCConfig = QCConfig()
) -> tuple[list[dict], list[str]]:
    """(kept detections, reasons of the dropped ones); nothing is dropped when QC is disabled."""
    if not config.enabled:
        return [dict(d) for d in detections], []
    kept, reasons = [], []
    for det in detections:
        reason = degenerate_reason(det, config)
        if reason is None:
            kept.append(dict(det))
        else:
            reasons.append(reason)
    return kept, reasons
