"""Qwen2.5-VL in Flax NNX (the student VLM of World2VLM).

``Qwen2_5_VL`` is the model, ``VLMConfig`` (with ``TextConfig``, ``VisionConfig``) its static
config; ``w2v_jax.hf.load_vlm`` / ``save_vlm`` read and write Hugging Face checkpoints.
"""

from w2v_jax.models.vlm.config import TextConfig, VisionConfig, VLMConfig
from w2v_jax.models.vlm.model import Qwen2_5_VL
from w2v_jax.models.vlm.text import KVCache

__all__ = ["Qwen2_5_VL", "VLMConfig", "TextConfig", "VisionConfig", "KVCache"]
