"""Frozen, shareable evaluation suites on disk: TFDS array_record + manifest.jsonl + PNGs + a hash.

Item schema (every suite, procedural or loaded from a real benchmark)::

    {id, suite, category, images, question, choices, answer, meta}

``images`` are PNG file names (in memory: anything ``processing.load_image`` accepts), ``choices``
a list (empty for numeric answers), ``meta`` a JSON-able dict (the geometry the label came from).

Layout written by :func:`write_suite` (atomically, replacing an older copy only once complete,
and only a directory that is missing, empty or a suite itself, i.e. holds ``info.json``)::

    DIR/<suite>/manifest.jsonl        one item per line, images as "images/<name>.png"
    DIR/<suite>/images/*.png          every referenced image once
    DIR/<suite>/<suite>/1.0.0/        TFDS array_record dataset, split "test" (PNG bytes inline)
    DIR/<suite>/info.json             counts, label balance, build settings and ``sha256``

``sha256`` hashes the manifest bytes and then every image's bytes in name order, so two builds
with the same settings give the same hash. :func:`load_suite` streams the array_record split
through Grain and checks the hash of the files first.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

FIELDS = ("id", "suite", "category", "images", "question", "choices", "answer", "meta")
VERSION = "1.0.0"
SPLIT = "test"
IMAGE_DIR = "images"


def check_item(item: Mapping[str, Any], where: str = "item") -> None:
    """Raises ValueError naming the field when ``item`` does not follow the schema."""
    missing = [k for k in FIELDS if k not in item]
    extra = sorted(set(item) - set(FIELDS))
    if missing or extra:
        raise ValueError(f"{where} {item.get('id')!r}: missing fields {missing}, unknown {extra}; "
                         f"an item has exactly {FIELDS}")
    for key in ("id", "suite", "category", "question", "answer"):
        if not isinstance(item[key], str):
            raise ValueError(f"{where} {item['id']!r}: {key} must be a str, got "
                             f"{type(item[key]).__name__}")
    if not isinstance(item["choices"], list) or not isinstance(item["images"], list):
        raise ValueError(f"{where} {item['id']!r}: choices and images must be lists")
    if item["choices"] and item["suite"] != "tasks" and item["answer"] not in item["choices"] \
            and not any(c.startswith(item["answer"] + ".") for c in item["choices"]):
        raise ValueError(f"{where} {item['id']!r}: answer {item['answer']!r} matches none of the "
                         f"choices {item['choices']}")


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _manifest_line(item: Mapping[str, Any]) -> str:
    row = dict(item)
    row["images"] = [f"{IMAGE_DIR}/{n}" for n in item["images"]]
    return json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n"


def _digest(manifest: bytes, png: Mapping[str, bytes]) -> str:
    h = hashlib.sha256(manifest)
    for name in sorted(png):
        h.update(name.encode())
        h.update(png[name])
    return h.hexdigest()


def label_balance(items: Sequence[Mapping[str, Any]]) -> dict:
    """Per category: counts of ``meta['label']`` and of the correct option's position."""
    out: dict = {}
    for cat in sorted({i["category"] for i in items}):
        its = [i for i in items if i["category"] == cat]
        labels = collections.Counter(str(i["meta"].get("label")) for i in its)
        positions = collections.Counter(answer_position(i) for i in its if i["choices"])
        out[cat] = {"n": len(its), "labels": dict(sorted(labels.items())),
                    "answer_position": {str(k): v for k, v in sorted(positions.items())}}
    return out


def answer_position(item: Mapping[str, Any]) -> int:
    """Index of the correct option in ``choices`` (text answers or 'A.'-style letters)."""
    for k, c in enumerate(item["choices"]):
        if c == item["answer"] or c.startswith(item["answer"] + "."):
            return k
    raise ValueError(f"item {item['id']!r}: answer {item['answer']!r} not in its choices")


def _features():
    from w2v_jax.data import array_record as ar

    text = ar.text_feature
    return {"index": ar.tensor_feature((), np.int64), "id": text(), "suite": text(),
            "category": text(), "question": text(), "choices": text(), "answer": text(),
            "meta": text(), "images": ar.tensor_feature((None,), np.object_),
            "image_files": text()}


