"""Hugging Face interop for Qwen2.5-VL: load a local checkpoint into the NNX model, export back.

``load_vlm(path)`` reads ``config.json`` and the safetensors weights (``model.safetensors`` or the
shards listed in ``model.safetensors.index.json``) with numpy only (no torch), transforms each
tensor to the NNX layout and places it directly on its target sharding. ``save_vlm`` writes a
directory that ``transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained`` loads.

The whole name mapping is ``KEY_TABLE``: hub key template <-> NNX parameter path template +
layout transform. Templates use ``{i}`` for a layer number and ``{name:a|b}`` for alternatives.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from w2v_jax import fileio
from w2v_jax.models.vlm.config import VLMConfig
from w2v_jax.models.vlm.model import Qwen2_5_VL
from w2v_jax import sharding

# (hub key template, NNX path template, transform)
KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    ("visual.patch_embed.proj.weight", "visual.patch_embed.kernel", "conv3d"),
    ("visual.blocks.{i}.norm{n:1|2}.weight", "visual.blocks.{i}.norm{n}.weight", "copy"),
    ("visual.blocks.{i}.attn.{p:qkv|proj}.weight", "visual.blocks.{i}.attn.{p}.kernel", "linear"),
    ("visual.blocks.{i}.attn.{p:qkv|proj}.bias", "visual.blocks.{i}.attn.{p}.bias", "copy"),
    (
        "visual.blocks.{i}.mlp.{p:gate_proj|up_proj|down_proj}.weight",
        "visual.blocks.{i}.mlp.{p}.kernel",
        "linear",
    ),
    (
        "visual.blocks.{i}.mlp.{p:gate_proj|up_proj|down_proj}.bias",
        "visual.blocks.{i}.mlp.{p}.bias",
        "copy",
    ),
    ("visual.merger.ln_q.weight", "visual.merger.ln_q.weight", "copy"),
    ("visual.merger.mlp.0.weight", "visual.merger.fc1.kernel", "linear"),
    ("visual.merger.mlp.0.bias", "visual.merger.fc1.bias", "copy"),
    ("visual.merger.mlp.2.weight", "visual.merger.fc2.kernel", "linear"),
    ("visual.merger.mlp.2.bias", "visual.merger.fc2.bias", "copy"),
    ("model.embed_tokens.weight", "language_model.embed_tokens.embedding", "copy"),
    (
        "model.layers.{i}.{n:input_layernorm|post_attention_layernorm}.weight",
        "language_model.layers.{i}.{n}.weight",
        "copy",
    ),
    (
        "model.layers.{i}.self_attn.{p:q_proj|k_proj|v_proj|o_proj}.weight",
        "language_model.layers.{i}.self_attn.{p}.kernel",
        "linear",
    ),
    (
        "model.layers.{i}.self_attn.{p:q_proj|k_proj|v_proj}.bias",
        "language_model.layers.{i}.self_attn.{p}.bias",
        "copy",
    ),
    (
        "model.layers.{i}.mlp.{p:gate_proj|up_proj|down_proj}.weight",
        "language_model.layers.{i}.mlp.{p}.kernel",
        "linear",
    ),
    ("model.norm.weight", "language_model.norm.weight", "copy"),
    ("lm_head.weight", "lm_head.kernel", "linear"),
)

# transformers' in-memory spelling -> hub spelling
_KEY_PREFIXES = (("model.visual.", "visual."), ("model.language_model.", "model."))
_SHARD_INDEX = "model.safetensors.index.json"
_SINGLE_FILE = "model.safetensors"

_TO_NNX: dict[str, Callable[[np.ndarray, VLMConfig], np.ndarray]] = {
    "copy": lambda x, cfg: x,
    "linear": lambda x, cfg: x.T,  # torch (out, in) -> (in, out)
    "conv3d": lambda x, cfg: x.reshape(x.shape[0], -1).T,  # (D, C, t, p, p) -> (C*t*p*p, D)
}
_TO_HF: dict[str, Callable[[np.ndarray, VLMConfig], np.ndarray]] = {
    "copy": lambda x, cfg: x,
    "linear": lambda x, cfg: x.T,
    "conv3d": lambda x, cfg: x.T.reshape(
        x.shape[1],
        cfg.vision.in_channels,
        cfg.vision.temporal_patch_size,
        cfg.vision.patch_size,
        cfg.vision.patch_size,
    ),
}


_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]*))?\}")


def _compile(template: str, patterns: Mapping[str, str]) -> tuple[re.Pattern, str]:
    """Template -> (full-match regex with named groups, str.format pattern).

    A placeholder matches ``patterns[name]`` (its alternatives from either template of the
    row), or digits when it has none.
    """
    regex, fmt, pos = "", "", 0
    for m in _PLACEHOLDER.finditer(template):
        literal = template[pos : m.start()]
        regex += re.escape(literal)
        fmt += literal
        name = m.group(1)
        regex += f"(?P<{name}>{patterns.get(name) or '[0-9]+'})"
        fmt += "{" + name + "}"
        pos = m.end()
    regex += re.escape(template[pos:])
    fmt += template[pos:]
    return re.compile(regex), fmt


def _compile_row(hf: str, nnx_path: str) -> tuple[tuple[re.Pattern, str], tuple[re.Pattern, str]]:
    patterns = {
        m.group(1): m.group(2)
        for t in (hf, nnx_path)
        for m in _PLACEHOLDER.finditer(t)
        if m.group(2)
    }
    return _compile(hf, patterns), _compile(nnx_path, patterns)


_COMPILED = tuple((*_compile_row(hf, nnx_path), t) for hf, nnx_path, t in KEY_TABLE)


def nnx_to_hf_key(path: str) -> tuple[str, str] | None:
    """Dotted NNX parameter path -> (hub key, transform), or None if it has no HF name."""
    for (_, hf_fmt), (nnx_re, _), transform in _COMPILED:
        m = nnx_re.fullmatch(path)
        if m:
            return hf_fmt.format(**m.groupdict()), transform
    return None


def normalize_key(key: str) -> str:
    """``model.visual.*`` -> ``visual.*``, ``model.language_model.*`` -> ``model.*``."""
    for old, new in _KEY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _read_json(file: Path) -> Any:
    """The JSON in ``file``; ValueError naming the file when it is not valid JSON."""
    try:
        return json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(file)!r} is not valid JSON: {e}") from e


def _checkpoint_files(path: Path) -> dict[str, tuple[Path, str]]:
    """Normalized hub key -> (safetensors file, key as stored)."""
    index = path / _SHARD_INDEX
    if index.is_file():
        obj = _read_json(index)
        weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{str(index)!r} has no 'weight_map' object")
        files = sorted({Path(fileio.resolve_inside(path, f, f"{index} weight_map entry"))
                        for f in set(weight_map.values())})
    elif (path / _SINGLE_FILE).is_file():
        files = [path / _SINGLE_FILE]
    else:
        raise ValueError(f"checkpoint path={str(path)!r}: no {_SINGLE_FILE} or {_SHARD_INDEX}")
    keys: dict[str, tuple[Path, str]] = {}
    for file in files:
        if not file.is_file():
            raise ValueError(
                f"checkpoint shard {str(file)!r} listed in {_SHARD_INDEX} does not exist"
            )
        with safe_open(str(file), framework="numpy") as f:
            for key in f.keys():
                norm = normalize_key(key)
                if norm in keys:
                    raise ValueError(
                        f"checkpoint key {key!r} appears twice (also as {keys[norm][1]!r})"
                    )
                keys[norm] = (file, key)
    return keys


def read_config(path: str | Path, **kwargs: Any) -> VLMConfig:
    """``VLMConfig`` from ``path/config.json``; kwargs go to ``VLMConfig.from_hf_dict``."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ValueError(f"checkpoint path={str(path)!r}: no config.json")
    return VLMConfig.from_hf_dict(_read_json(file), **kwargs)


