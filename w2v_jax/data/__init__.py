"""Datasets: TFDS ArrayRecord writing/reading (``array_record``), Grain pipelines
(``pipeline``) and the toy LM's synthetic dataset (``synthetic``)."""
