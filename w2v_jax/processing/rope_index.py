"""Qwen2.5-VL 3-D (temporal, height, width) rotary position ids, computed on the host in numpy.

Text tokens get the same id on all three axes, counting up by one. The ``prod(grid)//merge**2``
``<|image_pad|>`` tokens of an image starting at position ``s`` get ids
``(s + t, s + row, s + col)`` over its merged (t, h/merge, w/merge) grid, and the text after it
resumes at ``s + max(h, w) // merge``. Padding (attention mask 0) gets id 0 and is skipped
when counting. ``rope_deltas = max(position) + 1 - number of real tokens``, per sequence.

Same values as transformers' ``Qwen2_5_VLModel.get_rope_index`` for images (which in 5.x needs
``mm_token_type_ids``; here image tokens are found from ``image_token_id``).
"""

from __future__ import annotations

import numpy as np


def _image_runs(ids: np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of image tokens in a 1-D id array."""
    is_image = np.concatenate([[0], (ids == image_token_id).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(is_image))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def _sequence_positions(
    ids: np.ndarray,
    grids: list[np.ndarray],
    spatial_merge_size: int,
    image_token_id: int,
    vision_start_token_id: int,
    row: int,
) -> np.ndarray:
    """Positions (3, n) for one unpadded sequence; consumes one grid per image run."""
    pieces = []
    pos = 0  # next free position
    cursor = 0  # next token index not yet placed
    for start, end in _image_runs(ids, image_token_id):
        if not grids:
            raise ValueError(
                f"input_ids row {row}: more runs of image_token_id={image_token_id} than rows in "
                "image_grid_thw"
            )
        t, h, w = (int(v) for v in grids.pop(0))
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        if end - start != t * gh * gw:
            raise ValueError(
                f"input_ids row {row}: image run at token {start} has {end - start} image tokens "
                f"but its image_grid_thw {(t, h, w)} needs {t * gh * gw} "
                f"(merge {spatial_merge_size})"
            )
        if start == 0 or ids[start - 1] != vision_start_token_id:
            raise ValueError(
                f"input_ids row {row}: image run at token {start} does not follow "
                f"vision_start_token_id={vision_start_token_id}"
            )
        text_len = start - cursor
        pieces.append(np.broadcast_to(np.arange(pos, pos + text_len), (3, text_len)))
        pos += text_len
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        pieces.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos)
        pos += max(h, w) // spatial_merge_size
        cursor = end
    text_len = len(ids) - cursor
    pieces.append(np.broadcast_to(np.arange(pos, pos + text_len), (3, text_len)))
    return np.concatenate(pieces, axis=1)


def get_rope_index(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    *,
    spatial_merge_size: int,
    image_token_id: int,
    vision_start_token_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """3-D M-RoPE position ids for a batch.

    Args:
      input_ids: (B, L) token ids; every run of ``image_token_id`` must directly follow
        ``vision_start_token_id`` and hold ``prod(grid)//spatial_merge_size**2`` tokens.
      image_grid_thw: (n_images, 3) (t, h, w) patch grids of all images of the batch, in order of
        appearance (row by row), or None for text only.
      attention_mask: (B, L), 1 = real token, 0 = padding (left or right); None = all real.
    Returns:
      position_ids (3, B, L) int32 (padding -> 0) and rope_deltas (B, 1) int32.
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, L), got shape {input_ids.shape}")
    batch, length = input_ids.shape
    if attention_mask is None:
        mask = np.ones((batch, length), bool)
    else:
        mask = np.asarray(attention_mask).astype(bool)
        if mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {mask.shape} must equal input_ids shape {input_ids.shape}"
            )
    grid = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw must be (n_images, 3), got shape {grid.shape}")
    if np.any(grid[:, 1:] % spatial_merge_size):
        raise ValueError(
            f"image_grid_thw h and w must be multiples of spatial_merge_size={spatial_merge_size}, "
            f"got {grid.tolist()}"
        )
    grids = list(grid.astype(np.int64))
    position_ids = np.zeros((3, batch, length), np.int32)
    rope_deltas = np.zeros((batch, 1), np.int32)
    for b in range(batch):
        ids = input_ids[b][mask[b]]
        positions = _sequence_positions(
            ids, grids, spatial_merge_size, image_token_id, vision_start_token_id, b
        )
        position_ids[:, b, mask[b]] = positions
        if positions.shape[1]:
            rope_deltas[b, 0] = positions.max() + 1 - positions.shape[1]
    if grids:
        raise ValueError(
            f"image_grid_thw has {len(grid)} rows but input_ids hold only {len(grid) - len(grids)} "
            f"runs of image_token_id={image_token_id}"
        )
    return position_ids, rope_deltas


def decode_position_ids(cache_position, rope_deltas, num_left_pad=0):
    """Position ids (3, B, T) of tokens decoded after a prompt, as HF ``generate`` assigns them.

    Args:
      cache_position: index of the new token(s) in the (left-padded) sequence / KV cache: a scalar,
        (T,) or (B, T) integer array.
      rope_deltas: (B, 1) from ``get_rope_index`` on the prompt.
      num_left_pad: scalar or (B, 1) number of left-padding tokens of each prompt.
    Returns ``cache_position - num_left_pad + rope_deltas`` broadcast to (3, B, T): the position
    of the last prompt token plus the number of steps since. Works on numpy and on jax arrays
    (inside jit) alike.
    """
    xp = rope_deltas.__array_namespace__()
    pos = xp.asarray(cache_position)
    if pos.ndim == 0:
        pos = xp.reshape(pos, (1, 1))
    elif pos.ndim == 1:
        pos = pos[None, :]
    pos = pos - num_left_pad + rope_deltas
    return xp.broadcast_to(pos[None], (3,) + tuple(pos.shape))
