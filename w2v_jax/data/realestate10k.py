"""Real posed video in the RealEstate10K camera format, as clip dicts in this project's conventions.

A directory of camera files (``*.txt``), each with its frames directory next to it (same name
without ``.txt``) -> :class:`RealEstate10KSource`, random access ``[i]`` -> ``{"frames" (T, S, S, 3)
uint8, "c2w" (T, 4, 4) OpenCV camera-to-world, "K" (3, 3) in pixels of the S x S crop,
"num_frames", "frame_mask" (T,)}``, ready for ``w2v_jax.data.view_pairs.pair_dataset``.
"""
from __future__ import annotations

import glob
import os

import numpy as np

from w2v_jax import geometry


def read_realestate10k_cameras(path: str) -> dict:
    """Parse a RealEstate10K camera file.

    Format: an optional first line with the video URL, then one line per frame:
    ``timestamp fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3`` with intrinsics
    normalised by the image width (fx, cx) and height (fy, cy) and a 3x4 world-to-camera matrix in
    the OpenCV convention. Returns ``{"timestamps" (T,) int64, "intrinsics" (T, 4) normalised,
    "c2w" (T, 4, 4) float32}``. Units are those of the source's SLAM reconstruction (not metres).
    """
    timestamps, intr, c2w = [], [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts or (lineno == 1 and len(parts) < 19):
                continue
            if len(parts) != 19:
                raise ValueError(f"{path}:{lineno}: expected 19 numbers (timestamp, fx fy cx cy, "
                                 f"0 0, 3x4 world-to-camera), got {len(parts)}")
            vals = [float(x) for x in parts]
            w2c = np.eye(4)
            w2c[:3] = np.asarray(vals[7:19]).reshape(3, 4)
            timestamps.append(int(parts[0]))
            intr.append(vals[1:5])
            c2w.append(geometry.invert_pose(w2c))
    if not timestamps:
        raise ValueError(f"{path}: no camera lines")
    return {"timestamps": np.asarray(timestamps, np.int64),
            "intrinsics": np.asarray(intr, np.float32),
            "c2w": np.asarray(c2w, np.float32)}


def _load_square(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Centre-crop an image file to a square and resize it to ``size``; returns (rgb, (W, H))."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BOX)
        return np.asarray(im, np.uint8), (w, h)


def _frame_files(frames_dir: str, timestamps) -> list[str]:
    files = sorted(glob.glob(os.path.join(frames_dir, "*.png")) +
                   glob.glob(os.path.join(frames_dir, "*.jpg")))
    by_stem = {os.path.splitext(os.path.basename(f))[0]: f for f in files}
    if all(str(t) in by_stem for t in timestamps):
        return [by_stem[str(t)] for t in timestamps]
    if len(files) == len(timestamps):
        return files
    raise ValueError(f"{frames_dir}: cannot match {len(timestamps)} camera lines to frames; "
                     f"expected "
                     f"files named '<timestamp>.png|.jpg' or exactly one image per line "
                     f"(found {len(files)})")


def load_realestate10k_clip(camera_file: str, frames_dir: str | None = None, image_size: int = 32,
                            max_frames: int = 32, stride: int = 1) -> dict:
    """One RealEstate10K sequence as a clip dict in our conventions.

    ``frames_dir`` defaults to the camera file's path without its extension. Images are centre-
    cropped to a square and resized to ``image_size``; ``K`` is expressed in those pixels. Every
    ``stride``-th frame is kept, then the first ``max_frames`` (padded with ``frame_mask``).
    """
    cams = read_realestate10k_cameras(camera_file)
    frames_dir = os.path.splitext(camera_file)[0] if frames_dir is None else frames_dir
    files = _frame_files(frames_dir, cams["timestamps"])
    keep = np.arange(0, len(files), max(1, int(stride)))[:max_frames]
    frames, K = [], None
    for i in keep:
        rgb, (w, h) = _load_square(files[i], image_size)
        frames.append(rgb)
        if K is None:
            fx, fy, cx, cy = cams["intrinsics"][i] * np.array([w, h, w, h])
            s = min(w, h)
            scale = image_size / s
            K = np.array([[fx * scale, 0, (cx - (w - s) / 2) * scale],
                          [0, fy * scale, (cy - (h - s) / 2) * scale], [0, 0, 1]], np.float32)
    n = len(keep)
    pad = max_frames - n
    c2w = cams["c2w"][keep]
    return {
        "frames": np.concatenate([np.stack(frames), np.zeros((pad, image_size, image_size, 3),
                                                             np.uint8)]),
        "c2w": np.concatenate([c2w, np.repeat(c2w[-1:], pad, 0)]),
        "K": K,
        "num_frames": np.int32(n),
        "frame_mask": np.arange(max_frames) < n,
    }


class RealEstate10KSource:
    """Random-access clips from a directory of RealEstate10K camera files (``*.txt``), each with its
    frames directory next to it (same name without ``.txt``). Feed it to
    ``w2v_jax.data.view_pairs.pair_dataset``."""

    def __init__(self, root: str, image_size: int = 32, max_frames: int = 32, stride: int = 1):
        self.files = sorted(glob.glob(os.path.join(root, "*.txt")))
        if not self.files:
            raise ValueError(f"no RealEstate10K camera files (*.txt) in {root!r}")
        self.image_size, self.max_frames, self.stride = image_size, max_frames, stride

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return load_realestate10k_clip(self.files[int(index)], image_size=self.image_size,
                                       max_frames=self.max_frames, stride=self.stride)
