"""The results of the main job: one row per model / method, the targets, the tables and pictures.

Rows (``ROWS``): ``base``, ``world2vlm_sft``, ``world2vlm``, ``oracle_teacher``, ``forward_only``,
``inverse_only`` (plain greedy inference of each trained model), ``test_time_search`` (the base
with MindJourney's search over the world model, SAT-format suites only) and ``blind`` (the
``config.evaluate.blind_model`` with blank images). Every accuracy, MRA and reward is a fraction in
[0, 1]; ``*_se`` is its standard error (binomial for accuracies, sample std / sqrt(n) otherwise;
a macro's SE is sqrt(sum of the categories' SE^2) / k). ``flops_per_question`` and
``seconds_per_question`` are means over the SAT-like questions (analytic FLOPs of the VLM calls,
plus the world model's for the search). ``sat_like_dynamic_macro_ranked`` (and
``sat_like_ranked`` per category) score the same SAT-like questions by likelihood instead of
generation (``eval.runner.rank``): the option the model finds most probable as its whole answer.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from w2v_jax.eval.runner import SAT_DYNAMIC

ROWS = ("base", "world2vlm_sft", "world2vlm", "oracle_teacher", "forward_only", "inverse_only",
        "test_time_search", "blind")
SAT = "sat_like"
UNITS = "fractions in [0, 1]; *_se: standard errors in the same units"


def _macro_se(ses: Sequence[float]) -> float:
    return math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else 0.0


def read_eval(eval_dir: str, name: str) -> tuple[dict, list[dict]]:
    """``(results, records)`` the evaluate stage wrote for model ``name``."""
    d = os.path.join(eval_dir, name)
    with open(os.path.join(d, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(d, "answers.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return results, records


def _cost(records: Sequence[dict], blind: bool) -> dict:
    plain = [r for r in records if r["suite"] == SAT and r["variant"] == "plain"
             and r["blind"] == blind]
    if not plain:
        return {"flops_per_question": None, "seconds_per_question": None}
    return {"flops_per_question": float(np.mean([r["flops"] for r in plain])),
            "seconds_per_question": float(np.mean([r["wall_s"] for r in plain]))}


def row_metrics(runs: Mapping[str, Any], records: Sequence[dict] = (), blind: bool = False
                ) -> dict:
    """One row from an aggregate (``runner.aggregate``: suite -> categories / summary) and the
    run's records (for the pooled task-reward SE)."""
    row: dict = {}
    sat = runs.get(SAT)
    if sat:
        cats = sat["categories"]
        dyn = [c for c in cats if c in SAT_DYNAMIC]
        row["sat_like_dynamic_macro"] = sat["summary"]["headline"]
        row["sat_like_dynamic_macro_se"] = _macro_se([cats[c]["se"] for c in dyn])
        row["sat_like_dynamic_macro_circular"] = sat["summary"].get("headline_circular")
        row["sat_like"] = {c: {"accuracy": e["score"], "se": e["se"], "n": e["n"],
                               "chance": e["chance"]} for c, e in cats.items()}
    vsi = runs.get("vsi_like")
    if vsi:
        cats = vsi["categories"]
        direction = [c for c in cats if c.startswith("object_rel_direction_")]
        ses = [cats[c]["se"] for c in cats if c not in direction]
        if direction:
            ses.append(_macro_se([cats[c]["se"] for c in direction]))
        row["vsi_like_overall"] = vsi["summary"]["overall"]
        row["vsi_like_overall_se"] = _macro_se(ses)
        row["vsi_like"] = dict(vsi["summary"]["tasks"])
    mc = runs.get("mindcube_like")
    if mc:
        p, n = mc["summary"]["overall"], mc["summary"]["n"]
        row["mindcube_like_overall"] = p
        row["mindcube_like_overall_se"] = math.sqrt(max(p * (1 - p), 0.0) / n) if n else 0.0
    tasks = runs.get("tasks")
    if tasks:
        rewards = [r["score"] for r in records if r["suite"] == "tasks"
                   and r["variant"] == "plain" and r["blind"] == blind]
        row["tasks_mean_reward"] = tasks["summary"]["reward"]
        row["tasks_mean_reward_se"] = (float(np.std(rewards, ddof=1) / np.sqrt(len(rewards)))
                                       if len(rewards) > 1 else 0.0)
        row["tasks_exact"] = tasks["summary"]["exact"]
        row["tasks"] = {c: e["score"] for c, e in tasks["categories"].items()}
    return row


