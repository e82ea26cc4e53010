"""Processor tests: image preprocessing == HF Qwen2VLImageProcessor (PIL backend), chat rendering ==
the Qwen2.5-VL jinja template via transformers' apply_chat_template, loss masks, collate."""

import io

import numpy as np
import pytest
from PIL import Image

from w2v_jax.processing import (
    ImageConfig,
    collate,
    encode_conversation,
    encode_record,
    load_image,
    preprocess_images,
    render_chat,
    smart_resize,
    split_answer,
    train_tokenizer,
)

SMALL = ImageConfig(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 12)
CORPUS = [
    "move forward 1.5 meters then turn left 30 degrees",
    "What is the object to the left of the chair? Answer with a box [x1, y1, x2, y2].",
    "The answer is B. The camera turned right by 45 degrees.",
] * 20


@pytest.fixture(scope="module")
def tok():
    tokenizer, ids = train_tokenizer(CORPUS, 400)
    return tokenizer, ids


@pytest.fixture(scope="module")
def hf_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    def make(cfg):
        return Qwen2VLImageProcessorPil(
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
            patch_size=cfg.patch_size,
            temporal_patch_size=cfg.temporal_patch_size,
            merge_size=cfg.merge_size,
        )

    return make


def _rand_image(seed, h, w, c=3):
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- images


def test_smart_resize_matches_hf():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref

    sizes = [(60, 90), (100, 40), (300, 200), (20, 30), (56, 84), (1080, 1920), (15, 2000), (7, 9)]
    for h, w in sizes:
        for lo, hi in [(3136, 1003520), (28 * 28 * 2, 28 * 28 * 12), (256 * 28 * 28, 4194304)]:
            assert smart_resize(h, w, 28, lo, hi) == ref(h, w, 28, lo, hi), (h, w, lo, hi)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)
    with pytest.raises(ValueError, match="height"):
        smart_resize(0, 20)


@pytest.mark.parametrize("size", [(60, 90), (100, 40), (300, 200), (20, 30), (56, 84)])
def test_preprocess_matches_hf(size, hf_image_processor):
    image = _rand_image(sum(size), *size)
    ours_pv, ours_grid = preprocess_images([image], **SMALL.kwargs())
    ref = hf_image_processor(SMALL)([image], return_tensors="np")
    np.testing.assert_array_equal(ours_grid, ref["image_grid_thw"])
    assert ours_pv.dtype == np.float32 and ours_pv.shape == ref["pixel_values"].shape
    assert np.abs(ours_pv - ref["pixel_values"]).max() <= 1e-5


def test_preprocess_several_images_and_modes_match_hf(hf_image_processor):
    rgba = _rand_image(1, 50, 70, 4)
    images = [
        Image.fromarray(_rand_image(2, 64, 48)),
        Image.fromarray(rgba, mode="RGBA"),  # alpha composited onto white
        Image.fromarray(_rand_image(3, 40, 80, 1), mode="L"),
        _rand_image(4, 90, 30),
        rgba,  # numpy RGBA
    ]
    cfg = ImageConfig(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 6)
    pv, grid = preprocess_images(images, **cfg.kwargs())
    ref = hf_image_processor(cfg)(images, return_tensors="np")
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    assert np.abs(pv - ref["pixel_values"]).max() <= 1e-5
    assert len(pv) == grid.prod(-1).sum()


def test_patch_layout_is_merge_window_order():
    # 56x56 needs no resize: 4x4 patches of 14 px, merged in 2x2 windows.
    image = _rand_image(5, 56, 56)
    pv, grid = preprocess_images([image], min_pixels=56 * 56, max_pixels=56 * 56)
    assert grid.tolist() == [[1, 4, 4]]
    mean, std = np.float32([0.48145466, 0.4578275, 0.40821073]), np.float32(
        [0.26862954, 0.26130258, 0.27577711]
    )
    normed = ((image.astype(np.float64) / 255).astype(np.float32) - mean) / std
    # row order: window (0,0): patches (0,0),(0,1),(1,0),(1,1); then window (0,1): (0,2),(0,3),...
    expected_rc = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 0)]
    for row, (r, c) in enumerate(expected_rc):
        patch = normed[14 * r : 14 * r + 14, 14 * c : 14 * c + 14].transpose(2, 0, 1)  # C, py, px
        got = pv[row].reshape(3, 2, 14, 14)
        np.testing.assert_allclose(got[:, 0], patch, atol=1e-6)
        np.testing.assert_array_equal(got[:, 0], got[:, 1])  # frame repeated temporally


