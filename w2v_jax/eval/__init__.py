"""Evaluation: procedural SAT-/VSI-/MindCube-like suites, official scoring, real-benchmark
loaders, the blind baseline and the MindJourney test-time search, with cost accounting.

- ``scoring``: ``mra``, ``parse_number``, ``sat_correct``, ``extract_choice``, ``circular``.
- ``suites``: the procedural suites (``build_suite``); ``store``: frozen suites on disk.
- ``formats``: prompts and scoring per benchmark; ``loaders``: SAT / VSI-Bench / MindCube files
  and the distillation eval split.
- ``inference.VLMAnswerer``: batched greedy answers of any Qwen2.5-VL of this library.
- ``runner``: ``run``, ``aggregate``, ``hygiene``, ``leaks``; ``report``: the output files.
- ``test_time.MindJourney``: the test-time search baseline; ``cost``: analytic FLOPs.

The library takes a model and a tokenizer (and, for the search, a teacher) as arguments; it
never loads a concrete checkpoint itself (``experiments/evaluate.py`` does).
"""
