"""Qwen2.5-VL: vision tower + Qwen2 decoder, image features scattered into ``<|image_pad|>`` tokens.

Called like Hugging Face's ``Qwen2_5_VLForConditionalGeneration`` with the same processor
outputs::

    logits = model(input_ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)

To encode images once and reuse the features (several samples per prompt, decoding)::

    feats = model.encode_images(pv, grid)                       # (num_image_tokens, D)
    logits = model(input_ids, image_features=feats, position_ids=pos, attention_mask=mask)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.models.vlm import layers
from w2v_jax.models.vlm.config import VLMConfig
from w2v_jax.models.vlm.text import KVCache, TextModel
from w2v_jax.models.vlm.vision import VisionTransformer


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


class Qwen2_5_VL(nnx.Module):
    """The model. Submodules follow HF names: ``visual``, ``language_model``, ``lm_head``.

    ``lm_head`` is None when ``cfg.tie_word_embeddings`` (logits use the embedding matrix).
    Build it inside a mesh + rules context (``w2v_jax.sharding.create_sharded`` /
    ``create_unsharded``) because its parameters carry logical axis names.
    """

    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.visual = VisionTransformer(cfg, rngs=rngs)
        self.language_model = TextModel(cfg, rngs=rngs)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = layers.linear(
                cfg,
                cfg.text.hidden_size,
                cfg.text.vocab_size,
                ("embed", "vocab"),
                use_bias=False,
                rngs=rngs,
            )

    # ------------------------------------------------------------------ pieces
    def encode_images(self, pixel_values: jax.Array, image_grid_thw: jax.Array) -> jax.Array:
        """Vision tower: ``(N, C*t*p*p)``, ``(num_images, 3)`` -> features ``(N / m^2, D)``."""
        return self.visual(pixel_values, image_grid_thw)

    def embed(
        self,
        input_ids: jax.Array,
        image_features: jax.Array | None = None,
        image_grid_thw: jax.Array | None = None,
    ) -> jax.Array:
        """Token embeddings ``(B, L, D)`` with ``image_features`` rows written, in order, at the
        ``<|image_pad|>`` positions (row-major over batch then length, as HF's masked_scatter).

        Rows of ``image_features`` past the number of image tokens (padding) are unused.
        """
        embeds = self.language_model.embed_tokens(input_ids)
        if image_features is None:
            return embeds
        is_image = input_ids == self.config.image_token_id
        if _is_concrete(is_image, image_features):
            n_tokens = int(jnp.sum(is_image))
            n_feats = image_features.shape[0]
            if image_grid_thw is not None and _is_concrete(image_grid_thw):
                grid = np.asarray(image_grid_thw)
                n_feats = int(np.sum(np.prod(grid, axis=-1))) // self.config.vision.merge_unit
            if n_tokens != n_feats:
                raise ValueError(
                    f"Image features and image tokens do not match: {n_tokens} <|image_pad|> "
                    f"tokens (id {self.config.image_token_id}) in input_ids, {n_feats} image "
                    "feature rows"
                )
        slot = jnp.cumsum(is_image.reshape(-1)) - 1
        slot = jnp.clip(slot, 0, image_features.shape[0] - 1).reshape(is_image.shape)
        scattered = image_features.astype(embeds.dtype)[slot]
        return jnp.where(is_image[..., None], scattered, embeds)

    def position_ids(
        self,
        input_ids: jax.Array,
        image_grid_thw: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """M-RoPE positions ``(3, B, L)`` for a full prompt (HF ``get_rope_index`` semantics).

        Text only: ``cumsum(attention_mask) - 1`` (0 on padding), i.e. ``arange(L)`` without
        padding, on all three axes. With images: the host-side numpy
        ``w2v_jax.processing.rope_index.get_rope_index`` (needs concrete arrays; under ``jit``
        compute the positions outside and pass them in).
        """
        b, length = input_ids.shape
        if image_grid_thw is None:
            if attention_mask is None:
                pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
            else:
                mask = attention_mask.astype(jnp.int32)
                pos = jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
            return jnp.broadcast_to(pos[None], (3, b, length))
        if not _is_concrete(input_ids, image_grid_thw, attention_mask):
            raise ValueError(
                "position_ids=None with images needs concrete input_ids/image_grid_thw; under jit "
                "pass position_ids from w2v_jax.processing.rope_index.get_rope_index"
            )
        from w2v_jax.processing.rope_index import get_rope_index  # host-side numpy helper

        pos, _ = get_rope_index(
            np.asarray(input_ids),
            np.asarray(image_grid_thw),
            None if attention_mask is None else np.asarray(attention_mask),
            spatial_merge_size=self.config.vision.spatial_merge_size,
            image_token_id=self.config.image_token_id,
            vision_start_token_id=self.config.vision_start_token_id,
        )
        return jnp.asarray(pos, jnp.int32)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head: ``(..., D) -> (..., V)`` (tied: ``hidden @ embed_tokens.T``)."""
        if self.lm_head is None:
            return self.language_model.embed_tokens.attend(hidden)
        return self.lm_head(hidden)

    def init_cache(self, batch: int, max_length: int, dtype=None) -> KVCache:
        """Zero KV cache for ``batch`` sequences of up to ``max_length`` tokens."""
        return self.language_model.init_cache(batch, max_length, dtype)

    def hidden_states(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array | None = None,
        image_grid_thw: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        image_features: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed decoder states ``(B, L, D)`` and the updated cache (see ``__call__``)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids shape {input_ids.shape}: expected (batch, length)")
        if pixel_values is not None:
            if image_features is not None:
                raise ValueError("pass either pixel_values or image_features, not both")
            if image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            image_features = self.encode_images(pixel_values, image_grid_thw)
        embeds = self.embed(input_ids, image_features, image_grid_thw)
        b, length = input_ids.shape
        if position_ids is None:
            if cache is None:
                position_ids = self.position_ids(input_ids, image_grid_thw, attention_mask)
            elif image_grid_thw is not None:
                raise ValueError(
                    "with a cache and images, pass position_ids (get_rope_index + offsets)"
                )
            else:
                pos = cache_index + jnp.arange(length, dtype=jnp.int32)
                position_ids = jnp.broadcast_to(pos, (3, b, length))
        elif position_ids.ndim == 2:
            position_ids = jnp.broadcast_to(position_ids[None], (3, b, length))
        return self.language_model(embeds, position_ids, attention_mask, cache, cache_index)

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array | None = None,
        image_grid_thw: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        image_features: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Logits ``(B, L, V)`` (compute dtype); with ``cache``: ``(logits, updated_cache)``.

        input_ids ``(B, L)`` int; pixel_values ``(N, C*t*p*p)`` + image_grid_thw
        ``(num_images, 3)`` (all images of the batch, in prompt order) or precomputed
        ``image_features`` from ``encode_images``; attention_mask ``(B, L)`` (``(B, S)`` with a
        cache), 1 = token, 0 = padding; position_ids ``(3, B, L)`` (or ``(B, L)``), computed
        when None (see ``position_ids``). With a cache of ``S`` slots the tokens are written at
        slots ``[cache_index, cache_index + L)``.
        """
        hidden, new_cache = self.hidden_states(
            input_ids,
            pixel_values,
            image_grid_thw,
            attention_mask,
            position_ids,
            image_features=image_features,
            cache=cache,
            cache_index=cache_index,
        )
        logits = self.logits(hidden)
        return logits if cache is None else (logits, new_cache)