def test_load_image_inputs(tmp_path):
    arr = _rand_image(6, 30, 40)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    for source in (arr, Image.fromarray(arr), str(path), path, buf.getvalue(), {"path": str(path)}):
        np.testing.assert_array_equal(load_image(source), arr)
    with pytest.raises(ValueError, match="dtype"):
        load_image(arr.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="does not exist"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="sequence of images"):
        preprocess_images(arr)


# ----------------------------------------------------------------------------- chat template

CONVERSATIONS = [
    # (ms-swift style messages, HF content-list messages)
    (
        [{"role": "user", "content": "Where is the chair?"}],
        [{"role": "user", "content": "Where is the chair?"}],
    ),
    (
        [
            {"role": "system", "content": "You are a spatial reasoner."},
            {"role": "user", "content": "<image>What is left of the table?"},
            {"role": "assistant", "content": "A lamp."},
        ],
        [
            {"role": "system", "content": "You are a spatial reasoner."},
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "What is left of the table?"},
                ],
            },
            {"role": "assistant", "content": "A lamp."},
        ],
    ),
    (
        [
            {"role": "user", "content": "Before: <image> After: <image>\nHow did the camera move?"},
            {"role": "assistant", "content": "move forward 1.5 meters"},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "turn left 30 degrees"},
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Before: "},
                    {"type": "image"},
                    {"type": "text", "text": " After: "},
                    {"type": "image"},
                    {"type": "text", "text": "\nHow did the camera move?"},
                ],
            },
            {"role": "assistant", "content": "move forward 1.5 meters"},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "turn left 30 degrees"},
        ],
    ),
]


@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
def test_render_matches_apply_chat_template(tok, case, gen):
    tokenizer, _ = tok
    swift, hf = CONVERSATIONS[case]
    if gen and swift[-1]["role"] == "assistant":
        swift, hf = swift[:-1], hf[:-1]
    ref = tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=gen)
    assert render_chat(swift, add_generation_prompt=gen) == ref
    assert render_chat(hf, add_generation_prompt=gen) == ref
    assert ref.endswith("<|im_start|>assistant\n") == gen


def test_encode_ids_masks_and_image_tokens(tok):
    tokenizer, ids = tok
    messages = CONVERSATIONS[2][0]
    images = [_rand_image(7, 60, 90), _rand_image(8, 100, 40)]
    ex = encode_conversation(messages, images, tokenizer, image_config=SMALL)
    grid = ex["image_grid_thw"]
    counts = grid.prod(-1) // 4
    # ids == tokenizing the template text with each <|image_pad|> expanded like HF's processor
    text = render_chat(messages, image_token_counts=counts.tolist())
    assert text.count("<|image_pad|>") == counts.sum()
    ref_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(ex["input_ids"], ref_ids)
    # image tokens: each run sits between vision_start and vision_end with prod(grid)//4 tokens
    input_ids = ex["input_ids"]
    starts = np.flatnonzero(input_ids == ids["vision_start_token_id"])
    assert len(starts) == 2
    for s, n in zip(starts, counts):
        assert np.all(input_ids[s + 1 : s + 1 + n] == ids["image_token_id"])
        assert input_ids[s + 1 + n] == ids["vision_end_token_id"]
    np.testing.assert_array_equal(ex["mm_token_type_ids"], input_ids == ids["image_token_id"])
    # loss mask: exactly the two assistant contents, each with its closing <|im_end|>
    mask = ex["loss_mask"]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    spans = list(zip(edges[0::2], edges[1::2]))
    assert len(spans) == 2
    answers = ["move forward 1.5 meters", "turn left 30 degrees"]
    for (s, e), answer in zip(spans, answers):
        assert tokenizer.decode(input_ids[s:e]) == answer + "<|im_end|>"
        assert input_ids[e - 1] == ids["im_end_token_id"]
        assert tokenizer.decode(input_ids[:s]).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert ex["attention_mask"].sum() == len(input_ids)
    assert ex["position_ids"].shape == (3, len(input_ids))
    assert ex["pixel_values"].shape == (grid.prod(-1).sum(), 1176)


