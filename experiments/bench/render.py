r"""Renderer throughput: one JSON line of images per second at 64x64 and 128x128.

One procedural scene with 8 objects, a batch of sampled cameras rendered by ``sim.render_views``
(all outputs: rgb, depth, instance, boxes; supersample 1). Compilation is excluded; each figure is
the best of --repeats timed calls. ``load_1min`` is the machine's load average when it finished
(other processes share the CPU).

  python -m experiments.bench.render [--repeats 7] [--batch_64 128] [--batch_128 32]
"""

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

flags.DEFINE_integer("repeats", 7, "Timed calls per resolution; the best is reported.")
flags.DEFINE_integer("batch_64", 128, "Cameras per call at 64x64.")
flags.DEFINE_integer("batch_128", 32, "Cameras per call at 128x128.")
flags.DEFINE_integer("seed", 1, "Scene seed.")

FLAGS = flags.FLAGS
NUM_OBJECTS = 8


def images_per_second(scene, cams, resolution: int, repeats: int) -> float:
    from w2v_jax import geometry, sim

    K = geometry.intrinsics_from_hfov(resolution, resolution, 90.0)
    jax.block_until_ready(sim.render_views(scene, cams, K, resolution, resolution))  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(sim.render_views(scene, cams, K, resolution, resolution))
        best = min(best, time.perf_counter() - start)
    return len(cams) / best


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from w2v_jax import sim

    scene = sim.sample_scene(
        FLAGS.seed, num_objects=(NUM_OBJECTS, NUM_OBJECTS), max_objects=NUM_OBJECTS
    )
    cams = np.stack(
        [sim.sample_camera(i, scene) for i in range(max(FLAGS.batch_64, FLAGS.batch_128))]
    )
    result = {
        "images_per_s_64": round(
            images_per_second(scene, cams[: FLAGS.batch_64], 64, FLAGS.repeats), 1
        ),
        "images_per_s_128": round(
            images_per_second(scene, cams[: FLAGS.batch_128], 128, FLAGS.repeats), 1
        ),
        "objects": NUM_OBJECTS,
        "batch_64": FLAGS.batch_64,
        "batch_128": FLAGS.batch_128,
        "device": jax.devices()[0].device_kind,
        "load_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