def ranked_metrics(runs: Mapping[str, Any], name: str = "ranked") -> dict:
    """``sat_like_dynamic_macro_ranked`` (+ ``_se``, ``_circular``) and ``sat_like_ranked``
    (per category) from the likelihood run ``runs[name]`` (``runner.rank``); {} without it."""
    if name not in runs or SAT not in runs[name]:
        return {}
    row = row_metrics(runs[name])
    out = {f"sat_like_dynamic_macro_ranked{k[len('sat_like_dynamic_macro'):]}": v
           for k, v in row.items() if k.startswith("sat_like_dynamic_macro")}
    out["sat_like_ranked"] = row["sat_like"]
    return out


def collect_rows(eval_dir: str, models: Sequence[str], *, search_model: str, blind_model: str
                 ) -> dict:
    """``{row: metrics}`` from ``eval_dir/<model>/`` (the evaluate stage's outputs)."""
    rows = {}
    for name in models:
        results, records = read_eval(eval_dir, name)
        rows[name] = {**row_metrics(results["runs"]["model"], records),
                      **ranked_metrics(results["runs"]), **_cost(records, False)}
        if name == blind_model and "blind" in results["runs"]:
            rows["blind"] = {"of": name, **row_metrics(results["runs"]["blind"], records, True),
                             **ranked_metrics(results["runs"], "blind_ranked"),
                             **_cost(records, True)}
        search = [k for k in results["runs"] if k.startswith("test_time_")]
        if name == search_model and search:
            cost = results["cost"][search[0]]
            rows["test_time_search"] = {
                "of": name, "scorer": search[0][len("test_time_"):],
                **row_metrics(results["runs"][search[0]]),
                "flops_per_question": cost["flops"], "seconds_per_question": cost["wall_s"],
                "world_model_calls_per_question": cost["world_model_calls"],
                "vlm_calls_per_question": cost["vlm_calls"],
                "flops_ratio_vs_plain": cost["flops_ratio_vs_plain"]}
    return {k: rows[k] for k in ROWS if k in rows}


