"""Released models: trained runs turned into small, self-contained, loadable directories.

- ``release_world_model(workdir, out)``: ``config.json`` (the run's) and one checkpoint holding
  only the (EMA) parameters -- ``train.runs.load_world_model(out)`` loads it like the run.
- ``release_vlm(workdir, out)``: a Hugging Face Qwen2.5-VL directory (``hf.save_vlm``: config,
  safetensors, generation config) with the run's tokenizer and a ``preprocessor_config.json``
  holding the min / max pixels it was trained with -- ``train.runs.load_vlm`` and
  ``transformers`` load it.
Each gets a ``README.md`` model card (``card`` text). Directories are written to a temporary
sibling and swapped in, so a failed release leaves the previous one intact.
"""

from __future__ import annotations

import dataclasses
import json
import os

from w2v_jax import fileio


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def release_world_model(workdir: str, out: str, card: str) -> dict:
    import jax
    import jax.numpy as jnp

    from w2v_jax.train import runs
    from w2v_jax.train.checkpoint import Checkpointer

    config = runs.read_run_config(workdir)
    with Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False) as source:
        step = source.latest_step()
    params = runs.restore_params(workdir, step)
    fileio.sweep_stale(os.path.dirname(os.path.abspath(out)), os.path.basename(out))
    with fileio.atomic_dir(out) as tmp:
        fileio.atomic_write_json(os.path.join(tmp, "config.json"), config, indent=2)
        ckpt = Checkpointer(os.path.join(tmp, "checkpoints"), max_to_keep=1, async_save=False)
        try:
            ckpt.save(int(step), {"params": jax.tree.map(jnp.asarray, params)})
            ckpt.wait()
        finally:
            ckpt.close()
        fileio.atomic_write(os.path.join(tmp, "README.md"),
                            f"{card.rstrip()}\n\nReleased: the parameters at training step "
                            f"{int(step)}.\n")
    return {"path": os.path.abspath(out), "bytes": dir_bytes(out), "step": int(step)}


def preprocessor_config(image_config) -> dict:
    """Qwen2-VL image-processor settings (the fields ``transformers`` reads)."""
    d = dataclasses.asdict(image_config)
    return {"image_processor_type": "Qwen2VLImageProcessor", "processor_class":
            "Qwen2_5_VLProcessor", "do_resize": True, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
            "min_pixels": d["min_pixels"], "max_pixels": d["max_pixels"],
            "size": {"shortest_edge": d["min_pixels"], "longest_edge": d["max_pixels"]},
            "patch_size": d["patch_size"], "temporal_patch_size": d["temporal_patch_size"],
            "merge_size": d["merge_size"], "image_mean": list(d["image_mean"]),
            "image_std": list(d["image_std"])}


def release_vlm(workdir: str, out: str, card: str) -> dict:
    from w2v_jax import hf
    from w2v_jax.train import runs

    model, tokenizer = runs.load_vlm(workdir)
    image_config = runs.vlm_image_config(workdir)
    out = os.path.abspath(out)
    fileio.sweep_stale(os.path.dirname(out), os.path.basename(out))
    with fileio.atomic_dir(out) as tmp:
        hf.save_vlm(model, None, os.path.join(tmp, "model"))
        for name in os.listdir(os.path.join(tmp, "model")):
            os.replace(os.path.join(tmp, "model", name), os.path.join(tmp, name))
        os.rmdir(os.path.join(tmp, "model"))
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "preprocessor_config.json"), "w") as f:
            json.dump(preprocessor_config(image_config), f, indent=1)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(card)
    return {"path": out, "bytes": dir_bytes(out)}
