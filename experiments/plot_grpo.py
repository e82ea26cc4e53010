"""Reward curve of a GRPO run: ``python -m experiments.plot_grpo --workdir=RL --out=curve.png``.

Plots the per-iteration training reward (mean ``overall`` of the rollouts, and its moving average)
and the validation reward (``val_reward``) from ``WORKDIR/metrics.jsonl``. Needs matplotlib (the
``plot`` extra).
"""
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
    from w2v_jax.reproduce.report import plot_reward_curve
    from w2v_jax.train.metrics import read_metrics

    try:
        plot_reward_curve(read_metrics(_WORKDIR.value), _OUT.value, title=_TITLE.value,
                          smooth=_SMOOTH.value)
    except ValueError as e:
        raise app.UsageError(f"{_WORKDIR.value}/metrics.jsonl: {e}") from e


if __name__ == "__main__":
    app.run(main)
