r"""Build the base VLM's static perception set: still views of procedural rooms with questions
about what one view shows (object lists, grounding boxes 0-1000, counting, yes/no existence,
left / right and nearer relations, the nearest object as A-D, "which of two images shows X").

No camera motion anywhere: the base model pretrained on this set learns to perceive and the answer
formats of the eval suites (free text, yes/no, SAT's two options, A-D letters); what it knows about
motion afterwards comes from distillation. Scene seeds come from their own stream
(w2v_jax/supervision/perception.py), disjoint from the posed clips, the distillation set and the
eval suites built with any seed.

Layout of --out:
  build.json   the options (a rerun must use the same ones; --num_scenes may grow)
  shards/scene_<id>/   one finished scene each (PNG views + scene.json), written atomically;
               a rerun skips finished scenes (resume after an interruption)
  package/     world2vlm_distill/1.0.0 (TFDS: sft / grpo / eval), sft.jsonl, ..., stats.json:
               the distillation set's format, so `data.distill.sft_pipeline` and
               `experiments.train --config=experiments/configs/vlm.py:base_small` read it as is

Every flag is checked before anything is rendered (errors: one line, exit status 2); --overwrite
builds in a temporary sibling that replaces --out only once complete.

Example:
  python -m data_gen.build_perception --num_scenes 400 --out /tmp/w2v_perception --seed 0 \
      --resolution 32
"""

import dataclasses
import json
import os

from absl import flags, logging

from w2v_jax import cli, fileio

cli.integer("num_scenes", None, "Number of procedural scenes.", lo=1)
flags.DEFINE_string("out", None, "Output directory (shards/, package/, build.json).")
cli.integer("seed", 0, "Run seed: scene seeds, cameras, question choices.", lo=0)
cli.integer("resolution", 64, "Square view size in pixels (match the distillation set's).",
            lo=8, hi=4096)
cli.integer("supersample", 2, "Rays per pixel side (anti-aliasing).", lo=1, hi=16)
cli.integer("views_per_scene", 4, "Still cameras per scene (even: pairs for which_image).", lo=2,
            hi=64)
cli.real("eval_fraction", 0.05, "Share of scenes held out as the eval split, in [0, 1).", lo=0.0,
         hi=1.0)
cli.integer("shuffle_seed", 42, "Seed of the split shuffles.", lo=0)
flags.DEFINE_boolean("jsonl", True, "Also write sft/grpo/eval.jsonl and images/.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --out (only one this tool wrote, "
                     "holding build.json) once the new build is complete.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")

FLAGS = flags.FLAGS


def _validate(argv) -> dict:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.out is None or FLAGS.num_scenes is None:
        raise ValueError("--out and --num_scenes are required (see --help)")
    from w2v_jax.supervision import package, perception

    config = perception.PerceptionConfig(resolution=FLAGS.resolution,
                                         supersample=FLAGS.supersample,
                                         views_per_scene=FLAGS.views_per_scene)
    # the package's grpo split is not used for pretraining: one record per task keeps it small
    package_config = package.PackageConfig(seed=FLAGS.shuffle_seed, grpo_per_task=1,
                                           eval_fraction=FLAGS.eval_fraction, jsonl=FLAGS.jsonl)
    options = json.loads(json.dumps({"seed": FLAGS.seed, **config.to_json(),
                                     "package": dataclasses.asdict(package_config)}))
    out = os.path.abspath(FLAGS.out)
    if FLAGS.overwrite:
        fileio.check_replaceable(out, perception.BUILD_FILE)
    else:
        fileio.check_resumable(out, perception.BUILD_FILE, options)
    return dict(out=out, options=options, config=config, package=package_config,
                seeds=perception.scene_seeds(FLAGS.seed, FLAGS.num_scenes))


def _build(root: str, plan: dict) -> dict:
    from w2v_jax.supervision import perception

    return perception.build_dataset(root, plan["seeds"], plan["config"], plan["package"],
                                    options=plan["options"], progress=FLAGS.progress)


def main(argv):
    with cli.checking():
        plan = _validate(argv)
    logging.set_verbosity(logging.WARNING)  # TFDS logs every shard at INFO
    out = plan["out"]
    fileio.sweep_stale(os.path.dirname(out), os.path.basename(out))
    fileio.sweep_stale(out)
    if FLAGS.overwrite and os.path.lexists(out):
        with fileio.atomic_dir(out) as tmp:
            stats = _build(tmp, plan)
    else:
        stats = _build(out, plan)
    print("records per task:", json.dumps(stats["perception_tasks"]))
    print("splits:", json.dumps({k: v["records"] for k, v in stats["splits"].items()}))
    print(f"wrote {os.path.join(out, 'package')}")


if __name__ == "__main__":
    cli.run(main)
