"""Loading what a training run wrote: the model of a workdir (``config.json`` + checkpoints).

    model = load_world_model(workdir)            # EMA weights when the run kept them
    model, tokenizer = load_vlm(path)            # a VLM run's workdir or a Hugging Face directory

VLM runs (``model.name == "vlm"``) also start here: ``vlm_run_inputs`` fixes the run's tokenizer
and ``build_vlm`` the starting model (``config.init_from`` or the ``vlm`` builder, + LoRA).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from w2v_jax import fileio, hf
from w2v_jax import sharding as shd
from w2v_jax.models import lora, world_model
from w2v_jax.data.builders import image_config as data_image_config
from w2v_jax.models.vlm.config import VLMConfig, fit_to_tokenizer
from w2v_jax.processing.image import ImageConfig
from w2v_jax.processing.tokenizer import load_tokenizer, special_token_ids
from w2v_jax.train.checkpoint import Checkpointer

TOKENIZER_DIR = "tokenizer"  # where a VLM run keeps the tokenizer it used


def read_run_config(workdir: str) -> dict:
    """The ``config.json`` a run saved in ``workdir``, as a dict."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"workdir={workdir!r} is not a training run: no config.json")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e


def restore_params(workdir: str, step: int | None = None, use_ema: bool = True) -> dict:
    """The trained parameters of ``workdir`` (newest or given step) as a pure nested dict of
    jnp arrays: the EMA copy when the run kept one and ``use_ema``, else the raw parameters."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        raw = ckpt.restore_raw(step)
    finally:
        ckpt.close()
    return _to_pure(raw["ema"] if use_ema and "ema" in raw else raw["params"])


def load_params_into(model: nnx.Module, params: dict) -> nnx.Module:
    """Writes a pure parameter dict (``restore_params``) into ``model``'s ``nnx.Param``s."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def load_world_model(workdir: str, step: int | None = None,
                     use_ema: bool = True) -> world_model.WorldModel:
    """The world model trained by ``experiments.train`` in ``workdir`` (single device), with the
    EMA parameters when the run kept them and ``use_ema``."""
    config = world_model.config_from_dict(read_run_config(workdir)["model"])
    return load_params_into(world_model.build(config), restore_params(workdir, step, use_ema))


def _to_pure(tree):
    """Orbax-restored nested dicts with numpy leaves -> jnp leaves, integer-like keys as ints
    (a variable saved as ``{"value": array}`` becomes its array)."""
    if isinstance(tree, dict) and set(tree) == {"value"}:
        return jnp.asarray(tree["value"])
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _to_pure(v)
                for k, v in tree.items()}
    return jnp.asarray(tree)


# ---------------------------------------------------------------------------- VLM runs
def init_kind(path: str, field: str = "config.init_from") -> str:
    """``"hf"`` for a Hugging Face Qwen2.5-VL directory (``config.json`` with ``model_type``
    ``qwen2_5_vl`` + safetensors), ``"workdir"`` for a VLM training run (``config.json`` with
    ``model.name == "vlm"`` + checkpoints); ValueError naming ``field`` otherwise."""
    if not path or not os.path.isdir(path):
        raise ValueError(f"{field}={path!r}: no such directory (allowed: a training workdir or "
                         "a Hugging Face Qwen2.5-VL directory)")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ValueError(f"{field}={path!r}: no config.json (neither a training workdir nor a "
                         "Hugging Face directory)")
    with open(cfg_file) as f:
        cfg = json.load(f)
    if cfg.get("model_type") == "qwen2_5_vl":
        if not any(n.startswith("model") and n.endswith((".safetensors", ".json"))
                   and n != "config.json" for n in os.listdir(path)):
            raise ValueError(f"{field}={path!r}: a Qwen2.5-VL config.json without safetensors")
        return "hf"
    name = (cfg.get("model") or {}).get("name") if isinstance(cfg.get("model"), dict) else None
    if name is None:
        raise ValueError(f"{field}={path!r}: config.json is neither a training run's nor a "
                         f"Qwen2.5-VL one (model_type={cfg.get('model_type')!r})")
    if name != "vlm":
        raise ValueError(f"{field}={path!r}: a {name!r} run, not a VLM (model.name 'vlm')")
    ckpt = Checkpointer(os.path.join(path, "checkpoints"), async_save=False)
    try:
        if ckpt.latest_step() is None:
            raise ValueError(f"{field}={path!r}: the run has no checkpoint yet")
    finally:
        ckpt.close()
    return "workdir"


def _vlm_config(path: str, kind: str) -> VLMConfig:
    """The architecture of a VLM directory; a run started from ``init_from`` has that model's
    (its own ``model.hf_config`` is ignored then), so the chain is followed."""
    if kind == "hf":
        return hf.read_config(path)
    run = read_run_config(path)
    if run.get("init_from"):
        return _vlm_config(run["init_from"], init_kind(run["init_from"]))
    return VLMConfig.from_hf_dict(dict(run["model"]["hf_config"]))


def load_vlm(path: str, *, mesh=None):
    """``(model, tokenizer)`` of a Hugging Face Qwen2.5-VL directory (``hf.load_vlm`` +
    ``load_tokenizer``) or of a VLM training workdir (its config.json, the newest checkpoint's
    parameters (EMA when kept) on top of the run's base model, LoRA adapters merged, and the
    tokenizer the run used, ``workdir/tokenizer``). ``mesh``: where the parameters go (default
    one device)."""
    kind = init_kind(path, "path")
    mesh = mesh if mesh is not None else shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    if kind == "hf":
        return hf.load_vlm(path, mesh=mesh)[0], load_tokenizer(path)
    run = ml_collections.ConfigDict(read_run_config(path))
    model = build_vlm(run, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, nnx.state(model))
    load_params_into(model, restore_params(path))
    nnx.update(model, jax.device_put(nnx.state(model), shardings))
    if lora.has_lora(model):
        lora.merge_lora(model)
    return model, load_tokenizer(os.path.join(path, TOKENIZER_DIR))