def targets(rows: Mapping[str, dict], label_fidelity: float | None) -> dict:
    """The issue's targets, each ``{"value", "target", "met"}`` (None where a row is missing).
    ``value`` is a fraction difference (a ratio for the FLOPs target, a fraction for the label
    fidelity); ``target`` says the threshold in the units the markdown shows (points, ×, %)."""
    def get(row, key):
        return rows.get(row, {}).get(key)

    def entry(value, target, met):
        return {"value": value, "target": target, "met": None if value is None else bool(met)}

    def diff(x, y):
        return None if x is None or y is None else x - y

    out = {}
    w, b, t = (get(r, "sat_like_dynamic_macro") for r in ("world2vlm", "base", "test_time_search"))
    gain = diff(w, b)
    out["sat_gain_vs_base"] = entry(gain, ">= +15.0 points", gain is not None and gain >= 0.15)
    out["sat_vs_test_time"] = entry(diff(w, t), ">= 0 points", diff(w, t) is not None and w >= t)
    fw, ft = get("world2vlm", "flops_per_question"), get("test_time_search", "flops_per_question")
    ratio = ft / fw if fw and ft else None
    out["flops_ratio_test_time_over_world2vlm"] = entry(ratio, ">= 50×",
                                                        ratio is not None and ratio >= 50)
    s = get("world2vlm_sft", "sat_like_dynamic_macro")
    for ablation in ("forward_only", "inverse_only"):
        a = get(ablation, "sat_like_dynamic_macro")
        # the ablations run SFT only: compared with World2VLM's SFT stage
        out[f"bidirectional_vs_{ablation}"] = entry(diff(s, a), "> 0 points",
                                                    diff(s, a) is not None and s > a)
    rg, rs = get("world2vlm", "tasks_mean_reward"), get("world2vlm_sft", "tasks_mean_reward")
    out["grpo_tasks_reward_gain"] = entry(diff(rg, rs), ">= 0 points",
                                          diff(rg, rs) is not None and rg >= rs)
    out["grpo_sat_change"] = entry(diff(w, s), ">= -2.0 points",
                                   diff(w, s) is not None and w - s >= -0.02)
    out["label_fidelity"] = entry(label_fidelity, ">= 85 %",
                                  label_fidelity is not None and label_fidelity >= 0.85)
    for suite in ("vsi_like_overall", "mindcube_like_overall"):
        wv, bv = get("world2vlm", suite), get("base", suite)
        out[f"{suite}_vs_base"] = entry(diff(wv, bv), ">= 0 points",
                                        diff(wv, bv) is not None and wv >= bv)
    return out


def _fmt(x, se=None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f} ± {100 * se:.1f}" if se is not None else f"{100 * x:.1f}"


def _sci(x) -> str:
    return "–" if x is None else f"{x:.2e}"


