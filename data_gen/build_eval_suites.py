r"""Build the procedural evaluation suites once, as frozen, hashed, shareable datasets.

    python -m data_gen.build_eval_suites --out DIR --suites=sat_like,vsi_like,mindcube_like \
        --per_category=200 --seed=0 [--resolution=64 --num_frames=16]

Writes ``DIR/<suite>/`` per suite: ``manifest.jsonl`` (one item per line), ``images/*.png``, a TFDS
array_record dataset (split ``test``, read by ``w2v_jax.eval.store.load_suite``) and
``info.json`` (item counts, label and option-position balance, chance rates, sha256). Scene
seeds lie in [2**32, 2**33), disjoint from every training split. The same flags give the same
sha256. Prints one JSON line per suite (name, items, sha256, seconds).
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from w2v_jax.eval import suites as suites_lib

_OUT = flags.DEFINE_string("out", None, "Output directory (one sub-directory per suite).")
_SUITES = flags.DEFINE_list("suites", ["sat_like", "vsi_like", "mindcube_like"],
                            f"Suites to build, from {sorted(suites_lib.SUITES)}.")
_PER = flags.DEFINE_integer("per_category", 200, "Items per category (150-500 for reporting).")
_SEED = flags.DEFINE_integer("seed", 0, "Build seed (scene seeds derive from it).")
_RES = flags.DEFINE_integer("resolution", 64, "Square image side in pixels.")
_FRAMES = flags.DEFINE_integer("num_frames", 16, "Frames per VSI-like tour (16-32).")


def main(argv):
    del argv
    if not _OUT.value:
        raise app.UsageError("--out is required (directory for the suites)")
    unknown = [s for s in _SUITES.value if s not in suites_lib.SUITES]
    if unknown:
        raise app.UsageError(f"--suites has unknown names {unknown}; allowed: "
                             f"{sorted(suites_lib.SUITES)}")
    config = suites_lib.common.RenderConfig(resolution=_RES.value)
    for name in _SUITES.value:
        t0 = time.time()
        extra = {"num_frames": _FRAMES.value} if name == "vsi_like" else {}
        info = suites_lib.build_suite(_OUT.value, name, seed=_SEED.value,
                                      per_category=_PER.value, config=config, **extra)
        print(json.dumps({"suite": name, "items": info["items"], "sha256": info["sha256"],
                          "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    app.run(main)
