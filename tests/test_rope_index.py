"""3-D M-RoPE position ids == transformers' Qwen2_5_VLModel.get_rope_index (exact), incl. padding,
and decode positions == those HF `generate` feeds its decoder after a left-padded image prompt."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from w2v_jax.processing import decode_position_ids, get_rope_index  # noqa: E402

VOCAB, IMAGE, VIDEO, V_START, V_END = 300, 296, 297, 298, 299
MERGE = 2


def _tiny_hf_model(vocab, image, video, v_start, v_end, pad):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vlm_fixtures import tiny_hf_config

    torch.manual_seed(0)
    ids = dict(image=image, video=video, vision_start=v_start, vision_end=v_end, eos=0, pad=pad)
    config = tiny_hf_config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                            vision_depth=1, vision_hidden_size=32, vision_intermediate_size=64,
                            vision_num_heads=2, fullatt_block_indexes=(0,), special_ids=ids)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def hf_model():
    return _tiny_hf_model(VOCAB, IMAGE, VIDEO, V_START, V_END, pad=1)


def _sequence(rng, pieces):
    """pieces: ints (that many random text tokens) or (t, h, w) image grids."""
    ids, grids = [], []
    for piece in pieces:
        if isinstance(piece, int):
            ids += rng.integers(2, 200, piece).tolist()
        else:
            grids.append(piece)
            ids += [V_START] + [IMAGE] * (int(np.prod(piece)) // MERGE**2) + [V_END]
    return ids, grids


def _batch(seqs, side, extra=0):
    """Pad to the longest sequence + ``extra`` on ``side``; pad id 1."""
    length = max(len(ids) for ids, _ in seqs) + extra
    input_ids = np.ones((len(seqs), length), np.int64)
    mask = np.zeros((len(seqs), length), np.int64)
    for b, (ids, _) in enumerate(seqs):
        span = slice(0, len(ids)) if side == "right" else slice(length - len(ids), length)
        input_ids[b, span] = ids
        mask[b, span] = 1
    grids = [g for _, gs in seqs for g in gs]
    return input_ids, mask, (np.asarray(grids, np.int64) if grids else None)


def _hf_rope_index(model, input_ids, grid, mask, image=IMAGE):
    with torch.no_grad():
        pos, deltas = model.model.get_rope_index(
            torch.from_numpy(input_ids),
            mm_token_type_ids=torch.from_numpy((input_ids == image).astype(np.int64)),
            image_grid_thw=None if grid is None else torch.from_numpy(grid),
            attention_mask=None if mask is None else torch.from_numpy(mask),
        )
    return pos.numpy(), deltas.numpy()


CASES = {
    "text_only": [[11], [7]],
    "one_image": [[3, (1, 4, 4), 5]],
    "two_images_different_sizes": [[2, (1, 4, 6), 3, (1, 8, 2), 4]],
    "mixed_batch": [[2, (1, 4, 6), 3, (1, 8, 2), 4], [6], [1, (1, 6, 4), 9]],
    "image_first_and_last": [[(1, 2, 2), 3, (1, 6, 2)]],
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_rope_index_matches_hf(hf_model, name, padding):
    rng = np.random.default_rng(len(name))
    seqs = [_sequence(rng, pieces) for pieces in CASES[name]]
    if padding == "none":
        input_ids, mask, grid = _batch(seqs[:1], "right")
    else:  # every row padded, by different amounts
        input_ids, mask, grid = _batch(seqs, padding, extra=3)
    attn = None if padding == "none" else mask
    ref_pos, ref_delta = _hf_rope_index(hf_model, input_ids, grid, attn)
    pos, delta = get_rope_index(
        input_ids,
        grid,
        attn,
        spatial_merge_size=MERGE,
        image_token_id=IMAGE,
        vision_start_token_id=V_START,
    )
    assert pos.shape == ref_pos.shape and delta.shape == ref_delta.shape
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(delta, ref_delta)


def test_rope_index_known_values():
    # ids [t, t, <vs>, img x4, <ve>, t, t] with grid (1, 4, 4) (jax_stack.md example)
    ids = np.array([[5, 6, V_START, IMAGE, IMAGE, IMAGE, IMAGE, V_END, 7, 8]])
    pos, delta = get_rope_index(
        ids, [[1, 4, 4]], spatial_merge_size=2, image_token_id=IMAGE, vision_start_token_id=V_START
    )
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 3, 3, 3, 5, 6, 7]
    assert pos[1, 0].tolist() == [0, 1, 2, 3, 3, 4, 4, 5, 6, 7]
    assert pos[2, 0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 6, 7]
    assert delta.tolist() == [[-2]]


def test_rope_index_errors():
    kw = dict(spatial_merge_size=2, image_token_id=IMAGE, vision_start_token_id=V_START)
    good = np.array([[5, V_START, IMAGE, IMAGE, IMAGE, IMAGE, V_END]])
    with pytest.raises(ValueError, match="needs 2"):
        get_rope_index(good, [[1, 2, 4]], **kw)
    with pytest.raises(ValueError, match="more runs"):
        get_rope_index(good, None, **kw)
    with pytest.raises(ValueError, match="only 1 runs"):
        get_rope_index(good, [[1, 4, 4], [1, 4, 4]], **kw)
    with pytest.raises(ValueError, match="vision_start"):
        get_rope_index(np.array([[5, 6, IMAGE, IMAGE, IMAGE, IMAGE, V_END]]), [[1, 4, 4]], **kw)
    with pytest.raises(ValueError, match="attention_mask shape"):
        get_rope_index(good, [[1, 4, 4]], np.ones((1, 3)), **kw)


def test_decode_positions_match_hf_generate(hf_model):
    """Capture the position ids HF generate gives the decoder (prefill + 3 decode steps) for a
    left-padded batch of image prompts, and rebuild them with get_rope_index/decode_position_ids."""
    rng = np.random.default_rng(0)
    seqs = [_sequence(rng, [2, (1, 4, 6), 3]), _sequence(rng, [1, (1, 4, 4), 2, (1, 2, 4), 1])]
    input_ids, mask, grid = _batch(seqs, "left")
    patches = int(grid.prod(-1).sum())
    pixel_values = torch.from_numpy(rng.normal(size=(patches, 3 * 2 * 14 * 14)).astype(np.float32))

    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["position_ids"][1:].numpy().copy())  # drop HF's extra text row

    handle = hf_model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            hf_model.generate(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(mask),
                mm_token_type_ids=torch.from_numpy((input_ids == IMAGE).astype(np.int64)),
                pixel_values=pixel_values,
                image_grid_thw=torch.from_numpy(grid),
                max_new_tokens=4,
                min_new_tokens=4,
                do_sample=False,
            )
    finally:
        handle.remove()
    assert len(seen) == 4
    kw = dict(spatial_merge_size=MERGE, image_token_id=IMAGE, vision_start_token_id=V_START)
    pos, deltas = get_rope_index(input_ids, grid, mask, **kw)
    np.testing.assert_array_equal(seen[0], pos)
    length = input_ids.shape[1]
    num_left_pad = (length - mask.sum(1))[:, None]
    for step, ref in enumerate(seen[1:]):
        got = decode_position_ids(length + step, deltas, num_left_pad)
        np.testing.assert_array_equal(got, ref)

    # same function under jit with jax arrays
    import jax
    import jax.numpy as jnp

    fn = jax.jit(decode_position_ids)
    cache_position = jnp.arange(length, length + 3)[None, :]
    got = fn(cache_position, jnp.asarray(deltas), jnp.asarray(num_left_pad))
    np.testing.assert_array_equal(np.asarray(got), np.concatenate(seen[1:], axis=-1))


def test_processor_batch_drives_hf_model():
    """encode_record + collate (left padding, two images of different sizes + a text-only row) feed
    HF's model directly; our position_ids give the same logits as HF computing its own."""
    from w2v_jax.processing import ImageConfig, collate, encode_record, train_tokenizer

    tokenizer, ids = train_tokenizer(["turn left 30 degrees, move forward 2 meters"] * 20, 320)
    model = _tiny_hf_model(
        len(tokenizer),
        ids["image_token_id"],
        ids["video_token_id"],
        ids["vision_start_token_id"],
        ids["vision_end_token_id"],
        pad=ids["pad_token_id"],
    )
    rng = np.random.default_rng(1)
    cfg = ImageConfig(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 8)
    records = [
        {
            "messages": [{"role": "user", "content": "<image> then <image> how?"}],
            "images": [
                rng.integers(0, 256, (60, 90, 3), np.uint8),
                rng.integers(0, 256, (90, 40, 3), np.uint8),
            ],
        },
        {"messages": [{"role": "user", "content": "turn left?"}], "images": []},
    ]
    examples = [
        encode_record(r, tokenizer, image_config=cfg, add_generation_prompt=True) for r in records
    ]
    batch = collate(examples, pad_id=ids["pad_token_id"], padding_side="left")
    tensors = {
        k: torch.from_numpy(batch[k]).long()
        for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")
    }
    pixel_values = torch.from_numpy(batch["pixel_values"])
    with torch.no_grad():
        ref = model(**tensors, pixel_values=pixel_values).logits
        position_ids = torch.from_numpy(batch["position_ids"]).long()
        ours = model(**tensors, pixel_values=pixel_values, position_ids=position_ids).logits
    real = batch["attention_mask"].astype(bool)
    assert torch.equal(ref[torch.from_numpy(real)], ours[torch.from_numpy(real)])
    pos, deltas = _hf_rope_index(
        model,
        batch["input_ids"].astype(np.int64),
        batch["image_grid_thw"].astype(np.int64),
        batch["attention_mask"].astype(np.int64),
        image=ids["image_token_id"],
    )
    np.testing.assert_array_equal(batch["position_ids"], pos)
    np.testing.assert_array_equal(batch["rope_deltas"], deltas)