def _secs(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _category_table(rows: Mapping[str, dict], key: str, cats: Sequence[str], caption: str
                    ) -> list[str]:
    """Markdown lines: ``caption`` and one line per row holding ``key`` (category -> accuracy,
    se); none when no row does."""
    if not cats or not any(key in r for r in rows.values()):
        return []
    lines = ["", caption, "", "| row | " + " | ".join(cats) + " |", "|---" * (len(cats) + 1) + "|"]
    for name, r in rows.items():
        if key in r:
            lines.append(f"| {name} | " + " | ".join(
                _fmt(r[key][c]["accuracy"], r[key][c]["se"]) if c in r[key] else "–"
                for c in cats) + " |")
    return lines


def markdown(summary: Mapping[str, Any]) -> str:
    """The results table (percent ± SE), the per-category SAT-like accuracies, the targets, the
    label fidelity and the stage times."""
    rows = summary["rows"]
    lines = [f"# {summary['title']}", "", summary.get("command", ""), "",
             "Accuracies, MRA and rewards in percent ± one standard error; FLOPs and seconds "
             "per SAT-like question.", "",
             "| row | SAT-like dynamic | SAT-like ranked | VSI-like | MindCube-like | "
             "tasks reward | FLOPs / q | s / q |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ranked = _fmt(r.get("sat_like_dynamic_macro_ranked"),
                      r.get("sat_like_dynamic_macro_ranked_se"))
        lines.append(
            f"| {name}"
            f" | {_fmt(r.get('sat_like_dynamic_macro'), r.get('sat_like_dynamic_macro_se'))}"
            f" | {ranked}"
            f" | {_fmt(r.get('vsi_like_overall'), r.get('vsi_like_overall_se'))}"
            f" | {_fmt(r.get('mindcube_like_overall'), r.get('mindcube_like_overall_se'))}"
            f" | {_fmt(r.get('tasks_mean_reward'), r.get('tasks_mean_reward_se'))}"
            f" | {_sci(r.get('flops_per_question'))}"
            f" | {_secs(r.get('seconds_per_question'))} |")
    cats = sorted({c for r in rows.values() for c in r.get("sat_like", {})})
    lines += _category_table(rows, "sat_like", cats,
                             "SAT-like accuracy per category (percent ± SE; chance 50):")
    lines += _category_table(
        rows, "sat_like_ranked", cats,
        "SAT-like accuracy per category when the option is chosen by likelihood (`SAT-like "
        "ranked`: the option the model finds most probable as its whole answer; percent ± SE; "
        "chance 50):")
    lines += ["", f"Label fidelity of the world-model teacher on D1–D4: "
              f"{_fmt(summary.get('label_fidelity'))} %", "", "Targets:", "",
              "| target | value | wanted | met |", "|---|---|---|---|"]
    for name, t in summary["targets"].items():
        v = t["value"]
        shown = "–" if v is None else (f"{v:.1f}×" if "ratio" in name else f"{100 * v:+.1f}"
                                       if name != "label_fidelity" else f"{100 * v:.1f} %")
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {name} | {shown} | {t['target']} | {met} |")
    if summary.get("stage_seconds"):
        lines += ["", "Stage wall times on this machine (s): " + ", ".join(
            f"{k} {v:.0f}" for k, v in summary["stage_seconds"].items())]
    return "\n".join(lines) + "\n"


def examples_jsonl(items: Sequence[dict], answers: Mapping[str, Mapping[str, str]],
                   per_suite: int = 6) -> str:
    """A few held-out items (images as base64 PNG) with each model's greedy answer: what the
    released models must answer again (tests/test_released_models.py)."""
    import base64

    chosen = []
    for suite in sorted({i["suite"] for i in items}):
        its = [i for i in items if i["suite"] == suite]
        cats = sorted({i["category"] for i in its})
        picked = [next(i for i in its if i["category"] == c) for c in cats][:per_suite]
        chosen += picked
    lines = []
    for item in chosen:
        row = {k: item[k] for k in ("id", "suite", "category", "question", "choices", "answer",
                                    "meta")}
        row["images"] = [base64.b64encode(bytes(im)).decode() for im in item["images"]]
        row["responses"] = {m: by_id.get(item["id"]) for m, by_id in answers.items()}
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def read_examples(path: str) -> list[dict]:
    """``examples_jsonl`` back: items with PNG bytes and the recorded ``responses``."""
    import base64

    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        row["images"] = [base64.b64decode(im) for im in row["images"]]
    return rows


# ----------------------------------------------------------------------------- pictures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    import io

    from w2v_jax import fileio

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fileio.atomic_write(path, buf.getvalue())


def plot_accuracy_bars(rows: Mapping[str, dict], path: str,
                       names: Sequence[str] = ("base", "world2vlm", "test_time_search")) -> None:
    """SAT-like accuracy per dynamic category (and the macro) with SE bars, one bar per row."""
    plt = _plt()
    names = [n for n in names if n in rows and "sat_like" in rows[n]]
    cats = sorted({c for n in names for c in rows[n]["sat_like"]})
    labels = cats + ["dynamic macro"]
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=120)
    width = 0.8 / max(len(names), 1)
    for k, n in enumerate(names):
        r = rows[n]
        vals = [r["sat_like"].get(c, {}).get("accuracy", np.nan) for c in cats]
        errs = [r["sat_like"].get(c, {}).get("se", 0.0) for c in cats]
        vals.append(r["sat_like_dynamic_macro"])
        errs.append(r["sat_like_dynamic_macro_se"])
        x = np.arange(len(labels)) + (k - (len(names) - 1) / 2) * width
        ax.bar(x, 100 * np.asarray(vals), width, yerr=100 * np.asarray(errs), capsize=2,
               label=n)
    ax.axhline(50, color="gray", lw=0.8, ls="--", label="chance")
    ax.set_xticks(np.arange(len(labels)), [lb.replace("_", "\n") for lb in labels], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("SAT-like (held-out scenes)")
    ax.legend(fontsize=8, ncol=len(names) + 1)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_reward_curve(metrics: Sequence[Mapping[str, Any]], path: str, *,
                      title: str = "GRPO reward", smooth: int = 5) -> None:
    """Per-iteration rollout reward (and its moving average) and the validation reward of a GRPO
    run's ``metrics.jsonl`` rows; ValueError when there are no rollout rewards."""
    plt = _plt()
    train = [(r["step"], r["reward"]) for r in metrics if "reward" in r]
    val = [(r["step"], r["val_reward"]) for r in metrics if "val_reward" in r]
    if not train:
        raise ValueError("the metrics hold no training rewards (not a GRPO run?)")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    steps, reward = np.array(train).T
    ax.plot(steps, reward, color="tab:blue", alpha=0.35, label="rollout reward (per iteration)")
    k = max(1, min(smooth, len(reward)))
    ax.plot(steps[k - 1:], np.convolve(reward, np.ones(k) / k, mode="valid"), color="tab:blue",
            label=f"rollout reward ({k}-iter mean)")
    if val:
        vs, vr = np.array(val).T
        ax.plot(vs, vr, "o-", color="tab:orange", label="validation reward (eval split)")
    ax.set_xlabel("GRPO iteration")
    ax.set_ylabel("reward (overall)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _wrap(text: str, width: int = 46, lines: int = 5) -> str:
    """``text`` in at most ``lines`` lines of ``width``; control characters (an untrained model
    can emit any byte) drawn as ``?``, which the font has."""
    import textwrap

    text = "".join(c if c.isprintable() else "?" for c in text.replace("<image>", ""))
    out = textwrap.wrap(" ".join(text.split()), width)
    return "\n".join(out[:lines]) + (" …" if len(out) > lines else "")


def plot_sheet(items: Sequence[dict], answers: Mapping[str, Mapping[str, str]], path: str,
               teacher=None, *, rows: int = 6, seed: int = 0) -> None:
    """Held-out SAT-like questions: the view(s) shown, the view the world model imagines along the
    question's actions (when the item names actions and ``teacher`` is given), the question,
    the truth and each model's answer (``answers``: model -> {item id: response})."""
    from w2v_jax import actions as actions_lib
    from w2v_jax.processing.image import load_image

    plt = _plt()
    chosen = [i for i in items if i["suite"] == SAT and i["meta"].get("actions")][:rows // 2]
    chosen += [i for i in items if i["suite"] == SAT and i not in chosen][:rows - len(chosen)]
    fig, axes = plt.subplots(len(chosen), 4, figsize=(11, 2.3 * len(chosen)), dpi=110,
                             gridspec_kw={"width_ratios": [1, 1, 1, 2.6]}, squeeze=False)
    for ax_row, item in zip(axes, chosen):
        imgs = [load_image(im) for im in item["images"]]
        panels = [(imgs[0], "view shown")]
        panels.append((imgs[1], "second view") if len(imgs) > 1 else (None, ""))
        imagined = None
        if teacher is not None and item["meta"].get("actions"):
            acts = actions_lib.parse_actions(item["meta"]["actions"])
            K = np.asarray(item["meta"]["K"], np.float32)
            imagined = teacher.views(imgs[0].astype(np.float32) / 255.0, K, list(acts),
                                     seed=seed)[0]
        panels.append((imagined, "imagined after\n" + item["meta"]["actions"]
                       if imagined is not None else ""))
        for ax, (img, title) in zip(ax_row[:3], panels):
            ax.axis("off")
            if img is not None:
                ax.imshow(np.clip(img, 0, 255 if img.dtype == np.uint8 else 1))
                ax.set_title(title, fontsize=7)
        text = _wrap(item["question"]) + f"\n\ntruth: {item['answer']}"
        for model, by_id in answers.items():
            text += f"\n{model}: {_wrap(by_id.get(item['id'], '–'), 40, 1)}"
        ax_row[3].axis("off")
        ax_row[3].text(0, 0.5, text, fontsize=7, va="center", family="monospace")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