def load_vlm(
    path: str | Path,
    dtype: Any = jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
    *,
    param_dtype: Any = None,
    remat: bool = False,
) -> tuple[Qwen2_5_VL, VLMConfig]:
    """Loads a local Hugging Face Qwen2.5-VL directory into ``(model, config)``.

    ``dtype`` is the compute dtype, ``param_dtype`` the parameter dtype (default: ``dtype``).
    With ``mesh`` every parameter lands directly on its sharding from the logical rules of
    ``w2v_jax.sharding`` (multi-host safe: each process materialises only its shards);
    without, on one device. Missing or unknown checkpoint keys raise ValueError listing them.
    """
    path = Path(path)
    config = read_config(path, dtype=dtype, param_dtype=param_dtype, remat=remat)
    files = _checkpoint_files(path)
    if mesh is None:
        mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    graphdef, abs_state, shardings = sharding.abstract_sharded(
        lambda: Qwen2_5_VL(config, rngs=nnx.Rngs(0)), mesh
    )
    target_sharding = {p: s.get_value() for p, s in nnx.to_flat_state(shardings)}
    targets: dict[str, tuple[tuple, nnx.Variable, str]] = {}
    for p, var in nnx.to_flat_state(abs_state):
        mapped = nnx_to_hf_key(_dotted(p))
        if mapped is None:
            raise ValueError(f"model parameter {_dotted(p)!r} has no entry in KEY_TABLE")
        targets[mapped[0]] = (p, var, mapped[1])

    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(targets) - set(files))
    unknown = sorted(set(files) - set(targets) - optional)
    if missing or unknown:
        raise ValueError(
            f"checkpoint {str(path)!r} does not match the model config: "
            f"missing keys {missing}; unknown keys {unknown}"
        )

    by_file: dict[Path, list[str]] = {}
    for key in targets:
        by_file.setdefault(files[key][0], []).append(key)
    loaded = []
    for file, keys in by_file.items():
        with safe_open(str(file), framework="numpy") as f:
            for key in keys:
                p, var, transform = targets[key]
                abstract = var.get_value()
                array = _TO_NNX[transform](f.get_tensor(files[key][1]), config)
                if array.shape != abstract.shape:
                    raise ValueError(
                        f"checkpoint key {key!r}: shape {array.shape} after {transform!r}, "
                        f"model expects {abstract.shape} at {_dotted(p)}"
                    )
                array = np.asarray(array, dtype=abstract.dtype)
                value = jax.make_array_from_callback(
                    abstract.shape, target_sharding[p], lambda index, a=array: a[index]
                )
                loaded.append((p, var.replace(value)))
    state = nnx.from_flat_state(sorted(loaded, key=lambda item: item[0]))
    return nnx.merge(graphdef, state), config


