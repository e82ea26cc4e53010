"""GRPO learns a task whose answer is only readable from the image: "is the picture red?".

A tiny random Qwen2.5-VL answers with one token, read as "yes" (even id) or "no" (odd id), and the
official reward (``compute_score``, binary task: 1.0 right, 0.2 wrong) scores it, so chance is
0.6. The prompts' text is identical; only the image (red or blue) tells the answer."""
import numpy as np
import optax
import pytest

import vlm_fixtures as vf
from grpo_prompts import PAD, compile_cache, prompt_batch  # noqa: F401
from w2v_jax.hf import load_vlm
from w2v_jax.processing import preprocess_images
from w2v_jax.supervision.reward import ground_truth_json
from w2v_jax.train.grpo import GRPOConfig, GRPOLoop, reference_state
from w2v_jax.train.trainer import Trainer

MAX_ITERATIONS = 30


def parity_answer(rows):
    return ["yes" if row and row[0] % 2 == 0 else "no" for row in rows]


@pytest.mark.slow
def test_reward_rises_from_chance_to_090(tmp_path, compile_cache):  # noqa: F811
    _, path = vf.save_hf_model(tmp_path, seed=0, vision_depth=2, fullatt_block_indexes=(1,))
    model, _ = load_vlm(path)
    colours = ["red", "blue"] * 4
    images = {"red": [255, 0, 0], "blue": [0, 0, 255]}
    pixels = [preprocess_images([np.full((56, 56, 3), images[c], np.uint8)])[0] for c in colours]
    prompts = prompt_batch([[4, (1, 4, 4), 3]] * len(colours), seed=0, pixels=pixels,
                           truths=[ground_truth_json("A4", "yes" if c == "red" else "no")
                                   for c in colours],
                           tasks=["A4"] * len(colours), patches_per_example=16,
                           images_per_example=1)
    config = GRPOConfig(n=8, rollout_prompts=8, global_batch_prompts=8, max_response_length=1)
    trainer = Trainer(model, optax.adam(3e-3), "grpo")
    loop = GRPOLoop(trainer, reference_state(model, lora=False), config, stop_tokens=(vf.EOS,),
                    pad_id=PAD, decode=parity_answer, seed=0)
    rewards = []
    for i in range(MAX_ITERATIONS):
        rewards.append(loop.iteration(prompts, i)["reward"])
        if len(rewards) >= 3 and min(rewards[-3:]) >= 0.9:
            break
    assert rewards[0] < 0.8, rewards  # near chance (0.6) at the start
    assert min(rewards[-3:]) >= 0.9, rewards
