"""Spatial supervision of World2VLM: task templates, task builders and the GRPO reward.

templates  prompt variants of A1-A4 / D1-D4 (official wording) and the answer-string builders
tasks      one pure builder per task from plain data (actions, per-frame detections, seed)
reward     the official rule-based reward (`compute_score`, `score`), with the D2/D4 fix
"""

from w2v_jax.supervision.reward import compute_score, ground_truth_json, score

__all__ = ["compute_score", "ground_truth_json", "score"]
