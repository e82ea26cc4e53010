r"""Render procedural posed clips into a TFDS array_record dataset (the world model's input).

Samples --num_scenes rooms (CLEVR-like objects) from --seed, runs every trajectory kind of the room
trajectory config once per scene from a collision-free start camera, renders every frame and writes
one clip per (scene, trajectory): frames uint8 (T,H,W,3), depth (metres, float16), instance ids,
c2w (T,4,4, OpenCV camera, Z-up world), K, key frames, the action text, the trajectory kind,
per-frame object boxes (0-1000) and the scene metadata as JSON. Clips hold a fixed
T = --max_frames frames with a frame_mask. Scenes are split by seed into disjoint train / eval
splits (--eval_fraction).

Output: DIR/posed_clips/1.0.0/ (read with tfds.data_source("posed_clips", data_dir=DIR,
split="train") or w2v_jax.data.posed_clips.load_clips(DIR, "train"), then grain.MapDataset.source) and
DIR/generation.json. Work happens in a temporary sibling directory renamed into place at the end, so
a failed run leaves nothing; an existing non-empty DIR is refused unless --overwrite.

Example:
  python -m data_gen.render_clips --out /tmp/clips --num_scenes 20 --seed 0 --resolution 64
"""

from absl import flags, logging

from w2v_jax import cli

flags.DEFINE_string("out", None, "Output directory (created; must not exist or be empty).")
cli.integer("num_scenes", 10, "Number of scenes; each gives one clip per trajectory kind.", lo=1)
cli.integer("seed", 0, "Run seed; scene seeds are derived from it.", lo=0)
cli.integer("resolution", 64, "Square image side in pixels.", lo=1, hi=4096)
cli.real("eval_fraction", 0.1, "Fraction of scenes in the eval split (by scene, disjoint); "
         "in [0, 1).", lo=0.0, hi=1.0)
flags.DEFINE_boolean("overwrite", False, "Replace --out if it already exists (only a directory "
                     "this tool wrote, i.e. one holding generation.json).")
cli.integer("supersample", 2, "Rays per pixel side for rgb anti-aliasing (cost ~ square).", lo=1,
            hi=16)
cli.integer("max_frames", 32, "Stored frames per clip (padding + frame_mask).", lo=1, hi=4096)
cli.real("hfov_deg", 90.0, "Horizontal field of view in degrees, in (0, 180).", lo=0.0, hi=180.0)
cli.integer("max_objects", 10, "Object slots per scene (3..max_objects objects).", lo=1, hi=127)

FLAGS = flags.FLAGS


def main(argv):
    with cli.checking():  # every flag and input before anything is rendered or replaced
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments: {argv[1:]}")
        if FLAGS.out is None:  # not mark_flag_as_required: binds every absl program importing us
            raise ValueError("--out is required (see --help)")
        from w2v_jax.data import posed_clips
        from w2v_jax.sim import clips

        config = clips.ClipConfig(
            resolution=FLAGS.resolution,
            hfov_deg=FLAGS.hfov_deg,
            supersample=FLAGS.supersample,
            max_frames=FLAGS.max_frames,
            max_objects=FLAGS.max_objects,
            num_objects=(min(3, FLAGS.max_objects), FLAGS.max_objects),
        )
        clips.split_scenes(list(range(FLAGS.num_scenes)), FLAGS.eval_fraction, FLAGS.seed)
        posed_clips.check_out_dir(FLAGS.out, FLAGS.overwrite)
        clips.check_render_memory(config)
    logging.set_verbosity(logging.WARNING)  # TFDS logs every shard at INFO
    info = posed_clips.write_clips(
        FLAGS.out,
        FLAGS.num_scenes,
        FLAGS.seed,
        config,
        eval_fraction=FLAGS.eval_fraction,
        overwrite=FLAGS.overwrite,
    )
    print(f"wrote {info['splits']} clips to {info['builder_dir']}")


if __name__ == "__main__":
    cli.run(main)
