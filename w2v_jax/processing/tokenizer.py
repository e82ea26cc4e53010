"""Tokenizers: load any local Hugging Face tokenizer directory, or train a small Qwen2.5-style one.

``train_tokenizer`` builds what the small VLMs trained here use: a byte-level BPE with Qwen2's
pre-tokenizer (NFC, the Qwen2 split regex, byte-level), followed by the 22 Qwen2.5 special tokens
in Qwen's order (so ``<|image_pad|>`` = ``<|endoftext|>`` + 12, as 151655 = 151643 + 12 in the real
vocabulary), the Qwen2.5-VL chat template, ``eos = <|im_end|>`` and ``pad = <|endoftext|>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

# Qwen2.5 added tokens, in id order. The first 14 are "special" (skipped by
# decode(skip_special_tokens=True)); the last 8 are plain added tokens, as in Qwen's tokenizer.json.
QWEN2_5_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
NUM_SKIPPED_SPECIAL = 14

# Qwen2's pre-tokenizer split pattern (contractions, letters, single digits, punctuation, spaces).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2-VL / Qwen2.5-VL-Instruct chat template (jinja), as shipped with the hub checkpoints.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ID_NAMES = {
    "pad_token_id": "<|endoftext|>",
    "im_start_token_id": "<|im_start|>",
    "im_end_token_id": "<|im_end|>",
    "eos_token_id": "<|im_end|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
}


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """Ids of the Qwen2.5 tokens the VLM needs, keyed like the HF config / generation config fields:
    image_token_id, video_token_id, vision_start_token_id, vision_end_token_id, im_start_token_id,
    im_end_token_id, eos_token_id (= <|im_end|>), pad_token_id (= <|endoftext|>)."""
    vocab = tokenizer.get_vocab()
    missing = sorted({tok for tok in _ID_NAMES.values() if tok not in vocab})
    if missing:
        raise ValueError(
            f"tokenizer lacks the Qwen2.5 special tokens {missing}; use a Qwen2.5(-VL) tokenizer "
            "directory or w2v_jax.processing.train_tokenizer"
        )
    return {name: int(vocab[tok]) for name, tok in _ID_NAMES.items()}


def load_tokenizer(path: str | os.PathLike) -> Any:
    """Load a tokenizer from a local Hugging Face directory holding ``tokenizer.json``.

    Uses ``transformers.AutoTokenizer`` offline (no hub access). Raises ValueError if the directory
    or its tokenizer.json is missing.
    """
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"tokenizer path {path!r} is not a directory")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise ValueError(
            f"tokenizer path {path!r} has no tokenizer.json (found {sorted(os.listdir(path))}); "
            "a fast-tokenizer directory as written by save_pretrained is required"
        )
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def train_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike | None = None,
    *,
    min_frequency: int = 2,
) -> tuple[Any, dict[str, int]]:
    """Train a byte-level BPE on ``corpus`` and add the Qwen2.5 special tokens and chat template.

    Args:
      corpus: texts to learn merges from (iterated once). Training is deterministic: the same
        corpus gives the same tokenizer.json.
      vocab_size: total vocabulary size including the 22 special tokens (an upper bound: a small
        corpus may yield fewer merges). At least 256 + 22 + 1.
      out_dir: if given, ``save_pretrained`` there (tokenizer.json, tokenizer_config.json,
        chat_template.jinja), loadable with ``AutoTokenizer`` / ``load_tokenizer``.
      min_frequency: minimum pair count for a merge.
    Returns:
      (a transformers fast tokenizer, ``special_token_ids(tokenizer)``).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    num_special = len(QWEN2_5_SPECIAL_TOKENS)
    min_size = 256 + num_special + 1
    if int(vocab_size) != vocab_size or vocab_size < min_size:
        raise ValueError(
            f"vocab_size={vocab_size!r} must be an integer >= {min_size} (256 bytes + "
            f"{num_special} special tokens + at least one merge)"
        )
    if isinstance(corpus, str):
        raise ValueError("corpus must be an iterable of strings, not a single string")

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size) - num_special,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    bpe.add_special_tokens(
        [
            AddedToken(tok, special=True, normalized=False)
            for tok in QWEN2_5_SPECIAL_TOKENS[:NUM_SKIPPED_SPECIAL]
        ]
    )
    bpe.add_tokens(
        [
            AddedToken(tok, special=False, normalized=False)
            for tok in QWEN2_5_SPECIAL_TOKENS[NUM_SKIPPED_SPECIAL:]
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        tokenizer.save_pretrained(os.fspath(out_dir))
    return tokenizer, special_token_ids(tokenizer)
