"""The main job end to end: ``run(config, workdir)`` runs the selected stages in order
(``stages.STAGES``), skipping finished ones.

``workdir/reproduce.json`` holds the config (without ``stages`` / ``progress``): a rerun must use
the same one (the error names the fields that differ). A stage that finishes writes
``workdir/<stage>/DONE.json`` (``{"wall_seconds", "summary"}``) atomically; a rerun skips it, and a
killed stage resumes inside (training from its checkpoints, builders from finished scenes,
evaluation per model).
"""

from __future__ import annotations

import json
import os
import shutil
import time

from w2v_jax import fileio
from w2v_jax.reproduce import report as report_lib
from w2v_jax.reproduce import stages as st

CONFIG_FILE = "reproduce.json"
_RUNTIME_KEYS = ("stages", "progress")


def selected_stages(config) -> list[str]:
    names = [s.strip() for s in str(config.stages).split(",") if s.strip()]
    unknown = [s for s in names if s not in st.STAGES]
    if unknown or not names:
        raise ValueError(f"config.stages={config.stages!r}: unknown {unknown}; allowed a "
                         f"comma-separated subset of {','.join(st.STAGES)}")
    return [s for s in st.STAGES if s in names]


def _identity(config) -> dict:
    d = json.loads(config.to_json_best_effort())
    return {k: v for k, v in d.items() if k not in _RUNTIME_KEYS}


def check_config(config, workdir: str) -> None:
    """ValueError unless ``workdir`` is new / empty or holds a run of the same config."""
    selected_stages(config)
    for key in ("world_model", "base_model"):
        path = config.get(key) or ""
        if path and not os.path.isdir(path):
            raise ValueError(f"config.{key}={path!r}: no such directory")
    fileio.check_resumable(
        workdir, CONFIG_FILE, _identity(config), flag="--workdir",
        remedy=f"rerun with the config in its {CONFIG_FILE} to resume, or use a new --workdir")


def stage_seconds(workdir: str) -> dict:
    return {s: st.read_done(workdir, s)["wall_seconds"] for s in st.STAGES
            if st.is_done(workdir, s)}


