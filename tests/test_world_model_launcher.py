"""World-model training through the launcher, reload, and the evaluation script (slow)."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from w2v_jax.train.runs import load_world_model
from world_model_fixtures import batch_of


@pytest.mark.slow
def test_launcher_tiny_run_and_reload(tmp_path):
    from w2v_jax.data.posed_clips import write_clips
    from w2v_jax.sim.clips import ClipConfig
    from experiments.configs import world_model as wm_configs
    from w2v_jax.train.run import train_from_config

    data = write_clips(str(tmp_path / "clips"), 2, 0, ClipConfig(resolution=16, supersample=1),
                       eval_fraction=0.5, progress=False)
    config = wm_configs.get_config("tiny")
    config.data.data_dir = data["path"]
    config.total_steps = 4
    config.progress = False
    trainer = train_from_config(config, str(tmp_path / "run"))
    assert trainer.step == 4
    model = load_world_model(str(tmp_path / "run"))
    ema = trainer.ema_model()
    b = batch_of(2)
    t = jnp.full((2,), 0.3)
    np.testing.assert_allclose(
        np.asarray(model(b["source"], b["plucker_src"], b["target"], b["plucker_tgt"], t)),
        np.asarray(ema(b["source"], b["plucker_src"], b["target"], b["plucker_tgt"], t)), atol=1e-5)
    assert os.path.exists(tmp_path / "run" / "metrics.jsonl")

    # the evaluation script on the held-out split: acceptance keys per split, the steps it read
    out = tmp_path / "eval"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-m", "experiments.eval_world_model", f"--workdir={tmp_path / 'run'}",
         f"--regression_workdir={tmp_path / 'run'}", f"--data_dir={data['path']}",
         "--steps=2", "--cfg=2.0", "--batch_size=4", "--max_pairs=6", "--sheet_rows=2",
         f"--out={out}", f"--results_json={tmp_path / 'results.json'}"],
        cwd=root, check=True, capture_output=True)
    with open(tmp_path / "results.json") as f:
        summary = json.load(f)
    assert summary["meta"]["train_steps"] == summary["meta"]["regression_train_steps"] == 4
    assert summary["all"]["num_pairs"] == 6
    keys = ("psnr_covisible", "psnr_covisible_copy_source", "psnr_full", "ssim_full", "box_iou",
            "box_iou_regression")
    for split in ("moves", "turns", "presets"):
        assert set(keys) <= set(summary.get(split, keys)), split
    assert all(np.isfinite(summary["all"][k]) for k in keys), summary["all"]
    assert summary["all"]["psnr_full_truth"] == 100.0  # the truth is the metric's ceiling
    assert os.path.exists(out / "sheet.png") and os.path.exists(out / "eval.md")
