"""Static configuration of the world model (a camera-conditioned multi-view DiT).

Mode: **pixel space**. Every view is an RGB image in [-1, 1] concatenated with its 6-channel Plücker
ray map; there is no latent autoencoder. At 32-64 px (what a CPU trains) pixels are cheap and a VAE
would cost more than the DiT; at SEVA scale the same backbone runs on 256 px with 16 px patches
(a latent autoencoder would be the next step beyond that, and is not part of this package).

Presets (``WorldModelConfig.preset(name)``):

===========  ======  =====  =====  =====  =====  ====  ======  ==================================
name         image   patch  width  depth  heads  M+N   params  use
===========  ======  =====  =====  =====  =====  ====  ======  ==================================
tiny         16      4      64     2      2      1+1   ~0.2 M  unit tests
small        32      4      128    6      4      1+1   ~1.9 M  CPU training (<= 40 min on 2 cores)
seva_scale   256     16     1536   24     24     1+7   ~1.0 B  pods; SEVA-like 8 views, joint attn
===========  ======  =====  =====  =====  =====  ====  ======  ==================================
"""
from __future__ import annotations

import dataclasses

PREDICTIONS = ("x0", "velocity", "regression")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class WorldModelConfig:
    """Shapes and options of :class:`~w2v_jax.models.world_model.dit.WorldModel`.

    image_size: H = W of every view in pixels. patch_size: square patch side (divides image_size).
    width: token width D. depth: transformer blocks. num_heads: attention heads (divide width).
    mlp_ratio: feed-forward hidden = mlp_ratio * width.
    num_source (M) / num_target (N): views per sample; all M+N views attend jointly.
    time_freq_dim: sinusoidal features of the flow time t in [0, 1].
    prediction: what the network outputs for a noisy target: ``"x0"`` (the clean image) or
        ``"velocity"`` (``noise - x0`` of the rectified flow ``x_t = (1 - t) x0 + t noise``);
        ``"regression"`` marks the deterministic twin: one pass with an empty (zero) target slot at
        t = 1 that outputs the clean image (trained by the ``regression`` loss).
    self_condition: the target tokens also embed the model's own previous clean-image estimate
        (self-conditioning, Chen et al. 2022): the loss feeds a no-gradient first pass's x0 to part
        of the batch, the sampler feeds each step's x0 to the next step (zeros = no estimate).
        Only for ``"x0"`` / ``"velocity"``; adds one zero-initialised patch projection.
    dtype: activation/compute dtype (parameters stay float32).
    """

    image_size: int = 32
    patch_size: int = 4
    width: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_source: int = 1
    num_target: int = 1
    time_freq_dim: int = 256
    prediction: str = "x0"
    self_condition: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        positive = ("image_size", "patch_size", "width", "depth", "num_heads", "num_source",
                    "num_target", "time_freq_dim")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WorldModelConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"WorldModelConfig.patch_size={self.patch_size} must divide "
                f"image_size={self.image_size}")
        if self.width % self.num_heads:
            raise ValueError(
                f"WorldModelConfig.num_heads={self.num_heads} must divide width={self.width}")
        if self.time_freq_dim % 2:
            raise ValueError(
                f"WorldModelConfig.time_freq_dim must be even, got {self.time_freq_dim}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"WorldModelConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"WorldModelConfig.prediction must be one of {PREDICTIONS}, "
                f"got {self.prediction!r}")
        if not isinstance(self.self_condition, bool):
            raise ValueError(
                f"WorldModelConfig.self_condition must be a bool, got {self.self_condition!r}")
        if self.self_condition and self.prediction == "regression":
            raise ValueError(
                "WorldModelConfig.self_condition=True needs prediction 'x0' or 'velocity' (the "
                "one-pass regression twin has no previous estimate), got 'regression'")
        if self.dtype not in DTYPES:
            raise ValueError(f"WorldModelConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_view(self) -> int:
        return self.grid * self.grid

    @property
    def num_views(self) -> int:
        return self.num_source + self.num_target

    @property
    def mlp_dim(self) -> int:
        return int(round(self.mlp_ratio * self.width))

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def replace(self, **changes) -> "WorldModelConfig":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def preset(name: str) -> "WorldModelConfig":
        """``tiny`` (tests), ``small`` (CPU training) or ``seva_scale`` (pods); see module doc."""
        if name not in PRESETS:
            raise ValueError(f"world-model preset must be one of {sorted(PRESETS)}, got {name!r}")
        return PRESETS[name]


PRESETS = {
    "tiny": WorldModelConfig(image_size=16, patch_size=4, width=64, depth=2, num_heads=2,
                             time_freq_dim=64),
    "small": WorldModelConfig(image_size=32, patch_size=4, width=128, depth=6, num_heads=4),
    "seva_scale": WorldModelConfig(image_size=256, patch_size=16, width=1536, depth=24,
                                   num_heads=24, num_source=1, num_target=7, dtype="bfloat16"),
}
