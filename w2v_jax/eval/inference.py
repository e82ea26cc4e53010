"""Batched greedy answering of prompts by a Qwen2.5-VL (the model under evaluation).

:class:`VLMAnswerer` turns :class:`~w2v_jax.eval.formats.Prompt` s into responses with
``w2v_jax.generate.generate`` and records each prompt's cost. Shapes are kept few so jit compiles
rarely: prompts are grouped by their image count and patch count, sequence lengths are padded up
to a multiple of ``length_bucket`` and every batch is filled to ``batch_size`` by repeating its
last prompt (the copies' outputs are dropped). Decoding is greedy and stops at ``<|im_end|>``.

Per prompt the answer carries ``prompt_tokens`` (unpadded), ``generated_tokens`` (the stop token
included), ``flops`` (``cost.vlm_flops``) and ``wall_s`` (its batch's wall time divided by the
real prompts in it).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from w2v_jax.eval import cost
from w2v_jax.generate import SamplingConfig, generate
from w2v_jax.processing.chat import collate, encode_conversation
from w2v_jax.processing.image import ImageConfig
from w2v_jax.processing.tokenizer import special_token_ids


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    generated_tokens: int
    flops: float
    wall_s: float


class VLMAnswerer:
    """``answerer(prompts, max_new_tokens) -> [Answer]`` for a model and its tokenizer.

    ``image_config``: the processor settings (min/max pixels of the model's
    preprocessor_config.json). ``calls`` counts the prompts answered so far (one VLM call each).
    """

    def __init__(self, model, tokenizer, image_config: ImageConfig = ImageConfig(),
                 batch_size: int = 8, length_bucket: int = 64, progress: bool = False):
        if batch_size < 1 or length_bucket < 1:
            raise ValueError(f"batch_size and length_bucket must be >= 1, got {batch_size}, "
                             f"{length_bucket}")
        self.model, self.tokenizer, self.image_config = model, tokenizer, image_config
        self.batch_size, self.length_bucket, self.progress = batch_size, length_bucket, progress
        self.ids = special_token_ids(tokenizer)
        self.calls = 0

    def encode(self, prompt) -> dict:
        messages = [{"role": "user", "content": prompt.text}]
        if getattr(prompt, "system", None):
            messages.insert(0, {"role": "system", "content": prompt.system})
        return encode_conversation(messages,
                                   list(prompt.images), self.tokenizer,
                                   add_generation_prompt=True, image_config=self.image_config)

    def _run(self, encs: Sequence[dict], max_new_tokens: int) -> list[tuple[str, int]]:
        longest = max(len(e["input_ids"]) for e in encs)
        pad_to = -(-longest // self.length_bucket) * self.length_bucket
        real = len(encs)
        encs = list(encs) + [encs[-1]] * (self.batch_size - real)
        batch = collate(encs, pad_to=pad_to, pad_id=self.ids["pad_token_id"], padding_side="left")
        has_images = len(batch["image_grid_thw"]) > 0
        out = generate(
            self.model, batch["input_ids"], batch["attention_mask"],
            pixel_values=batch["pixel_values"] if has_images else None,
            image_grid_thw=batch["image_grid_thw"] if has_images else None,
            position_ids=batch["position_ids"], rope_deltas=batch["rope_deltas"],
            config=SamplingConfig(max_new_tokens=int(max_new_tokens), greedy=True,
                                  stop_tokens=(self.ids["eos_token_id"],),
                                  pad_id=self.ids["pad_token_id"]))
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        return [(self.tokenizer.decode(tokens[b, :lengths[b]].tolist(), skip_special_tokens=True),
                 int(lengths[b])) for b in range(real)]

    def __call__(self, prompts: Sequence[Any], max_new_tokens: int) -> list[Answer]:
        from tqdm import tqdm

        encs = [self.encode(p) for p in prompts]
        groups: dict = {}
        for k, e in enumerate(encs):
            key = (len(e["image_grid_thw"]), len(e["pixel_values"]))
            groups.setdefault(key, []).append(k)
        answers: list = [None] * len(prompts)
        cfg = self.model.config
        bar = tqdm(total=len(prompts), desc="answer", leave=False, disable=not self.progress)
        for members in groups.values():
            members = sorted(members, key=lambda k: len(encs[k]["input_ids"]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                t0 = time.perf_counter()
                results = self._run([encs[k] for k in chunk], max_new_tokens)
                wall = (time.perf_counter() - t0) / len(chunk)
                for k, (text, n_gen) in zip(chunk, results):
                    n_prompt = len(encs[k]["input_ids"])
                    grids = np.asarray(encs[k]["image_grid_thw"]).tolist()
                    flops = cost.vlm_flops(cfg, n_prompt, n_gen, grids)["total"]
                    answers[k] = Answer(text, n_prompt, n_gen, flops, wall)
                bar.update(len(chunk))
        bar.close()
        self.calls += len(prompts)
        return answers
