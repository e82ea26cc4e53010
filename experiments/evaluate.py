r"""Score a VLM on the evaluation suites the way the official harnesses score them.

    python -m experiments.evaluate --model=DIR --suite_dir=SUITES \
        --suites=sat_like,vsi_like,mindcube_like,tasks --package=PKG --out=OUT \
        [--blind] [--rank] [--test_time=vlm|all --world_model=RUN]

``--model``: a Hugging Face Qwen2.5-VL directory (config.json, safetensors, tokenizer.json and,
when present, preprocessor_config.json for min/max pixels). ``--suites`` names built procedural
suites (``SUITE_DIR/<name>``, from ``python -m data_gen.build_eval_suites``), ``tasks`` (the
``eval`` split of the distillation package ``--package``) and real benchmarks from local files:
``sat_real`` / ``sat_synth`` (``--sat_parquet``; ``sat_synth`` is MindJourney's 500-question
subset unless ``--sat_full``), ``vsibench`` (``--vsibench`` + ``--vsibench_videos``),
``mindcube`` (``--mindcube`` + ``--mindcube_images``).

Greedy decoding, each suite's max new tokens (VSI 16), batched ``generate``. ``--blind`` also
runs the model with blank images and reports categories where it beats chance (language-prior
leaks). ``--rank`` also answers the SAT-format suites by likelihood: the option the model finds
most probable as its whole answer (a model that never writes an option out still shows which it
prefers). ``--test_time`` also runs MindJourney's search on the SAT-format suites with the world
model of the training workdir ``--world_model`` and reports its cost per question next to plain
inference's. Writes ``OUT/results.json``, ``OUT/results.md``, ``OUT/answers.jsonl``,
``OUT/sheet.png``.
"""

from __future__ import annotations

import os

from absl import app, flags

from w2v_jax.eval import loaders, report, store

REAL = ("sat_real", "sat_synth", "vsibench", "mindcube")

_MODEL = flags.DEFINE_string("model", None, "Hugging Face Qwen2.5-VL directory.")
_SUITES = flags.DEFINE_list("suites", ["sat_like", "vsi_like", "mindcube_like"],
                            "Suites: built procedural ones, 'tasks', or " + ", ".join(REAL))
_SUITE_DIR = flags.DEFINE_string("suite_dir", "", "Directory of the built procedural suites.")
_PACKAGE = flags.DEFINE_string("package", "", "Distillation package (for 'tasks').")
_SAT = flags.DEFINE_string("sat_parquet", "", "SAT parquet file or directory of the split.")
_SAT_FULL = flags.DEFINE_bool("sat_full", False, "sat_synth: all val questions, not the 500.")
_VSI = flags.DEFINE_string("vsibench", "", "VSI-Bench test parquet or JSONL.")
_VSI_VIDEOS = flags.DEFINE_string("vsibench_videos", "", "Root of <dataset>/<scene>.mp4.")
_VSI_FRAMES = flags.DEFINE_integer("vsibench_frames", 16, "Frames sampled per VSI-Bench video.")
_MC = flags.DEFINE_string("mindcube", "", "MindCube_tinybench.jsonl.")
_MC_IMAGES = flags.DEFINE_string("mindcube_images", "", "Root of MindCube's image paths.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_BLIND = flags.DEFINE_bool("blind", False, "Also run the blind (blank-image) baseline.")
_RANK = flags.DEFINE_bool("rank", False, "SAT formats: also answer by option likelihood.")
_TEST_TIME = flags.DEFINE_enum("test_time", "", ["", "vlm", "all"],
                               "Also run the MindJourney search with this scorer.")
_WM = flags.DEFINE_string("world_model", "", "Training workdir of the world model.")
_WM_STEPS = flags.DEFINE_integer("wm_steps", 25, "World-model sampler steps.")
_WM_CFG = flags.DEFINE_float("wm_cfg", 1.0, "World-model guidance scale (1 = off).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per generate call.")
_MAX_ITEMS = flags.DEFINE_integer("max_items", 0, "At most this many items per suite (0: all).")
_NO_CIRCULAR = flags.DEFINE_bool("no_circular", False, "SAT: skip the reversed option order.")


def load_model(path: str):
    """``(model, tokenizer, image_config)`` of a Hugging Face Qwen2.5-VL directory or a VLM
    training workdir (``w2v_jax.train.runs.load_vlm``; EMA weights when the run kept them)."""
    from w2v_jax.train import runs

    try:
        image_config = runs.vlm_image_config(path)
    except ValueError as e:
        raise app.UsageError(f"--model: {e}") from e
    model, tokenizer = runs.load_vlm(path)
    return model, tokenizer, image_config


def _need(value: str, flag: str, suite: str) -> str:
    if not value:
        raise app.UsageError(f"--suites contains {suite!r}, which needs --{flag}")
    return value


def load_items(name: str) -> list[dict]:
    if name == "tasks":
        return loaders.load_tasks(_need(_PACKAGE.value, "package", name))
    if name in ("sat_real", "sat_synth"):
        items = loaders.load_sat(_need(_SAT.value, "sat_parquet", name),
                                 "test" if name == "sat_real" else "val")
        return items if name == "sat_real" or _SAT_FULL.value else \
            loaders.mindjourney_subset(items)
    if name == "vsibench":
        return loaders.load_vsibench(_need(_VSI.value, "vsibench", name),
                                     _need(_VSI_VIDEOS.value, "vsibench_videos", name),
                                     _VSI_FRAMES.value)
    if name == "mindcube":
        return loaders.load_mindcube(_need(_MC.value, "mindcube", name),
                                     _need(_MC_IMAGES.value, "mindcube_images", name))
    return store.load_suite(os.path.join(_need(_SUITE_DIR.value, "suite_dir", name), name))


def main(argv):
    del argv
    if not _MODEL.value or not _OUT.value:
        raise app.UsageError("--model and --out are required")
    if _TEST_TIME.value and not _WM.value:
        raise app.UsageError("--test_time needs --world_model=RUN (a world-model training "
                             "workdir)")
    from w2v_jax.eval.evaluate import evaluate

    model, tokenizer, image_config = load_model(_MODEL.value)
    items = []
    for name in _SUITES.value:
        loaded = load_items(name)
        items += loaded[:_MAX_ITEMS.value] if _MAX_ITEMS.value else loaded
    search = teacher = None
    if _TEST_TIME.value:
        from w2v_jax.eval.test_time import SearchConfig
        from w2v_jax.supervision.teachers import WorldModelTeacher
        from w2v_jax.train.runs import load_world_model

        search = SearchConfig(scorer=_TEST_TIME.value)
        teacher = WorldModelTeacher(load_world_model(_WM.value), steps=_WM_STEPS.value,
                                    cfg=_WM_CFG.value)
    results, records = evaluate(model, tokenizer, image_config, items, blind=_BLIND.value,
                                rank=_RANK.value,
                                circular=not _NO_CIRCULAR.value, search=search,
                                teacher=teacher, batch_size=_BATCH.value)
    results = {"model": _MODEL.value, "suites": _SUITES.value, **results}
    report.write_outputs(_OUT.value, results, records, items)
    print(report.markdown(results))


if __name__ == "__main__":
    app.run(main)
