"""The posed-clip dataset on disk: TFDS array_record written and read without TensorFlow.

Clips are planned and rendered by ``w2v_jax.sim.clips`` (``ClipConfig``, ``make_scene_clips``); this
module stores them. Layout: ``OUT/posed_clips/1.0.0/`` (TFDS) and ``OUT/generation.json`` (options,
scene seeds per split). Read with ``load_clips(OUT, split)`` or ``tfds.data_source("posed_clips",
data_dir=OUT, split=...)``; both give a random-access source for ``grain.MapDataset.source``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from w2v_jax import fileio
from w2v_jax.data import array_record as ar
from w2v_jax.sim import clips as sim_clips
from w2v_jax.sim.clips import ClipConfig

DATASET_NAME = "posed_clips"
VERSION = "1.0.0"
GENERATION_FILE = "generation.json"  # marks a directory written by write_clips


def features(config: ClipConfig) -> dict:
    """Field -> TFDS feature of a clip (T = max_frames, H = W = resolution, K = max_objects).

    clip_id '<scene_seed>_<kind>'; scene_seed (sim.sample_scene's seed); kind (an action name or a
    preset name); actions (text, e.g. 'move forward 1.2 meters; turn left 30 degrees');
    num_frames (real frames); frame_mask (T,); frame_index (T,) index in the full trajectory, -1
    padding; key_frames (max_keys,) stored positions of segment ends, -1 padding; frames uint8
    (T,H,W,3); depth float16 (T,H,W) metres; instance int8 (T,H,W) slot or -1; c2w (T,4,4); K (3,3);
    visible_pixels (T,K); box / amodal_box int16 (T,K,4) 0-1000 or -1; in_frustum (T,K); scene
    (JSON of sim.scene_metadata: room and objects with slot, name, 3D box corners).
    """
    T, R, K = config.max_frames, config.resolution, config.max_objects
    return {
        "clip_id": ar.text_feature(),
        "scene_seed": ar.tensor_feature((), np.int64),
        "kind": ar.text_feature(),
        "actions": ar.text_feature(),
        "num_frames": ar.tensor_feature((), np.int32),
        "frame_mask": ar.tensor_feature((T,), np.bool_),
        "frame_index": ar.tensor_feature((T,), np.int32),
        "key_frames": ar.tensor_feature((config.max_keys,), np.int32),
        "frames": ar.tensor_feature((T, R, R, 3), np.uint8, encoding="zlib"),
        "depth": ar.tensor_feature((T, R, R), np.float16, encoding="zlib"),
        "instance": ar.tensor_feature((T, R, R), np.int8, encoding="zlib"),
        "c2w": ar.tensor_feature((T, 4, 4), np.float32),
        "K": ar.tensor_feature((3, 3), np.float32),
        "visible_pixels": ar.tensor_feature((T, K), np.int32),
        "box": ar.tensor_feature((T, K, 4), np.int16),
        "amodal_box": ar.tensor_feature((T, K, 4), np.int16),
        "in_frustum": ar.tensor_feature((T, K), np.bool_),
        "scene": ar.text_feature(),
    }


def write_clips(
    out_dir: str,
    num_scenes: int,
    seed: int,
    config: ClipConfig = ClipConfig(),
    eval_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Render ``num_scenes`` scenes' clips into ``out_dir`` (see the module docstring for layout).

    The TFDS files are written by ``w2v_jax.data.array_record.write_dataset`` into a temporary
    sibling directory that replaces ``out_dir`` only at the end, so a failed run leaves nothing
    behind (temporaries of an earlier, killed run are swept first). Raises FileExistsError when
    ``out_dir`` exists and is not empty, unless ``overwrite``; even then only a directory this
    function wrote (holding ``generation.json``) is replaced (ValueError otherwise), and a render
    that would not fit in memory is refused first (``sim.clips.check_render_memory``). Returns
    ``{"path", "builder_dir", "splits": {name: clips}, "scene_seeds": {name: [...]}}``.
    """
    from tqdm.auto import tqdm

    out_dir = os.path.abspath(out_dir)
    check_out_dir(out_dir, overwrite)
    sim_clips.check_render_memory(config)
    fileio.sweep_stale(os.path.dirname(out_dir), os.path.basename(out_dir))
    train, evals = sim_clips.split_scenes(sim_clips.scene_seeds(seed, num_scenes), eval_fraction, seed)
    splits = {"train": train, "eval": evals}
    with fileio.atomic_dir(out_dir) as tmp:
        with tqdm(
            total=num_scenes, desc="render scenes", unit="scene", disable=not progress
        ) as bar:

            def examples(seeds):
                def generate():
                    for s in seeds:
                        yield from sim_clips.make_scene_clips(s, config)
                        bar.update(1)

                return generate

            ar.write_dataset(
                tmp,
                DATASET_NAME,
                features(config),
                {name: examples(s) for name, s in splits.items() if s},
                version=VERSION,
                description="Procedural rooms rendered along World2VLM trajectories "
                "(w2v_jax.sim.clips, w2v_jax.data.posed_clips). Options: " + json.dumps(config.to_json()),
            )
        tmp_builder = os.path.join(tmp, DATASET_NAME, VERSION)
        counts = {name: len(ar.open_split(tmp_builder, name)) for name, s in splits.items() if s}
        with open(os.path.join(tmp, GENERATION_FILE), "w") as f:
            json.dump(
                dict(
                    dataset=DATASET_NAME,
                    version=VERSION,
                    seed=int(seed),
                    num_scenes=int(num_scenes),
                    eval_fraction=float(eval_fraction),
                    config=config.to_json(),
                    clips=counts,
                    scene_seeds=splits,
                ),
                f,
                indent=1,
            )
    return dict(path=out_dir, builder_dir=builder_dir(out_dir), splits=counts, scene_seeds=splits)


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """FileExistsError when ``out_dir`` is a non-empty path and not ``overwrite``; ValueError when
    it is one that ``write_clips`` did not write (no generation.json) even with ``overwrite``."""
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir) and not overwrite and (
            not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"--out {out_dir} already exists and is not empty; pass --overwrite "
                              "(overwrite=True) to replace it")
    if overwrite:
        fileio.check_replaceable(out_dir, GENERATION_FILE)


def builder_dir(out_dir: str) -> str:
    """``OUT/posed_clips/1.0.0``: the directory for ``tfds.builder_from_directory``."""
    return os.path.join(os.path.abspath(out_dir), DATASET_NAME, VERSION)


def load_clips(out_dir: str, split: str):
    """Random-access source (``len``, ``[i]`` -> dict of numpy) of one split; feed it to
    ``grain.MapDataset.source``. Text features come back as bytes."""
    return ar.open_split(builder_dir(out_dir), split)
