"""Static configuration of the Qwen2.5-VL model: frozen dataclasses + Hugging Face config.json I/O.

``VLMConfig.from_hf_dict`` reads both spellings of a Qwen2.5-VL ``config.json``: the hub one of
the released checkpoints (text fields at the top level, ``rope_scaling={"type": "mrope", ...}``,
vision ``in_chans``) and the nested one transformers 5 writes (``text_config`` with
``rope_parameters``). ``to_hf_dict`` writes the nested transformers-5 form.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "quick_gelu")
_DTYPES = ("float32", "bfloat16", "float16")


def _positive(owner: str, **fields: int) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}.{name}={value!r}: must be a positive int")


def _dtype_name(owner: str, name: str, value: Any) -> str:
    try:
        resolved = jnp.dtype(value).name
    except TypeError as err:
        raise ValueError(f"{owner}.{name}={value!r}: not a dtype; allowed {_DTYPES}") from err
    if resolved not in _DTYPES:
        raise ValueError(f"{owner}.{name}={value!r}: allowed {_DTYPES}")
    return resolved


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Vision tower (ViT with windowed attention + 2x2 patch merger).

    ``window_size`` is in pixels: a window spans ``window_size // spatial_merge_size //
    patch_size`` merged tokens per side. ``fullatt_block_indexes`` are the blocks that attend
    over a whole frame instead of a window.
    """

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 3584
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2
    rms_norm_eps: float = 1e-6

    def __post_init__(self):
        _positive(
            "vision_config",
            depth=self.depth,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_heads=self.num_heads,
            out_hidden_size=self.out_hidden_size,
            in_channels=self.in_channels,
            patch_size=self.patch_size,
            temporal_patch_size=self.temporal_patch_size,
            spatial_merge_size=self.spatial_merge_size,
            window_size=self.window_size,
        )
        object.__setattr__(
            self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes)
        )
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(
                f"vision_config.hidden_size={self.hidden_size}: must divide by num_heads="
                f"{self.num_heads} into a head_dim that is a multiple of 4 (2-D rotary)"
            )
        if self.window_units < 1:
            raise ValueError(
                f"vision_config.window_size={self.window_size}: must be >= spatial_merge_size * "
                f"patch_size = {self.spatial_merge_size * self.patch_size} pixels"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"vision_config.hidden_act={self.hidden_act!r}: allowed {_ACTIVATIONS}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened (C, t, p, p) patch row of ``pixel_values``."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Patches merged into one output token (``spatial_merge_size ** 2``)."""
        return self.spatial_merge_size**2

    @property
    def window_units(self) -> int:
        """Window side in merged tokens (HF's ``vit_merger_window_size``)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder: GQA attention with q/k/v biases, RMSNorm, SwiGLU, sectioned M-RoPE.

    ``mrope_section`` splits the ``head_dim // 2`` rotary frequencies into (temporal, height,
    width) chunks; it must sum to ``head_dim // 2``.
    """

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"
    bos_token_id: int | None = 151643
    eos_token_id: int | tuple[int, ...] | None = 151645
    pad_token_id: int | None = None

    def __post_init__(self):
        _positive(
            "text_config",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
        )
        object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
        if isinstance(self.eos_token_id, (list, tuple)):
            object.__setattr__(self, "eos_token_id", tuple(int(t) for t in self.eos_token_id))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"text_config.hidden_size={self.hidden_size}: must divide by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"text_config.num_key_value_heads={self.num_key_value_heads}: must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if len(self.mrope_section) != 3 or sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"text_config.mrope_section={self.mrope_section}: need 3 chunks summing to "
                f"head_dim // 2 = {self.head_dim // 2}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"text_config.hidden_act={self.hidden_act!r}: allowed {_ACTIVATIONS}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """The whole Qwen2.5-VL model.

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype of parameters (both
    ``"float32"`` or ``"bfloat16"``); ``remat`` rematerialises every vision block and decoder
    layer in the backward pass.
    """

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dtype", _dtype_name("config", "dtype", self.dtype))
        object.__setattr__(
            self, "param_dtype", _dtype_name("config", "param_dtype", self.param_dtype)
        )
        for name in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.text.vocab_size:
                raise ValueError(
                    f"config.{name}={value!r}: must be a token id in [0, vocab_size="
                    f"{self.text.vocab_size})"
                )
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(
                f"vision_config.out_hidden_size={self.vision.out_hidden_size}: must equal "
                f"text_config.hidden_size={self.text.hidden_size}"
            )
        bad = [i for i in self.vision.fullatt_block_indexes if not 0 <= i < self.vision.depth]
        if bad:
            raise ValueError(
                f"vision_config.fullatt_block_indexes={self.vision.fullatt_block_indexes}: "
                f"{bad} outside [0, depth={self.vision.depth})"
            )

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> "VLMConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ Hugging Face I/O
    @classmethod
    def from_hf_dict(
        cls,
        d: Mapping[str, Any],
        *,
        dtype: Any = "float32",
        param_dtype: Any = None,
        remat: bool = False,
    ) -> "VLMConfig":
        """Builds the config from a parsed Qwen2.5-VL ``config.json`` (either spelling).

        ``param_dtype`` defaults to ``dtype``. Unsupported features (rope scaling other than
        mrope/default, sliding-window attention) raise ValueError.
        """
        model_type = d.get("model_type", "qwen2_5_vl")
        if model_type != "qwen2_5_vl":
            raise ValueError(
                f"config.json model_type={model_type!r}: only 'qwen2_5_vl' is supported"
            )
        nested = d.get("text_config") or {}

        def text(name: str, default: Any = None) -> Any:
            if name in nested and nested[name] is not None:
                return nested[name]
            return d.get(name, default)

        rope = text("rope_parameters") or text("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise ValueError(f"config.json rope type {rope_type!r}: allowed 'default' or 'mrope'")
        if text("use_sliding_window", False):
            raise ValueError(
                "config.json use_sliding_window=True: sliding-window attention is not supported"
            )
        defaults = TextConfig()
        text_cfg = TextConfig(
            vocab_size=text("vocab_size"),
            hidden_size=text("hidden_size"),
            intermediate_size=text("intermediate_size"),
            num_hidden_layers=text("num_hidden_layers"),
            num_attention_heads=text("num_attention_heads"),
            num_key_value_heads=text("num_key_value_heads") or text("num_attention_heads"),
            rms_norm_eps=float(text("rms_norm_eps", defaults.rms_norm_eps)),
            rope_theta=float(rope.get("rope_theta", text("rope_theta", defaults.rope_theta))),
            mrope_section=tuple(rope.get("mrope_section", defaults.mrope_section)),
            max_position_embeddings=text(
                "max_position_embeddings", defaults.max_position_embeddings
            ),
            hidden_act=text("hidden_act", "silu"),
            bos_token_id=text("bos_token_id"),
            eos_token_id=text("eos_token_id"),
            pad_token_id=text("pad_token_id"),
        )
        v = dict(d.get("vision_config") or {})
        vdef = VisionConfig()
        vrope = v.get("rope_parameters") or {}
        vision_cfg = VisionConfig(
            depth=v.get("depth", vdef.depth),
            hidden_size=v.get("hidden_size", vdef.hidden_size),
            intermediate_size=v.get("intermediate_size", vdef.intermediate_size),
            num_heads=v.get("num_heads", vdef.num_heads),
            out_hidden_size=v.get("out_hidden_size", text_cfg.hidden_size),
            in_channels=v.get("in_channels", v.get("in_chans", vdef.in_channels)),
            patch_size=v.get("patch_size", v.get("spatial_patch_size", vdef.patch_size)),
            temporal_patch_size=v.get("temporal_patch_size", vdef.temporal_patch_size),
            spatial_merge_size=v.get("spatial_merge_size", vdef.spatial_merge_size),
            window_size=v.get("window_size", vdef.window_size),
            fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", vdef.fullatt_block_indexes)),
            hidden_act=v.get("hidden_act", vdef.hidden_act),
            rope_theta=float(vrope.get("rope_theta", vdef.rope_theta)),
            tokens_per_second=v.get("tokens_per_second", vdef.tokens_per_second),
        )
        tie = bool(d.get("tie_word_embeddings", False) or nested.get("tie_word_embeddings", False))
        return cls(
            text=text_cfg,
            vision=vision_cfg,
            image_token_id=d.get("image_token_id", cls.image_token_id),
            video_token_id=d.get("video_token_id", cls.video_token_id),
            vision_start_token_id=d.get("vision_start_token_id", cls.vision_start_token_id),
            vision_end_token_id=d.get("vision_end_token_id", cls.vision_end_token_id),
            tie_word_embeddings=tie,
            dtype=dtype,
            param_dtype=dtype if param_dtype is None else param_dtype,
            remat=remat,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The transformers-5 ``config.json`` dict (nested ``text_config``/``vision_config``)."""
        t, v = self.text, self.vision
        eos = list(t.eos_token_id) if isinstance(t.eos_token_id, tuple) else t.eos_token_id
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "dtype": self.param_dtype,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "text_config": {
                "model_type": "qwen2_5_vl_text",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "hidden_act": t.hidden_act,
                "rms_norm_eps": t.rms_norm_eps,
                "max_position_embeddings": t.max_position_embeddings,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": t.rope_theta,
                    "mrope_section": list(t.mrope_section),
                },
                "use_sliding_window": False,
                "attention_dropout": 0.0,
                "bos_token_id": t.bos_token_id,
                "eos_token_id": eos,
                "pad_token_id": t.pad_token_id,
            },
            "vision_config": {
                "model_type": "qwen2_5_vl_vision",
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "out_hidden_size": v.out_hidden_size,
                "in_channels": v.in_channels,
                "patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "hidden_act": v.hidden_act,
                "tokens_per_second": v.tokens_per_second,
                "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
            },
        }


