"""Tokenizer tests: train -> save -> reload gives the same ids; Qwen2.5 special tokens are single
ids in Qwen's order; text round-trips; training is deterministic; errors are clear."""

import filecmp

import pytest

from w2v_jax.processing import (
    QWEN2_5_SPECIAL_TOKENS,
    QWEN2_5_VL_CHAT_TEMPLATE,
    load_tokenizer,
    special_token_ids,
    train_tokenizer,
)

CORPUS = [
    "move forward 1.5 meters, then turn left 30 degrees.",
    "Which object is closest to the camera after it turns right by 45 degrees?",
    "The red chair is at [120, 340, 260, 610]; answer: B",
    "def f(x):\n    return x * 2  # code\n",
    "Größe, café, 物体在左边。 🙂",
] * 30
SAMPLES = [
    "move forward 2 meters and turn right 15 degrees",
    "Unseen words: zygote quixotic 12345 !!",
    "物体在左边。 café 🙂\n\n  tabs\tand spaces  ",
    "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>Hi<|im_end|>",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    tokenizer, ids = train_tokenizer(CORPUS, 512, out)
    return tokenizer, ids, out


def test_save_reload_same_ids(trained):
    tokenizer, ids, out = trained
    reloaded = load_tokenizer(out)
    assert len(reloaded) == len(tokenizer) <= 512
    for text in SAMPLES:
        a = tokenizer(text, add_special_tokens=False)["input_ids"]
        b = reloaded(text, add_special_tokens=False)["input_ids"]
        assert a == b
    assert special_token_ids(reloaded) == ids
    assert reloaded.eos_token == "<|im_end|>" and reloaded.pad_token == "<|endoftext|>"
    assert reloaded.chat_template == QWEN2_5_VL_CHAT_TEMPLATE
    text = reloaded.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_special_tokens_single_ids_in_qwen_order(trained):
    tokenizer, ids, _ = trained
    base = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert base == len(tokenizer) - len(QWEN2_5_SPECIAL_TOKENS)
    for offset, token in enumerate(QWEN2_5_SPECIAL_TOKENS):
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [base + offset]
    # same offsets as the real vocabulary: <|endoftext|>=151643, <|vision_start|>=151652,
    # <|image_pad|>=151655, <|im_end|>=151645
    assert ids["image_token_id"] - ids["pad_token_id"] == 151655 - 151643
    assert ids["vision_start_token_id"] - ids["pad_token_id"] == 151652 - 151643
    assert ids["eos_token_id"] == ids["im_end_token_id"] == base + 2
    # special tokens are never produced by merging ordinary text
    ids_text = tokenizer("im_start image_pad vision", add_special_tokens=False)["input_ids"]
    assert all(i < base for i in ids_text)


def test_round_trip_text(trained):
    tokenizer, _, _ = trained
    for text in SAMPLES:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    ids = tokenizer("<|im_start|>a<tool_call>b<|im_end|>", add_special_tokens=False)["input_ids"]
    # the first 14 added tokens are "special" (skipped), <tool_call> etc. are not - as in Qwen2.5
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a<tool_call>b"


def test_merges_learned_and_deterministic(trained, tmp_path):
    tokenizer, _, out = trained
    # frequent corpus words compress well below one token per byte
    text = "move forward 1.5 meters, then turn left 30 degrees."
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < len(text.encode()) / 2
    train_tokenizer(CORPUS, 512, tmp_path)
    assert filecmp.cmp(out / "tokenizer.json", tmp_path / "tokenizer.json", shallow=False)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, 200)
    with pytest.raises(ValueError, match="iterable of strings"):
        train_tokenizer("just one string", 400)
    with pytest.raises(ValueError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_special_token_ids_requires_qwen_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel()
    with pytest.raises(ValueError, match="<\\|image_pad\\|>"):
        special_token_ids(PreTrainedTokenizerFast(tokenizer_object=bare))
