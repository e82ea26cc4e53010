"""Host-side (numpy) input processing for the Qwen2.5-VL student: images, chat, positions, tokens.

- image: ``smart_resize``, ``preprocess_images`` (== HF Qwen2VLImageProcessor), ``load_image``.
- chat: the Qwen2.5-VL chat template, ``encode_conversation`` / ``encode_record`` (ms-swift
  records -> ids, loss mask, 3-D positions, pixels), ``collate`` (fixed-shape padded batches).
- rope_index: ``get_rope_index`` (== HF), ``decode_position_ids`` for generation.
- tokenizer: ``load_tokenizer``, ``train_tokenizer`` (byte-level BPE + Qwen2.5 special tokens).
"""

from w2v_jax.processing.chat import (
    DEFAULT_SYSTEM,
    IMAGE_PLACEHOLDER,
    collate,
    encode_conversation,
    encode_record,
    render_chat,
    split_answer,
)
from w2v_jax.processing.image import (
    CLIP_MEAN,
    CLIP_STD,
    ImageConfig,
    load_image,
    num_image_tokens,
    preprocess_images,
    smart_resize,
)
from w2v_jax.processing.rope_index import decode_position_ids, get_rope_index
from w2v_jax.processing.tokenizer import (
    QWEN2_5_SPECIAL_TOKENS,
    QWEN2_5_VL_CHAT_TEMPLATE,
    load_tokenizer,
    special_token_ids,
    train_tokenizer,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_SYSTEM",
    "IMAGE_PLACEHOLDER",
    "ImageConfig",
    "QWEN2_5_SPECIAL_TOKENS",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "collate",
    "decode_position_ids",
    "encode_conversation",
    "encode_record",
    "get_rope_index",
    "load_image",
    "load_tokenizer",
    "num_image_tokens",
    "preprocess_images",
    "render_chat",
    "smart_resize",
    "special_token_ids",
    "split_answer",
    "train_tokenizer",
]
