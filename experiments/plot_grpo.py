"""Reward curve of a GRPO run: ``python -m experiments.plot_grpo --workdir=RL --out=curve.png``.

Plots the per-iteration training reward (mean ``overall`` of the rollouts, and its moving average)
and the validation reward (``val_reward``) from ``WORKDIR/metrics.jsonl``. Needs matplotlib (the
``plot`` extra).
"""
import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "GRPO run directory (metrics.jsonl).")
_OUT = flags.DEFINE_string("out", None, "PNG to write.")
_TITLE = flags.DEFINE_string("title", "GRPO reward", "Figure title.")
_SMOOTH = flags.DEFINE_integer("smooth", 5, "Moving-average window (iterations).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value or not _OUT.value:
        raise app.UsageError("--workdir and --out are required")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from w2v_jax.train.metrics import read_metrics

    rows = read_metrics(_WORKDIR.value)
    train = [(r["step"], r["reward"]) for r in rows if "reward" in r]
    val = [(r["step"], r["val_reward"]) for r in rows if "val_reward" in r]
    if not train:
        raise app.UsageError(f"{_WORKDIR.value}/metrics.jsonl has no training rewards")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    steps, reward = np.array(train).T
    ax.plot(steps, reward, color="tab:blue", alpha=0.35, label="rollout reward (per iteration)")
    k = max(1, min(_SMOOTH.value, len(reward)))
    smooth = np.convolve(reward, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1:], smooth, color="tab:blue", label=f"rollout reward ({k}-iter mean)")
    if val:
        vs, vr = np.array(val).T
        ax.plot(vs, vr, "o-", color="tab:orange", label="validation reward (eval split)")
    ax.set_xlabel("GRPO iteration")
    ax.set_ylabel("reward (overall)")
    ax.set_title(_TITLE.value)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = _OUT.value + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, _OUT.value)


if __name__ == "__main__":
    app.run(main)
