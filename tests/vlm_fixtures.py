"""Tiny random Hugging Face Qwen2.5-VL models and inputs for VLM tests (torch reference side).

Import from any test module (pytest puts ``tests/`` on ``sys.path``)::

    import vlm_fixtures as vf

    hf_model, path = vf.save_hf_model(tmp_path, seed=0)         # random HF model + save_pretrained
    model, cfg = w2v_jax.hf.load_vlm(path)                         # our model from the same files
    ids, mask, grids = vf.make_prompts([[5, (1, 8, 12), 3]], seed=1)  # 5 text, 1 image, 3 text
    pixels = vf.random_pixels(grids, seed=2)                       # (sum t*h*w, 1176) float32
    pos, deltas = vf.hf_position_ids(hf_model, ids, grids, mask)   # HF get_rope_index
    logits = vf.hf_logits(hf_model, ids, pixels, grids, mask)      # (B, L, V) numpy

The tiny config: text hidden 64, 2 layers, 4 heads / 2 KV heads, mrope_section (2, 3, 3),
vocab 300 with the special ids below it (``VISION_START``..``VIDEO``); vision hidden 64, depth 4,
full attention at blocks (1, 3), window 56 px = 2x2 merged tokens, so a (1, 8, 12) patch grid
(4x6 merged tokens) spans 2x3 windows. Every weight, bias and norm scale is random (not HF's
zero biases / unit norms) so parity tests exercise all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from w2v_jax.models.vlm.config import VLMConfig, hf_config_dict

VOCAB = 300
TEXT_VOCAB = 290  # random text tokens are drawn from [0, TEXT_VOCAB)
BOS, EOS = 294, 295
VISION_START, VISION_END, IMAGE, VIDEO = 296, 297, 298, 299
PATCH_DIM = 3 * 2 * 14 * 14
MERGE = 2


def tiny_hf_config(
    *,
    tie_word_embeddings: bool = False,
    vision_depth: int = 4,
    fullatt_block_indexes: Sequence[int] = (1, 3),
    window_size: int = 56,
    **sizes,
) -> Qwen2_5_VLConfig:
    """The tiny ``Qwen2_5_VLConfig`` described in the module docstring (``hf_config_dict``;
    ``sizes`` override its other fields)."""
    sizes.setdefault("vocab_size", VOCAB)
    return Qwen2_5_VLConfig(**hf_config_dict(
        vision_depth=vision_depth, fullatt_block_indexes=tuple(fullatt_block_indexes),
        window_size=window_size, tie_word_embeddings=tie_word_embeddings, **sizes))


def tiny_config(**changes) -> VLMConfig:
    """Our ``VLMConfig`` of the tiny model with a 2-block vision tower (full attention at 1)."""
    d = hf_config_dict(vocab_size=VOCAB, vision_depth=2, fullatt_block_indexes=(1,))
    return VLMConfig.from_hf_dict(d).replace(**changes)


def make_hf_model(seed: int = 0, **config_kwargs) -> Qwen2_5_VLForConditionalGeneration:
    """Random fp32 HF model in eval mode.

    Weights ~ N(0, 1/fan_in) (unit-scale activations), biases ~ 0.1 N(0, 1), norm scales
    ~ 1 + 0.1 N(0, 1), embeddings ~ N(0, 1).
    """
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_hf_config(**config_kwargs)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            is_norm = name.endswith("norm.weight") or ".norm" in name or "ln_q" in name
            if is_norm:
                param.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name:
                param.copy_(noise)
            elif param.ndim >= 2:
                param.copy_(noise / float(np.prod(param.shape[1:])) ** 0.5)
            else:
                param.copy_(0.1 * noise)
    return model


def save_hf_model(directory: str | Path, seed: int = 0, **config_kwargs):
    """``make_hf_model`` + ``save_pretrained(directory / "hf")``; returns ``(model, path)``."""
    model = make_hf_model(seed, **config_kwargs)
    path = Path(directory) / "hf"
    model.save_pretrained(path)
    return model, path


def random_pixels(grids: np.ndarray, seed: int) -> np.ndarray:
    """Random packed ``pixel_values (sum t*h*w, 1176)`` float32 for the given patch grids."""
    n = int(np.sum(np.prod(np.asarray(grids), axis=-1))) if len(grids) else 0
    return np.random.default_rng(seed).standard_normal((n, PATCH_DIM)).astype(np.float32)


def make_prompts(specs: Sequence[Sequence], seed: int, pad_id: int = 0):
    """Token prompts from specs, left-padded into a batch.

    Each spec is a list of items: an int ``n`` = n random text tokens; a ``(t, h, w)`` tuple = an
    image of that patch grid (``<|vision_start|>``, ``t*h*w/4`` ``<|image_pad|>``,
    ``<|vision_end|>``). Returns ``(input_ids (B, L) int64, attention_mask (B, L) int64,
    image_grid_thw (num_images, 3) int64)`` with images in batch-then-prompt order.
    """
    rng = np.random.default_rng(seed)
    rows, grids = [], []
    for spec in specs:
        ids: list[int] = []
        for item in spec:
            if isinstance(item, (int, np.integer)):
                ids += rng.integers(0, TEXT_VOCAB, int(item)).tolist()
            else:
                t, h, w = item
                grids.append((t, h, w))
                ids += [VISION_START] + [IMAGE] * (t * h * w // MERGE**2) + [VISION_END]
        rows.append(ids)
    length = max(len(r) for r in rows)
    input_ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for b, ids in enumerate(rows):
        input_ids[b, length - len(ids) :] = ids
        mask[b, length - len(ids) :] = 1
    return input_ids, mask, np.asarray(grids, np.int64).reshape(-1, 3)


def _t(x):
    return None if x is None else torch.as_tensor(np.asarray(x))


def hf_position_ids(model, input_ids, image_grid_thw, attention_mask):
    """HF ``get_rope_index``: ``(position_ids (3, B, L), rope_deltas (B, 1))`` as numpy."""
    ids = _t(input_ids)
    grid = _t(image_grid_thw) if image_grid_thw is not None and len(image_grid_thw) else None
    token_type = (ids == IMAGE).int()
    with torch.no_grad():
        pos, deltas = model.model.get_rope_index(
            ids, token_type, image_grid_thw=grid, attention_mask=_t(attention_mask)
        )
    return pos.numpy(), deltas.numpy()


def hf_logits(
    model, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None, position_ids=None
):
    """HF forward logits ``(B, L, V)`` numpy; position ids from ``get_rope_index`` when None."""
    if position_ids is None:
        position_ids, _ = hf_position_ids(model, input_ids, image_grid_thw, attention_mask)
    has_images = pixel_values is not None and len(pixel_values)
    with torch.no_grad():
        out = model(
            input_ids=_t(input_ids),
            attention_mask=_t(attention_mask),
            position_ids=_t(position_ids),
            pixel_values=_t(pixel_values) if has_images else None,
            image_grid_thw=_t(image_grid_thw) if has_images else None,
        )
    return out.logits.numpy()


def hf_image_features(model, pixel_values, image_grid_thw) -> np.ndarray:
    """HF vision tower output (merged tokens, original order): ``(N / 4, out_hidden_size)``."""
    with torch.no_grad():
        out = model.model.visual(_t(pixel_values), grid_thw=_t(image_grid_thw))
    return out.pooler_output.numpy()
