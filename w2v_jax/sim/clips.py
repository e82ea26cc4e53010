"""Plan and render posed clips: procedural scenes x trajectories (stored by ``data.posed_clips``).

One clip = one scene, one start camera, one trajectory (``actions.sample_scene_trajectories``: every
trajectory kind once per scene). All frames of the integrated trajectory are rendered; a clip is
stored with a FIXED frame count ``max_frames`` (static shapes for training):
  - ``frame_mask`` (T,) marks the real frames; padded frames are zeros, their c2w repeats the last
    real pose, their ``frame_index`` is -1;
  - a trajectory longer than ``max_frames`` keeps all its key frames (segment ends) plus evenly
    spaced frames (``select_frames``); ``frame_index`` gives each stored frame's index in the full
    trajectory, ``key_frames`` the stored positions of the key frames (-1 padded).
The room trajectory config needs at most 27 frames, so with the default ``max_frames=32`` nothing is
dropped.

Splits are by scene: each scene seed goes to exactly one of ``train`` / ``eval``. This module plans
and renders clips; writing and reading them as a TFDS dataset is ``w2v_jax.data.posed_clips`` (sim
imports nothing but geometry and actions).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from w2v_jax import actions, geometry
from w2v_jax.sim import scene as scene_lib
from w2v_jax.sim.render import render_cameras

@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Static options of a clip dataset (all clips share the shapes they imply).

    resolution: square image side in pixels; hfov_deg: horizontal field of view (90 = World2VLM's
    simulated setting); supersample: rays per pixel side for rgb anti-aliasing; max_frames: stored
    frames per clip (T); max_objects: object slots per scene (K); num_objects: (min, max) objects
    per scene; trajectory: grids of the sampled trajectories; render_chunk: cameras per jitted
    render call; wall_margin / object_margin: clearance (metres) every camera position of a clip
    keeps from the walls and from object footprints.
    """

    resolution: int = 64
    hfov_deg: float = 90.0
    supersample: int = 2
    max_frames: int = 32
    max_objects: int = 10
    num_objects: tuple[int, int] = (3, 10)
    trajectory: actions.TrajectoryConfig = actions.TrajectoryConfig.room()
    render_chunk: int = 32
    wall_margin: float = 0.25
    object_margin: float = 0.25

    def __post_init__(self):
        for name in ("resolution", "supersample", "max_frames", "max_objects", "render_chunk"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"ClipConfig.{name} must be a positive integer, got {v!r}")
        if self.max_frames < self.max_keys:
            raise ValueError(
                f"ClipConfig.max_frames={self.max_frames} must hold the {self.max_keys} "
                "key frames of the longest trajectory"
            )
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"ClipConfig.hfov_deg must be in (0, 180), got {self.hfov_deg}")

    @property
    def max_keys(self) -> int:
        """Key frames of the longest trajectory kind: its action count + 1."""
        return 1 + max([1] + [len(steps) for _, steps in self.trajectory.presets])

    @property
    def K(self) -> np.ndarray:
        return geometry.intrinsics_from_hfov(self.resolution, self.resolution, self.hfov_deg)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["trajectory"] = repr(self.trajectory)
        return d


# Peak host memory per ray of one render call, with margin (measured: one scene rendered at 64
# and at 128 px, supersample 2, render_chunk 32, differ by ~120 B per extra ray in max RSS).
RENDER_BYTES_PER_RAY = 160


def render_memory_bytes(config: ClipConfig) -> int:
    """Estimated peak bytes of one render call: render_chunk cameras x (resolution x
    supersample)^2 rays."""
    return config.render_chunk * (config.resolution * config.supersample) ** 2 * RENDER_BYTES_PER_RAY


def check_render_memory(config: ClipConfig, available_bytes: int | None = None) -> None:
    """ValueError before any rendering when one render call would need more than
    ``available_bytes`` (default: this machine's physical memory)."""
    if available_bytes is None:
        available_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need = render_memory_bytes(config)
    if need > available_bytes:
        raise ValueError(
            f"resolution={config.resolution} (supersample {config.supersample}, render_chunk "
            f"{config.render_chunk}) needs ~{need / 2**30:.1f} GiB per render call; this machine "
            f"has {available_bytes / 2**30:.1f} GiB: lower the resolution or the supersampling")


# ------------------------------------------------------------------------- seeds and splits


def scene_seeds(seed: int, num_scenes: int, stream: int | None = None) -> list[int]:
    """``num_scenes`` distinct scene seeds (uint32) derived from the run ``seed``.

    ``stream`` selects an independent sequence for another use of the same run seed (the posed
    clips use ``None``; the distillation set ``supervision.build.SCENE_STREAM``), so scenes of
    different datasets built with one ``--seed`` differ."""
    if isinstance(num_scenes, bool) or int(num_scenes) != num_scenes or num_scenes < 1:
        raise ValueError(f"num_scenes must be an integer >= 1, got {num_scenes!r}")
    tag = [] if stream is None else [int(stream)]
    seeds, out, i = set(), [], 0
    while len(out) < num_scenes:
        s = int(np.random.SeedSequence([int(seed), i] + tag).generate_state(1)[0])
        i += 1
        if s not in seeds:
            seeds.add(s)
            out.append(s)
    return out


