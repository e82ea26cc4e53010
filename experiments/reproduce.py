"""The main job end to end: ``python -m experiments.reproduce
--config=experiments/configs/reproduce.py[:small|demo|tiny] --workdir=DIR [--cpu_devices=2]
[--config.stages=sft,grpo,evaluate,report] [--config.FIELD=value ...]``.

Stages (``w2v_jax.reproduce.stages``), each writing ``DIR/<stage>/``: teacher (posed clips + the
world model), distill (the distillation set imagined by the world model, its label fidelity, the
renderer-teacher set and the forward-only / inverse-only subsets), base (static perception set,
tokenizer, base VLM), sft, grpo, ablations, evaluate (held-out suites; every model, the test-time
search, the blind baseline), report (table, JSON, pictures; ``results/`` for ``small``), release
(the small models as loadable directories). A finished stage is skipped on rerun; a killed one
resumes (training from checkpoints, builders from finished scenes, evaluation per model).

Every stage can also be run with the single-purpose launchers: ``data_gen.render_clips``,
``experiments.train`` (``world_model.py:small``, ``vlm.py:base_small`` / ``sft_small`` /
``grpo_small``), ``data_gen.build_perception``, ``data_gen.build_supervision``,
``data_gen.build_eval_suites``, ``experiments.evaluate``.

Config errors, unknown stages and a DIR holding a run of another config fail in one line (exit
status 2) before anything is written.
"""
import os

from absl import flags, logging
from ml_collections import config_flags

from w2v_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiments/configs/reproduce.py:ARG (small, demo, tiny).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline directory (one sub-directory per "
                               "stage; reruns resume).")
_CPU_DEVICES = cli.integer(
    "cpu_devices", 0, "> 0: split the CPU into this many XLA devices before JAX starts "
    "(data-parallel training over the cores of a small box).", lo=0, hi=4096)


def main(argv):
    with cli.checking():
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments: {argv[1:]}")
        if _CONFIG.value is None or not _WORKDIR.value:
            raise ValueError("--config and --workdir are required (see --help)")
    if _CPU_DEVICES.value:  # before any JAX operation starts the backends
        import jax

        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax / TFDS log every file at INFO
    from w2v_jax.reproduce import pipeline

    with cli.checking():
        pipeline.check_config(_CONFIG.value, _WORKDIR.value)
    pipeline.run(_CONFIG.value, _WORKDIR.value)
    paths = pipeline.results_paths(_CONFIG.value, _WORKDIR.value)

    if os.path.isfile(paths["md"]):
        with open(paths["md"]) as f:
            print(f.read())
        print("pictures:", ", ".join(paths[k] for k in ("bars", "curve", "sheet")))


if __name__ == "__main__":
    cli.run(main)
