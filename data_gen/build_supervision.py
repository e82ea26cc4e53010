r"""Build the World2VLM distillation set: teacher views -> detection + tracking -> QC -> A1-A4 /
D1-D4 records -> SFT / GRPO / eval splits (TFDS array_record + official-format JSONL).

For each of --num_scenes procedural scenes (seeds derived from --seed) every trajectory kind of the
room config runs once; the teacher gives the views at the key frames: --teacher=renderer is the
oracle (true renders; detections from the renderer's truth), --teacher=world_model imagines them
with the trained model in --world_model_dir (an `experiments.train` workdir; detections from the
colour/shape detector on the generated images, and label fidelity against true renders of the
same trajectories). See w2v_jax/supervision/build.py and package.py.

Layout of --out:
  build.json   the options (a rerun must use the same ones; --num_scenes may grow); it marks
               the directory as this tool's: --overwrite replaces only such a directory
  shards/scene_<id>/   one finished scene each (PNG frames + scene.json), written atomically;
               a rerun skips finished scenes (resume after an interruption)
  package/     world2vlm_distill/1.0.0 (TFDS: sft / grpo / eval), sft.jsonl, grpo.jsonl,
               eval.jsonl, images/, stats.json -- rebuilt atomically at the end of every run

Every flag and input is checked before anything is loaded or written (errors: one line, exit
status 2). --overwrite builds the whole output in a temporary sibling directory that replaces --out
only once complete; temporaries of a killed run are swept on the next start.

Examples:
  python -m data_gen.build_supervision --teacher=renderer --num_scenes 40 --out /tmp/w2v_sup \
      --seed 0
  python -m data_gen.build_supervision --teacher=world_model --world_model_dir RUN \
      --num_scenes 40 --out /tmp/w2v_sup_wm --seed 0
"""

import json
import os

from absl import flags

from w2v_jax import cli, fileio


flags.DEFINE_enum("teacher", "renderer", ["renderer", "world_model"],
                  "Who supplies the views after each trajectory: the renderer (oracle) or the "
                  "trained world model.")
flags.DEFINE_string("world_model_dir", None,
                    "experiments.train workdir of the world model (--teacher=world_model).")
cli.integer("num_scenes", None, "Number of procedural scenes (9 trajectories each).", lo=1)
flags.DEFINE_string("out", None, "Output directory (shards/, package/, build.json).")
cli.integer("seed", 0, "Run seed: scene seeds, trajectories, templates, teacher noise.", lo=0)
cli.integer("resolution", 64, "Square view size in pixels (a world-model teacher fixes it "
            "to its image size).", lo=8, hi=4096)
cli.integer("supersample", 2, "Rays per pixel side of the true renders (anti-aliasing).", lo=1,
            hi=16)
cli.integer("grpo_per_task", 125, "GRPO records per task type (official 125).", lo=1)
cli.real("eval_fraction", 0.1, "Share of scenes held out as the eval split, in [0, 1).", lo=0.0,
         hi=1.0)
cli.integer("shuffle_seed", 42, "Seed of the split shuffles and the A4 labelling "
            "(official 42).", lo=0)
flags.DEFINE_enum("detector", None, ["oracle", "color"],
                  "Detections from the renderer's truth (oracle) or from the images (color). "
                  "Default: oracle for the renderer teacher, color for the world model.")
flags.DEFINE_enum("vocabulary", "shape", ["shape", "color_shape"],
                  "Object labels in prompts: shape class ('cube') or colour + shape ('red cube').")
flags.DEFINE_boolean("key_frames", True, "Ask the teacher for every key frame, not only the last.")
flags.DEFINE_boolean("qc", True, "Quality control of teacher views and boxes.")
cli.real("qc_blur_min", 100.0, "Minimum Laplacian variance of a view (0-255 scale).", lo=0.0)
cli.real("qc_change_min", 0.01, "Minimum mean |change| between consecutive views, in [0, 1].",
         lo=0.0, hi=1.0)
cli.real("qc_change_max", 0.4, "Maximum mean |change| between consecutive views, in [0, 1].",
         lo=0.0, hi=1.0)
cli.integer("teacher_steps", 25, "Sampler steps of the world model.", lo=1, hi=10000)
cli.real("teacher_cfg", 1.0, "Classifier-free guidance scale of the world model.", lo=0.0,
         hi=100.0)
flags.DEFINE_boolean("fidelity", True, "With an image detector or a model teacher, also build D "
                     "records from true renders + oracle and report the label fidelity.")
flags.DEFINE_boolean("jsonl", True, "Also write sft/grpo/eval.jsonl and images/.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --out (only one this tool wrote, "
                     "holding build.json) once the new build is complete.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")

FLAGS = flags.FLAGS


def _options(resolution: int) -> dict:
    return {
        "teacher": FLAGS.teacher,
        "world_model_dir": os.path.abspath(FLAGS.world_model_dir) if FLAGS.world_model_dir else None,
        "seed": FLAGS.seed,
        "resolution": resolution,
        "supersample": FLAGS.supersample,
        "detector": FLAGS.detector or ("oracle" if FLAGS.teacher == "renderer" else "color"),
        "vocabulary": FLAGS.vocabulary,
        "key_frames": FLAGS.key_frames,
        "qc": {"enabled": FLAGS.qc, "blur_min": FLAGS.qc_blur_min,
               "change_min": FLAGS.qc_change_min, "change_max": FLAGS.qc_change_max},
        "teacher_steps": FLAGS.teacher_steps,
        "teacher_cfg": FLAGS.teacher_cfg,
        "fidelity": FLAGS.fidelity,
    }