def run(config, workdir: str) -> dict:
    """Runs the stages of ``config.stages``; returns ``{stage: summary}`` of those run now."""
    workdir = os.path.abspath(workdir)
    check_config(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        fileio.atomic_write_json(os.path.join(workdir, CONFIG_FILE), _identity(config), indent=2)
    done = {}
    for name in selected_stages(config):
        if st.is_done(workdir, name):
            print(f"[reproduce] {name}: done already (delete {st.stage_dir(workdir, name)}/"
                  f"{st.DONE_FILE} to rerun it)", flush=True)
            continue
        print(f"[reproduce] {name}: starting", flush=True)
        os.makedirs(st.stage_dir(workdir, name), exist_ok=True)
        t0 = time.time()
        summary = STAGE_FNS[name](config, workdir)
        seconds = round(time.time() - t0, 1)
        fileio.atomic_write_json(os.path.join(st.stage_dir(workdir, name), st.DONE_FILE),
                                 {"wall_seconds": seconds, "summary": summary}, indent=1)
        print(f"[reproduce] {name}: done in {seconds:.0f} s", flush=True)
        done[name] = summary
    return done


# ----------------------------------------------------------------------------- 8. report
def results_paths(config, workdir: str) -> dict:
    """Where the report goes: ``workdir/report/`` and, with ``config.report.results_dir``, the
    published copies ``<results_dir>/<name>.json`` / ``.md`` / ``_*.png``."""
    r = config.report
    out = {"dir": st.stage_dir(workdir, "report")}
    for key, suffix in (("json", ".json"), ("md", ".md"), ("bars", "_accuracy.png"),
                        ("curve", "_grpo_reward.png"), ("sheet", "_sheet.png"),
                        ("examples", "_examples.jsonl")):
        out[key] = os.path.join(out["dir"], r.name + suffix)
        if r.results_dir:
            out["published_" + key] = os.path.join(r.results_dir, r.name + suffix)
    return out


def report(config, workdir: str) -> dict:
    """The rows, the targets, the Markdown table and the three pictures."""
    st.require(workdir, "evaluate", "report")
    from w2v_jax.train.metrics import read_metrics

    e = config.evaluate
    eval_dir = st.stage_dir(workdir, "evaluate")
    rows = report_lib.collect_rows(eval_dir, list(e.models), search_model=e.search_model,
                                   blind_model=e.blind_model)
    distilled = st.read_done(workdir, "distill")["summary"]
    paths = results_paths(config, workdir)
    summary = {
        "title": config.report.title, "command": config.report.command,
        "units": report_lib.UNITS,
        "label_fidelity": distilled["label_fidelity"],
        "label_fidelity_per_task": distilled["label_fidelity_per_task"],
        "distillation_records": distilled["records"],
        "rows": rows,
        "targets": report_lib.targets(rows, distilled["label_fidelity"]),
        "stage_seconds": stage_seconds(workdir),
        "evaluation": {k: v for k, v in st.read_done(workdir, "evaluate")["summary"].items()
                       if k in ("suites", "items")},
        "pictures": {k: os.path.basename(paths[k]) for k in ("bars", "curve", "sheet")},
    }
    report_lib.plot_accuracy_bars(rows, paths["bars"])
    grpo_dir = st.model_dir(config, workdir, "world2vlm")
    if os.path.isfile(os.path.join(grpo_dir, "metrics.jsonl")):
        report_lib.plot_reward_curve(read_metrics(grpo_dir), paths["curve"],
                                     title="World2VLM GRPO reward (small student)")
    answers = {}
    for name in ("base", "world2vlm"):
        if name in e.models:
            _, records = report_lib.read_eval(eval_dir, name)
            answers[name] = {r["id"]: r["response"] for r in records
                             if r["variant"] == "plain" and not r["blind"]}
    items = st.eval_items(config, workdir)
    report_lib.plot_sheet(items, answers, paths["sheet"], st.world_model_teacher(config, workdir))
    fileio.atomic_write(paths["examples"], report_lib.examples_jsonl(items, answers))
    fileio.atomic_write_json(paths["json"], summary, indent=1)
    fileio.atomic_write(paths["md"], report_lib.markdown(summary))
    for key in ("json", "md", "bars", "curve", "sheet", "examples"):
        if "published_" + key in paths and os.path.isfile(paths[key]):
            os.makedirs(os.path.dirname(paths["published_" + key]), exist_ok=True)
            with open(paths[key], "rb") as f:
                fileio.atomic_write(paths["published_" + key], f.read())
    return {"paths": paths, "targets": summary["targets"]}


# ----------------------------------------------------------------------------- 9. release
def _card(title: str, body: str, summary: dict, rows: tuple[str, ...]) -> str:
    lines = [f"# {title}", "", body, "", f"Produced by `{summary['command']}` "
             "(w2v_jax, experiments/configs/reproduce.py).", ""]
    for name in rows:
        r = summary["rows"].get(name)
        if not r:
            continue
        sat = (f"SAT-like dynamic macro {100 * r['sat_like_dynamic_macro']:.1f} ± "
               f"{100 * r['sat_like_dynamic_macro_se']:.1f} %")
        if "sat_like_dynamic_macro_ranked" in r:
            ranked = 100 * r["sat_like_dynamic_macro_ranked"]
            sat += f" (options ranked by likelihood: {ranked:.1f} %)"
        lines.append(f"- {name}: {sat}, VSI-like {100 * r.get('vsi_like_overall', 0):.1f} %, "
                     f"MindCube-like {100 * r.get('mindcube_like_overall', 0):.1f} %, task reward "
                     f"{r.get('tasks_mean_reward', 0):.3f}")
    return "\n".join(lines) + "\n"


def release(config, workdir: str) -> dict:
    """The teacher, the base and World2VLM as loadable directories with model cards, written to
    ``workdir/release/`` and, if they take at most ``config.release.max_mb``, copied to
    ``config.release.out_dir`` (each swapped in whole: a failed copy keeps the old one)."""
    st.require(workdir, "report", "release")
    from w2v_jax.reproduce import release as rel

    with open(results_paths(config, workdir)["json"]) as f:
        summary = json.load(f)
    r = config.release
    staging = st.stage_dir(workdir, "release")
    done = {
        "world_model_small": rel.release_world_model(
            st.world_model_dir(config, workdir), os.path.join(staging, "world_model_small"),
            _card("world_model_small", r.world_model_card, summary, ())),
        "vlm_base_small": rel.release_vlm(
            st.model_dir(config, workdir, "base"), os.path.join(staging, "vlm_base_small"),
            _card("vlm_base_small", r.base_card, summary, ("base",))),
        "world2vlm_small": rel.release_vlm(
            st.model_dir(config, workdir, "world2vlm"), os.path.join(staging, "world2vlm_small"),
            _card("world2vlm_small", r.world2vlm_card, summary, ("world2vlm", "world2vlm_sft"))),
    }
    total = sum(v["bytes"] for v in done.values())
    if total > r.max_mb * 2**20:
        raise ValueError(f"released models take {total / 2**20:.1f} MB, over "
                         f"config.release.max_mb={r.max_mb} (left in {staging})")
    if r.out_dir:
        for name, v in done.items():
            dest = os.path.join(os.path.abspath(r.out_dir), name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with fileio.atomic_dir(dest) as tmp:
                shutil.copytree(v["path"], tmp, dirs_exist_ok=True)
            v["published"] = dest
    return {"models": done, "total_mb": round(total / 2**20, 2)}


STAGE_FNS = {**st.STAGE_FNS, "report": report, "release": release}
