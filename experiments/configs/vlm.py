"""The VLM's stages: base pretraining on static perception, then the two World2VLM stages on the
distillation package: SFT from the base, then GRPO from the SFT run.

    python -m data_gen.build_perception --num_scenes 400 --out PER --seed 0 --resolution 32
    python -m experiments.train --config=experiments/configs/vlm.py:base_small --workdir=BASE \
        --config.data.package_dir=PER/package

    python -m data_gen.build_supervision --teacher=renderer --num_scenes 50 --out SUP --seed 0
    python -m experiments.train --config=experiments/configs/vlm.py:sft_small --workdir=SFT \
        --config.data.package_dir=SUP/package
    python -m experiments.train --config=experiments/configs/vlm.py:grpo_small --workdir=RL \
        --config.init_from=SFT --config.data.package_dir=SUP/package

``arg``: ``base_small`` / ``base_tiny`` (the paper starts from a pretrained Qwen2.5-VL that already
perceives still scenes; ours is pretrained from scratch on the static perception set of
``data_gen.build_perception``, which holds no camera motion, then given to SFT with
``--config.init_from=BASE``), ``sft`` / ``grpo`` (the official recipes, paper.md §8–§9, for
Qwen2.5-VL-7B: ``--config.init_from=/models/Qwen2.5-VL-7B-Instruct`` for SFT, the merged SFT
model for GRPO),
``sft_small`` / ``grpo_small`` (the CPU-trainable student: a random ~5 M-parameter Qwen2.5-VL
trained from scratch on this package), ``sft_tiny`` / ``grpo_tiny`` (a random tiny model for tests
and checks: seconds). The defaults are the official run's; every small-scale change below says why.
``init_from`` takes a training workdir or a Hugging Face directory; ``w2v_jax.train.runs.load_vlm``
loads either, and ``w2v_jax.hf.save_vlm`` exports a run's model. For GRPO ``total_steps``,
``eval_every_steps`` and ``checkpoint.every_steps`` count rollout iterations (EasyR1's steps).
"""
import ml_collections

from experiments.configs import common
from w2v_jax.models.lora import DEFAULT_PATTERN
from w2v_jax.models.vlm.config import hf_config_dict

ARGS = ("sft", "grpo", "sft_small", "grpo_small", "sft_tiny", "grpo_tiny", "base_small",
        "base_tiny")


# Random students (no pretrained Qwen2.5-VL is this small): the text/vision widths of the tiny
# test fixture scale and of the CPU-trainable small model (~5 M parameters with a 1k vocabulary).
# The vocabulary and special-token ids are placeholders: a run without init_from sizes them to its
# tokenizer (train.runs.vlm_run_inputs, models.vlm.config.fit_to_tokenizer).
_STUDENT = dict(vocab_size=1024, rope_theta=1e6, window_size=112)
PRESETS = {
    "tiny": hf_config_dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128, mrope_section=(2, 3, 3),
                           vision_depth=2, vision_hidden_size=64, vision_num_heads=4,
                           vision_intermediate_size=96, fullatt_block_indexes=(1,), **_STUDENT),
    "small": hf_config_dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=768,
                            mrope_section=(8, 12, 12), vision_depth=4, vision_hidden_size=128,
                            vision_num_heads=4, vision_intermediate_size=256,
                            fullatt_block_indexes=(3,), **_STUDENT),
}


def _model(preset: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="vlm", seed=0, dtype="float32", param_dtype="", remat=False,
        hf_config=PRESETS[preset],  # ignored with init_from (the model comes from there)
        lora_rank=0, lora_alpha=0.0, lora_dropout=0.0, lora_pattern=DEFAULT_PATTERN))


def _data(name: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name=name, package_dir="",
        tokenizer_dir="",  # "": init_from's tokenizer, else a BPE trained on the package
        vocab_size=1024,  # size of that BPE (only when no tokenizer is given)
        max_length=8192, max_target_tokens=0, max_prompt_length=1024,
        min_pixels=0, max_pixels=0,  # 0: the ImageConfig defaults (HF / the paper's SFT)
        tasks=(),  # () every task type; else only these, in both splits (data.distill.TaskSubset)
        num_eval_batches=0, skip_malformed=False))


def sft_config() -> ml_collections.ConfigDict:
    """Official SFT (ms-swift, paper.md §8): LoRA r256 / alpha 512 on all language-model linears
    (ViT frozen), lr 1e-5 cosine with 5 % warmup, weight decay 0.1, betas (0.9, 0.95), batch 128,
    1 epoch (~12k SFT records: 95 steps), max_length 8192."""
    c = common.run_config(loss="sft", batch_size=128, total_steps=95, learning_rate=1e-5,
                          warmup_steps=5, end_lr_ratio=0.0, b2=0.95, weight_decay=0.1)
    c.init_from = ""
    c.trainable = "lora"
    c.model = _model("small")
    c.model.lora_rank, c.model.lora_alpha = 256, 512.0
    c.data = _data("distill_sft")
    c.checkpoint.every_steps = 40  # save/eval every 40 steps
    c.eval_every_steps = 40
    c.log_every_steps = 5
    return c


