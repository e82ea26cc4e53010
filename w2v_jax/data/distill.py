"""Grain pipelines over the packaged distillation set (`w2v_jax.supervision.package`).

    from w2v_jax.data import distill
    ds = distill.sft_pipeline(package_dir, tokenizer, batch_size=8, max_length=256, seed=0)
    batch = next(iter(ds))
    # input_ids / attention_mask / loss_mask / mm_token_type_ids (B, L) int32, position_ids
    # (3, B, L), rope_deltas (B, 1), pixel_values (B, P, D) float32, image_grid_thw (B, N, 3),
    # example_mask (B,)
    ds = distill.grpo_pipeline(package_dir, tokenizer, batch_size=4, max_prompt_length=256)
    # the same prompt inputs, LEFT padded and ending in "<|im_start|>assistant\\n", plus
    # ground_truth (B,) str (JSON {task_type, answer}: reward.compute_score's input), answer (B,),
    # task_type (B,)

Every example has fixed shapes (sequence padded to max_length, image patches to
patches_per_example, image rows to images_per_example = 2, the most any task uses), so batches
jit and shard without recompilation. An example longer than max_length is a malformed record
(raised, or skipped and counted with skip_malformed=True). Images are the packaged PNG bytes;
processing follows `w2v_jax.processing` (Qwen2.5-VL's processor and chat template).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from w2v_jax.data import array_record, pipeline
from w2v_jax.processing.chat import collate, encode_record, split_answer
from w2v_jax.processing.image import ImageConfig, smart_resize
from w2v_jax.data.sft_batch import target_positions

MAX_IMAGES = 2
DATASET_NAME, VERSION = "world2vlm_distill", "1.0.0"  # the package's TFDS name and version


def builder_dir(package_dir: str) -> str:
    """The TFDS directory of a package: package_dir/world2vlm_distill/1.0.0."""
    return os.path.join(os.path.abspath(package_dir), DATASET_NAME, VERSION)


def open_split(package_dir: str, split: str):
    """Random-access source of one packaged split ("sft", "grpo" or "eval")."""
    return array_record.open_split(builder_dir(package_dir), split)


def patches_per_image(height: int, width: int, image_config: ImageConfig = ImageConfig()) -> int:
    """Vision patches (rows of pixel_values) of one height x width image after smart_resize."""
    factor = image_config.patch_size * image_config.merge_size
    h, w = smart_resize(height, width, factor, image_config.min_pixels, image_config.max_pixels)
    return (h // image_config.patch_size) * (w // image_config.patch_size)


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


def decode_record(example: Mapping[str, Any]) -> dict:
    """A stored example -> plain record: {id, task_type, messages (list), prompt, answer,
    ground_truth, images (list of PNG bytes), trajectory, source, scene_id, traj_id, meta}."""
    out = {k: _text(example[k]) for k in ("id", "task_type", "prompt", "answer", "ground_truth",
                                          "trajectory", "source", "scene_id", "traj_id")}
    out["messages"] = json.loads(_text(example["messages"]))
    out["meta"] = json.loads(_text(example["meta"]))
    out["images"] = [bytes(b) for b in np.asarray(example["images"], dtype=object).reshape(-1)]
    return out


class _Encode:
    """Picklable transform: stored example -> fixed-shape model inputs (one example)."""

    def __init__(self, tokenizer, *, max_length: int, patches_per_example: int, pad_id: int,
                 image_config: ImageConfig, prompt_only: bool,
                 max_target_tokens: int | None = None):
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        self.max_target_tokens = max_target_tokens
        self.patches, self.pad_id = int(patches_per_example), int(pad_id)
        self.image_config, self.prompt_only = image_config, prompt_only

    def __call__(self, example: Mapping[str, Any]) -> dict:
        rec = decode_record(example)
        conv = {"messages": rec["messages"], "images": rec["images"]}
        if self.prompt_only:
            conv, _ = split_answer(conv)
        enc = encode_record(conv, self.tokenizer, add_generation_prompt=self.prompt_only,
                            image_config=self.image_config, max_length=self.max_length)
        batch = collate([enc], pad_to=self.max_length, pad_id=self.pad_id,
                        padding_side="left" if self.prompt_only else "right",
                        patches_per_example=self.patches, images_per_example=MAX_IMAGES)
        out = {k: v[0] for k, v in batch.items() if k != "position_ids"}
        out["position_ids"] = batch["position_ids"][:, 0]
        if self.max_target_tokens is not None:
            index, valid = target_positions(batch["loss_mask"], batch["attention_mask"],
                                            self.max_target_tokens)
            out["target_index"], out["target_valid"] = index[0], valid[0]
        if self.prompt_only:
            out["ground_truth"] = np.asarray(rec["ground_truth"])
            out["answer"] = np.asarray(rec["answer"])
            out["task_type"] = np.asarray(rec["task_type"])
        return out


def package_corpus(package_dir: str, split: str = "sft") -> list[str]:
    """The text of a packaged split, one string per record (prompt without image tags + answer):
    what a BPE tokenizer for the package is trained on."""
    source = open_split(package_dir, split)
    out = []
    for i in range(len(source)):
        rec = decode_record(source[i])
        out.append(rec["prompt"].replace("<image>", " ") + " " + rec["answer"])
    return out


def task_types(source: Any) -> list[str]:
    """The ``task_type`` of every record of a packaged split, in stored order."""
    return [_text(source[i]["task_type"]) for i in range(len(source))]


class TaskSubset:
    """Random-access view of a packaged split holding only the records whose ``task_type`` is
    in ``tasks`` (in stored order). A task type the split does not hold is an error."""

    def __init__(self, source: Any, tasks: tuple[str, ...], split: str = "split"):
        types = task_types(source)
        missing = sorted(set(tasks) - set(types))
        if missing:
            raise ValueError(f"data.tasks={tuple(tasks)!r}: the {split} split holds no records "
                             f"of {missing}; it holds {sorted(set(types))}")
        self.source = source
        self.index = [i for i, t in enumerate(types) if t in set(tasks)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.source[self.index[i]]


def _to_batch_layout(batch: dict) -> dict:
    """position_ids (B, 3, L) from stacking -> (3, B, L), the layout of `processing.collate`."""
    out = dict(batch)
    out["position_ids"] = np.ascontiguousarray(np.transpose(batch["position_ids"], (1, 0, 2)))
    return out


def _pipeline(package_dir, split, tokenizer, *, batch_size, max_length, image_size, image_config,
              prompt_only, pad_id, max_target_tokens=None, tasks=(), **kwargs):
    if pad_id is None:
        pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    source = open_split(package_dir, split)
    if tasks:
        source = TaskSubset(source, tuple(tasks), split)
    if image_size is None:
        from w2v_jax.processing.image import load_image

        first = decode_record(source[0])["images"][0]
        image_size = load_image(first).shape[:2]
    h, w = (image_size, image_size) if np.isscalar(image_size) else image_size
    transform = _Encode(tokenizer, max_length=max_length,
                        patches_per_example=MAX_IMAGES * patches_per_image(h, w, image_config),
                        pad_id=pad_id, image_config=image_config, prompt_only=prompt_only,
                        max_target_tokens=max_target_tokens)
    ds = pipeline.build_pipeline(source, batch_size=batch_size, transform=transform, **kwargs)
    return ds.map(_to_batch_layout)


def sft_pipeline(
    package_dir: str,
    tokenizer: Any,
    *,
    batch_size: int,
    max_length: int,
    split: str = "sft",
    image_size: int | tuple[int, int] | None = None,
    image_config: ImageConfig = ImageConfig(),
    pad_id: int | None = None,
    max_target_tokens: int | None = None,
    tasks: tuple[str, ...] = (),
    **kwargs: Any,
):
    """SFT batches (module doc) of a packaged split: full conversations, right padded, loss_mask
    on the answer; ``tasks``: only records of these task types (``TaskSubset``; () = all). `image_size`: (H, W) of the stored views (read from the first record when
    None). `pad_id`: default `<|endoftext|>`. `max_target_tokens=K` adds `target_index` /
    `target_valid` (B, K) so the `sft` loss runs the LM head on the answer tokens only (a record
    with a longer answer is malformed). Other keyword arguments go to
    `pipeline.build_pipeline` (seed, shuffle, num_epochs, drop_remainder, skip_malformed,
    num_workers, process_index / process_count, ...)."""
    return _pipeline(package_dir, split, tokenizer, batch_size=batch_size, max_length=max_length,
                     image_size=image_size, image_config=image_config, prompt_only=False,
                     pad_id=pad_id, max_target_tokens=max_target_tokens, tasks=tasks, **kwargs)


def grpo_pipeline(
    package_dir: str,
    tokenizer: Any,
    *,
    batch_size: int,
    max_prompt_length: int,
    split: str = "grpo",
    image_size: int | tuple[int, int] | None = None,
    image_config: ImageConfig = ImageConfig(),
    pad_id: int | None = None,
    **kwargs: Any,
):
    """GRPO prompt batches (module doc): the user turn + generation prompt, LEFT padded to
    max_prompt_length, with ground_truth / answer / task_type strings for the reward."""
    return _pipeline(package_dir, split, tokenizer, batch_size=batch_size,
                     max_length=max_prompt_length, image_size=image_size,
                     image_config=image_config, prompt_only=True, pad_id=pad_id, **kwargs)
