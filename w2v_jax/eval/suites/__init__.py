"""Procedural evaluation suites: SAT-, VSI-Bench- and MindCube-like, seeded and deterministic.

``SUITES[name]`` is the suite's module (``build(seed, per_category, config) -> (items, images)``,
``relabel(item)``, ``CATEGORIES``); :func:`build_suite` builds one and writes it with
``store.write_suite``. Scene seeds lie in ``[2**32, 2**33)``, disjoint from every training split
(``common`` module doc).
"""

from __future__ import annotations

from w2v_jax.eval.suites import common, mindcube_like, sat_like, vsi_like

SUITES = {"sat_like": sat_like, "vsi_like": vsi_like, "mindcube_like": mindcube_like}


def build_suite(out_dir: str, name: str, *, seed: int, per_category: int,
                config: common.RenderConfig = common.RenderConfig(), **kwargs) -> dict:
    """Build suite ``name`` and write it to ``out_dir/name``; returns its info (sha256 etc.)."""
    from w2v_jax.eval import formats, store

    if name not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {name!r}")
    if int(per_category) != per_category or per_category < 1:
        raise ValueError(f"per_category must be an integer >= 1, got {per_category!r}")
    items, images = SUITES[name].build(seed, per_category, config, **kwargs)
    info = dict(seed=int(seed), per_category_requested=int(per_category),
                render=dict(resolution=config.resolution, hfov_deg=config.hfov_deg,
                            supersample=config.supersample, min_pixels=config.min_pixels),
                chance=formats.chance(items), **{k: v for k, v in kwargs.items()})
    return store.write_suite(out_dir, name, items, images, info)


__all__ = ["SUITES", "build_suite", "common", "mindcube_like", "sat_like", "vsi_like"]
