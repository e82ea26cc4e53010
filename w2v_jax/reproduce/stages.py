"""The stages of the main job, each a function ``stage(config, workdir) -> summary`` writing into
``workdir/<stage>/`` (``config``: the ``experiments/configs/reproduce.py`` ConfigDict).

  teacher    posed clips (``sim.clips``) + the world model (``train_from_config``); or
             ``config.world_model``: an existing world-model run, nothing trained
  distill    the distillation set from the world-model teacher (color detector, QC, label
             fidelity against true renders of the same trajectories), the renderer-teacher set of
             the same scenes (the oracle row; its eval split is the training-task mirror with
             true labels) and the forward-only / inverse-only packages (task subsets of the
             world-model set)
  base       the static perception set, one BPE tokenizer on its text and the distillation
             text, and the base VLM pretrained on perception only; or ``config.base_model``
  sft        World2VLM SFT from the base on the world-model package
  grpo       GRPO from the SFT run on the same package
  ablations  SFT from the base on the renderer package and on the two task subsets
  evaluate   held-out suites (scene seeds in [2**32, 2**33)) + the distillation eval split; one
             ``eval.evaluate`` per model (the base also with the test-time search, World2VLM
             also blind; every model also answers the SAT-like questions by option
             likelihood), each written to ``evaluate/<model>/`` and skipped once there
  report     ``reproduce.rows``: the table, JSON, Markdown and pictures (``reproduce.report``)
  release    the world model and the two small VLMs as loadable directories with model cards
             (``reproduce.release``)

A stage whose inputs are missing fails naming the stage to run first. Training stages resume
from their checkpoints, the builders from their finished scenes.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections

from w2v_jax import fileio

STAGES = ("teacher", "distill", "base", "sft", "grpo", "ablations", "evaluate", "report",
          "release")
DONE_FILE = "DONE.json"
# the paper's split of the eight tasks (paper.md §3): forward = action -> outcome
FORWARD_TASKS = ("A4", "D1", "D2", "D4")
INVERSE_TASKS = ("A1", "A2", "A3", "D3")
ABLATION_TASKS = {"forward_only": FORWARD_TASKS, "inverse_only": INVERSE_TASKS}
MODEL_RUNS = ("base", "world2vlm_sft", "world2vlm", "oracle_teacher", "forward_only",
              "inverse_only")


# ----------------------------------------------------------------------------- where things are
def stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage)


def is_done(workdir: str, stage: str) -> bool:
    return os.path.isfile(os.path.join(stage_dir(workdir, stage), DONE_FILE))


def read_done(workdir: str, stage: str) -> dict:
    """``{"wall_seconds", "summary"}`` of a finished stage."""
    with open(os.path.join(stage_dir(workdir, stage), DONE_FILE)) as f:
        return json.load(f)


def require(workdir: str, stage: str, needed_by: str) -> dict:
    if not is_done(workdir, stage):
        raise ValueError(f"stage {needed_by!r} needs stage {stage!r} first: run it "
                         f"(--config.stages={stage},{needed_by}) in --workdir={workdir}")
    return read_done(workdir, stage)


def world_model_dir(config, workdir: str) -> str:
    return config.world_model or os.path.join(stage_dir(workdir, "teacher"), "world_model")


def package_dir(workdir: str, name: str) -> str:
    """``world_model``, ``renderer``, ``forward_only`` or ``inverse_only``."""
    return os.path.join(stage_dir(workdir, "distill"), name, "package")


def model_dir(config, workdir: str, name: str) -> str:
    """The training workdir (or HF directory) of the model row ``name`` (MODEL_RUNS)."""
    if name == "base":
        return config.base_model or os.path.join(stage_dir(workdir, "base"), "run")
    if name == "world2vlm_sft":
        return os.path.join(stage_dir(workdir, "sft"), "run")
    if name == "world2vlm":
        return os.path.join(stage_dir(workdir, "grpo"), "run")
    return os.path.join(stage_dir(workdir, "ablations"), name)


# ----------------------------------------------------------------------------- helpers
def _train(run_config, workdir: str, **updates) -> dict:
    """``train_from_config`` of a copy of ``run_config`` with dotted-key ``updates``; resumes."""
    from w2v_jax.train.run import train_from_config

    c = ml_collections.ConfigDict(run_config.to_dict())
    with c.unlocked():
        for key, value in updates.items():
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    t0 = time.time()
    train_from_config(c, workdir)
    return {"workdir": workdir, "seconds": round(time.time() - t0, 1)}


def world_model_teacher(config, workdir: str):
    from w2v_jax.supervision.teachers import WorldModelTeacher
    from w2v_jax.train.runs import load_world_model

    s = config.teacher.sampler
    return WorldModelTeacher(load_world_model(world_model_dir(config, workdir)), steps=s.steps,
                             cfg=s.cfg)


# ----------------------------------------------------------------------------- 1. teacher
def teacher(config, workdir: str) -> dict:
    """Posed clips and the world model trained on them (or ``config.world_model``)."""
    if config.world_model:
        from w2v_jax.train.runs import read_run_config

        read_run_config(config.world_model)  # a training run, or a one-line error
        return {"world_model": os.path.abspath(config.world_model), "trained": False}
    from w2v_jax.data import posed_clips
    from w2v_jax.sim import clips

    c = config.teacher.clips
    out = os.path.join(stage_dir(workdir, "teacher"), "clips")
    t0 = time.time()
    if os.path.isfile(os.path.join(out, posed_clips.GENERATION_FILE)):  # a finished render
        with open(os.path.join(out, posed_clips.GENERATION_FILE)) as f:
            info = {"splits": json.load(f)["clips"]}
    else:  # written atomically: a killed render leaves nothing to resume from
        info = posed_clips.write_clips(out, c.num_scenes, c.seed,
                                       clips.ClipConfig(resolution=c.resolution),
                                       eval_fraction=c.eval_fraction, progress=config.progress)
    render_s = time.time() - t0
    run = _train(config.teacher.world_model, world_model_dir(config, workdir),
                 **{"data.data_dir": out})
    return {"world_model": run["workdir"], "trained": True, "clips": out,
            "clips_splits": info["splits"], "render_seconds": round(render_s, 1),
            "train_seconds": run["seconds"]}


# ----------------------------------------------------------------------------- 2. distill
def fidelity_score(label_fidelity: dict) -> float:
    """One number for the D tasks: the share of matched (same object) record pairs whose answer
    agrees with the renderer's (D1: box IoU >= 0.5, D2 / D4: same yes/no, D3: same actions),
    pooled over D1-D4."""
    agree = n = 0.0
    for task, e in label_fidelity.items():
        value = e["iou_at_0.5"] if task == "D1" else e["exact"] if task == "D3" else e["accuracy"]
        agree += value * e["matched"]
        n += e["matched"]
    return agree / n if n else 0.0


def _distill_build(config, workdir: str, name: str, teacher_obj, detector: str) -> dict:
    from w2v_jax.sim import clips
    from w2v_jax.supervision import build, package, qc

    d = config.distill
    build_config = build.BuildConfig(
        clip=clips.ClipConfig(resolution=d.resolution, supersample=d.supersample,
                              render_chunk=16),
        key_frames=True, detector=detector, vocabulary=d.vocabulary,
        qc=qc.QCConfig(enabled=bool(d.qc)),
        fidelity=detector != "oracle")
    package_config = package.PackageConfig(seed=d.shuffle_seed, grpo_per_task=d.grpo_per_task,
                                           eval_fraction=d.eval_fraction, jsonl=False)
    root = os.path.join(stage_dir(workdir, "distill"), name)
    options = {"teacher": name, "seed": d.seed, "num_scenes": d.num_scenes}
    return build.build_dataset(root, build.scene_seeds(d.seed, d.num_scenes), build_config,
                               teacher_obj, package_config, options=options,
                               progress=config.progress)


def distill(config, workdir: str) -> dict:
    """World-model and renderer distillation sets of the same scenes, and the task subsets."""
    require(workdir, "teacher", "distill")
    from w2v_jax.supervision import package, teachers

    d = config.distill
    t0 = time.time()
    wm_stats = _distill_build(config, workdir, "world_model",
                              world_model_teacher(config, workdir), "color")
    wm_s = time.time() - t0
    t0 = time.time()
    oracle_stats = _distill_build(config, workdir, "renderer",
                                  teachers.RendererTeacher(supersample=d.supersample,
                                                           render_chunk=16), "oracle")
    oracle_s = time.time() - t0
    from w2v_jax.supervision import build

    shards_root = os.path.join(stage_dir(workdir, "distill"), "world_model", "shards")
    shards = [build.shard_dir(shards_root, s) for s in build.scene_seeds(d.seed, d.num_scenes)]
    subsets = {}
    for name, tasks in ABLATION_TASKS.items():
        cfg = package.PackageConfig(seed=d.shuffle_seed, grpo_per_task=d.grpo_per_task,
                                    eval_fraction=d.eval_fraction, jsonl=False, tasks=tasks)
        stats = package.write_package(shards, package_dir(workdir, name), cfg)
        subsets[name] = {"tasks": list(tasks), "sft_records": stats["splits"]["sft"]["records"]}
    fidelity = wm_stats.get("label_fidelity", {})
    return {"label_fidelity": fidelity_score(fidelity) if fidelity else None,
            "label_fidelity_per_task": fidelity,
            "detector_vs_oracle": wm_stats.get("detector_vs_oracle"),
            "records": {"world_model": {k: v["records"] for k, v in wm_stats["splits"].items()},
                        "renderer": {k: v["records"]
                                     for k, v in oracle_stats["splits"].items()},
                        **{k: v["sft_records"] for k, v in subsets.items()}},
            "qc_rejected": wm_stats["qc_rejected"], "subsets": subsets,
            "world_model_seconds": round(wm_s, 1), "renderer_seconds": round(oracle_s, 1)}


# ----------------------------------------------------------------------------- 3. base
def base(config, workdir: str) -> dict:
    """Perception set, tokenizer (perception + distillation text) and the base VLM: a first run
    on ``config.base_align`` (the object lists: the vision tower learns to see; skipped at
    ``total_steps`` 0), then ``config.base`` on every perception task from it."""
    if config.base_model:
        from w2v_jax.train.runs import init_kind

        init_kind(config.base_model, "config.base_model")  # an HF directory or a VLM workdir
        return {"model": os.path.abspath(config.base_model), "trained": False}
    require(workdir, "distill", "base")
    from w2v_jax.data.distill import package_corpus
    from w2v_jax.processing.tokenizer import train_tokenizer
    from w2v_jax.supervision import package, perception

    p = config.perception
    root = stage_dir(workdir, "base")
    t0 = time.time()
    per_config = perception.PerceptionConfig(resolution=p.resolution,
                                             views_per_scene=p.views_per_scene)
    pkg_config = package.PackageConfig(seed=p.shuffle_seed, grpo_per_task=1,
                                       eval_fraction=p.eval_fraction, jsonl=False)
    stats = perception.build_dataset(
        os.path.join(root, "perception"), perception.scene_seeds(p.seed, p.num_scenes),
        per_config, pkg_config, options={"seed": p.seed, **per_config.to_json()},
        progress=config.progress)
    build_s = time.time() - t0
    per_pkg = os.path.join(root, "perception", "package")
    tok_dir = os.path.join(root, "tokenizer")
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        # the words of every later stage, so SFT / GRPO text is not split into bytes; the
        # renderer package has the same templates and scenes as the world-model one
        corpus = package_corpus(per_pkg) + package_corpus(package_dir(workdir, "renderer"))
        tok, _ = train_tokenizer(corpus, int(config.base.data.vocab_size))
        with fileio.atomic_dir(tok_dir) as tmp:
            tok.save_pretrained(tmp)
    data = {"data.package_dir": per_pkg, "data.tokenizer_dir": tok_dir}
    align = {}
    if int(config.base_align.total_steps) > 0:  # the vision tower learns to see first
        align = _train(config.base_align, os.path.join(root, "align"), **data)
        data["init_from"] = align["workdir"]
    run = _train(config.base, model_dir(config, workdir, "base"), **data)
    return {"model": run["workdir"], "trained": True,
            "align_seconds": align.get("seconds", 0.0),
            "perception_records": {k: v["records"] for k, v in stats["splits"].items()},
            "perception_tasks": stats["perception_tasks"], "build_seconds": round(build_s, 1),
            "train_seconds": run["seconds"]}


# ----------------------------------------------------------------------------- 4-5. sft, grpo
def sft(config, workdir: str) -> dict:
    require(workdir, "distill", "sft")
    require(workdir, "base", "sft")
    return _train(config.sft, model_dir(config, workdir, "world2vlm_sft"),
                  **{"init_from": os.path.abspath(model_dir(config, workdir, "base")),
                     "data.package_dir": package_dir(workdir, "world_model")})


def grpo(config, workdir: str) -> dict:
    require(workdir, "sft", "grpo")
    return _train(config.grpo, model_dir(config, workdir, "world2vlm"),
                  **{"init_from": model_dir(config, workdir, "world2vlm_sft"),
                     "data.package_dir": package_dir(workdir, "world_model")})


# ----------------------------------------------------------------------------- 6. ablations
def ablations(config, workdir: str) -> dict:
    """SFT only (the same recipe and steps as World2VLM's SFT stage) on the renderer package
    (oracle teacher) and on the forward-only / inverse-only task subsets."""
    require(workdir, "distill", "ablations")
    require(workdir, "base", "ablations")
    packages = {"oracle_teacher": package_dir(workdir, "renderer"),
                **{name: package_dir(workdir, name) for name in ABLATION_TASKS}}
    out = {}
    for name in config.ablations.runs:
        out[name] = _train(config.sft, model_dir(config, workdir, name),
                           **{"init_from": os.path.abspath(model_dir(config, workdir, "base")),
                              "data.package_dir": packages[name]})
    return out


# ----------------------------------------------------------------------------- 7. evaluate
def _suites(config, workdir: str) -> dict:
    from w2v_jax.eval import store, suites

    e = config.evaluate
    root = os.path.join(stage_dir(workdir, "evaluate"), "suites")
    render = suites.common.RenderConfig(resolution=e.resolution)
    info = {}
    for name in e.suites:
        if not os.path.isfile(os.path.join(root, name, "info.json")):
            extra = {"num_frames": e.num_frames} if name == "vsi_like" else {}
            suites.build_suite(root, name, seed=e.seed, per_category=e.per_category,
                               config=render, **extra)
        info[name] = store.suite_hash(os.path.join(root, name))
    return {"dir": root, "sha256": info}


def eval_items(config, workdir: str) -> list[dict]:
    """The held-out items every model row is scored on (suites + the task mirror)."""
    from w2v_jax.eval import loaders, store

    root = os.path.join(stage_dir(workdir, "evaluate"), "suites")
    items = []
    for name in config.evaluate.suites:
        items += store.load_suite(os.path.join(root, name))
    if config.evaluate.tasks_items:
        items += loaders.load_tasks(package_dir(workdir, "renderer"),
                                    max_items=config.evaluate.tasks_items)
    return items


def evaluate(config, workdir: str) -> dict:
    """Every model of ``config.evaluate.models`` on the same items; one directory each."""
    require(workdir, "distill", "evaluate")
    from w2v_jax.eval import report
    from w2v_jax.eval.evaluate import evaluate as run_eval
    from w2v_jax.eval.test_time import SearchConfig
    from w2v_jax.train import runs

    e = config.evaluate
    suites = _suites(config, workdir)
    items = eval_items(config, workdir)
    needs = {"base": "base", "world2vlm_sft": "sft", "world2vlm": "grpo",
             **{n: "ablations" for n in ("oracle_teacher", "forward_only", "inverse_only")}}
    seconds = {}
    for name in e.models:
        out = os.path.join(stage_dir(workdir, "evaluate"), name)
        if os.path.isfile(os.path.join(out, "results.json")):
            continue
        require(workdir, needs[name], "evaluate")
        path = model_dir(config, workdir, name)
        model, tokenizer = runs.load_vlm(path)
        search = teacher_obj = None
        if name == e.search_model and e.search.scorer:
            search = SearchConfig(scorer=e.search.scorer, steps=e.search.steps,
                                  beam=e.search.beam, max_evidence=e.search.max_evidence)
            teacher_obj = world_model_teacher(config, workdir)
        t0 = time.time()
        results, records = run_eval(model, tokenizer, runs.vlm_image_config(path), items,
                                    blind=name == e.blind_model, rank=True, search=search,
                                    teacher=teacher_obj,
                                    search_per_category=e.search.per_category,
                                    batch_size=e.batch_size,
                                    progress=config.progress)
        results = {"model": path, **results}
        report.write_outputs(out, results, records, items)
        seconds[name] = round(time.time() - t0, 1)
    return {"suites": suites, "items": len(items), "model_seconds": seconds}


STAGE_FNS = {"teacher": teacher, "distill": distill, "base": base, "sft": sft, "grpo": grpo,
             "ablations": ablations, "evaluate": evaluate}
