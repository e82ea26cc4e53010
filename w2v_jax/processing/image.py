"""Qwen2-VL / Qwen2.5-VL image preprocessing in numpy (no torch, no torchvision).

Reproduces Hugging Face's ``Qwen2VLImageProcessor`` (its PIL backend) exactly:
RGB conversion -> ``smart_resize`` to multiples of ``patch_size * merge_size`` -> PIL bicubic
resize on uint8 -> rescale by 1/255 -> normalise with the CLIP mean/std -> flatten into patches.

Patch layout: each image of ``grid_h x grid_w`` patches (``grid_h = H / patch_size``) becomes
``grid_h * grid_w`` rows ordered by merge window: (window row, window col, row in window,
col in window); each row is ``(C, temporal_patch_size, patch_size, patch_size)`` flattened, the
single frame repeated ``temporal_patch_size`` times. This is the order the vision tower's patch
embedding (a matmul over flattened Conv3d kernels) and its patch merger expect.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 56 * 56  # 3136, HF and the paper's SFT setting
DEFAULT_MAX_PIXELS = 28 * 28 * 1280  # 1003520, HF default and the paper's SFT MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Static image-processing settings (field names and defaults as in HF's processor)."""

    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments for ``preprocess_images``."""
        return dataclasses.asdict(self)


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Target (height, width) in pixels: multiples of ``factor``, area in [min_pixels, max_pixels],
    aspect ratio kept as closely as possible (same arithmetic as HF, incl. Python's round)."""
    for name, value in (("height", height), ("width", width), ("factor", factor)):
        if int(value) != value or value <= 0:
            raise ValueError(f"smart_resize: {name}={value!r} must be a positive integer")
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(
            f"smart_resize: need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, "
            f"max_pixels={max_pixels}"
        )
    aspect = max(height, width) / min(height, width)
    if aspect > 200:
        raise ValueError(f"smart_resize: aspect ratio {aspect:.1f} of {height}x{width} exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return int(h_bar), int(w_bar)


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def _array_to_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ValueError(
            f"image array dtype={image.dtype} is not allowed: pass uint8 (H, W[, C]) arrays, e.g. "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image array shape={image.shape} is not allowed: expected channels-last (H, W), "
            "(H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 4:  # composite onto white, as HF does for arrays
        alpha = image[..., 3:4] / 255.0
        return np.round(alpha * image[..., :3] + (1.0 - alpha) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(image)


def to_unit_float(image: Any, dtype: Any = np.float64) -> np.ndarray:
    """An RGB view (H, W, 3), uint8 or float in [0, 1], as floats in [0, 1] of ``dtype``.

    ValueError for another shape, or a float image with values outside [0, 1] or non-finite."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(dtype) / 255.0
    img = img.astype(dtype)
    if not np.all(np.isfinite(img)) or img.min() < -1e-6 or img.max() > 1 + 1e-6:
        raise ValueError("a float image must hold finite values in [0, 1]")
    return img


def load_image(image: Any) -> np.ndarray:
    """Any supported image input -> uint8 RGB array (H, W, 3).

    Accepts a ``PIL.Image``, a uint8 array (H, W[, 1|3|4]), a file path, encoded bytes (PNG/JPEG),
    or an ms-swift style dict ``{"bytes": ..., "path": ...}``. Alpha is composited onto white.
    """
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            image = image["bytes"]
        elif image.get("path") is not None:
            image = image["path"]
        else:
            raise ValueError(f"image dict has keys {sorted(image)}; need 'bytes' or 'path'")
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"image path {os.fspath(image)!r} does not exist")
        with Image.open(image) as opened:
            return _pil_to_rgb(opened)
    if isinstance(image, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(image))) as opened:
            return _pil_to_rgb(opened)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise ValueError(
        f"image of type {type(image).__name__} is not allowed: use PIL.Image, uint8 ndarray, "
        "path, bytes or {'bytes'|'path': ...}"
    )


def _patchify(image: np.ndarray, patch_size: int, temporal_patch_size: int, merge_size: int):
    """(H, W, C) float32 -> ((H/p)*(W/p), C*t*p*p) in merge-window order; returns (rows, gh, gw)."""
    height, width, channels = image.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    m, p = merge_size, patch_size
    x = image.reshape(grid_h // m, m, p, grid_w // m, m, p, channels)
    # -> (window row, window col, row in window, col in window, C, py, px)
    x = x.transpose(0, 3, 1, 4, 6, 2, 5)
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (temporal_patch_size, p, p))
    return x.reshape(grid_h * grid_w, channels * temporal_patch_size * p * p), grid_h, grid_w


def preprocess_images(
    images: Sequence[Any],
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean: Sequence[float] = CLIP_MEAN,
    image_std: Sequence[float] = CLIP_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """Images -> (pixel_values (N_patches, 3*t*p*p) float32, image_grid_thw (n_images, 3) int32).

    ``N_patches = sum_i grid_thw[i].prod()``; each image is resized with ``smart_resize`` (factor
    ``patch_size * merge_size``) and contributes ``prod(grid_thw) // merge_size**2`` LLM tokens.
    Inputs may be anything ``load_image`` accepts. Identical to HF's Qwen2VLImageProcessor.
    """
    if isinstance(images, (np.ndarray, Image.Image, str, bytes, dict)):
        raise ValueError(
            f"images must be a sequence of images, got a single {type(images).__name__}"
        )
    if len(image_mean) != 3 or len(image_std) != 3:
        raise ValueError(f"image_mean={image_mean} and image_std={image_std} need 3 values each")
    factor = patch_size * merge_size
    mean = np.asarray(image_mean, dtype=np.float32)
    std = np.asarray(image_std, dtype=np.float32)
    patch_dim = 3 * temporal_patch_size * patch_size * patch_size
    rows, grids = [], []
    for image in images:
        rgb = load_image(image)
        height, width = smart_resize(rgb.shape[0], rgb.shape[1], factor, min_pixels, max_pixels)
        resized = np.array(
            Image.fromarray(rgb).resize((width, height), resample=Image.Resampling.BICUBIC)
        )
        scaled = (resized.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
        normed = (scaled - mean) / std
        patches, grid_h, grid_w = _patchify(normed, patch_size, temporal_patch_size, merge_size)
        rows.append(patches)
        grids.append((1, grid_h, grid_w))
    pixel_values = (
        np.concatenate(rows, axis=0).astype(np.float32, copy=False)
        if rows
        else np.zeros((0, patch_dim), np.float32)
    )
    return pixel_values, np.asarray(grids, dtype=np.int32).reshape(-1, 3)


def num_image_tokens(image_grid_thw: np.ndarray, merge_size: int = 2) -> np.ndarray:
    """(n_images, 3) grid -> (n_images,) number of ``<|image_pad|>`` tokens per image."""
    grid = np.asarray(image_grid_thw).reshape(-1, 3)
    return (grid.prod(axis=-1) // (merge_size * merge_size)).astype(np.int64)
