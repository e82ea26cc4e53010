r"""Build the World2VLM distillation set: teacher views -> detection + tracking -> QC -> A1-A4 /
D1-D4 records -> SFT / GRPO / eval splits (TFDS array_record + official-format JSONL).

For each of --num_scenes procedural scenes (seeds derived from --seed) every trajectory kind of the
room config runs once; the teacher gives the views at the key frames: --teacher=renderer is the
oracle (true renders; detections from the renderer's truth), --teacher=world_model imagines them
with the trained model in --world_model_dir (an `experiments.train` workdir; detections from the
colour/shape detector on the generated images, and label fidelity against true renders of the
same trajectories). See w2v_jax/supervision/build.py and package.py.

Layout of --out:
  build.json   the options (a rerun must use the same ones; --num_scenes may grow)
  shards/scene_<id>/   one finished scene each (PNG frames + scene.json), written atomically;
               a rerun skips finished scenes (resume after an interruption)
  package/     world2vlm_distill/1.0.0 (TFDS: sft / grpo / eval), sft.jsonl, grpo.jsonl,
               eval.jsonl, images/, stats.json -- rebuilt atomically at the end of every run

Examples:
  python -m data_gen.build_supervision --teacher=renderer --num_scenes 40 --out /tmp/w2v_sup \
      --seed 0
  python -m data_gen.build_supervision --teacher=world_model --world_model_dir RUN \
      --num_scenes 40 --out /tmp/w2v_sup_wm --seed 0
"""

import json
import os
import shutil

from absl import app, flags

flags.DEFINE_enum("teacher", "renderer", ["renderer", "world_model"],
                  "Who supplies the views after each trajectory: the renderer (oracle) or the "
                  "trained world model.")
flags.DEFINE_string("world_model_dir", None,
                    "experiments.train workdir of the world model (--teacher=world_model).")
flags.DEFINE_integer("num_scenes", None, "Number of procedural scenes (9 trajectories each).")
flags.DEFINE_string("out", None, "Output directory (shards/, package/, build.json).")
flags.DEFINE_integer("seed", 0, "Run seed: scene seeds, trajectories, templates, teacher noise.")
flags.DEFINE_integer("resolution", 64, "Square view size in pixels (a world-model teacher fixes it "
                     "to its image size).")
flags.DEFINE_integer("supersample", 2, "Rays per pixel side of the true renders "
                     "(anti-aliasing).")
flags.DEFINE_integer("grpo_per_task", 125, "GRPO records per task type (official 125).")
flags.DEFINE_float("eval_fraction", 0.1, "Share of scenes held out as the eval split.")
flags.DEFINE_integer("shuffle_seed", 42, "Seed of the split shuffles and the A4 labelling "
                     "(official 42).")
flags.DEFINE_enum("detector", None, ["oracle", "color"],
                  "Detections from the renderer's truth (oracle) or from the images (color). "
                  "Default: oracle for the renderer teacher, color for the world model.")
flags.DEFINE_enum("vocabulary", "shape", ["shape", "color_shape"],
                  "Object labels in prompts: shape class ('cube') or colour + shape ('red cube').")
flags.DEFINE_boolean("key_frames", True, "Ask the teacher for every key frame, not only the last.")
flags.DEFINE_boolean("qc", True, "Quality control of teacher views and boxes.")
flags.DEFINE_float("qc_blur_min", 100.0, "Minimum Laplacian variance of a view (0-255 scale).")
flags.DEFINE_float("qc_change_min", 0.01, "Minimum mean |change| between consecutive views.")
flags.DEFINE_float("qc_change_max", 0.4, "Maximum mean |change| between consecutive views.")
flags.DEFINE_integer("teacher_steps", 25, "Sampler steps of the world model.")
flags.DEFINE_float("teacher_cfg", 1.0, "Classifier-free guidance scale of the world model.")
flags.DEFINE_boolean("fidelity", True, "With an image detector or a model teacher, also build D "
                     "records from true renders + oracle and report the label fidelity.")
flags.DEFINE_boolean("jsonl", True, "Also write sft/grpo/eval.jsonl and images/.")
flags.DEFINE_boolean("overwrite", False, "Delete an existing --out and start over.")
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


def _check_resume(out: str, options: dict) -> None:
    path = os.path.join(out, "build.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != options:
            changed = sorted(k for k in set(previous) | set(options)
                             if previous.get(k) != options.get(k))
            raise app.UsageError(f"--out {out} holds a build with other options ({changed}); "
                                 "rerun with the same flags to resume, or pass --overwrite")
        return
    os.makedirs(out, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(options, f, indent=1)
    os.replace(tmp, path)


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
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # checked here rather than with flags.mark_flags_as_required, which would make every other absl
    # program that imports this module (tests run several in one process) demand these flags too
    if FLAGS.out is None or FLAGS.num_scenes is None:
        raise app.UsageError("--out and --num_scenes are required (see --help)")
    if FLAGS.num_scenes < 1:
        raise app.UsageError(f"--num_scenes must be >= 1, got {FLAGS.num_scenes}")
    from w2v_jax.supervision import build, package, qc

    out = os.path.abspath(FLAGS.out)
    if FLAGS.overwrite and os.path.exists(out):
        shutil.rmtree(out)
    teacher, resolution = None, FLAGS.resolution
    if FLAGS.teacher == "world_model":
        if not FLAGS.world_model_dir:
            raise app.UsageError("--teacher=world_model needs --world_model_dir")
        from w2v_jax.models.world_model import WorldModelTeacher
        from w2v_jax.train.runs import load_world_model

        model = load_world_model(FLAGS.world_model_dir)
        size = model.config.image_size
        if FLAGS["resolution"].present and FLAGS.resolution != size:
            raise app.UsageError(f"--resolution {FLAGS.resolution} differs from the world model's "
                                 f"image size {size}")
        resolution = size
        teacher = WorldModelTeacher(model, steps=FLAGS.teacher_steps, cfg=FLAGS.teacher_cfg)
    elif FLAGS.world_model_dir:
        raise app.UsageError("--world_model_dir is only used with --teacher=world_model")
    options = _options(resolution)
    if FLAGS.teacher == "world_model" and options["detector"] == "oracle":
        raise app.UsageError("--detector=oracle reads the renderer's truth; a world-model "
                             "teacher needs --detector=color")
    _check_resume(out, options)
    config = build.BuildConfig(
        resolution=resolution, supersample=FLAGS.supersample, key_frames=FLAGS.key_frames,
        detector=options["detector"], vocabulary=FLAGS.vocabulary,
        qc=qc.QCConfig(**options["qc"]),
        teacher_steps=FLAGS.teacher_steps, teacher_cfg=FLAGS.teacher_cfg,
        fidelity=FLAGS.fidelity)
    seeds = build.scene_seeds(FLAGS.seed, FLAGS.num_scenes)
    done = build.build_shards(os.path.join(out, "shards"), seeds, config, teacher,
                              teacher_name=FLAGS.teacher, progress=FLAGS.progress)
    print(f"scenes built {done['built']}, skipped (already finished) {done['skipped']}")
    stats = package.write_package(
        done["shards"], os.path.join(out, "package"),
        package.PackageConfig(seed=FLAGS.shuffle_seed, grpo_per_task=FLAGS.grpo_per_task,
                              eval_fraction=FLAGS.eval_fraction, jsonl=FLAGS.jsonl),
        extra_stats={"build": options, "num_scenes": FLAGS.num_scenes})
    _print_stats(stats)
    print(f"wrote {os.path.join(out, 'package')}")


if __name__ == "__main__":
    app.run(main)
