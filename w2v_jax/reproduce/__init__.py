"""The main job end to end (``experiments.reproduce``): ``pipeline.run(config, workdir)`` runs
the ``stages`` (teacher, distill, base, sft, grpo, ablations, evaluate) and writes the
``report`` (rows, targets, tables, pictures) and the ``release`` (loadable small models)."""
