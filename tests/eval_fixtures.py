"""Tiny tokenizer + random Qwen2.5-VL pairs and tiny suites for the evaluation tests.

``tiny_vlm()`` returns ``(model, tokenizer)``: a byte-level BPE trained here
(``processing.train_tokenizer``) and a random model with ``vlm_fixtures.tiny_hf_config``'s
shapes whose vocabulary and special-token ids are the tokenizer's.
"""

from __future__ import annotations

import functools

import vlm_fixtures as vf
from flax import nnx

from w2v_jax import sharding
from w2v_jax.models.vlm.config import VLMConfig, fit_to_tokenizer
from w2v_jax.models.vlm.model import Qwen2_5_VL
from w2v_jax.processing import train_tokenizer

CORPUS = ["rotated left and moved forward", "turn right by 24 degrees", "look straight",
          "closer further left right back", "Output: 3,5,2,9,0,1", "A. B. C. D. answer is"] * 20


@functools.lru_cache(maxsize=None)
def tiny_vlm(seed: int = 0):
    tokenizer, ids = train_tokenizer(CORPUS, 400)
    config = VLMConfig.from_hf_dict(fit_to_tokenizer(vf.tiny_hf_config().to_dict(),
                                                     len(tokenizer), ids))
    model = sharding.create_unsharded(lambda: Qwen2_5_VL(config, rngs=nnx.Rngs(seed)))
    return model, tokenizer