def _to_host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def hf_state_dict(model: Qwen2_5_VL, config: VLMConfig | None = None) -> dict[str, np.ndarray]:
    """All parameters as host numpy arrays under their hub keys, in HF layout.

    Raises ValueError listing parameters without a hub name (e.g. un-merged LoRA adapters).
    """
    config = model.config if config is None else config
    out: dict[str, np.ndarray] = {}
    unmapped = []
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        mapped = nnx_to_hf_key(_dotted(p))
        if mapped is None:
            unmapped.append(_dotted(p))
            continue
        key, transform = mapped
        out[key] = np.ascontiguousarray(_TO_HF[transform](_to_host(var.get_value()), config))
    if unmapped:
        raise ValueError(f"parameters without a Hugging Face name (merge LoRA first?): {unmapped}")
    return out


def save_vlm(
    model: Qwen2_5_VL,
    config: VLMConfig | None,
    path: str | Path,
    *,
    max_shard_bytes: int = 5 * 2**30,
    generation_config: Mapping[str, Any] | None = None,
) -> None:
    """Writes ``config.json``, ``generation_config.json`` and safetensors weights to ``path``.

    Atomic: everything is written to a temporary sibling directory that then replaces ``path``
    (other files already in ``path``, e.g. a tokenizer, are carried over), so a failed write
    leaves the previous checkpoint loadable.

    Weights above ``max_shard_bytes`` are split into ``model-0000i-of-0000n.safetensors`` files
    plus ``model.safetensors.index.json``. Parameters keep their dtype. ``generation_config``
    entries override the defaults (bos/eos/pad ids of the text config). Gathers sharded
    parameters on every process; only process 0 writes.
    """
    config = model.config if config is None else config
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes={max_shard_bytes}: must be positive")
    tensors = hf_state_dict(model, config)
    if jax.process_index() != 0:
        return
    path = Path(path).absolute()
    fileio.sweep_stale(path.parent, path.name)  # leftovers of an earlier, killed save
    with fileio.atomic_dir(path) as tmp:
        _write_checkpoint(Path(tmp), tensors, config, generation_config, max_shard_bytes)
        if path.is_dir():  # keep what else the directory holds (tokenizer, processor files)
            for entry in path.iterdir():
                if not (_is_checkpoint_file(entry.name) or (Path(tmp) / entry.name).exists()):
                    copy = shutil.copytree if entry.is_dir() else shutil.copy2
                    copy(entry, Path(tmp) / entry.name)


def _is_checkpoint_file(name: str) -> bool:
    """A file ``save_vlm`` writes (replaced on every save, never carried over)."""
    return name in ("config.json", "generation_config.json", _SHARD_INDEX) or bool(
        re.fullmatch(r"model.*\.safetensors", name))


def _write_checkpoint(path: Path, tensors: Mapping[str, np.ndarray], config: VLMConfig,
                      generation_config: Mapping[str, Any] | None, max_shard_bytes: int) -> None:
    """config.json, generation_config.json and the safetensors shards (+ index) into ``path``."""
    (path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    t = config.text
    gen = {
        "bos_token_id": t.bos_token_id,
        "eos_token_id": t.eos_token_id,
        "pad_token_id": t.pad_token_id,
    }
    gen = {k: (list(v) if isinstance(v, tuple) else v) for k, v in gen.items() if v is not None}
    gen.update(generation_config or {})
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(path / _SINGLE_FILE), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata=metadata)
        weight_map.update({key: name for key in shard})
    index = {
        "metadata": {"total_size": sum(x.nbytes for x in tensors.values())},
        "weight_map": weight_map,
    }
    (path / _SHARD_INDEX).write_text(json.dumps(index, indent=2) + "\n")
