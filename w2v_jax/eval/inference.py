"""Batched greedy answering of prompts by a Qwen2.5-VL (the model under evaluation).

:class:`VLMAnswerer` turns :class:`~w2v_jax.eval.formats.Prompt` s into responses with
``w2v_jax.generate.generate`` and records each prompt's cost. Shapes are kept few so jit compiles
rarely: prompts are grouped by their image count and patch count, sequence lengths are padded up
to a multiple of ``length_bucket`` and every batch is filled to ``batch_size`` by repeating its
last prompt (the copies' outputs are dropped). Decoding is greedy and stops at ``<|im_end|>``.

Per prompt the answer carries ``prompt_tokens`` (unpadded), ``generated_tokens`` (the stop token
included), ``flops`` (``cost.vlm_flops``) and ``wall_s`` (its batch's wall time divided by the
real prompts in it).

:meth:`VLMAnswerer.choice_logprobs` ranks instead of generating (the likelihood protocol of
lm-eval-harness' multiple-choice tasks): per prompt, the log-probability of each of its
``choices`` as the whole assistant answer (its tokens and ``<|im_end|>``), teacher-forced. It
tells what a model prefers between the options even when it never writes one of them out.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any, Sequence

import jax
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

    def encode(self, prompt, answer: str | None = None) -> dict:
        """The prompt ready to generate from, or with ``answer`` as the assistant turn (its
        ``loss_mask`` marks the answer's tokens and ``<|im_end|>``)."""
        messages = [{"role": "user", "content": prompt.text}]
        if getattr(prompt, "system", None):
            messages.insert(0, {"role": "system", "content": prompt.system})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return encode_conversation(messages,
                                   list(prompt.images), self.tokenizer,
                                   add_generation_prompt=answer is None,
                                   image_config=self.image_config)

    def _groups(self, encs: Sequence[dict]) -> list[list[int]]:
        """Indices of ``encs`` in batches of at most ``batch_size`` sharing image and patch
        counts, shortest first (few distinct shapes under jit)."""
        groups: dict = {}
        for k, e in enumerate(encs):
            key = (len(e["image_grid_thw"]), len(e["pixel_values"]))
            groups.setdefault(key, []).append(k)
        out = []
        for members in groups.values():
            members = sorted(members, key=lambda k: len(encs[k]["input_ids"]))
            out += [members[i:i + self.batch_size]
                    for i in range(0, len(members), self.batch_size)]
        return out

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
        answers: list = [None] * len(prompts)
        cfg = self.model.config
        bar = tqdm(total=len(prompts), desc="answer", leave=False, disable=not self.progress)
        for chunk in self._groups(encs):
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

    def choice_logprobs(self, prompts: Sequence[Any]) -> list[Ranked]:
        """Per prompt, the summed log-probability (nats) of each of its ``choices`` as the whole
        answer, in the order of ``prompt.choices``; one teacher-forced forward per choice."""
        from flax import nnx
        from tqdm import tqdm

        pairs = [(i, c) for i, p in enumerate(prompts) for c in p.choices]
        if any(not p.choices for p in prompts):
            raise ValueError("choice_logprobs: every prompt needs choices; "
                             f"{sum(not p.choices for p in prompts)} have none")
        encs = [self.encode(prompts[i], answer=c) for i, c in pairs]
        logp = np.zeros(len(pairs))
        walls = np.zeros(len(pairs))
        graphdef, state = nnx.split(self.model)
        bar = tqdm(total=len(pairs), desc="rank", leave=False, disable=not self.progress)
        for chunk in self._groups(encs):
            t0 = time.perf_counter()
            longest = max(len(encs[k]["input_ids"]) for k in chunk)
            pad_to = -(-longest // self.length_bucket) * self.length_bucket
            rows = [encs[k] for k in chunk] + [encs[chunk[-1]]] * (self.batch_size - len(chunk))
            batch = collate(rows, pad_to=pad_to, pad_id=self.ids["pad_token_id"])
            batch["position_ids"] = np.transpose(batch["position_ids"], (1, 0, 2))
            if len(batch["image_grid_thw"]) == 0:
                batch.pop("pixel_values"), batch.pop("image_grid_thw")
            batch = {k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask",
                                           "position_ids", "pixel_values", "image_grid_thw")
                     if k in batch}
            sums = np.asarray(_answer_logprob(graphdef, state, batch))
            logp[chunk] = sums[:len(chunk)]
            walls[chunk] = (time.perf_counter() - t0) / len(chunk)
            bar.update(len(chunk))
        bar.close()
        cfg = self.model.config
        out, k = [], 0
        for p in prompts:
            n = len(p.choices)
            span = range(k, k + n)
            flops = sum(cost.vlm_flops(cfg, len(encs[j]["input_ids"]), 0,
                                       np.asarray(encs[j]["image_grid_thw"]).tolist())["total"]
                        for j in span)
            out.append(Ranked(tuple(float(logp[j]) for j in span),
                              len(encs[k]["input_ids"]), flops, float(walls[list(span)].sum())))
            k += n
        self.calls += len(pairs)
        return out


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One prompt ranked: ``logprobs`` per choice (nats, summed over the answer's tokens and
    ``<|im_end|>``), ``tokens`` of the first choice's conversation, the ``flops`` and
    ``wall_s`` of all its forwards."""

    logprobs: tuple
    tokens: int
    flops: float
    wall_s: float


@partial(jax.jit, static_argnums=0)
def _answer_logprob(graphdef, state, batch):
    """``(B,)`` summed log-probs of each row's ``loss_mask`` tokens (an sft batch, dropout
    off)."""
    import jax.numpy as jnp
    from flax import nnx

    from w2v_jax.models.vlm.batch import batch_hidden_states, next_token_targets

    model = nnx.view(nnx.merge(graphdef, state), deterministic=True, raise_if_not_found=False)
    hidden = batch_hidden_states(model, batch)[:, :-1]
    targets, weights = next_token_targets(batch)
    logp = jax.nn.log_softmax(model.logits(hidden).astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(picked * weights, axis=1)
