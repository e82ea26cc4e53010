"""MindJourney search: candidate rules, exact call counts and the cost record."""

import numpy as np
import pytest

from w2v_jax import actions
from w2v_jax.eval import cost, test_time
from w2v_jax.eval.inference import Answer
from w2v_jax.models.world_model import WorldModelConfig, build
from w2v_jax.supervision.teachers import WorldModelTeacher

F, L, R = (actions.Action("forward", 0.75), actions.Action("turn_left", 27.0),
           actions.Action("turn_right", 27.0))
ITEM = dict(id="q", suite="sat_like", category="goal_aim", images=[], question="Which way?",
            choices=["look straight", "turn left by 20 degrees"], answer="look straight",
            meta={})


class Scorer:
    """A VLM stub: every scoring call gives each view ``score``; the answer is the truth."""

    def __init__(self, score):
        self.score, self.calls = score, []

    def __call__(self, prompts, max_new_tokens):
        self.calls += list(prompts)
        p = prompts[0]
        n = p.text.count("Imagined image of index")
        text = ("Output: " + ",".join([str(self.score)] * n)) if p.variant.startswith(
            "score") else "look straight"
        return [Answer(text, 100 + len(p.images), 3, 1000.0, 0.0)]


class CountingTeacher:
    def __init__(self):
        self.trajectories = []

    def views(self, image, K, trajectory, seed=0):
        self.trajectories.append(actions.format_actions(trajectory))
        return np.full((1,) + image.shape, 0.5, np.float32)


IMAGE = np.zeros((16, 16, 3), np.uint8)


def test_candidate_rules():
    cfg = test_time.SearchConfig()
    assert test_time.allowed((L,), L, cfg) and not test_time.allowed((L, L), L, cfg)  # 81 > 60
    assert not test_time.allowed((L,), R, cfg)  # immediate reversal
    assert test_time.allowed((L, F), R, cfg)
    assert test_time.allowed((F,), F, cfg) and not test_time.allowed((F, F), F, cfg)  # 2.25 m
    assert test_time.trajectory_text((F, L)) == ("move forward 0.75 meters, then turn left 27 "
                                                 "degrees")
    assert test_time.parse_scores("blah Output: 3, 9,0") == [3, 9, 0]
    assert test_time.parse_scores("nine") is None


def test_vlm_scorer_makes_the_budgeted_calls():
    scorer, teacher = Scorer(9), CountingTeacher()
    out = test_time.MindJourney(scorer, teacher).search(ITEM, [IMAGE])
    # step 1: F L R; beams F, L -> step 2: FF FL FR LF LL; beams FF, FL -> step 3: FFL FFR FLF FLL
    assert len(teacher.trajectories) == 3 + 5 + 4
    assert out["cost"]["world_model_calls"] == 12
    assert out["cost"]["vlm_calls"] == len(scorer.calls) == 2 * 3 + 1
    assert len(out["evidence"]) == 12 and out["score"] == 1.0
    assert out["cost"]["vlm_flops"] == 7 * 1000.0
    assert out["cost"]["vlm_prompt_tokens"] == sum(100 + len(p.images) for p in scorer.calls)
    answer = scorer.calls[-1]
    assert answer.variant == "answer" and len(answer.images) == 1 + 12
    assert "Imagined image of index 0 if you move forward 0.75 meters" in answer.text


def test_low_scores_stop_the_search_and_cap_evidence():
    scorer, teacher = Scorer(3), CountingTeacher()
    out = test_time.MindJourney(scorer, teacher).search(ITEM, [IMAGE])
    assert out["cost"]["world_model_calls"] == 3 and out["cost"]["vlm_calls"] == 3
    assert out["evidence"] == []
    capped = test_time.MindJourney(Scorer(9), CountingTeacher(),
                                   test_time.SearchConfig(max_evidence=5)).search(ITEM, [IMAGE])
    assert len(capped["evidence"]) == 5


def test_all_scorer_expands_everything_within_budget():
    scorer, teacher = Scorer(9), CountingTeacher()
    out = test_time.MindJourney(scorer, teacher, test_time.SearchConfig(scorer="all")).search(
        ITEM, [IMAGE])
    assert len(teacher.trajectories) == 3 + 7 + 14 == out["cost"]["world_model_calls"]
    assert len(set(teacher.trajectories)) == 24
    assert out["cost"]["vlm_calls"] == 1 and len(out["evidence"]) == 18


def test_cost_record_equals_analytic_counts_with_a_tiny_world_model():
    config = WorldModelConfig.preset("tiny")
    teacher = WorldModelTeacher(build(config), steps=2)
    search = test_time.MindJourney(Scorer(9), teacher,
                                   test_time.SearchConfig(scorer="all", steps=1))
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = search.search(ITEM, [image])
    c = out["cost"]
    assert c["world_model_calls"] == 3
    assert c["world_model_evals"] == 3 * 2
    assert c["world_model_flops"] == pytest.approx(3 * 2 * cost.world_model_flops(config))
    assert c["wall_s"] > 0