def hf_config_dict(
    *,
    vocab_size: int = 300,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    mrope_section: tuple[int, int, int] = (2, 3, 3),
    rope_theta: float = 10000.0,
    vision_depth: int = 4,
    vision_hidden_size: int = 64,
    vision_intermediate_size: int = 96,
    vision_num_heads: int = 4,
    window_size: int = 56,
    fullatt_block_indexes: tuple[int, ...] = (1, 3),
    special_ids: Mapping[str, int] | None = None,
    tie_word_embeddings: bool = False,
) -> dict[str, Any]:
    """A small Qwen2.5-VL ``config.json`` dict (the layout ``transformers.Qwen2_5_VLConfig(**d)``
    and :meth:`VLMConfig.from_hf_dict` read): the one definition of the tiny test models, the
    bench model and the small students (pass their sizes).

    The defaults are the tiny test model: text hidden 64, 2 layers, 4 heads / 2 KV heads,
    mrope_section (2, 3, 3), vocab 300; vision hidden 64, depth 4, full attention at blocks
    (1, 3), window 56 px (2x2 merged tokens). Special ids sit at the top of the vocabulary
    (``bos``, ``eos``, ``vision_start``, ``vision_end``, ``image``, ``video`` = V-6 .. V-1) unless
    ``special_ids`` overrides some of them (keys as listed, or ``pad``).
    """
    ids = dict(zip(("bos", "eos", "vision_start", "vision_end", "image", "video"),
                   range(vocab_size - 6, vocab_size)))
    ids["pad"] = None
    unknown = sorted(set(special_ids or {}) - set(ids))
    if unknown:
        raise ValueError(f"special_ids {unknown}: allowed {sorted(ids)}")
    ids.update(special_ids or {})
    return {
        "model_type": "qwen2_5_vl",
        "text_config": {
            "vocab_size": vocab_size, "hidden_size": hidden_size,
            "intermediate_size": intermediate_size, "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "num_key_value_heads": num_key_value_heads, "rms_norm_eps": 1e-6,
            "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
            "rope_parameters": {"rope_type": "default", "rope_theta": float(rope_theta),
                                "mrope_section": list(mrope_section)},
        },
        "vision_config": {
            "depth": vision_depth, "hidden_size": vision_hidden_size,
            "intermediate_size": vision_intermediate_size, "num_heads": vision_num_heads,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": window_size, "out_hidden_size": hidden_size,
            "fullatt_block_indexes": list(fullatt_block_indexes),
        },
        "image_token_id": ids["image"], "video_token_id": ids["video"],
        "vision_start_token_id": ids["vision_start"], "vision_end_token_id": ids["vision_end"],
        "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
        "tie_word_embeddings": tie_word_embeddings,
    }


TOKENIZER_IDS = ("image_token_id", "video_token_id", "vision_start_token_id",
                 "vision_end_token_id")


def fit_to_tokenizer(d: Mapping[str, Any], vocab_size: int,
                     ids: Mapping[str, int]) -> dict[str, Any]:
    """A copy of a ``config.json`` dict (``hf_config_dict`` layout) sized to a tokenizer: text
    ``vocab_size``, ``eos``/``pad`` and the vision special-token ids from ``ids``
    (``processing.tokenizer.special_token_ids``); ``bos`` is dropped (Qwen uses none)."""
    out = {**d, "text_config": dict(d["text_config"])}
    out["text_config"].update(vocab_size=int(vocab_size), eos_token_id=ids["eos_token_id"],
                              pad_token_id=ids["pad_token_id"], bos_token_id=None)
    out.update({k: ids[k] for k in TOKENIZER_IDS})
    out["eos_token_id"], out["pad_token_id"] = ids["eos_token_id"], ids["pad_token_id"]
    return out
