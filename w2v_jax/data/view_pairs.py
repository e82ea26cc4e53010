"""World-model input: view pairs (or tuples) sampled inside posed clips, streamed by Grain.

Sources (random access, ``len`` and ``[i]`` -> clip dict):

- the posed-clip TFDS dataset of ``data_gen.render_clips``
  (``w2v_jax.data.posed_clips.load_clips``): per clip ``frames`` uint8 (T, H, W, 3), ``c2w``
  (T, 4, 4), ``K`` (3, 3), ``num_frames``, ``depth``, ``instance``, ...;
- ``w2v_jax.data.realestate10k.RealEstate10KSource``: real posed video in the RealEstate10K
  camera format, converted to the same clip dict (frames, c2w, K, num_frames, frame_mask).

:class:`PairTransform` turns one clip into one training example with M source and N target views:
the first source is frame 0 with probability ``first_source_prob`` (else a random frame), the first
target is the clip's last frame with probability ``last_target_prob`` (else a random other frame);
further views are random distinct frames. All poses are re-expressed in the first source camera's
frame: ``rel = inv(c2w[src0]) @ c2w[i]`` (metres, OpenCV). An optional horizontal flip mirrors the
images and the geometry consistently (``F @ rel @ F``, ``F = diag(-1, 1, 1, 1)``, ``cx -> W - cx``).

Example (B examples per batch)::

    {"source": (B, M, H, W, 3) f32 in [-1, 1], "target": (B, N, H, W, 3) f32 in [-1, 1],
     "plucker_src": (B, M, H, W, 6), "plucker_tgt": (B, N, H, W, 6),
     "rel_src": (B, M, 4, 4), "rel_tgt": (B, N, 4, 4), "K": (B, 3, 3), "example_mask": (B,) bool}
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import grain
import numpy as np

from w2v_jax import geometry
from w2v_jax.data import realestate10k
from w2v_jax.data import pipeline

FLIP = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float32)


def to_unit_range(frames_uint8) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return np.asarray(frames_uint8, np.float32) / 127.5 - 1.0


def flip_pose(rel) -> np.ndarray:
    """Pose (..., 4, 4) of the horizontally mirrored camera: ``F @ rel @ F``."""
    return FLIP @ np.asarray(rel, np.float32) @ FLIP


def flip_intrinsics(K, width: int) -> np.ndarray:
    """K of the horizontally mirrored image: ``cx -> width - cx``."""
    K = np.array(K, np.float32)
    K[0, 2] = width - K[0, 2]
    return K


def plucker_maps(K, rel, height: int, width: int) -> np.ndarray:
    """Plücker maps (V, H, W, 6) for poses ``rel`` (V, 4, 4) in the reference camera frame."""
    return np.stack([geometry.plucker_rays(np.asarray(K, np.float32), r, height, width)
                     for r in np.asarray(rel, np.float32)]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PairConfig:
    """How views are drawn from a clip (see the module docstring)."""

    num_source: int = 1
    num_target: int = 1
    first_source_prob: float = 0.5
    last_target_prob: float = 0.5
    flip_prob: float = 0.0
    image_size: int = 0  # 0 = the clip's own size; else an integer-factor area downsample

    def __post_init__(self):
        for name in ("num_source", "num_target"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(
                    f"PairConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.image_size, int) or self.image_size < 0:
            raise ValueError(f"PairConfig.image_size must be an int >= 0, got {self.image_size!r}")
        for name in ("first_source_prob", "last_target_prob", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"PairConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")


def choose_views(num_frames: int, config: PairConfig, rng: np.random.Generator):
    """``(sources (M,), targets (N,))`` frame indices of one example (see the module docstring).

    Views are distinct when the clip has enough frames, otherwise drawn with replacement.
    """
    if num_frames < 2:
        raise ValueError(f"a clip needs num_frames >= 2 to form a pair, got {num_frames}")
    m, n = config.num_source, config.num_target
    first = 0 if rng.random() < config.first_source_prob else int(rng.integers(0, num_frames))
    last = num_frames - 1
    if first != last and rng.random() < config.last_target_prob:
        target0 = last
    else:
        others = [i for i in range(num_frames) if i != first]
        target0 = int(rng.choice(others))
    chosen = [first, target0]
    pool = [i for i in range(num_frames) if i not in chosen]
    extra = m - 1 + n - 1
    if extra:
        picks = rng.choice(pool, size=extra, replace=len(pool) < extra) if pool else \
            rng.integers(0, num_frames, size=extra)
        chosen += [int(i) for i in picks]
    sources = np.array([chosen[0]] + chosen[2:2 + m - 1], np.int64)
    targets = np.array([chosen[1]] + chosen[2 + m - 1:], np.int64)
    return sources, targets


def downsample(frames, factor: int) -> np.ndarray:
    """Area (box) downsample of uint8 frames (..., H, W, 3) by an integer factor -> uint8."""
    if factor == 1:
        return np.asarray(frames)
    x = np.asarray(frames, np.float32)
    h, w = x.shape[-3:-1]
    x = x.reshape(x.shape[:-3] + (h // factor, factor, w // factor, factor, 3)).mean((-4, -2))
    return np.round(x).astype(np.uint8)


def make_example(clip: Mapping[str, Any], sources, targets, flip: bool = False,
                 image_size: int = 0) -> dict:
    """The training example of frames ``sources`` / ``targets`` of ``clip`` (module docstring).

    ``image_size`` > 0 area-downsamples the frames by the integer factor ``H / image_size`` (and
    scales K).
    """
    frames = np.asarray(clip["frames"])
    h, w = frames.shape[1:3]
    K = np.asarray(clip["K"], np.float32)
    if image_size and image_size != h:
        factor = h // image_size
        if h != w or h % image_size:
            raise ValueError(f"image_size={image_size} must divide the square clip size {h}x{w}")
        frames = downsample(frames, factor)
        K = geometry.scale_intrinsics(K, 1.0 / factor).astype(np.float32)
        h = w = image_size
    c2w = np.asarray(clip["c2w"], np.float64)
    ref = c2w[sources[0]]
    rel_src = geometry.relative_pose(ref, c2w[sources]).astype(np.float32)
    rel_tgt = geometry.relative_pose(ref, c2w[targets]).astype(np.float32)
    src, tgt = to_unit_range(frames[sources]), to_unit_range(frames[targets])
    if flip:
        src, tgt = src[:, :, ::-1], tgt[:, :, ::-1]
        rel_src, rel_tgt, K = flip_pose(rel_src), flip_pose(rel_tgt), flip_intrinsics(K, w)
    out = {
        "source": np.ascontiguousarray(src),
        "target": np.ascontiguousarray(tgt),
        "plucker_src": plucker_maps(K, rel_src, h, w),
        "plucker_tgt": plucker_maps(K, rel_tgt, h, w),
        "rel_src": rel_src,
        "rel_tgt": rel_tgt,
        "K": K,
        "example_mask": np.bool_(True),
    }
    return out


class PairTransform(grain.transforms.RandomMap):
    """Grain random map: clip dict -> one example (deterministic given Grain's per-record rng)."""

    def __init__(self, config: PairConfig):
        self.config = config

    def random_map(self, clip, rng: np.random.Generator):
        n = int(clip["num_frames"])
        sources, targets = choose_views(n, self.config, rng)
        flip = bool(rng.random() < self.config.flip_prob)
        return make_example(clip, sources, targets, flip, self.config.image_size)


def pair_dataset(source, *, batch_size: int, config: PairConfig = PairConfig(), seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None, process_index: int = 0,
                 process_count: int = 1, drop_remainder: bool = True, read_threads: int = 2,
                 prefetch: int = 8, skip_malformed: bool = False) -> grain.IterDataset:
    """Checkpointable Grain ``IterDataset`` of example batches for this process.

    ``source``: random-access clips (posed-clip split or :class:`RealEstate10KSource`). Order: a
    seeded shuffle of the clips per epoch, repeated ``num_epochs`` times (None = forever), process
    ``p`` of ``P`` takes positions ``p, p+P, ...``; each visit of a clip draws fresh views. Clip
    reads run in ``pipeline.build_pipeline``'s guard: a clip that cannot be read or turned into
    an example raises ``MalformedRecordError`` naming it, or is skipped and counted with
    ``skip_malformed``.
    """
    if len(source) == 0:
        raise ValueError("the clip source is empty")
    return pipeline.build_pipeline(
        source, batch_size=batch_size, transform=PairTransform(config), seed=seed,
        shuffle=shuffle, num_epochs=num_epochs, process_index=process_index,
        process_count=process_count, drop_remainder=drop_remainder,
        skip_malformed=skip_malformed, read_threads=read_threads, prefetch=prefetch)


# ----------------------------------------------------------------------------- launcher builder


def open_source(data_cfg, split: str):
    """The clip source a data config names: ``format`` 'posed_clips' (``data_dir`` written by
    render_clips) or 'realestate10k' (``data_dir`` of camera files)."""
    fmt = data_cfg.get("format", "posed_clips")
    if not data_cfg.get("data_dir"):
        raise ValueError("config.data.data_dir must name the clip dataset directory")
    if fmt == "posed_clips":
        from w2v_jax.data.posed_clips import load_clips

        return load_clips(data_cfg.data_dir, split)
    if fmt == "realestate10k":
        root = os.path.join(data_cfg.data_dir, split)
        root = root if os.path.isdir(root) else data_cfg.data_dir
        return realestate10k.RealEstate10KSource(root, data_cfg.image_size, data_cfg.get("max_frames", 32),
                                   data_cfg.get("stride", 1))
    raise ValueError(f"config.data.format={fmt!r}: allowed 'posed_clips' or 'realestate10k'")


def pair_config(data_cfg, **overrides) -> PairConfig:
    fields = {f.name for f in dataclasses.fields(PairConfig)}
    values = {k: data_cfg[k] for k in fields if k in data_cfg}
    values.update(overrides)
    return PairConfig(**values)


def from_config(data_cfg, *, workdir, batch_size, seed, process_index, process_count):
    """Data builder ``view_pairs`` (``w2v_jax.data.builders``): returns ``(train_dataset,
    eval_fn)``; ``eval_fn`` yields a fixed set of ``data.num_eval_batches`` batches from the
    ``eval`` split (no flips)."""
    del workdir
    train = pair_dataset(open_source(data_cfg, data_cfg.get("train_split", "train")),
                         batch_size=batch_size, config=pair_config(data_cfg), seed=seed,
                         process_index=process_index, process_count=process_count,
                         read_threads=data_cfg.get("read_threads", 2),
                         skip_malformed=data_cfg.get("skip_malformed", False))
    num_eval = int(data_cfg.get("num_eval_batches", 0))
    if not num_eval:
        return train, None
    eval_source = open_source(data_cfg, data_cfg.get("eval_split", "eval"))

    def eval_fn():
        ds = pair_dataset(eval_source, batch_size=batch_size,
                          config=pair_config(data_cfg, flip_prob=0.0), seed=seed + 1,
                          shuffle=True, num_epochs=None, process_index=process_index,
                          process_count=process_count)
        it = iter(ds)
        return [next(it) for _ in range(num_eval)]

    return train, eval_fn
