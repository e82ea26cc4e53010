"""KV-cache generation for the Qwen2.5-VL student: jitted prefill + ``lax.while_loop`` decode.

``generate(model, input_ids, attention_mask, pixel_values=..., image_grid_thw=..., config=...,
key=...)`` takes a *left-padded* prompt batch (``w2v_jax.processing.collate(...,
padding_side="left")``) and returns a ``Generation`` of

* ``tokens``   int32 ``[B * n, T]``: sampled tokens (``pad_id`` after a row stopped),
* ``logprobs`` f32 ``[B * n, T]``: ``log_softmax(logits)`` of the *model* (temperature 1, no
  top-k/top-p filtering) at each sampled token, 0 after the row stopped — the policy log-probs a
  GRPO loss needs,
* ``lengths``  int32 ``[B * n]``: generated tokens per row, the stop token included,

where ``T = config.max_new_tokens``, ``n = config.num_samples`` and row ``b * n + s`` is sample
``s`` of prompt ``b``.

How it runs (tunix's sampler pattern, with images): the model is split into a static graphdef
and a state pytree passed as an argument. The jitted *prefill* encodes the images once, embeds
the prompt, writes its keys/values into a fresh cache of ``S = L + T`` slots, samples the first
token, then repeats cache and logits ``n`` times (samples share the prompt's image features and
prefill). The jitted *decode* runs a ``lax.while_loop`` of one-token steps over that fixed-size
cache, which is donated (updated in place); it stops at ``T`` tokens or when every row hit a stop
token. Decode positions follow HF ``generate``: M-RoPE ids of the token at cache slot ``c`` are
``c - num_left_pad + rope_delta`` on all three axes (``processing.decode_position_ids``).
Dropout is disabled (``nnx.view(model, deterministic=True)``). Randomness comes only from ``key``
(step ``i`` uses ``fold_in(key, i)``).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.processing.rope_index import decode_position_ids, get_rope_index


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (hashable: part of the jit cache key).

    greedy: argmax decoding (temperature, top_k, top_p ignored).
    temperature: > 0; logits are divided by it before filtering and sampling.
    top_k: keep the k most likely tokens (0 = off). top_p: keep the smallest set of most likely
    tokens whose probability reaches top_p (1.0 = off); both apply after the temperature.
    stop_tokens: ids that end a row (emitted, counted in ``lengths``). pad_id: written after.
    num_samples: samples per prompt. cache_dtype: KV-cache dtype (None = model compute dtype).
    temperature, the top_p value, the stop-token ids and pad_id reach the compiled stages as
    arrays, so changing them does not recompile; the other fields (and the number of stop tokens)
    select shapes or code paths and do.
    """

    max_new_tokens: int = 32
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0
    num_samples: int = 1
    cache_dtype: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))
        for name in ("max_new_tokens", "num_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"sampling.{name}={value!r}: must be a positive int")
        if not self.temperature > 0:
            raise ValueError(
                f"sampling.temperature={self.temperature!r}: must be > 0 (use greedy=True)"
            )
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"sampling.top_k={self.top_k!r}: must be an int >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p={self.top_p!r}: must be in (0, 1]")


class Generation(NamedTuple):
    """Output of ``generate`` (row ``b * num_samples + s`` = sample ``s`` of prompt ``b``)."""

    tokens: jax.Array  # int32 [B*n, T]
    logprobs: jax.Array  # f32 [B*n, T]
    lengths: jax.Array  # int32 [B*n]


# ---------------------------------------------------------------------------- sampling
def _knobs(config: SamplingConfig) -> dict:
    """Sampling values passed to the jitted stages as arrays (changing them never recompiles)."""
    return {
        "temperature": jnp.asarray(config.temperature, jnp.float32),
        "top_p": jnp.asarray(config.top_p, jnp.float32),
        "stop_tokens": jnp.asarray(config.stop_tokens, jnp.int32).reshape(-1),
        "pad_id": jnp.asarray(config.pad_id, jnp.int32),
    }


def _static(config: SamplingConfig) -> SamplingConfig:
    """``config`` with the array-valued knobs normalised: the jit cache key of the stages.

    What stays static changes shapes or code paths: max_new_tokens, num_samples, greedy, top_k,
    whether top_p is on, the number of stop tokens, cache_dtype.
    """
    return dataclasses.replace(
        config,
        temperature=1.0,
        top_k=0 if config.greedy else config.top_k,
        top_p=0.5 if config.top_p < 1.0 and not config.greedy else 1.0,
        stop_tokens=(0,) * len(config.stop_tokens),
        pad_id=0,
    )