def grpo_config() -> ml_collections.ConfigDict:
    """Official GRPO (EasyR1, paper.md §9): full-parameter with the vision tower trainable, AdamW
    lr 1e-6 (0.9, 0.999), weight decay 0.01, constant lr, no warmup, grad-norm clip 1.0; n = 4,
    4 prompts per rollout, 2 per update, 1 PPO epoch; kl_coef 0.01 low-var (k3) KL loss, clip
    0.2 / 0.3, dual clip 3; response <= 256, prompt <= 1024 tokens; validation every 5 steps
    (temperature 0.6, top_p 0.95, n = 1) and before training; seed 1. No math format prompt
    (paper.md §12.5: its "reason step by step ... \\boxed{}" conflicts with the reward's
    200-character rule and exact yes/no parsing)."""
    c = common.run_config(loss="grpo", batch_size=8, total_steps=248, learning_rate=1e-6,
                          warmup_steps=0, end_lr_ratio=1.0, b2=0.999, weight_decay=0.01,
                          clip_norm=1.0)
    c.seed = 1
    c.init_from = ""
    c.trainable = "all"
    # EasyR1 micro-batch 1 per GPU on 4 GPUs: 8 responses per update = 4 devices x 2 micro-steps
    c.grad_accum_steps = 2
    c.loss_kwargs = ml_collections.ConfigDict(dict(clip_low=0.2, clip_high=0.3, clip_dual=3.0,
                                                   kl_coef=0.01))
    c.grpo = ml_collections.ConfigDict(dict(
        n=4, rollout_prompts=4, global_batch_prompts=2, ppo_epochs=1, max_response_length=256,
        temperature=1.0, top_p=1.0, val_temperature=0.6, val_top_p=0.95, val_n=1,
        val_before_train=True, reward_key="overall"))
    c.model = _model("small")
    c.data = _data("distill_grpo")
    c.data.min_pixels, c.data.max_pixels = 262144, 4194304  # EasyR1 data.min/max_pixels
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=5, max_to_keep=3, async_save=True))
    c.eval_every_steps = 5
    return c


def get_config(arg: str = "sft_small") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ValueError(f"config arg {arg!r}: allowed {ARGS}")
    stage, _, scale = arg.partition("_")
    c = grpo_config() if stage == "grpo" else sft_config()
    if not scale:
        return c
    c.model = _model(scale)
    c.grad_accum_steps = 1  # the whole (small) mini-batch fits at once
    c.data.min_pixels = c.data.max_pixels = 0  # 32 px views stay 56 px (4 tokens), not 512 px
    c.data.max_length = 384  # the longest small-scale conversation (D1) is ~330 tokens
    c.data.max_prompt_length = 352
    c.data.num_eval_batches = 4  # a fixed slice of the held-out scenes, for speed
    if stage in ("sft", "base"):
        # a random student learns everything here: full-parameter (LoRA on random weights is
        # pointless), lr 2e-3 with warmup (1e-5 does not move a from-scratch model), batch 16
        # (the CPU step), answer-only LM head (max_target_tokens)
        c.trainable = "all"
        c.batch_size = 16
        c.optimizer.learning_rate = 2e-3
        c.optimizer.warmup_steps = 50
        c.optimizer.end_lr_ratio = 0.05
        c.total_steps = 2000
        c.data.max_target_tokens = 32
        # the vision tower at a tenth of the lr: at the full lr the mixed tasks, most of whose
        # answer tokens the text alone predicts, turn the tower's output into a near-constant
        # vector (d loss / d pixels fell from 1e-2 to 1e-6 within 300 base steps; README
        # "Base-VLM perception set"); the official SFT freezes the ViT altogether
        c.optimizer.param_groups = (("^visual/", 0.1),)
        c.checkpoint.every_steps = 250
        c.eval_every_steps = 250
        c.log_every_steps = 10
    else:
        # the SFT'd small student is far from a converged 7B: 1e-6 would not move it within a CPU
        # budget, so lr 1e-5; responses <= 48 tokens (the longest answer, a 3-action sequence, is
        # ~25 tokens; the reward gives -1 past 200 characters anyway)
        c.optimizer.learning_rate = 1e-5
        c.grpo.max_response_length = 48
        c.total_steps = 60
        c.eval_every_steps = 10
        c.checkpoint.every_steps = 10
    if stage == "base":
        # pretraining from scratch on the perception package (same loss and recipe as the small
        # SFT): the tokenizer is a BPE trained on that package unless data.tokenizer_dir is given;
        # SFT and GRPO keep the base's, so give one trained on the perception and distillation
        # text together when the later stages' words should not be split into bytes
        # data.name stays "distill_sft": the perception package has the distillation format
        # measured with a 1024-entry BPE on 20 scenes: prompt + answer <= 61 tokens (+ the chat
        # template and 2 x 4 image tokens), answers <= 22 tokens (object lists), so with margin:
        c.data.max_length = 192
        c.data.max_target_tokens = 48
        c.total_steps = 3000  # ~5 epochs of 400 scenes x ~24 records at batch 16
        c.optimizer.learning_rate = 5e-4  # lower eval loss than 2e-3 after 300 steps (0.72, 0.99)
    if scale == "tiny":  # seconds: a handful of steps, tiny prompts and responses
        c.total_steps = 4 if stage == "grpo" else 6
        if stage == "grpo":
            c.grpo.max_response_length = 8
        c.data.vocab_size = 400
        c.data.num_eval_batches = 1
        c.checkpoint.every_steps = 2
        c.eval_every_steps = 2
        c.log_every_steps = 1
        c.progress = False
    return c
