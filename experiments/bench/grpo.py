"""One GRPO iteration, JAX (``w2v_jax.train.grpo``) vs TRL's ``GRPOTrainer`` (torch, CPU, no vLLM).

    python -m experiments.bench.grpo [--prompts=4 --n=4 --new_tokens=32 --rounds=3 ...]

Same model for both: a random Qwen2.5-VL (text hidden 256, 4 layers, 4 heads / 2 KV heads, MLP
768; vision hidden 128, depth 4; the ``small`` preset of ``experiments/configs/vlm.py``) with a
1k BPE vocabulary, written once with ``save_vlm`` and loaded by both (``load_vlm`` /
``from_pretrained``), fp32. The same ``prompts`` prompts, each with two 112x112 images (16 tokens
each) and a question; ``n`` responses per prompt of at most ``new_tokens`` tokens (temperature 1,
top_p 1, stop at ``<|im_end|>``); one optimizer update (AdamW) over all responses; KL to a frozen
reference with beta 0.01, clip 0.2 / 0.3, token-mean loss (TRL ``loss_type="dapo"``); the reward is
the length of the response (any cheap function: both call it on the decoded strings).

* JAX: ``GRPOLoop.iteration``: ``generate`` (KV cache, jitted) -> reward -> old and reference
  log-probs by the training forward -> ``Trainer.train_step``. Seconds per iteration split into
  ``rollout_s`` / ``logprob_s`` / ``update_s``; ``rollout_tokens_per_s`` = generated tokens /
  rollout seconds.
* TRL: ``GRPOTrainer.train`` with ``per_device_train_batch_size = prompts * n`` and
  ``num_generations = n``: one step = HF ``generate`` + reference log-probs + one update (TRL
  skips the separate old log-probs when each rollout gets one update). Seconds per step from
  the trainer's step callbacks, after one warm-up step.

TRL needs a processor, and ``AutoProcessor`` for Qwen2.5-VL insists on torchvision, which has no
wheel beside torch 2.13.0+cpu; the bench builds ``Qwen2_5_VLProcessor`` from the PIL image
processor and our tokenizer, with the processor's class check disabled (research/grpo.md §7).
TRL trains its steps in one ``train()`` call, so JAX runs ``rounds`` iterations before it and
``rounds`` after it (the CPU may be shared). Prints one JSON line: the medians, ``grpo_speedup`` =
TRL seconds / JAX seconds, the mean response length of each, the load average.
"""
import json
import os
import tempfile
import time

import jax
import numpy as np
import optax
from absl import app, flags
from PIL import Image

_PROMPTS = flags.DEFINE_integer("prompts", 4, "Prompts per rollout.")
_N = flags.DEFINE_integer("n", 4, "Responses per prompt.")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Maximum tokens per response.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating JAX / TRL rounds (one timed step each).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights, images and sampling.")

QUESTION = ("How did the camera move between the first and the second image? Answer with the "
            "actions, e.g. move forward 1.5 meters.")


def build_model(directory: str):
    """Random small Qwen2.5-VL + a BPE tokenizer, saved as a Hugging Face directory."""
    import ml_collections

    from experiments.configs import vlm as vlm_configs
    from w2v_jax import sharding
    from w2v_jax.hf import save_vlm
    from w2v_jax.models.builders import vlm_from_config
    from w2v_jax.processing import special_token_ids, train_tokenizer

    corpus = [QUESTION, "move forward 1.5 meters; turn left 30 degrees"] * 50
    tok, ids = train_tokenizer(corpus, 1024)
    hf_config = json.loads(json.dumps(vlm_configs.PRESETS["small"]))
    hf_config["text_config"].update(vocab_size=len(tok), eos_token_id=ids["eos_token_id"],
                                    pad_token_id=ids["pad_token_id"])
    hf_config.update({k: ids[k] for k in ("image_token_id", "video_token_id",
                                          "vision_start_token_id", "vision_end_token_id")})
    ctor = vlm_from_config(ml_collections.ConfigDict(dict(hf_config=hf_config, seed=_SEED.value)))
    model = sharding.create_unsharded(ctor)
    save_vlm(model, None, directory, generation_config={"eos_token_id": ids["eos_token_id"]})
    tok.save_pretrained(directory)
    return tok, special_token_ids(tok)


def make_images(rng, count):
    return [[Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
             for _ in range(2)] for _ in range(count)]


