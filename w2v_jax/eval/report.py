"""Evaluation outputs: results.json, results.md (the table), answers.jsonl and sheet.png.

``write_outputs(out_dir, results, records, items)`` writes all four into ``out_dir`` through a
temporary sibling directory renamed into place, so an interrupted run leaves no half-written
output and an older result set is replaced only by a complete one. ``out_dir`` must be missing,
empty or an earlier output (holding results.json): nothing else is ever replaced.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(results: dict) -> str:
    """One table per evaluated run (model, blind, test-time) and suite: category, n, score ± SE,
    chance, and the suite's summary line."""
    lines = []
    for run, suites in results["runs"].items():
        for suite, res in suites.items():
            lines += [f"### {run} — {suite} ({res['format']})", "",
                      "| category | n | score % | ± SE | chance % | circular % |",
                      "|---|---|---|---|---|---|"]
            for cat, e in res["categories"].items():
                lines.append(f"| {cat} | {e['n']} | {_pct(e['score'])} | {_pct(e['se'])} | "
                             f"{_pct(e['chance'])} | {_pct(e.get('circular'))} |")
            summary = ", ".join(f"{k} {_pct(v) if isinstance(v, float) else v}"
                                for k, v in res["summary"].items() if not isinstance(v, dict))
            lines += ["", f"Summary: {summary}", ""]
    for run, c in results.get("cost", {}).items():
        lines.append(f"Cost per question ({run}): " + ", ".join(
            f"{k} {v:.4g}" for k, v in c.items()))
    if results.get("leaks"):
        lines += ["", "Language-prior leaks (blind model above chance):"]
        lines += [f"- {x['suite']}/{x['category']}: blind {_pct(x['blind'])} % vs chance "
                  f"{_pct(x['chance'])} %" for x in results["leaks"]]
    return "\n".join(lines) + "\n"


def sheet(items: Sequence[dict], records: Sequence[dict], rows: int = 12, tile: int = 96):
    """A PIL image: ``rows`` items (spread over suites and categories), up to 4 of each item's
    images, then its question (shortened), the model's answer and the truth."""
    from PIL import Image, ImageDraw

    from w2v_jax.processing.image import load_image

    by_id = {}
    for r in records:
        if r["variant"] == "plain":
            by_id.setdefault(r["id"], r)
    seen, picks = set(), []
    for item in items:  # one per category first, then fill
        key = (item["suite"], item["category"])
        if key not in seen and item["id"] in by_id:
            seen.add(key)
            picks.append(item)
    picks += [i for i in items if i not in picks and i["id"] in by_id]
    picks = picks[:rows]
    text_w, pad = 520, 4
    canvas = Image.new("RGB", (4 * (tile + pad) + text_w, max(1, len(picks)) * (tile + pad)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for row, item in enumerate(picks):
        y = row * (tile + pad)
        for k, im in enumerate(item["images"][:4]):
            arr = load_image(im)
            canvas.paste(Image.fromarray(arr).resize((tile, tile)), (k * (tile + pad), y))
        r = by_id[item["id"]]
        q = item["question"].replace("\n", " ")
        q = q if len(q) <= 150 else q[:147] + "..."
        x = 4 * (tile + pad)
        chunks = [q[i:i + 75] for i in range(0, len(q), 75)][:3]
        lines = chunks + [f"model: {r['response'][:60]!r}",
                          f"truth: {item['answer'][:60]}  score {r['score']:.2f}"]
        for j, line in enumerate(lines):
            draw.text((x, y + 2 + 14 * j), line, fill="black")
    return canvas


def write_outputs(out_dir: str, results: dict, records: Sequence[dict], items: Sequence[dict],
                  sheet_rows: int = 12) -> None:
    from w2v_jax import fileio

    fileio.check_replaceable(out_dir, "results.json", "--out")
    with fileio.atomic_dir(out_dir) as tmp:
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=_json_default)
        with open(os.path.join(tmp, "results.md"), "w") as f:
            f.write(markdown(results))
        with open(os.path.join(tmp, "answers.jsonl"), "w") as f:
            for r in records:
                f.write(json.dumps(r, default=_json_default, ensure_ascii=False) + "\n")
        sheet(items, records, sheet_rows).save(os.path.join(tmp, "sheet.png"))


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