def _check_out(out: str, options: dict) -> None:
    """--overwrite: only a directory this tool wrote; else resume needs the same options."""
    from w2v_jax.supervision import build

    if FLAGS.overwrite:
        fileio.check_replaceable(out, build.BUILD_FILE)
    else:
        fileio.check_resumable(out, build.BUILD_FILE, options)


def _world_model_resolution() -> int:
    """The image size of the --world_model_dir run, from its config.json (nothing loaded)."""
    from w2v_jax.models.world_model import config_from_dict
    from w2v_jax.train.runs import read_run_config

    size = config_from_dict(read_run_config(FLAGS.world_model_dir)["model"]).image_size
    if FLAGS["resolution"].present and FLAGS.resolution != size:
        raise ValueError(f"--resolution={FLAGS.resolution} differs from the world model's "
                         f"image size {size}")
    return size


def _validate(argv) -> dict:
    """Every flag and input, before anything is loaded or written; returns the build plan."""
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    # checked here rather than with flags.mark_flags_as_required, which would make every other absl
    # program that imports this module (tests run several in one process) demand these flags too
    if FLAGS.out is None or FLAGS.num_scenes is None:
        raise ValueError("--out and --num_scenes are required (see --help)")
    from w2v_jax.sim import clips
    from w2v_jax.supervision import build, package, qc

    resolution = FLAGS.resolution
    if FLAGS.teacher == "world_model":
        if not FLAGS.world_model_dir:
            raise ValueError("--teacher=world_model needs --world_model_dir")
        resolution = _world_model_resolution()
    elif FLAGS.world_model_dir:
        raise ValueError("--world_model_dir is only used with --teacher=world_model")
    options = _options(resolution)
    if FLAGS.teacher == "world_model" and options["detector"] == "oracle":
        raise ValueError("--detector=oracle reads the renderer's truth; a world-model "
                         "teacher needs --detector=color")
    config = build.BuildConfig(
        clip=clips.ClipConfig(resolution=resolution, supersample=FLAGS.supersample,
                              render_chunk=16),
        key_frames=FLAGS.key_frames, detector=options["detector"], vocabulary=FLAGS.vocabulary,
        qc=qc.QCConfig(**options["qc"]), fidelity=FLAGS.fidelity)
    clips.check_render_memory(config.clip)
    package_config = package.PackageConfig(
        seed=FLAGS.shuffle_seed, grpo_per_task=FLAGS.grpo_per_task,
        eval_fraction=FLAGS.eval_fraction, jsonl=FLAGS.jsonl)
    out = os.path.abspath(FLAGS.out)
    _check_out(out, options)
    return dict(out=out, options=options, config=config, package=package_config,
                seeds=build.scene_seeds(FLAGS.seed, FLAGS.num_scenes))


def _build(root: str, plan: dict, teacher) -> dict:
    """build.json (if new), the missing shards and the package under ``root``."""
    from w2v_jax.supervision import build

    return build.build_dataset(root, plan["seeds"], plan["config"], teacher, plan["package"],
                               options=plan["options"], progress=FLAGS.progress)


def _print_stats(stats: dict) -> None:
    splits = stats["splits"]
    names = list(splits)
    print(f"teacher {stats['teacher']}  detector {stats['detector']}  scenes "
          f"{stats['scenes']['total']} (eval {stats['scenes']['eval']})  trajectories "
          f"{stats['trajectories']}  QC rejected {stats['qc_rejected']} {stats['qc_reasons']}  "
          f"degenerate boxes {stats['degenerate_boxes']}")
    print("task  " + "  ".join(f"{n:>6}" for n in names))
    for task in splits[names[0]]["per_task"]:
        print(f"{task:<4}  " + "  ".join(f"{splits[n]['per_task'][task]:>6}" for n in names))
    print("all   " + "  ".join(f"{splits[n]['records']:>6}" for n in names))
    print("label balance (sft):", json.dumps(splits["sft"]["label_balance"]))
    if "label_fidelity" in stats:
        print("detections vs oracle:", json.dumps(stats["detector_vs_oracle"]))
        print("label fidelity:", json.dumps(stats["label_fidelity"]))


def main(argv):
    with cli.checking():
        plan = _validate(argv)
        from w2v_jax.supervision import teachers

        teacher = teachers.RendererTeacher(supersample=FLAGS.supersample, render_chunk=16)
        if FLAGS.teacher == "world_model":  # loading the run is part of checking its directory
            from w2v_jax.train.runs import load_world_model

            teacher = teachers.WorldModelTeacher(load_world_model(FLAGS.world_model_dir),
                                                 steps=FLAGS.teacher_steps, cfg=FLAGS.teacher_cfg)
    out = plan["out"]
    fileio.sweep_stale(os.path.dirname(out), os.path.basename(out))
    fileio.sweep_stale(out)  # a killed package swap
    if FLAGS.overwrite and os.path.lexists(out):
        with fileio.atomic_dir(out) as tmp:  # the old build stays until the new one is complete
            stats = _build(tmp, plan, teacher)
    else:
        stats = _build(out, plan, teacher)
    _print_stats(stats)
    print(f"wrote {os.path.join(out, 'package')}")


if __name__ == "__main__":
    cli.run(main)