def vlm_image_config(path: str) -> ImageConfig:
    """The image pixel bounds a VLM was trained with: a Hugging Face directory's
    ``preprocessor_config.json`` (``min_pixels``/``max_pixels`` or ``size``; HF defaults when the
    file is absent), or a training workdir's ``config.data.min_pixels``/``max_pixels``."""
    if init_kind(path, "path") == "workdir":
        return data_image_config(read_run_config(path).get("data", {}))
    file = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(file):
        return ImageConfig()
    try:
        with open(file) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: invalid JSON ({e})") from e
    size, base = d.get("size") or {}, ImageConfig()
    return ImageConfig(
        min_pixels=int(d.get("min_pixels", size.get("shortest_edge", base.min_pixels))),
        max_pixels=int(d.get("max_pixels", size.get("longest_edge", base.max_pixels))))


def build_vlm(config, mesh):
    """The model a VLM run starts from: ``config.init_from`` loaded (``load_vlm``) or, without
    it, ``config.model`` built by the ``vlm`` builder; then LoRA adapters when
    ``config.trainable == "lora"`` (``config.model.lora_rank / lora_alpha / lora_dropout``)."""
    from w2v_jax.models.builders import get_model_builder

    if config.get("init_from"):
        model, _ = load_vlm(config.init_from, mesh=mesh)
    else:
        model = shd.create_sharded(get_model_builder("vlm")(config.model), mesh)
    if config.get("trainable") == "lora":
        rank = config.model.get("lora_rank", 0)
        if not rank:
            raise ValueError("config.trainable='lora' needs config.model.lora_rank > 0")
        lora.apply_lora(model, rank=rank, alpha=float(config.model.lora_alpha),
                        dropout=float(config.model.get("lora_dropout", 0.0)),
                        pattern=config.model.get("lora_pattern") or lora.DEFAULT_PATTERN,
                        rngs=int(config.model.seed))
    return model


def check_init_from(config) -> None:
    """ValueError naming ``config.init_from`` when it is set but not loadable as a VLM."""
    if config.get("init_from"):
        init_kind(config.init_from)


def check_package_split(config, split: str) -> int:
    """Records of ``split`` in ``config.data.package_dir``; ValueError naming the field when the
    package is missing or the split is absent or empty."""
    from w2v_jax.data.distill import open_split

    pkg = config.data.get("package_dir", "")
    if not pkg:
        raise ValueError("config.data.package_dir is empty: pass the distillation package "
                         "(data_gen.build_supervision --out OUT -> OUT/package)")
    try:
        n = len(open_split(pkg, split))
    except ValueError as e:
        raise ValueError(f"config.data.package_dir={pkg!r}: no {split!r} split ({e})") from e
    if not n:
        raise ValueError(f"config.data.package_dir={pkg!r}: the {split!r} split is empty")
    return n


def vlm_run_inputs(config, workdir: str):
    """``(config, tokenizer)`` for a VLM run in ``workdir``: the tokenizer is fixed once in
    ``workdir/tokenizer`` (from ``config.data.tokenizer_dir``, else ``init_from``'s, else a BPE
    trained on the package's sft split with ``config.data.vocab_size`` entries); the returned
    copy of ``config`` points ``data.tokenizer_dir`` there and, without ``init_from``, sizes
    ``model.hf_config`` (vocabulary, special-token ids) to it. Raises ValueError naming
    ``config.init_from`` when its model does not fit the tokenizer."""
    config = ml_collections.ConfigDict(config.to_dict())
    tok_dir = os.path.join(os.path.abspath(workdir), TOKENIZER_DIR)
    init = config.get("init_from") or ""
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        source = config.data.get("tokenizer_dir") or ""
        if not source and init:
            source = init if init_kind(init) == "hf" else os.path.join(init, TOKENIZER_DIR)
        tok = load_tokenizer(source) if source else _package_tokenizer(config)
        with fileio.atomic_dir(tok_dir) as tmp:
            tok.save_pretrained(tmp)
    tok = load_tokenizer(tok_dir)
    ids = special_token_ids(tok)
    config.data.tokenizer_dir = tok_dir
    if init:
        cfg = _vlm_config(init, init_kind(init))
        mismatch = [k for k in ("image_token_id", "vision_start_token_id")
                    if getattr(cfg, k) != ids[k]]
        if mismatch or len(tok) > cfg.text.vocab_size:
            raise ValueError(
                f"config.init_from={init!r}: model (vocab {cfg.text.vocab_size}, image token "
                f"{cfg.image_token_id}) does not fit the tokenizer (size {len(tok)}, image token "
                f"{ids['image_token_id']})")
    else:
        config.model.hf_config = fit_to_tokenizer(config.model.hf_config.to_dict(), len(tok),
                                                  ids)
    return config, tok


def _package_tokenizer(config):
    """A BPE tokenizer trained on the prompts and answers of the package's sft split."""
    from w2v_jax.data.distill import package_corpus
    from w2v_jax.processing.tokenizer import train_tokenizer

    return train_tokenizer(package_corpus(config.data.package_dir),
                           int(config.data.vocab_size))[0]
