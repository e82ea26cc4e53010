"""Training launcher: ``python -m experiments.train --config=experiments/configs/NAME.py[:ARG]
--workdir=DIR [--config.field=value ...] [--multihost]``.

All logic lives in ``w2v_jax.train.run.train_from_config`` (call it from a notebook or script
with the same config). A workdir holding checkpoints resumes automatically. ``--multihost`` joins
a multi-process job with ``jax.distributed.initialize()`` first (TPU pods, SLURM / Open MPI GPU
clusters: run the same command on every host).

``--cpu_devices=N`` splits a CPU host into N XLA devices before JAX starts
(``jax_num_cpu_devices``). XLA:CPU runs each device's work on its own thread, so on a 2-core box
``--cpu_devices=2 --config.mesh.data=2`` (data parallel) runs the ``small`` world model's step
about twice as fast as one device does.

Config errors, and a workdir holding a run of another model / loss / data, fail in one line (exit
status 2) before anything is built or written. A non-finite loss or gradient norm stops the run
with an error naming the step and metric, and no checkpoint is written from that step on; a
damaged newest checkpoint is skipped for the newest one that restores.
"""
from absl import flags, logging
from ml_collections import config_flags

from w2v_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config(arg) file[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
_CPU_DEVICES = cli.integer(
    "cpu_devices", 0, "> 0: split the CPU into this many XLA devices before JAX starts "
    "(jax_num_cpu_devices); pair it with --config.mesh.data=N for data parallelism.", lo=0,
    hi=4096)


def main(argv):
    with cli.checking():
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments: {argv[1:]}")
        if _CONFIG.value is None or not _WORKDIR.value:
            raise ValueError("--config and --workdir are required")
    if _CPU_DEVICES.value:  # before any JAX operation starts the backends (JAX raises otherwise)
        import jax

        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    if _MULTIHOST.value:
        from w2v_jax.sharding import initialize_multihost

        initialize_multihost()
    from w2v_jax.train import run

    with cli.checking():  # the whole config, and the workdir's saved one, before any model
        run.validate_config(_CONFIG.value)
        run.check_resume_config(_CONFIG.value, _WORKDIR.value)
    run.train_from_config(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