def jax_loop(path, tok, ids, images):
    """A ``GRPOLoop`` over the saved model and its prompt batch (grpo_pipeline layout)."""
    from w2v_jax.hf import load_vlm
    from w2v_jax.processing import collate, encode_conversation
    from w2v_jax.train.grpo import GRPOConfig, GRPOLoop, reference_state
    from w2v_jax.train.trainer import Trainer

    model, _ = load_vlm(path)
    msgs = [{"role": "user", "content": "<image><image>" + QUESTION}]
    encoded = [encode_conversation(msgs, pair, tok, add_generation_prompt=True)
               for pair in images]
    batch = collate(encoded, pad_id=ids["pad_token_id"], padding_side="left",
                    patches_per_example=128, images_per_example=2)
    batch["ground_truth"] = np.asarray(["{}"] * len(images))
    batch["task_type"] = np.asarray(["bench"] * len(images))
    config = GRPOConfig(n=_N.value, rollout_prompts=len(images),
                        global_batch_prompts=len(images), max_response_length=_NEW.value)
    trainer = Trainer(model, optax.adamw(1e-6, weight_decay=0.01), "grpo")
    loop = GRPOLoop(trainer, reference_state(model, lora=False), config,
                    stop_tokens=(ids["eos_token_id"],), pad_id=ids["pad_token_id"],
                    decode=lambda rows: tok.batch_decode(rows, skip_special_tokens=True),
                    reward_fn=length_reward_dicts, seed=_SEED.value)
    return loop, batch


def length_reward_dicts(inputs):
    return [{"overall": float(len(x["response"]))} for x in inputs]


def trl_trainer(path, tok, images, workdir):
    """TRL's GRPOTrainer on the same model and prompts (CPU, no vLLM)."""
    import datasets
    import torch
    import transformers
    from transformers import (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              TrainerCallback)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)
    from trl import GRPOConfig, GRPOTrainer

    # AutoProcessor / the class check want torchvision, which cannot be installed beside torch
    transformers.processing_utils.ProcessorMixin.check_argument_for_proper_class = (
        lambda self, name, arg: None)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280),
        tokenizer=tok, video_processor=None, chat_template=tok.chat_template)
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                     {"type": "text", "text": QUESTION}]}],
             "images": pair} for pair in images]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    rollout = len(images) * _N.value
    args = GRPOConfig(
        output_dir=workdir, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
        logging_steps=1, num_generations=_N.value, per_device_train_batch_size=rollout,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=_NEW.value, temperature=1.0, top_p=1.0, beta=0.01,
        loss_type="dapo", epsilon=0.2, epsilon_high=0.3, learning_rate=1e-6,
        weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0,
        max_steps=2 * _ROUNDS.value + 2, seed=_SEED.value, dataloader_num_workers=0,
        disable_tqdm=True)

    def length_reward(completions, **kwargs):
        return [float(len(c if isinstance(c, str) else c[-1]["content"])) for c in completions]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens, self._start = [], [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    timer = Timer()
    ds = datasets.Dataset.from_list(rows * (2 * _ROUNDS.value + 2))
    trainer = GRPOTrainer(model=model, reward_funcs=length_reward, args=args, train_dataset=ds,
                          processing_class=processor, callbacks=[timer])
    return trainer, timer


def main(argv):
    del argv
    import torch

    torch.manual_seed(_SEED.value)
    rng = np.random.default_rng(_SEED.value)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model")
        tok, ids = build_model(path)
        images = make_images(rng, _PROMPTS.value)
        loop, prompts = jax_loop(path, tok, ids, images)
        loop.iteration(prompts, 0)  # compile
        trainer, timer = trl_trainer(path, tok, images, os.path.join(tmp, "trl"))
        jax_rows = []
        # TRL trains its max_steps in one call; interleave by running JAX rounds around it
        for i in range(_ROUNDS.value):
            jax_rows.append(loop.iteration(prompts, i + 1))
        trainer.train()
        for i in range(_ROUNDS.value):
            jax_rows.append(loop.iteration(prompts, _ROUNDS.value + i + 1))
    trl_s = float(np.median(timer.times[1:]))
    trl_len = [r["completions/mean_length"] for r in trainer.state.log_history
               if "completions/mean_length" in r]
    med = {k: float(np.median([r[k] for r in jax_rows]))
           for k in ("rollout_s", "logprob_s", "update_s", "rollout_tokens_per_s",
                     "response_length")}
    jax_s = med["rollout_s"] + med["logprob_s"] + med["update_s"]
    print(json.dumps({
        "prompts": _PROMPTS.value, "n": _N.value, "max_new_tokens": _NEW.value,
        "jax_iteration_s": jax_s, "jax_rollout_s": med["rollout_s"],
        "jax_logprob_s": med["logprob_s"], "jax_update_s": med["update_s"],
        "rollout_tokens_per_s": med["rollout_tokens_per_s"],
        "jax_mean_response_tokens": med["response_length"],
        "trl_step_s": trl_s,
        "trl_mean_response_tokens": float(np.mean(trl_len or [np.nan])),
        "trl_steps_timed": len(timer.times) - 1,
        "grpo_speedup": trl_s / jax_s, "torch_threads": torch.get_num_threads(),
        "jax_devices": len(jax.devices()), "load_avg_1m": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    app.run(main)
