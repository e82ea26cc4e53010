"""Does a VLM read its images? Per task type of a package's held-out split: answer tokens
predicted right with the true views and with another example's views, the loss of each, and the
pixel gradient and visual-token spread (``w2v_jax.train.image_use``).

    python -m experiments.image_use --model=RUN --package=PKG [--tasks=existence,counting] \
        [--max_batches=8] [--out=image_use.json]

``--model``: a VLM training workdir or Hugging Face directory (its tokenizer and min/max pixels
are used). ``--package``: a distillation or perception package (its ``eval`` split). Prints one
line per task and the whole result as one JSON line; ``--out`` also writes it (atomically).
"""
import itertools
import json

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "VLM training workdir or Hugging Face directory.")
_PACKAGE = flags.DEFINE_string("package", None, "Package directory (its eval split is read).")
_TASKS = flags.DEFINE_list("tasks", [], "Task types (default: every one in the eval split).")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", 0, "Batches per task (0: all).", lower_bound=0)
_BATCH = flags.DEFINE_integer("batch_size", 16, "Examples per batch.", lower_bound=2)
_MAX_LENGTH = flags.DEFINE_integer("max_length", 384, "Sequence length (tokens).", lower_bound=16)
_OUT = flags.DEFINE_string("out", "", "JSON file to write (optional).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _MODEL.value or not _PACKAGE.value:
        raise app.UsageError("--model and --package are required")
    from w2v_jax import fileio
    from w2v_jax.data import distill
    from w2v_jax.data.sft_batch import sft_batch
    from w2v_jax.train.image_use import image_use
    from w2v_jax.train import runs

    try:
        model, tokenizer = runs.load_vlm(_MODEL.value)
        image_config = runs.vlm_image_config(_MODEL.value)
    except ValueError as e:
        raise app.UsageError(f"--model: {e}") from e
    try:
        source = distill.open_split(_PACKAGE.value, "eval")
    except Exception as e:  # a missing or foreign directory
        raise app.UsageError(f"--package={_PACKAGE.value!r}: no readable eval split ({e})") from e
    present = sorted(set(distill.task_types(source)))
    tasks = _TASKS.value or present
    unknown = sorted(set(tasks) - set(present))
    if unknown:
        raise app.UsageError(f"--tasks: {unknown} not in the eval split; it holds {present}")
    out = {}
    for task in tasks:
        ds = distill.sft_pipeline(_PACKAGE.value, tokenizer, batch_size=_BATCH.value,
                                  max_length=_MAX_LENGTH.value, split="eval", shuffle=False,
                                  num_epochs=1, drop_remainder=False, image_config=image_config,
                                  tasks=(task,)).map(sft_batch)
        batches = itertools.islice(ds, _MAX_BATCHES.value or None)
        out[task] = image_use(model, batches)
        s = out[task]
        print(f"{task:16s} correct {s['correct_real']:5d} real vs {s['correct_rolled']:5d} "
              f"rolled of {s['tokens']:5d}  loss {s['loss_real']:.4f} vs {s['loss_rolled']:.4f}  "
              f"d loss/d pixels {s['pixel_grad_norm']:.2e}  visual tokens rms "
              f"{s['feature_rms']:.3g}, spread {s['feature_spread']:.3g}", flush=True)
    result = {"model": _MODEL.value, "package": _PACKAGE.value, "tasks": out}
    print(json.dumps(result))
    if _OUT.value:
        fileio.atomic_write_json(_OUT.value, result, indent=2)


if __name__ == "__main__":
    app.run(main)
