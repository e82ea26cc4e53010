r"""Evaluate a trained world model on held-out posed clips against the renderer's ground truth.

    python -m experiments.eval_world_model --workdir=RUN [--regression_workdir=RUN_REG] \
        [--data_dir=DATA] [--split=eval] [--steps=25 --method=euler --cfg=1.0 --seed=0] \
        [--results_json=results/world_model_small.json]

Pairs: one per held-out clip (scene seeds disjoint from training: the dataset's ``eval`` split):
source = the clip's first frame, target = the true render at the end of its trajectory. Splits:
``moves`` (forward / backward / left / right), ``turns`` (turn left / right), ``presets``
(multi-step), and ``all``. Methods: the diffusion model (``imagined``), the regression twin
(``regression``, when given), ``copy_source`` and ``warp`` (the source splatted with its true depth,
holes filled with the source pixel). Metrics per pair, then averaged (NaN-aware) per split:
PSNR / SSIM on the full image, on co-visible pixels (target pixels whose surface point is visible
in the source) and on object pixels; reprojection L1 (the view sampled at the source pixels' true
reprojections vs the source); object-box IoU and visibility agreement from the colour/instance
matcher (``metrics.match_boxes``).

Writes ``OUT/eval.json``, ``OUT/eval.md`` and ``OUT/sheet.png`` (source | imagined | regression |
warp | truth for a dozen trajectories; OUT defaults to ``WORKDIR/eval``), and when asked the
summary JSON (``--results_json``: per split ``psnr_covisible``, ``psnr_covisible_copy_source``,
``psnr_full``, ``ssim_full``, ``box_iou``, ``box_iou_regression``, ... ), ``--results_md`` and
``--results_sheet`` copies.
"""
from __future__ import annotations

import io
import json
import os
import time

import jax
import numpy as np
from absl import flags

from w2v_jax import actions, cli, fileio, geometry
from w2v_jax.models import world_model as wm
from w2v_jax.models.world_model import metrics
from w2v_jax.train.checkpoint import Checkpointer
from w2v_jax.train.runs import load_world_model, read_run_config

SPLITS = {"moves": ("forward", "backward", "left", "right"), "turns": ("turn_left", "turn_right")}

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the diffusion model.")
_REG = flags.DEFINE_string("regression_workdir", "", "Run directory of the regression twin.")
_DATA = flags.DEFINE_string("data_dir", "", "Posed-clip dataset (default: the run's data_dir); its "
                            "scene seeds must be disjoint from the run's training scenes.")
_SPLIT = flags.DEFINE_string("split", "eval", "Held-out split of the dataset.")
_STEPS = cli.integer("steps", 25, "Sampler steps.", lo=1, hi=10000)
_METHOD = flags.DEFINE_enum("method", "euler", ["euler", "heun"], "ODE sampler.")
_CFG = cli.real("cfg", 1.0, "Classifier-free guidance scale (1 = off).", lo=0.0, hi=100.0)
_SEED = cli.integer("seed", 0, "Sampling seed.", lo=0)
_BATCH = cli.integer("batch_size", 64, "Pairs per sampler call.", lo=1, hi=65536)
_MAX_PAIRS = cli.integer("max_pairs", 0, "Evaluate at most this many pairs (0 = all).", lo=0)
_NO_EMA = flags.DEFINE_bool("no_ema", False, "Use the raw instead of the EMA parameters.")
_OUT = flags.DEFINE_string("out", "", "Output directory (default WORKDIR/eval).")
_SHEET_ROWS = cli.integer("sheet_rows", 12, "Trajectories in the PNG sheet.", lo=1, hi=1000)
_RESULTS_JSON = flags.DEFINE_string("results_json", "", "Also write the summary JSON here.")
_RESULTS_MD = flags.DEFINE_string("results_md", "", "Also copy the markdown table here.")
_RESULTS_SHEET = flags.DEFINE_string("results_sheet", "", "Also copy the PNG sheet here.")


def split_of(kind: str) -> str:
    for name, kinds in SPLITS.items():
        if kind in kinds:
            return name
    return "presets"


