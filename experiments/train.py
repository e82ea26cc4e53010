"""Training launcher: ``python -m experiments.train --config=experiments/configs/NAME.py[:ARG]
--workdir=DIR [--config.field=value ...] [--multihost]``.

All logic lives in ``w2v_jax.train.run.train_from_config`` (call it from a notebook or script
with the same config). A workdir holding checkpoints resumes automatically. ``--multihost`` joins
a multi-process job with ``jax.distributed.initialize()`` first (TPU pods, SLURM / Open MPI GPU
clusters: run the same command on every host).
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config(arg) file[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config and --workdir are required")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    if _MULTIHOST.value:
        from w2v_jax.train.sharding import initialize_multihost

        initialize_multihost()
    from w2v_jax.train.run import train_from_config

    train_from_config(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
