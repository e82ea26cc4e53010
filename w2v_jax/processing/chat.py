"""Qwen2.5-VL chat formatting: conversation (+ images) -> token ids, masks, 3-D positions; batching.

Rendering follows the Qwen2.5-VL-Instruct chat template (``tokenizer.QWEN2_5_VL_CHAT_TEMPLATE``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n   (unless a system turn leads)
    <|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>question<|im_end|>\\n
    <|im_start|>assistant\\nanswer<|im_end|>\\n
    [<|im_start|>assistant\\n]                                         (generation prompt)

Each image's single ``<|image_pad|>`` is expanded to ``prod(grid_thw) // merge_size**2`` copies, as
the HF processor does. Message content is either a string with ``<image>`` placeholders
(ms-swift records) or an HF content list (``{"type": "image"}`` /
``{"type": "text", "text": ...}``); images are consumed in order of appearance.

``loss_mask`` marks the *target tokens* in ``input_ids`` coordinates: the content of every assistant
turn plus its closing ``<|im_end|>`` (not the ``<|im_start|>assistant\\n`` header, not the newline
after ``<|im_end|>``). The loss on token ``i`` uses the logits at position ``i - 1``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from w2v_jax import fileio
from w2v_jax.processing.image import ImageConfig, num_image_tokens, preprocess_images
from w2v_jax.processing.rope_index import get_rope_index
from w2v_jax.processing.tokenizer import special_token_ids

DEFAULT_SYSTEM = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")
_IMAGE = None  # marker for an image inside a parsed message


def _parse_content(content: Any, placeholder: str, where: str) -> list[str | None]:
    """Message content -> list of text pieces and ``_IMAGE`` markers."""
    if isinstance(content, str):
        parts: list[str | None] = []
        for i, text in enumerate(content.split(placeholder)):
            if i:
                parts.append(_IMAGE)
            if text:
                parts.append(text)
        return parts
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"{where}.content has type {type(content).__name__}; need str or list")
    parts = []
    for j, item in enumerate(content):
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}.content[{j}] must be a dict, got {type(item).__name__}")
        kind = item.get("type")
        if kind == "image" or "image" in item or "image_url" in item:
            parts.append(_IMAGE)
        elif kind == "video" or "video" in item:
            raise ValueError(f"{where}.content[{j}] is a video; only images are supported")
        elif "text" in item:
            parts.append(str(item["text"]))
        else:
            raise ValueError(
                f"{where}.content[{j}] has keys {sorted(item)}; need type 'image' or a 'text' key"
            )
    return parts


def _parse_messages(
    messages: Sequence[Mapping[str, Any]], placeholder: str, default_system: str | None
) -> list[tuple[str, list[str | None]]]:
    if isinstance(messages, (str, Mapping)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role={role!r}; allowed roles are {ROLES}")
        parts = _parse_content(message.get("content", ""), placeholder, f"messages[{i}]")
        if role != "user" and any(p is _IMAGE for p in parts):
            raise ValueError(f"messages[{i}] is a {role} message with an image; only user images")
        turns.append((role, parts))
    if default_system is not None and turns[0][0] != "system":
        turns.insert(0, ("system", [default_system]))
    return turns


def _pieces(
    turns: list[tuple[str, list[str | None]]],
    image_token_counts: Sequence[int],
    add_generation_prompt: bool,
) -> list[tuple[str, bool]]:
    """Rendered text as (piece, is_target) pairs."""
    counts = iter(image_token_counts)
    pieces = []
    for role, parts in turns:
        target = role == "assistant"
        pieces.append((f"<|im_start|>{role}\n", False))
        for part in parts:
            if part is _IMAGE:
                pad = "<|image_pad|>" * int(next(counts))
                pieces.append((f"<|vision_start|>{pad}<|vision_end|>", False))
            else:
                pieces.append((part, target))
        pieces.append(("<|im_end|>", target))
        pieces.append(("\n", False))
    if add_generation_prompt:
        pieces.append(("<|im_start|>assistant\n", False))
    return pieces


def _count_images(turns) -> int:
    return sum(p is _IMAGE for _, parts in turns for p in parts)


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    default_system: str | None = DEFAULT_SYSTEM,
    image_placeholder: str = IMAGE_PLACEHOLDER,
    image_token_counts: Sequence[int] | None = None,
) -> str:
    """Chat text. With ``image_token_counts=None`` each image is one ``<|image_pad|>``, exactly what
    ``tokenizer.apply_chat_template(..., tokenize=False)`` gives with the Qwen2.5-VL template;
    otherwise image ``i`` gets ``image_token_counts[i]`` pads. ``default_system=None`` omits the
    default system turn (a departure from the template)."""
    turns = _parse_messages(messages, image_placeholder, default_system)
    n_images = _count_images(turns)
    counts = [1] * n_images if image_token_counts is None else list(image_token_counts)
    if len(counts) != n_images:
        raise ValueError(
            f"image_token_counts has {len(counts)} entries but the messages hold {n_images} images"
        )
    return "".join(text for text, _ in _pieces(turns, counts, add_generation_prompt))


def encode_conversation(
    messages: Sequence[Mapping[str, Any]],
    images: Sequence[Any],
    tokenizer: Any,
    *,
    add_generation_prompt: bool = False,
    default_system: str | None = DEFAULT_SYSTEM,
    image_config: ImageConfig = ImageConfig(),
    image_placeholder: str = IMAGE_PLACEHOLDER,
    max_length: int | None = None,
) -> dict[str, np.ndarray]:
    """One conversation -> unpadded model inputs.

    Args:
      messages: [{"role": "system"|"user"|"assistant", "content": str | list}]; images only in
        user turns, referenced by ``<image>`` placeholders or ``{"type": "image"}`` items.
      images: one image per reference, in order (anything ``image.load_image`` accepts).
      tokenizer: a transformers fast tokenizer with the Qwen2.5 special tokens.
      add_generation_prompt: end with ``<|im_start|>assistant\\n`` (for sampling).
      max_length: if given, a longer result raises ValueError (images are never cut).
    Returns (L = sequence length, P = patches, N = images), all numpy:
      input_ids (L,) int32, attention_mask (L,) int32 (ones), loss_mask (L,) int32 (1 on assistant
      targets), mm_token_type_ids (L,) int32 (1 on image tokens; what HF's model wants),
      position_ids (3, L) int32, rope_deltas (1,) int32, pixel_values (P, 3*t*p*p) float32,
      image_grid_thw (N, 3) int32.
    """
    turns = _parse_messages(messages, image_placeholder, default_system)
    n_images = _count_images(turns)
    if isinstance(images, (str, bytes, Mapping, np.ndarray)):
        raise ValueError(f"images must be a list of images, got a single {type(images).__name__}")
    if len(images) != n_images:
        raise ValueError(f"messages reference {n_images} images but images has {len(images)}")
    ids_of = special_token_ids(tokenizer)
    merge = image_config.merge_size
    pixel_values, grid = preprocess_images(images, **image_config.kwargs())
    counts = num_image_tokens(grid, merge)
    pieces = _pieces(turns, counts, add_generation_prompt)

    text = "".join(t for t, _ in pieces)
    target_chars = np.zeros(len(text) + 1, bool)
    cursor = 0
    for piece, target in pieces:
        target_chars[cursor : cursor + len(piece)] = target
        cursor += len(piece)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = np.asarray(encoding["input_ids"], np.int32)
    starts = np.asarray([s for s, _ in encoding["offset_mapping"]], np.int64).reshape(-1)
    loss_mask = target_chars[starts].astype(np.int32)

    image_mask = (input_ids == ids_of["image_token_id"]).astype(np.int32)
    if int(image_mask.sum()) != int(counts.sum()):
        raise ValueError(
            f"tokenized text has {int(image_mask.sum())} <|image_pad|> tokens but the images need "
            f"{int(counts.sum())}; does the message text contain a literal <|image_pad|>?"
        )
    if max_length is not None and len(input_ids) > max_length:
        raise ValueError(f"conversation has {len(input_ids)} tokens > max_length={max_length}")
    position_ids, rope_deltas = get_rope_index(
        input_ids[None],
        grid,
        None,
        spatial_merge_size=merge,
        image_token_id=ids_of["image_token_id"],
        vision_start_token_id=ids_of["vision_start_token_id"],
    )
    return {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "loss_mask": loss_mask,
        "mm_token_type_ids": image_mask,
        "position_ids": position_ids[:, 0],
        "rope_deltas": rope_deltas[0],
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
    }


def _record_messages(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if "messages" in record:
        return list(record["messages"])
    if "prompt" in record:  # GRPO record: {"prompt": user text with <image>, "images": [...]}
        return [{"role": "user", "content": record["prompt"]}]
    raise ValueError(f"record has keys {sorted(record)}; need 'messages' or 'prompt'")


def split_answer(record: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """ms-swift record ending in an assistant turn -> (record without it, the answer text)."""
    messages = _record_messages(record)
    last = messages[-1] if messages else {}
    if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise ValueError("record's last message must be an assistant message with str content")
    prompt = dict(record)
    prompt["messages"] = messages[:-1]
    prompt.pop("prompt", None)
    return prompt, last["content"]


def encode_record(
    record: Mapping[str, Any],
    tokenizer: Any,
    *,
    image_root: str | os.PathLike | None = None,
    add_generation_prompt: bool = False,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """ms-swift record ``{"messages": [...], "images": [...]}`` (or a GRPO record ``{"prompt": ...,
    "images": [...]}``) -> ``encode_conversation`` output. With ``image_root``, image paths are
    relative to it and must resolve inside it (no ``..``, absolute paths or symlinks out): else
    ValueError naming the record's ``id`` and the image index. For a sampling prompt use ``add_generation_prompt=True`` on a record
    without the answer (see ``split_answer``)."""
    messages = _record_messages(record)
    if add_generation_prompt and messages and messages[-1].get("role") == "assistant":
        raise ValueError(
            "add_generation_prompt=True but the record ends with an assistant message; "
            "strip it with split_answer(record) first"
        )
    images = list(record.get("images") or [])
    if image_root is not None:
        name = record.get("id", "<no id>")
        images = [
            fileio.resolve_inside(image_root, im, f"record {name!r} images[{i}]")
            if isinstance(im, (str, os.PathLike)) else im
            for i, im in enumerate(images)
        ]
    return encode_conversation(
        messages, images, tokenizer, add_generation_prompt=add_generation_prompt, **kwargs
    )


def collate(
    examples: Sequence[Mapping[str, np.ndarray]],
    *,
    pad_to: int | None = None,
    pad_id: int,
    padding_side: str = "right",
    patches_per_example: int | None = None,
    images_per_example: int | None = None,
) -> dict[str, np.ndarray]:
    """Pad ``encode_conversation`` outputs into one fixed-shape batch.

    Args:
      pad_to: sequence length L (default: the longest example); longer examples raise.
      pad_id: id written at padding positions (e.g. ``<|endoftext|>``).
      padding_side: "right" for training, "left" for generation prompts.
      patches_per_example / images_per_example: give both for per-example image arrays of fixed
        shape (shardable over the batch axis); omit both for HF's flat layout.
    Returns:
      input_ids, attention_mask, loss_mask, mm_token_type_ids (B, L) int32; position_ids (3, B, L)
      int32 (0 at padding, as HF); rope_deltas (B, 1) int32; and either
      flat: pixel_values (sum P, D) float32, image_grid_thw (sum N, 3) int32 — exactly what HF's
        model takes; or
      per example: pixel_values (B, patches_per_example, D) zero-padded, image_grid_thw
        (B, images_per_example, 3) whose padding rows are (0, 0, 0) (zero patches).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}; allowed: 'left', 'right'")
    if (patches_per_example is None) != (images_per_example is None):
        raise ValueError(
            "give both patches_per_example and images_per_example (per-example layout) or neither "
            f"(flat layout); got {patches_per_example=}, {images_per_example=}"
        )
    lengths = [len(ex["input_ids"]) for ex in examples]
    length = max(lengths) if pad_to is None else int(pad_to)
    for i, n in enumerate(lengths):
        if n > length:
            raise ValueError(f"example {i} has {n} tokens > pad_to={length}")
    batch = len(examples)
    out = {
        "input_ids": np.full((batch, length), pad_id, np.int32),
        "attention_mask": np.zeros((batch, length), np.int32),
        "loss_mask": np.zeros((batch, length), np.int32),
        "mm_token_type_ids": np.zeros((batch, length), np.int32),
        "position_ids": np.zeros((3, batch, length), np.int32),
        "rope_deltas": np.zeros((batch, 1), np.int32),
    }
    for b, (ex, n) in enumerate(zip(examples, lengths)):
        span = slice(0, n) if padding_side == "right" else slice(length - n, length)
        for key in ("input_ids", "attention_mask", "loss_mask", "mm_token_type_ids"):
            out[key][b, span] = ex[key]
        out["position_ids"][:, b, span] = ex["position_ids"]
        out["rope_deltas"][b] = ex["rope_deltas"]

    pixels = [np.asarray(ex["pixel_values"], np.float32) for ex in examples]
    grids = [np.asarray(ex["image_grid_thw"], np.int32).reshape(-1, 3) for ex in examples]
    dim = pixels[0].shape[-1]
    if patches_per_example is None:
        out["pixel_values"] = np.concatenate(pixels, axis=0)
        out["image_grid_thw"] = np.concatenate(grids, axis=0)
        return out
    out["pixel_values"] = np.zeros((batch, patches_per_example, dim), np.float32)
    out["image_grid_thw"] = np.zeros((batch, images_per_example, 3), np.int32)
    for b, (pix, grid) in enumerate(zip(pixels, grids)):
        if len(pix) > patches_per_example or len(grid) > images_per_example:
            raise ValueError(
                f"example {b} has {len(pix)} patches / {len(grid)} images, more than "
                f"patches_per_example={patches_per_example} / images_per_example="
                f"{images_per_example}"
            )
        out["pixel_values"][b, : len(pix)] = pix
        out["image_grid_thw"][b, : len(grid)] = grid
    return out