def load_pairs(data_dir: str, split: str, max_pairs: int = 0) -> dict:
    """Source = first frame, target = last real frame of every clip of ``split``."""
    from w2v_jax.data.posed_clips import load_clips

    source = load_clips(data_dir, split)
    rows = []
    for i in range(len(source)):
        clip = source[i]
        last = int(clip["num_frames"]) - 1
        kind = clip["kind"].decode() if isinstance(clip["kind"], bytes) else str(clip["kind"])
        text = (clip["actions"].decode() if isinstance(clip["actions"], bytes)
                else str(clip["actions"]))
        rows.append(dict(
            kind=kind, split=split_of(kind), actions=text, scene_seed=int(clip["scene_seed"]),
            src=clip["frames"][0].astype(np.float32) / 255.0,
            tgt=clip["frames"][last].astype(np.float32) / 255.0,
            depth_src=clip["depth"][0].astype(np.float64),
            depth_tgt=clip["depth"][last].astype(np.float64),
            inst_src=clip["instance"][0].astype(np.int32),
            inst_tgt=clip["instance"][last].astype(np.int32),
            rel=geometry.relative_pose(clip["c2w"][0].astype(np.float64),
                                       clip["c2w"][last].astype(np.float64)).astype(np.float32),
            K=np.asarray(clip["K"], np.float32),
        ))
        if max_pairs and len(rows) >= max_pairs:
            break
    return rows


def check_trajectory_poses(rows) -> float:
    """Largest gap (metres / rotation entries) between each clip's stored end pose and the pose
    ``actions.integrate`` gives for its action text (what ``imagine`` conditions on)."""
    worst = 0.0
    for r in rows:
        rel = wm.trajectory_targets(actions.parse_actions(r["actions"]))[-1]
        worst = max(worst, float(np.abs(rel - r["rel"]).max()))
    return worst