def test_generation_prompt_has_no_targets(tok):
    tokenizer, ids = tok
    record = {
        "messages": [
            {"role": "user", "content": "<image>Which way did it turn?"},
            {"role": "assistant", "content": "left"},
        ],
        "images": [_rand_image(9, 50, 50)],
    }
    prompt, answer = split_answer(record)
    assert answer == "left" and len(prompt["messages"]) == 1
    ex = encode_record(prompt, tokenizer, image_config=SMALL, add_generation_prompt=True)
    assert ex["loss_mask"].sum() == 0
    assert tokenizer.decode(ex["input_ids"]).endswith("turn?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="split_answer"):
        encode_record(record, tokenizer, image_config=SMALL, add_generation_prompt=True)
    grpo = {"prompt": "<image>Which way did it turn?", "images": record["images"]}
    ex2 = encode_record(grpo, tokenizer, image_config=SMALL, add_generation_prompt=True)
    np.testing.assert_array_equal(ex["input_ids"], ex2["input_ids"])


def test_encode_record_paths_and_errors(tok, tmp_path):
    tokenizer, _ = tok
    arr = _rand_image(10, 40, 60)
    Image.fromarray(arr).save(tmp_path / "img.png")
    record = {
        "messages": [
            {"role": "user", "content": "<image>Describe."},
            {"role": "assistant", "content": "A room."},
        ],
        "images": ["img.png"],
    }
    ex = encode_record(record, tokenizer, image_root=tmp_path, image_config=SMALL)
    ref = encode_record(dict(record, images=[arr]), tokenizer, image_config=SMALL)
    for key in ref:
        np.testing.assert_array_equal(ex[key], ref[key])
    with pytest.raises(ValueError, match="reference 1 images but images has 2"):
        encode_conversation(record["messages"], [arr, arr], tokenizer, image_config=SMALL)
    with pytest.raises(ValueError, match="role"):
        encode_conversation([{"role": "bot", "content": "hi"}], [], tokenizer)
    with pytest.raises(ValueError, match="only user images"):
        encode_conversation([{"role": "assistant", "content": "<image>"}], [arr], tokenizer)
    with pytest.raises(ValueError, match="max_length"):
        encode_record(record, tokenizer, image_root=tmp_path, image_config=SMALL, max_length=10)


# ----------------------------------------------------------------------------- collate


def _examples(tokenizer):
    a = encode_conversation(
        [{"role": "user", "content": "<image><image>How?"}, {"role": "assistant", "content": "B"}],
        [_rand_image(11, 60, 90), _rand_image(12, 40, 40)],
        tokenizer,
        image_config=SMALL,
    )
    b = encode_conversation(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "turn left"}],
        [],
        tokenizer,
    )
    return [a, b]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_padding(tok, side):
    tokenizer, ids = tok
    examples = _examples(tokenizer)
    pad_to = max(len(e["input_ids"]) for e in examples) + 5
    batch = collate(examples, pad_to=pad_to, pad_id=ids["pad_token_id"], padding_side=side)
    assert batch["input_ids"].shape == (2, pad_to)
    assert batch["position_ids"].shape == (3, 2, pad_to)
    assert batch["rope_deltas"].shape == (2, 1)
    for b, ex in enumerate(examples):
        n = len(ex["input_ids"])
        real = slice(0, n) if side == "right" else slice(pad_to - n, pad_to)
        pad = slice(n, pad_to) if side == "right" else slice(0, pad_to - n)
        np.testing.assert_array_equal(batch["input_ids"][b, real], ex["input_ids"])
        np.testing.assert_array_equal(batch["loss_mask"][b, real], ex["loss_mask"])
        np.testing.assert_array_equal(batch["position_ids"][:, b, real], ex["position_ids"])
        assert np.all(batch["input_ids"][b, pad] == ids["pad_token_id"])
        assert batch["attention_mask"][b].sum() == n and batch["attention_mask"][b, real].all()
        assert not batch["loss_mask"][b, pad].any() and not batch["position_ids"][:, b, pad].any()
    # flat image layout, as HF's model takes it
    assert batch["image_grid_thw"].shape == (2, 3)
    assert batch["pixel_values"].shape == (batch["image_grid_thw"].prod(-1).sum(), 1176)
    with pytest.raises(ValueError, match="pad_to"):
        collate(examples, pad_to=8, pad_id=0)
    with pytest.raises(ValueError, match="padding_side"):
        collate(examples, pad_id=0, padding_side="middle")


def test_collate_per_example_images(tok):
    tokenizer, ids = tok
    examples = _examples(tokenizer)
    batch = collate(examples, pad_id=0, patches_per_example=64, images_per_example=3)
    assert batch["pixel_values"].shape == (2, 64, 1176)
    assert batch["image_grid_thw"].shape == (2, 3, 3)
    n0 = examples[0]["pixel_values"].shape[0]
    np.testing.assert_array_equal(batch["pixel_values"][0, :n0], examples[0]["pixel_values"])
    assert not batch["pixel_values"][0, n0:].any() and not batch["pixel_values"][1].any()
    np.testing.assert_array_equal(batch["image_grid_thw"][0, :2], examples[0]["image_grid_thw"])
    assert not batch["image_grid_thw"][0, 2].any() and not batch["image_grid_thw"][1].any()
    with pytest.raises(ValueError, match="patches_per_example"):
        collate(examples, pad_id=0, patches_per_example=8, images_per_example=3)
    with pytest.raises(ValueError, match="both"):
        collate(examples, pad_id=0, patches_per_example=64)
