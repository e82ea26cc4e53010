"""Toy transformer LM on the synthetic ArrayRecord dataset: the training loop in seconds.

    python -m experiments.train --config=experiments/configs/toy.py --workdir=/tmp/toy
    python -m experiments.train --config=experiments/configs/toy.py:lora --workdir=/tmp/toy_lora \
        --config.total_steps=50 --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2

``arg``: "" (full fine-tuning) or "lora" (rank-4 LoRA on q/v, only LoRA params train).
"""
import ml_collections

from experiments.configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ("", "lora"):
        raise ValueError(f"config arg {arg!r}: allowed '' or 'lora'")
    c = common.run_config(loss="next_token", batch_size=16, total_steps=200, learning_rate=3e-3,
                          warmup_steps=20, b2=0.98)
    c.trainable = "lora" if arg == "lora" else "all"
    c.model = ml_collections.ConfigDict(
        dict(name="toy_lm", seed=0, vocab_size=64, width=64, depth=2, num_heads=4, mlp_dim=128,
             max_len=32, lora_rank=4 if arg == "lora" else 0, dtype="float32")
    )
    c.data = ml_collections.ConfigDict(
        dict(name="synthetic_lm", data_dir="", num_examples=4096, num_eval=64, seq_len=32,
             vocab_size=64, seed=0, num_workers=0, skip_malformed=False)
    )
    return c
