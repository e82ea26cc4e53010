r"""A look at the procedural world: rooms, World2VLM trajectories and their JAX renders.

Samples a few procedural rooms, moves a camera along World2VLM trajectories, renders them with the
JAX ray caster and writes
  OUT/contact_sheet.png   rows = trajectories (action text above each row), columns = frames
                          (the key frames plus evenly spaced ones, trajectory frame index below);
  OUT/contact_sheet.json  the same rows as data: scene seed, kind, actions, frame indices, objects;
  OUT/clips/              a small posed-clip dataset (TFDS array_record, train/eval by scene).

  python -m experiments.render_preview [--out ./out/preview] [--seed 0] [--num_scenes 4]
"""

import json
import os
import time

import numpy as np
from absl import app, flags, logging
from PIL import Image, ImageDraw

flags.DEFINE_string(
    "out", "./out/preview", "Output directory (its contact sheet and clips/ are replaced)."
)
flags.DEFINE_integer("seed", 0, "Run seed.")
flags.DEFINE_integer("num_scenes", 4, "Scenes in the preview clip dataset.")
flags.DEFINE_integer("sheet_resolution", 96, "Pixel side of each contact-sheet frame.")
flags.DEFINE_integer("sheet_columns", 7, "Frames per contact-sheet row.")

FLAGS = flags.FLAGS

# (scene index, trajectory kind) of each contact-sheet row
SHEET_ROWS = (
    (0, "forward_turn_left"),
    (0, "turn_right"),
    (1, "left_forward_turn_right"),
    (1, "backward"),
    (2, "turn_right_forward"),
    (2, "left"),
)


def contact_sheet(seed: int, resolution: int, columns: int):
    """Render SHEET_ROWS; returns (PIL image, list of row dicts)."""
    from w2v_jax import sim
    from w2v_jax.sim import clips

    config = clips.ClipConfig(resolution=resolution, supersample=2, max_frames=columns)
    seeds = clips.scene_seeds(seed, 1 + max(i for i, _ in SHEET_ROWS))
    label_h, foot_h, pad = 16, 12, 4
    tile = resolution + pad
    sheet = Image.new(
        "RGB", (columns * tile + pad, len(SHEET_ROWS) * (tile + label_h + foot_h) + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    rows = []
    for r, (scene_index, kind) in enumerate(SHEET_ROWS):
        scene_seed = seeds[scene_index]
        scene = sim.sample_scene(scene_seed)
        index = config.trajectory.kinds.index(kind)
        traj, poses, keys = clips.plan_clip(scene, scene_seed, index, kind, config)
        kept = clips.select_frames(len(poses), keys, columns)
        kept = (
            kept
            if len(kept) == columns
            else np.linspace(0, len(poses) - 1, columns).round().astype(int)
        )
        views = sim.render_views(
            scene, poses[kept], config.K, resolution, resolution, supersample=2
        )
        rgb = (np.asarray(views["rgb"]) * 255).round().astype(np.uint8)
        y0 = pad + r * (tile + label_h + foot_h)
        draw.text((pad, y0), f"scene {scene_seed} | {traj.kind}: {traj.text()}", fill="black")
        for c, (frame, f_idx) in enumerate(zip(rgb, kept)):
            x0 = pad + c * tile
            sheet.paste(Image.fromarray(frame), (x0, y0 + label_h))
            mark = "*" if int(f_idx) in keys else ""
            draw.text((x0, y0 + label_h + resolution + 1), f"t={int(f_idx)}{mark}", fill="black")
        rows.append(
            dict(
                scene_seed=scene_seed,
                kind=traj.kind,
                actions=traj.text(),
                frames=[int(i) for i in kept],
                key_frames=[int(k) for k in keys],
                objects=sim.object_names(scene),
            )
        )
    return sheet, rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TFDS logs every shard at INFO
    from w2v_jax.data import posed_clips
    from w2v_jax.sim import clips

    out = os.path.abspath(FLAGS.out)
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    sheet, rows = contact_sheet(FLAGS.seed, FLAGS.sheet_resolution, FLAGS.sheet_columns)
    sheet_path = os.path.join(out, "contact_sheet.png")
    sheet.save(sheet_path)
    with open(os.path.join(out, "contact_sheet.json"), "w") as f:
        json.dump(
            dict(note="frames marked * in the image are key frames (segment ends)", rows=rows),
            f,
            indent=1,
        )
    print(
        f"contact sheet: {sheet_path} ({len(rows)} trajectories x {FLAGS.sheet_columns} frames, "
        f"{time.perf_counter() - start:.1f} s)"
    )
    start = time.perf_counter()
    info = posed_clips.write_clips(
        os.path.join(out, "clips"),
        FLAGS.num_scenes,
        FLAGS.seed,
        clips.ClipConfig(resolution=64, supersample=2),
        eval_fraction=0.25,
        overwrite=True,
    )
    print(
        f"clip dataset: {info['builder_dir']} {info['splits']} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    print(
        f"read it with: tfds.data_source('posed_clips', data_dir='{info['path']}', split='train')"
    )


if __name__ == "__main__":
    app.run(main)