def _filter(logits: jax.Array, config: SamplingConfig, knobs: dict) -> jax.Array:
    logits = logits.astype(jnp.float32) / knobs["temperature"]
    neg_inf = jnp.asarray(-jnp.inf, logits.dtype)
    if config.top_k > 0 and config.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, config.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if config.top_p < 1.0:
        desc = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly likelier tokens
        keep = mass_before < knobs["top_p"]  # always true for the most likely token
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg_inf, logits)
    return logits


def _sample(logits: jax.Array, key: jax.Array, config: SamplingConfig, knobs: dict) -> jax.Array:
    if config.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, _filter(logits, config, knobs), axis=-1).astype(jnp.int32)


def filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """Temperature, top-k and top-p applied to ``logits [B, V]``; removed tokens get -inf."""
    return _filter(logits, config, _knobs(config))


def sample_logits(logits: jax.Array, key: jax.Array, config: SamplingConfig) -> jax.Array:
    """Next tokens ``[B]`` int32 from ``logits [B, V]`` (greedy or filtered categorical)."""
    return _sample(logits, key, config, _knobs(config))


def _token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def _record(carry: dict, step, logits: jax.Array, key: jax.Array, config, knobs: dict) -> dict:
    """Samples the token of ``step`` for every row and writes it (pad after a stop)."""
    token = _sample(logits, jax.random.fold_in(key, step), config, knobs)
    logprob = _token_logprob(logits, token)
    live = ~carry["done"]
    token = jnp.where(live, token, knobs["pad_id"])
    logprob = jnp.where(live, logprob, 0.0)
    stop = jnp.any(token[:, None] == knobs["stop_tokens"][None, :], axis=-1)
    return dict(
        carry,
        tokens=carry["tokens"].at[:, step].set(token),
        logprobs=carry["logprobs"].at[:, step].set(logprob),
        lengths=carry["lengths"] + live.astype(jnp.int32),
        done=carry["done"] | (live & stop),
        last=token,
    )


# ---------------------------------------------------------------------------- jitted stages
@partial(jax.jit, static_argnums=(0, 9))
def _prefill(
    graphdef,
    state,
    input_ids,
    slot_mask,
    position_ids,
    pixel_values,
    image_grid_thw,
    key,
    knobs,
    config: SamplingConfig,
):
    """Prompt -> decode carry (cache, buffers, first token sampled), repeated per sample."""
    model = nnx.merge(graphdef, state)
    batch, length = input_ids.shape
    features = None
    if pixel_values is not None:
        features = model.encode_images(pixel_values, image_grid_thw)
    cache = model.init_cache(batch, slot_mask.shape[1], config.cache_dtype)
    hidden, cache = model.hidden_states(
        input_ids,
        attention_mask=slot_mask,
        position_ids=position_ids,
        image_features=features,
        cache=cache,
        cache_index=0,
    )
    logits = model.logits(hidden[:, -1]).astype(jnp.float32)  # (B, V) of the next token
    n = config.num_samples
    rows = batch * n
    steps = config.max_new_tokens
    repeat = lambda x: jnp.repeat(x, n, axis=0)  # noqa: E731
    carry = {
        "cache": jax.tree.map(repeat, cache),
        "tokens": jnp.full((rows, steps), knobs["pad_id"], jnp.int32),
        "logprobs": jnp.zeros((rows, steps), jnp.float32),
        "lengths": jnp.zeros((rows,), jnp.int32),
        "done": jnp.zeros((rows,), bool),
        "last": jnp.zeros((rows,), jnp.int32),
        "step": jnp.asarray(1, jnp.int32),
    }
    return _record(carry, 0, repeat(logits), key, config, knobs)


@partial(jax.jit, static_argnums=(0, 8), donate_argnums=(2,))
def _decode(
    graphdef, state, carry, slot_mask, rope_deltas, num_left_pad, key, knobs, config, prompt_len
):
    """``lax.while_loop`` of one-token steps; ``carry`` (with the KV cache) is donated."""
    model = nnx.merge(graphdef, state)
    steps = config.max_new_tokens

    def cond(c):
        return (c["step"] < steps) & ~jnp.all(c["done"])

    def body(c):
        step = c["step"]
        slot = prompt_len + step - 1  # cache slot of the token sampled at step - 1
        positions = decode_position_ids(slot, rope_deltas, num_left_pad)  # (3, B, 1)
        hidden, cache = model.hidden_states(
            c["last"][:, None],
            attention_mask=slot_mask,
            position_ids=positions,
            cache=c["cache"],
            cache_index=slot,
        )
        logits = model.logits(hidden[:, 0]).astype(jnp.float32)
        c = _record(dict(c, cache=cache), step, logits, key, config, knobs)
        return dict(c, step=step + 1)

    return jax.lax.while_loop(cond, body, carry)


