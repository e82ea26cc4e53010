"""KV-cache generation (w2v_jax.generate) against Hugging Face ``generate`` and full forwards.

Tiny random Qwen2.5-VL (tests/vlm_fixtures.py), fp32, matmul precision "highest". The prompt
batch is left-padded and holds images (one spanning several attention windows).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import vlm_fixtures as vf
from w2v_jax.generate import Generation, SamplingConfig, filter_logits, generate, sample_logits
from w2v_jax.hf import load_vlm
from w2v_jax.processing.rope_index import get_rope_index
from w2v_jax import sharding

STEPS = 20
PAD = 0


pytestmark = pytest.mark.usefixtures("highest_precision")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf_model, path = vf.save_hf_model(tmp_path_factory.mktemp("gen"), seed=0)
    model, _ = load_vlm(path)
    # Row 0: text, a 2x3-window image, text; row 1 (left-padded): text, small image, text.
    ids, mask, grids = vf.make_prompts([[3, (1, 8, 12), 4], [5, (1, 4, 4), 2]], seed=1, pad_id=PAD)
    pixels = vf.random_pixels(grids, seed=2)
    return (
        hf_model,
        model,
        dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids),
    )


GREEDY = SamplingConfig(max_new_tokens=STEPS, greedy=True, pad_id=PAD)
# One compiled sampling setup shared by several tests (only array-valued knobs differ).
SAMPLED = SamplingConfig(max_new_tokens=12, temperature=1.3, top_p=0.95, num_samples=2, pad_id=PAD)


@pytest.fixture(scope="module")
def greedy_out(setup):
    _, model, prompt = setup
    return generate(model, **prompt, config=GREEDY)


def _cfg(model):
    c = model.config
    return dict(
        spatial_merge_size=c.vision.spatial_merge_size,
        image_token_id=c.image_token_id,
        vision_start_token_id=c.vision_start_token_id,
    )


@nnx.jit
def _forward(model, input_ids, pixel_values, image_grid_thw, attention_mask, position_ids):
    return model(
        input_ids,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        attention_mask=attention_mask,
        position_ids=position_ids,
    )


def _full_logprobs(model, prompt, out: Generation, num_samples: int) -> np.ndarray:
    """log_softmax of a cache-free forward over prompt + completion at the sampled tokens."""
    ids = np.repeat(prompt["input_ids"], num_samples, axis=0)
    mask = np.repeat(prompt["attention_mask"], num_samples, axis=0)
    tokens = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    steps = tokens.shape[1]
    gen_mask = (np.arange(steps)[None] < lengths[:, None]).astype(mask.dtype)
    full_ids = np.concatenate([ids, tokens], axis=1)
    full_mask = np.concatenate([mask, gen_mask], axis=1)
    # Images are per prompt: repeat each prompt's images num_samples times.
    grids = prompt["image_grid_thw"]
    per_image = np.prod(grids, axis=-1)
    starts = np.concatenate([[0], np.cumsum(per_image)])
    images_per_row = [int(np.sum(r == vf.VISION_START)) for r in prompt["input_ids"]]
    pix, grid = [], []
    k = 0
    for n_img in images_per_row:
        rows = range(k, k + n_img)
        for _ in range(num_samples):
            for i in rows:
                pix.append(prompt["pixel_values"][starts[i] : starts[i + 1]])
                grid.append(grids[i])
        k += n_img
    pix, grid = np.concatenate(pix), np.stack(grid)
    pos, _ = get_rope_index(full_ids, grid, full_mask, **_cfg(model))
    logits = _forward(
        model,
        jnp.asarray(full_ids),
        jnp.asarray(pix),
        jnp.asarray(grid),
        jnp.asarray(full_mask),
        jnp.asarray(pos),
    )
    length = ids.shape[1]
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64)[:, length - 1 : -1], axis=-1)
    picked = np.take_along_axis(np.asarray(logp), tokens[..., None], axis=-1)[..., 0]
    return np.where(gen_mask > 0, picked, 0.0)


def test_greedy_matches_hf_generate(setup, greedy_out):
    hf_model, _, prompt = setup
    out = greedy_out
    t = lambda x: torch.as_tensor(np.asarray(x))  # noqa: E731
    hf_model.generation_config.eos_token_id = None  # no stop token: all 20 tokens are compared
    with torch.no_grad():
        ref = hf_model.generate(
            input_ids=t(prompt["input_ids"]),
            attention_mask=t(prompt["attention_mask"]),
            pixel_values=t(prompt["pixel_values"]),
            image_grid_thw=t(prompt["image_grid_thw"]),
            mm_token_type_ids=t(prompt["input_ids"] == vf.IMAGE).int(),
            max_new_tokens=STEPS,
            do_sample=False,
            pad_token_id=PAD,
        )
    ref = ref[:, prompt["input_ids"].shape[1] :].numpy()
    assert ref.shape == (2, STEPS)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    np.testing.assert_array_equal(np.asarray(out.lengths), [STEPS, STEPS])
    assert out.logprobs.shape == (2, STEPS) and np.all(np.asarray(out.logprobs) <= 0)


def test_sampled_logprobs_equal_full_forward(setup):
    _, model, prompt = setup
    out = generate(model, **prompt, config=SAMPLED, key=jax.random.key(7))
    assert out.tokens.shape == (4, 12)
    full = _full_logprobs(model, prompt, out, num_samples=2)
    np.testing.assert_allclose(np.asarray(out.logprobs), full, atol=1e-5, rtol=0)
    # Several samples of a prompt share its prefill but differ.
    tokens = np.asarray(out.tokens)
    assert not np.array_equal(tokens[0], tokens[1]) and not np.array_equal(tokens[2], tokens[3])


def test_sampling_is_keyed(setup):
    _, model, prompt = setup
    cfg = dataclasses.replace(SAMPLED, temperature=1.0, top_p=0.9)
    a = generate(model, **prompt, config=cfg, key=jax.random.key(1))
    b = generate(model, **prompt, config=cfg, key=jax.random.key(1))
    c = generate(model, **prompt, config=cfg, key=jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_top_k_one_and_tiny_top_p_are_greedy(setup, greedy_out):
    _, model, prompt = setup
    steps = SAMPLED.max_new_tokens
    expected = np.repeat(np.asarray(greedy_out.tokens)[:, :steps], 2, axis=0)
    for cfg in (
        dataclasses.replace(SAMPLED, top_k=1, top_p=1.0, temperature=2.0),
        dataclasses.replace(SAMPLED, top_p=1e-6, temperature=2.0),
    ):
        out = generate(model, **prompt, config=cfg, key=jax.random.key(3))
        np.testing.assert_array_equal(np.asarray(out.tokens), expected)


def test_filter_logits_restricts_support():
    logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.1, 0.3, 0.15], [0.2, 0.2, 0.2, 0.2, 0.2]]))
    kept = lambda cfg: np.isfinite(np.asarray(filter_logits(logits, cfg)))  # noqa: E731
    np.testing.assert_array_equal(kept(SamplingConfig(top_k=2))[0], [0, 1, 0, 1, 0])
    # top_p=0.65: 0.4 + 0.3 = 0.7 >= 0.65 after two tokens.
    np.testing.assert_array_equal(kept(SamplingConfig(top_p=0.65))[0], [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(kept(SamplingConfig(top_p=0.75))[0], [0, 1, 0, 1, 1])
    assert kept(SamplingConfig(top_k=3, top_p=0.65))[0].sum() == 2
    # Samples never leave the support.
    keys = jax.random.split(jax.random.key(0), 400)
    draws = jax.vmap(lambda k: sample_logits(logits, k, SamplingConfig(top_k=3)))(keys)
    assert set(np.unique(np.asarray(draws)[:, 0])) == {1, 3, 4}
    draws = jax.vmap(lambda k: sample_logits(logits, k, SamplingConfig(top_p=0.65)))(keys)
    assert set(np.unique(np.asarray(draws)[:, 0])) == {1, 3}


def test_stop_tokens_end_sequences(setup, greedy_out):
    _, model, prompt = setup
    tokens = np.asarray(greedy_out.tokens)
    stop = int(tokens[0, 4])  # row 0 must stop at step 4 (or earlier if the token repeats)
    out = generate(model, **prompt, config=dataclasses.replace(GREEDY, stop_tokens=(stop,)))
    got, logp, lengths = np.asarray(out.tokens), np.asarray(out.logprobs), np.asarray(out.lengths)
    for row in range(2):
        hits = np.flatnonzero(tokens[row] == stop)
        n = int(hits[0]) + 1 if len(hits) else STEPS
        assert lengths[row] == n
        np.testing.assert_array_equal(got[row, :n], tokens[row, :n])
        assert np.all(got[row, n:] == PAD) and np.all(logp[row, n:] == 0)
        np.testing.assert_allclose(
            logp[row, :n], np.asarray(greedy_out.logprobs)[row, :n], atol=1e-6
        )
    assert lengths[0] <= 5


def test_images_encoded_once_for_all_samples(setup, monkeypatch):
    _, model, prompt = setup
    seen = []
    original = type(model).encode_images

    def spy(self, pixel_values, image_grid_thw):
        seen.append(pixel_values.shape)
        return original(self, pixel_values, image_grid_thw)

    monkeypatch.setattr(type(model), "encode_images", spy)
    cfg = dataclasses.replace(SAMPLED, max_new_tokens=1, num_samples=3)  # a fresh trace
    out = generate(model, **prompt, config=cfg, key=jax.random.key(0))
    assert out.tokens.shape == (6, 1)
    assert seen == [prompt["pixel_values"].shape]


def test_text_only_prompt_matches_full_forward(setup):
    _, model, _ = setup
    ids, mask, _ = vf.make_prompts([[7], [4]], seed=5, pad_id=PAD)
    out = generate(model, ids, mask, config=GREEDY)
    seqs = np.concatenate([ids, np.asarray(out.tokens)], axis=1)
    full_mask = np.concatenate([mask, np.ones((2, STEPS), mask.dtype)], axis=1)
    pos, _ = get_rope_index(seqs, None, full_mask, **_cfg(model))
    logits = np.asarray(
        _forward(model, jnp.asarray(seqs), None, None, jnp.asarray(full_mask), jnp.asarray(pos))
    )
    greedy = logits[:, ids.shape[1] - 1 : -1].argmax(-1)
    np.testing.assert_array_equal(np.asarray(out.tokens), greedy)


def test_sharded_model_generates_the_same(setup, greedy_out, tmp_path_factory):
    _, _, prompt = setup
    _, path = vf.save_hf_model(tmp_path_factory.mktemp("gen_sharded"), seed=0)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    model, _ = load_vlm(path, mesh=mesh)
    assert len(model.language_model.layers[0].self_attn.q_proj.kernel[...].sharding.device_set) == 8
    out = generate(model, **prompt, config=GREEDY)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy_out.tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(greedy_out.logprobs), atol=1e-5)


def test_kv_cache_is_sharded_on_the_batch_axes_under_a_mesh(setup):
    _, model, _ = setup
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    with sharding.rules_context(mesh):
        cache = jax.jit(lambda: model.init_cache(4, 16))()
    spec = cache[0]["k"].sharding.spec
    assert tuple(spec)[:1] == (sharding.BATCH_AXES,) and all(a is None for a in spec[1:])
    assert cache[0]["k"].shape == (4, 2, 16, 16)
    unsharded = model.init_cache(4, 16)  # no mesh: a plain array on one device
    assert len(unsharded[0]["k"].sharding.device_set) == 1


def test_bad_inputs_raise(setup):
    _, model, prompt = setup
    right = dict(prompt, attention_mask=prompt["attention_mask"][:, ::-1].copy())
    with pytest.raises(ValueError, match="left padding"):
        generate(model, **right, config=SamplingConfig(greedy=True))
    with pytest.raises(ValueError, match="key"):
        generate(model, **prompt, config=SamplingConfig())
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0)