def predict(model, rows, *, steps, method, cfg, seed, batch_size) -> np.ndarray:
    """Views (P, H, W, 3) in [0, 1] for every pair, in batches (fixed shapes: last batch padded)."""
    c = model.config
    h = c.image_size
    outs = []
    key = jax.random.key(seed)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        pad = batch_size - len(chunk)
        chunk = chunk + [chunk[-1]] * pad
        K = chunk[0]["K"]
        src = np.stack([r["src"] for r in chunk])[:, None] * 2.0 - 1.0
        rays_src = np.broadcast_to(geometry.plucker_rays(K, np.eye(4, dtype=np.float32), h, h),
                                   (len(chunk), 1, h, h, 6))
        rays_tgt = np.stack([geometry.plucker_rays(r["K"], r["rel"], h, h) for r in chunk])[:, None]
        out = wm.sample(model, src, rays_src, rays_tgt, key=jax.random.fold_in(key, start),
                        steps=steps, method=method, cfg_scale=cfg)
        outs.append(np.asarray(out)[: batch_size - pad, 0])
    return np.clip((np.concatenate(outs) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def pair_metrics(view, r, cov, obj) -> dict:
    """All metrics of one view (H, W, 3) of pair ``r``."""
    extra = {}
    for o in np.unique(r["inst_src"]):
        if o >= 0 and not np.any(r["inst_tgt"] == o):
            extra[int(o)] = r["src"][r["inst_src"] == o].mean(0)
    boxes = metrics.match_boxes(view, r["tgt"], r["inst_tgt"], extra_prototypes=extra)
    vis = boxes["visible_true"] | boxes["visible_pred"]
    return {
        "psnr_full": float(metrics.psnr_jit(view, r["tgt"])),
        "psnr_covisible": float(metrics.psnr_jit(view, r["tgt"], cov)),
        "psnr_object": float(metrics.psnr_jit(view, r["tgt"], obj)),
        "ssim_full": float(metrics.ssim_jit(view, r["tgt"])),
        "ssim_covisible": float(metrics.ssim_jit(view, r["tgt"], cov)),
        "reprojection_l1": metrics.reprojection_error(view, r["src"], r["depth_src"],
                                                      r["depth_tgt"], r["K"], r["rel"]),
        "box_iou": float(np.nanmean(boxes["iou"])) if np.any(boxes["visible_true"]) else np.nan,
        "visibility_agreement": (
            float(np.mean(boxes["visible_true"][vis] == boxes["visible_pred"][vis]))
            if np.any(vis) else np.nan),
    }


def evaluate(rows, views: dict) -> dict:
    """Per-split means of every metric of every method: ``{split: {metric_method: value}}``."""
    per_pair = []
    for i, r in enumerate(rows):
        cov = metrics.covisible_mask(r["depth_tgt"], r["depth_src"], r["K"], r["rel"])
        obj = r["inst_tgt"] >= 0
        entry = {"split": r["split"], "covisible_fraction": float(cov.mean())}
        for method, vs in views.items():
            for k, v in pair_metrics(vs[i], r, cov, obj).items():
                entry[k if method == "imagined" else f"{k}_{method}"] = v
        per_pair.append(entry)
    out = {}
    for split in ("moves", "turns", "presets", "all"):
        sel = [p for p in per_pair if split == "all" or p["split"] == split]
        if not sel:
            continue
        keys = [k for k in sel[0] if k != "split"]
        out[split] = {k: float(np.nanmean([p[k] for p in sel])) for k in keys}
        out[split]["num_pairs"] = len(sel)
    return out


METRIC_ROWS = (("psnr_full", "PSNR full"), ("psnr_covisible", "PSNR co-visible"),
               ("psnr_object", "PSNR objects"), ("ssim_full", "SSIM full"),
               ("ssim_covisible", "SSIM co-visible"), ("reprojection_l1", "reproj. L1"),
               ("box_iou", "box IoU"), ("visibility_agreement", "visibility agr."))


def markdown(results: dict, methods, header: str) -> str:
    lines = [header, ""]
    for split, res in results.items():
        lines.append(f"**{split}** ({res['num_pairs']} pairs, co-visible fraction "
                     f"{res['covisible_fraction']:.2f})")
        lines.append("")
        lines.append("| metric | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        for key, name in METRIC_ROWS:
            cells = []
            for m in methods:
                v = res.get(key if m == "imagined" else f"{key}_{m}", float("nan"))
                cells.append("n/a" if not np.isfinite(v)
                             else f"{v:.3f}" if abs(v) < 2 else f"{v:.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def sheet(rows, views: dict, num_rows: int, scale: int = 4) -> bytes:
    """PNG bytes: one trajectory per row, columns = source | each method | truth, labelled."""
    from PIL import Image, ImageDraw

    picks = []
    for split in ("moves", "turns", "presets"):
        idx = [i for i, r in enumerate(rows) if r["split"] == split]
        picks += idx[: max(1, num_rows // 3)]
    picks = picks[:num_rows]
    cols = ["source"] + [m for m in views if m not in ("copy_source",)] + ["truth"]
    h = rows[0]["src"].shape[0] * scale
    label_w, pad, top = 230, 4, 18
    width = label_w + len(cols) * (h + pad)
    img = Image.new("RGB", (width, top + len(picks) * (h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for c, name in enumerate(cols):
        draw.text((label_w + c * (h + pad), 2), name, fill=(0, 0, 0))
    for row, i in enumerate(picks):
        y = top + row * (h + pad)
        draw.text((2, y + 2), rows[i]["kind"], fill=(0, 0, 0))
        for line_no, part in enumerate(rows[i]["actions"].split("; ")):
            draw.text((2, y + 16 + 12 * line_no), part, fill=(60, 60, 60))
        tiles = [rows[i]["src"]] + [views[m][i] for m in cols[1:-1]] + [rows[i]["tgt"]]
        for c, tile in enumerate(tiles):
            t = Image.fromarray(np.round(np.clip(tile, 0, 1) * 255).astype(np.uint8))
            img.paste(t.resize((h, h), Image.NEAREST), (label_w + c * (h + pad), y))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def trained_steps(workdir: str) -> int | None:
    """Step of the newest checkpoint of ``workdir`` that restores (the weights evaluated)."""
    ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), async_save=False)
    try:
        ckpt.restore_raw()
        return ckpt.restored_step
    finally:
        ckpt.close()


def _validate(argv) -> dict:
    """Every flag and input (runs, dataset, held-out pairs, models) before anything is written."""
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise ValueError("--workdir is required")
    workdir = os.path.abspath(_WORKDIR.value)
    run_config = read_run_config(workdir)
    if _REG.value:
        read_run_config(os.path.abspath(_REG.value))
    data_dir = _DATA.value or run_config["data"]["data_dir"]
    out_dir = _OUT.value or os.path.join(workdir, "eval")
    for flag, path in (("--out", out_dir), ("--results_json", _RESULTS_JSON.value),
                       ("--results_md", _RESULTS_MD.value),
                       ("--results_sheet", _RESULTS_SHEET.value)):
        if path and os.path.isdir(path) != (flag == "--out") and os.path.exists(path):
            raise ValueError(f"{flag}={path}: must be a {'directory' if flag == '--out' else 'file'}")
    rows = load_pairs(data_dir, _SPLIT.value, _MAX_PAIRS.value)
    if not rows:
        raise ValueError(f"--split={_SPLIT.value} of {data_dir} holds no clips")
    gap = check_trajectory_poses(rows)
    if gap > 1e-3:
        raise ValueError(f"stored end poses differ from the integrated action text by {gap}")
    train_seeds = set()
    gen = os.path.join(run_config["data"]["data_dir"], "generation.json")
    if os.path.exists(gen):
        with open(gen) as f:
            train_seeds = set(json.load(f)["scene_seeds"].get("train", []))
    overlap = {r["scene_seed"] for r in rows} & train_seeds
    if overlap:
        raise ValueError(f"held-out split shares scene seeds with train: {sorted(overlap)[:5]}")
    print(f"{len(rows)} held-out pairs from {len({r['scene_seed'] for r in rows})} scenes "
          f"(disjoint from the run's {len(train_seeds)} training scenes)")
    models = {"imagined": load_world_model(workdir, use_ema=not _NO_EMA.value)}
    if _REG.value:
        models["regression"] = load_world_model(os.path.abspath(_REG.value),
                                                use_ema=not _NO_EMA.value)
    size = rows[0]["src"].shape[0]
    for name, model in models.items():
        if model.config.image_size != size:
            raise ValueError(f"the {name} model works at {model.config.image_size} px but the "
                             f"held-out clips are {size} px; evaluate on clips rendered at the "
                             "model's resolution")
    return dict(workdir=workdir, run_config=run_config, data_dir=data_dir, out_dir=out_dir,
                rows=rows, models=models)


def main(argv):
    t0 = time.time()
    with cli.checking():
        plan = _validate(argv)
    workdir, run_config, rows = plan["workdir"], plan["run_config"], plan["rows"]
    out_dir = plan["out_dir"]
    sampler_args = dict(steps=_STEPS.value, method=_METHOD.value, cfg=_CFG.value, seed=_SEED.value,
                        batch_size=_BATCH.value)
    t1 = time.time()
    views = {"imagined": predict(plan["models"]["imagined"], rows, **sampler_args)}
    sample_s = time.time() - t1
    if "regression" in plan["models"]:
        views["regression"] = predict(plan["models"]["regression"], rows, **sampler_args)
    views["copy_source"] = np.stack([r["src"] for r in rows])
    views["warp"] = np.stack([metrics.warp_baseline(r["src"], r["depth_src"], r["K"], r["rel"])
                              for r in rows])
    views["truth"] = np.stack([r["tgt"] for r in rows])
    results = evaluate(rows, views)
    methods = list(views)
    meta = dict(workdir=workdir, regression_workdir=_REG.value,
                data_dir=os.path.abspath(plan["data_dir"]), split=_SPLIT.value,
                model=run_config["model"], sampler=dict(
                    steps=_STEPS.value, method=_METHOD.value, cfg=_CFG.value, seed=_SEED.value),
                ema=not _NO_EMA.value, sampling_seconds=round(sample_s, 1),
                eval_seconds=round(time.time() - t0, 1), train_steps=trained_steps(workdir),
                regression_train_steps=trained_steps(_REG.value) if _REG.value else None,
                schedule_steps=run_config.get("total_steps"))
    summary = {"meta": meta, **results}
    header = (f"World model `{os.path.basename(workdir)}` on {results['all']['num_pairs']} "
              f"held-out pairs ({_METHOD.value}, {_STEPS.value} steps, cfg {_CFG.value}); 'truth' "
              "rows are the metric's ceiling (reprojection L1 of the true view is the sampling "
              "floor).")
    table = markdown(results, methods, header)
    png = sheet(rows, {k: v for k, v in views.items() if k != "truth"}, _SHEET_ROWS.value)
    outputs = {os.path.join(out_dir, "eval.json"): json.dumps(summary, indent=1),
               os.path.join(out_dir, "eval.md"): table + "\n",
               os.path.join(out_dir, "sheet.png"): png}
    for path, key in ((_RESULTS_JSON.value, "eval.json"), (_RESULTS_MD.value, "eval.md"),
                      (_RESULTS_SHEET.value, "sheet.png")):
        if path:
            outputs[path] = outputs[os.path.join(out_dir, key)]
    for path, data in outputs.items():
        fileio.atomic_write(path, data)
    print(table)


if __name__ == "__main__":
    cli.run(main)