# ---------------------------------------------------------------------------- entry point
def _host(x: Any, name: str, ndim: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} has shape {x.shape}; expected {ndim} dimensions")
    return x


def generate(
    model: nnx.Module,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    position_ids: Any = None,
    rope_deltas: Any = None,
    config: SamplingConfig = SamplingConfig(),
    key: jax.Array | None = None,
) -> Generation:
    """Samples ``config.max_new_tokens`` tokens after each left-padded prompt.

    Args:
      model: a ``Qwen2_5_VL`` (or a model with its ``encode_images`` / ``hidden_states`` /
        ``logits`` / ``init_cache`` methods and ``config``), possibly with LoRA adapters.
      input_ids: ``[B, L]`` int, left-padded; attention_mask ``[B, L]`` (1 = token, 0 = left
        padding; None = no padding).
      pixel_values ``[N, C*t*p*p]`` + image_grid_thw ``[num_images, 3]``: all images of the
        batch in prompt order (HF's flat layout), or None for text only.
      position_ids ``[3, B, L]`` + rope_deltas ``[B, 1]``: the prompt's M-RoPE ids (``collate``
        returns both); computed with ``get_rope_index`` when either is None.
      config: ``SamplingConfig``. key: ``jax.random`` key (required unless greedy).
    Returns a ``Generation`` (see the module docstring).
    """
    if not isinstance(config, SamplingConfig):
        raise ValueError(f"config must be a SamplingConfig, got {type(config).__name__}")
    if key is None:
        if not config.greedy:
            raise ValueError("key=None: sampling (greedy=False) needs a jax.random key")
        key = jax.random.key(0)
    ids = _host(input_ids, "input_ids", 2).astype(np.int32)
    batch, length = ids.shape
    mask = (
        np.ones_like(ids) if attention_mask is None else _host(attention_mask, "attention_mask", 2)
    )
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    mask = mask.astype(np.int32)
    real = mask.sum(axis=1)
    if np.any(real == 0) or np.any(np.diff(mask, axis=1) < 0):
        raise ValueError(
            "attention_mask must be left padding (0...0 1...1) with at least one token per row; "
            "use collate(..., padding_side='left')"
        )
    if (pixel_values is None) != (image_grid_thw is None):
        raise ValueError("pixel_values and image_grid_thw must be given together")
    if position_ids is None or rope_deltas is None:
        cfg = model.config
        position_ids, rope_deltas = get_rope_index(
            ids,
            None if image_grid_thw is None else np.asarray(image_grid_thw),
            mask,
            spatial_merge_size=cfg.vision.spatial_merge_size,
            image_token_id=cfg.image_token_id,
            vision_start_token_id=cfg.vision_start_token_id,
        )
    position_ids = _host(position_ids, "position_ids", 3).astype(np.int32)
    if position_ids.shape != (3, batch, length):
        raise ValueError(
            f"position_ids shape {position_ids.shape}: expected (3, {batch}, {length})"
        )
    rope_deltas = np.asarray(rope_deltas, np.int32).reshape(batch, 1)

    n, steps = config.num_samples, config.max_new_tokens
    slot_mask = np.concatenate([mask, np.ones((batch, steps), np.int32)], axis=1)  # (B, L + T)
    knobs, static = _knobs(config), _static(config)
    view = nnx.view(model, deterministic=True, raise_if_not_found=False)
    graphdef, state = nnx.split(view)
    carry = _prefill(
        graphdef,
        state,
        jnp.asarray(ids),
        jnp.asarray(slot_mask),
        jnp.asarray(position_ids),
        None if pixel_values is None else jnp.asarray(pixel_values),
        None if image_grid_thw is None else jnp.asarray(image_grid_thw, jnp.int32),
        key,
        knobs,
        static,
    )
    if steps == 1:  # the prefill sampled the only token
        return Generation(carry["tokens"], carry["logprobs"], carry["lengths"])
    rep = lambda x: jnp.asarray(np.repeat(x, n, axis=0))  # noqa: E731
    carry = _decode(
        graphdef,
        state,
        carry,
        rep(slot_mask),
        rep(rope_deltas),
        rep((length - real)[:, None].astype(np.int32)),
        key,
        knobs,
        static,
        jnp.asarray(length, jnp.int32),
    )
    return Generation(carry["tokens"], carry["logprobs"], carry["lengths"])