def write_suite(out_dir: str, suite: str, items: Sequence[dict], images: Mapping[str, Any],
                info: Mapping[str, Any] | None = None) -> dict:
    """Write one suite under ``out_dir/suite`` (module doc); returns its info (with sha256)."""
    from w2v_jax import fileio
    from w2v_jax.data import array_record as ar

    target = os.path.join(out_dir, suite)
    fileio.check_replaceable(target, "info.json", "--out")
    for k, item in enumerate(items):
        check_item(item, f"items[{k}]")
        unknown = [n for n in item["images"] if n not in images]
        if unknown:
            raise ValueError(f"items[{k}] {item['id']!r} references images {unknown} not given")
    png = {name: encode_png(images[name]) for name in sorted({n for i in items
                                                               for n in i["images"]})}
    manifest = "".join(_manifest_line(i) for i in items).encode()
    info = dict(info or {}, suite=suite, items=len(items),
                per_category=dict(collections.Counter(i["category"] for i in items)),
                balance=label_balance(items), sha256=_digest(manifest, png))
    with fileio.atomic_dir(target) as tmp:
        os.makedirs(os.path.join(tmp, IMAGE_DIR))
        for name, data in png.items():
            with open(os.path.join(tmp, IMAGE_DIR, name), "wb") as f:
                f.write(data)
        with open(os.path.join(tmp, "manifest.jsonl"), "wb") as f:
            f.write(manifest)
        examples = [{
            "index": np.int64(k), "id": i["id"], "suite": i["suite"], "category": i["category"],
            "question": i["question"], "choices": json.dumps(i["choices"]), "answer": i["answer"],
            "meta": json.dumps(i["meta"]), "images": np.array([png[n] for n in i["images"]],
                                                              dtype=object),
            "image_files": json.dumps(i["images"])} for k, i in enumerate(items)]
        ar.write_dataset(tmp, suite, _features(), {SPLIT: examples}, version=VERSION,
                         description=f"w2v_jax evaluation suite {suite}")
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
    return info


def suite_hash(suite_dir: str) -> str:
    """sha256 of a written suite recomputed from its manifest and image files."""
    with open(os.path.join(suite_dir, "manifest.jsonl"), "rb") as f:
        manifest = f.read()
    names = sorted({n.split("/", 1)[1] for line in manifest.decode().splitlines()
                    for n in json.loads(line)["images"]})
    png = {}
    for n in names:
        with open(os.path.join(suite_dir, IMAGE_DIR, n), "rb") as f:
            png[n] = f.read()
    return _digest(manifest, png)


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


def decode_example(example: Mapping[str, Any]) -> dict:
    """A stored array_record example -> an item whose images are PNG bytes."""
    item = {k: _text(example[k]) for k in ("id", "suite", "category", "question", "answer")}
    item["choices"] = json.loads(_text(example["choices"]))
    item["meta"] = json.loads(_text(example["meta"]))
    item["images"] = [bytes(b) for b in np.asarray(example["images"], dtype=object).reshape(-1)]
    return item


def load_suite(suite_dir: str, verify: bool = True) -> list[dict]:
    """The items of a written suite in their original order (images as PNG bytes), streamed from
    the array_record split with Grain; with ``verify`` the files' hash must match info.json."""
    import grain

    from w2v_jax.data import array_record as ar

    info_path = os.path.join(suite_dir, "info.json")
    if not os.path.isfile(info_path):
        raise ValueError(f"{suite_dir!r} is not a built suite (no info.json); build it with "
                         "python -m data_gen.build_eval_suites")
    with open(info_path) as f:
        info = json.load(f)
    if verify and suite_hash(suite_dir) != info["sha256"]:
        raise ValueError(f"suite {suite_dir!r} changed since it was built: sha256 of its files "
                         f"differs from info.json ({info['sha256'][:12]}...)")
    source = ar.open_split(os.path.join(suite_dir, info["suite"], VERSION), SPLIT)
    rows = list(grain.MapDataset.source(source).map(lambda ex: (int(ex["index"]),
                                                                decode_example(ex))))
    return [item for _, item in sorted(rows, key=lambda r: r[0])]