def split_scenes(
    seeds: Sequence[int], eval_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Disjoint (train, eval) lists of scene seeds. ``round(eval_fraction * N)`` scenes go to eval
    (at least one when the fraction is > 0 and N >= 2, and at least one scene stays in train)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(seeds)
    n_eval = int(round(eval_fraction * n))
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    n_eval = min(n_eval, n - 1)
    order = np.random.default_rng([int(seed), 0xE7A1]).permutation(n)
    eval_idx = set(order[:n_eval].tolist())
    train = [s for i, s in enumerate(seeds) if i not in eval_idx]
    evals = [s for i, s in enumerate(seeds) if i in eval_idx]
    return train, evals


# ------------------------------------------------------------------------------ one scene


def select_frames(num_frames: int, key_frames: Sequence[int], max_frames: int) -> np.ndarray:
    """Indices (sorted, unique) of at most ``max_frames`` frames out of ``num_frames``: all of them
    when they fit, otherwise every key frame plus evenly spaced others."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    keys = sorted(set(int(k) for k in key_frames))
    if len(keys) > max_frames:
        raise ValueError(f"{len(keys)} key frames do not fit in max_frames={max_frames}")
    chosen = set(keys)
    # fill the remaining slots with the frames closest to an even spacing, skipping duplicates
    need = max_frames - len(chosen)
    rest = [i for i in range(num_frames) if i not in chosen]
    picks = np.linspace(0, len(rest) - 1, need).round().astype(int) if need > 0 else []
    chosen.update(rest[p] for p in picks)
    return np.array(sorted(chosen))


def plan_clip(
    scene: scene_lib.Scene,
    scene_seed: int,
    index: int,
    kind: str,
    config: ClipConfig,
    max_attempts: int = 400,
):
    """Trajectory of ``kind`` and start camera for clip ``index`` of a scene, such that every camera
    position keeps the configured clearance. Returns ``(trajectory, c2w (N,4,4), key_frames)``.

    Each attempt draws a new start camera; every 50 failed attempts the trajectory's values are
    redrawn too (so a move too long for the room is eventually replaced). Deterministic."""
    for attempt in range(max_attempts):
        traj = actions.sample_trajectory(
            np.random.default_rng([scene_seed, index, attempt // 50, 1]), config.trajectory, kind
        )
        cam_seed = int(np.random.SeedSequence([scene_seed, index, attempt, 2]).generate_state(1)[0])
        c2w0 = scene_lib.sample_camera(cam_seed, scene)
        poses, keys = actions.integrate(traj.actions, c2w0)
        if np.all(
            scene_lib.free_space(scene, poses[:, :2, 3], config.wall_margin, config.object_margin)
        ):
            return traj, poses, keys
    raise RuntimeError(
        f"no collision-free start camera for a {kind!r} trajectory in scene "
        f"{scene_seed} after {max_attempts} attempts"
    )


def _pad(x: np.ndarray, length: int, fill) -> np.ndarray:
    pad = np.full((length - len(x),) + x.shape[1:], fill, x.dtype)
    return np.concatenate([x, pad])


def make_scene_clips(scene_seed: int, config: ClipConfig) -> list[dict]:
    """All clips of one scene (one per trajectory kind) as feature dicts of numpy arrays / str."""
    scene = scene_lib.sample_scene(
        scene_seed, num_objects=config.num_objects, max_objects=config.max_objects
    )
    meta = json.dumps(scene_lib.scene_metadata(scene), separators=(",", ":"))
    traj_rng = np.random.default_rng([scene_seed, 7])
    plans = []
    for index, traj in enumerate(actions.sample_scene_trajectories(traj_rng, config.trajectory)):
        traj, poses, keys = plan_clip(scene, scene_seed, index, traj.kind, config)
        kept = select_frames(len(poses), keys, config.max_frames)
        plans.append((traj, poses[kept], kept, [int(np.searchsorted(kept, k)) for k in keys]))
    views = render_cameras(scene, np.concatenate([p[1] for p in plans]), config.K,
                           config.resolution, config.resolution, config.supersample,
                           config.render_chunk)
    clips, start = [], 0
    T = config.max_frames
    for traj, c2w, kept, keys in plans:
        n = len(c2w)
        v = {k: x[start : start + n] for k, x in views.items()}
        start += n
        clips.append(
            dict(
                clip_id=f"{scene_seed}_{traj.kind}",
                scene_seed=np.int64(scene_seed),
                kind=traj.kind,
                actions=traj.text(),
                num_frames=np.int32(n),
                frame_mask=_pad(np.ones(n, bool), T, False),
                frame_index=_pad(kept.astype(np.int32), T, -1),
                key_frames=_pad(np.asarray(keys, np.int32), config.max_keys, -1),
                frames=_pad(np.round(v["rgb"] * 255.0).astype(np.uint8), T, 0),
                depth=_pad(v["depth"].astype(np.float16), T, 0),
                instance=_pad(v["instance"].astype(np.int8), T, -1),
                c2w=np.concatenate([c2w, np.repeat(c2w[-1:], T - n, 0)]).astype(np.float32),
                K=config.K.astype(np.float32),
                visible_pixels=_pad(v["visible_pixels"].astype(np.int32), T, 0),
                box=_pad(v["box"].astype(np.int16), T, -1),
                amodal_box=_pad(v["amodal_box"].astype(np.int16), T, -1),
                in_frustum=_pad(v["in_frustum"], T, False),
                scene=meta,
            )
        )
    return clips
