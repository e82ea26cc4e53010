"""Loading trained runs: the image bounds a VLM directory was trained with."""
import json

import pytest

from w2v_jax.processing.image import ImageConfig
from w2v_jax.train import runs


def _hf_dir(path, preprocessor=None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (path / "model.safetensors").write_bytes(b"")
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(preprocessor)
    return str(path)


def test_hf_directory_image_bounds_come_from_its_preprocessor_config(tmp_path):
    flat = _hf_dir(tmp_path / "a", json.dumps({"min_pixels": 3136, "max_pixels": 12544}))
    assert runs.vlm_image_config(flat) == ImageConfig(min_pixels=3136, max_pixels=12544)
    nested = _hf_dir(tmp_path / "b", json.dumps({"size": {"shortest_edge": 784,
                                                          "longest_edge": 6272}}))
    assert runs.vlm_image_config(nested) == ImageConfig(min_pixels=784, max_pixels=6272)
    assert runs.vlm_image_config(_hf_dir(tmp_path / "c")) == ImageConfig()


def test_bad_preprocessor_config_and_non_model_directories_are_named(tmp_path):
    bad = _hf_dir(tmp_path / "bad", "{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json: invalid JSON"):
        runs.vlm_image_config(bad)
    with pytest.raises(ValueError, match="no such directory"):
        runs.vlm_image_config(str(tmp_path / "missing"))
