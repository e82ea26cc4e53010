"""Task builders: selection rules, filters, variants; every record scores its own answer 1.0."""

import json
import random
import re

import pytest

from w2v_jax.actions import Action, parse_actions
from w2v_jax.supervision import tasks, templates
from w2v_jax.supervision.reward import compute_score, ground_truth_json, score

FWD_TURN = [("forward", 1.3), ("turn_left", 40.0)]


def det(label, box, score=0.9, track_id=None):
    return {"label": label, "box": list(box), "score": score, "track_id": track_id}


# ----------------------------------------------------------------------------- filter
def test_filter_detections_thresholds():
    keep = [
        det("a", (100, 100, 200, 200), score=0.3),  # score exactly 0.3, area exactly 1 %
        det("b", (10, 10, 610, 1000 - 10)),  # on the 1 % margin, area 0.588
    ]
    drop = [
        det("c", (100, 100, 200, 200), score=0.29),
        det("d", (100, 100, 199, 200)),  # area 0.99 %
        det("e", (9, 100, 300, 300)),  # inside the left margin
        det("f", (100, 100, 300, 991)),  # inside the bottom margin
        det("g", (100, 100, 900, 900)),  # area 64 %
        det("h", (300, 100, 300, 300)),  # degenerate
    ]
    kept = tasks.filter_detections(keep + drop)
    assert [d["label"] for d in kept] == ["a", "b"]
    loose = tasks.DetectionFilter(min_score=0.0, min_area=0.0, max_area=1.0, edge_margin=0.0)
    assert len(tasks.filter_detections(keep + drop, loose)) == 7


@pytest.mark.parametrize(
    "bad, field",
    [
        (det("a", (0.1, 0.2, 0.3, 0.4)), "box"),
        (det("a", (0, 0, 10, 1001)), "box"),
        ({"label": "a", "box": [1, 2, 3], "score": 0.5}, "box"),
        (det("", (0, 0, 10, 10)), "label"),
        (det("a", (0, 0, 10, 10), score=1.5), "score"),
        (det("a", (0, 0, 10, 10), track_id="7"), "track_id"),
    ],
)
def test_bad_detections_raise(bad, field):
    with pytest.raises(ValueError, match=rf"detections\[0\]\.{field}"):
        tasks.filter_detections([bad])


def test_bad_actions_and_frames_raise():
    with pytest.raises(ValueError, match="name"):
        tasks.build_a3([("jump", 1.0), ("forward", 1.0)])
    with pytest.raises(ValueError, match="motion"):
        tasks.build_a1([("forward", 0.01)])
    with pytest.raises(ValueError, match="target_frame"):
        tasks.build_a1([("forward", 1.0)], target_frame=0)


# ----------------------------------------------------------------------------- A1 - A4
def test_motion_records_follow_official_routing():
    trajs = [
        {"traj_id": "forward_0", "actions": [Action("forward", 1.3)], "target_frame": 8},
        {"traj_id": "left_0", "actions": [("left", 0.25)]},
        {"traj_id": "turn_right_0", "actions": [{"name": "turn_right", "value": 30}]},
        {"traj_id": "preset_0", "actions": FWD_TURN},
        {"traj_id": "preset_1", "actions": [("left", 0.5), ("forward", 1.0), ("turn_right", 20.0)]},
    ]
    recs = tasks.build_motion_records(trajs, seed=0)
    assert [r["task_type"] for r in recs] == ["A1", "A1", "A2", "A3", "A3", "A4", "A4"]
    assert recs[0]["answer"] == "move forward 1.3 meters"
    assert recs[0]["prompt"].endswith("Answer as: move forward X meters.")
    assert recs[0]["images"] == [0, 8]
    assert recs[1]["answer"] == "move left 0.25 meters"
    assert recs[2]["answer"] == "turn right 30 degrees"
    assert recs[4]["answer"] == "move left 0.5 meters; move forward 1 meters; turn right 20 degrees"
    assert sorted(r["answer"] for r in recs[5:]) == ["false", "true"]
    assert recs == tasks.build_motion_records(trajs, seed=0)
    json.dumps(recs)


def test_a1_dominant_axis_and_not_applicable():
    assert tasks.build_a1([("left", 0.4)])["answer"] == "move left 0.4 meters"
    assert tasks.build_a1([("turn_left", 30.0)]) is None
    assert tasks.build_a2([("forward", 1.0)]) is None
    assert tasks.build_a3([("forward", 1.0)]) is None
    assert tasks.build_a3([("forward", 1.0), ("forward", 2.0)]) is None  # canonicalises to one


def test_a4_claims_and_labels():
    cands = [{"actions": FWD_TURN, "traj_id": f"t{i}"} for i in range(6)]
    recs = tasks.build_a4_set(cands, seed=1)
    assert [r["answer"] for r in recs] == ["true", "false"] * 3
    true_rec = recs[0]
    assert '"move forward 1.3 meters and turn left 40 degrees"' in true_rec["prompt"]
    three = tasks.build_a4([("left", 0.5), ("forward", 1.0), ("turn_right", 20.0)], claim_true=True)
    assert (
        "move left 0.5 meters, move forward 1 meters and turn right 20 degrees" in three["prompt"]
    )


def _random_actions(rng):
    axes = rng.sample(
        [("forward", "backward"), ("left", "right"), ("turn_left", "turn_right")], rng.randint(1, 3)
    )
    out = []
    for pair in axes:
        name = rng.choice(pair)
        value = rng.randint(1, 10) * 10.0 if name.startswith("turn") else rng.randint(1, 40) / 10
        out.append((name, value))
    return out


def test_a4_negatives_are_really_false():
    rng = random.Random(0)
    for seed in range(300):
        actions = tasks.as_actions(_random_actions(rng))
        rec = tasks.build_a4(actions, claim_true=False, seed=seed)
        claim = tasks.as_actions([(a.name, a.value) for a in _parse(rec["meta"]["claim"])])
        assert tasks.is_false_claim(actions, claim)
        truth = templates.format_actions(actions)
        # read as an answer to the action question, the false claim is not fully right
        assert score(rec["meta"]["claim"], "A3", truth)["overall"] < 1.0
        if len(actions) == 1:
            assert (
                score(rec["meta"]["claim"], "A1" if not actions[0].is_turn else "A2", truth)[
                    "overall"
                ]
                < 1.0
            )
        assert score(truth, "A3", truth)["overall"] == 1.0


def test_a4_small_values_never_flip_within_tolerance():
    for seed in range(50):
        claim = tasks.false_claim([("forward", 0.2)], random.Random(seed))
        assert claim[0].name == "forward" and abs(claim[0].value - 0.2) > tasks.MOVE_TOLERANCE_M
        claim = tasks.false_claim([("turn_left", 2.0)], random.Random(seed))
        assert claim[0].name == "turn_left" and abs(claim[0].value - 2.0) > tasks.TURN_TOLERANCE_DEG


def _parse(text):
    return parse_actions(text)


# ----------------------------------------------------------------------------- variants
@pytest.mark.parametrize(
    "key, expected",
    [
        ("T4_000:chair:40", 0),  # code-point sum 1110
        ("forward_xyz:table:1", 1),  # 1900
        ("T1_003:lamp:12:pos", 2),  # 1412
        ("abc:tv:9:neg", 2),  # 1073
    ],
)
def test_variant_hash_rule(key, expected):
    assert templates.variant_index(key, 3) == expected


def test_variant_key_picks_the_d2_template():
    first = [det("tv", (100, 100, 300, 300), track_id=1)]
    last = [det("tv", (150, 120, 350, 320), track_id=1)]
    # "abc:tv:9" has code-point sum 845 -> variant 2 (sentence)
    rec = tasks.build_d2(FWD_TURN, first, last, traj_id="abc", target_frame=9)
    assert templates.d_variant_key("abc", "tv", 9) == "abc:tv:9"
    assert rec["meta"]["variant"] == 2 and rec["answer"] == "The tv remains visible."
    rec = tasks.build_d2(FWD_TURN, first, last, traj_id="abd", target_frame=9)
    assert rec["meta"]["variant"] == 0 and rec["answer"] == "no"
    rec = tasks.build_d2(FWD_TURN, first, last, traj_id="abe", target_frame=9)
    assert rec["meta"]["variant"] == 1 and rec["answer"] == "B"
    assert rec["prompt"].endswith("Answer with A or B only.") and rec["images"] == [0]


# ----------------------------------------------------------------------------- D1 - D4
def test_d_builders_selection():
    first = [
        det("chair", (100, 200, 300, 500), 0.9, 1),
        det("chair", (500, 200, 700, 500), 0.8, 2),
        det("lamp", (800, 100, 900, 300), 0.95, None),
    ]
    last = [det("chair", (150, 250, 380, 600), 0.85, 1), det("chair", (600, 250, 800, 600), 0.6, 2)]
    d1 = tasks.build_d1(FWD_TURN, first, last, traj_id="t", target_frame=20)
    assert d1["answer"] == "[150, 250, 380, 600]" and d1["images"] == [0, 20]
    assert "the chair is at bbox [100, 200, 300, 500]" in d1["prompt"]
    # top first-frame detection is the untracked lamp: D2 and D4 do not apply
    assert tasks.build_d2(FWD_TURN, first, last) is None
    assert tasks.build_d4(FWD_TURN, first, last) == []
    tracked = first[:2]
    d4 = tasks.build_d4(FWD_TURN, tracked, last, traj_id="t")
    assert [r["meta"]["same"] for r in d4] == [True, False]
    assert [r["meta"]["box_last"] for r in d4] == [[150, 250, 380, 600], [600, 250, 800, 600]]
    # a same-label detection without a track id is no negative
    assert (
        len(tasks.build_d4(FWD_TURN, tracked, last[:1] + [det("chair", (600, 250, 800, 600))])) == 1
    )
    # D3 drops three-action trajectories
    assert tasks.build_d3(FWD_TURN, tracked, last) is not None
    assert tasks.build_d3(FWD_TURN + [("left", 0.5)], tracked, last) is None


def test_d2_visibility_rules():
    first = [det("chair", (100, 200, 300, 500), 0.9, 1)]
    gone = tasks.build_d2(
        FWD_TURN, first, [det("lamp", (100, 100, 300, 300), 0.9, 5)], traj_id="abd"
    )
    assert gone["meta"]["disappears"] is True
    assert (
        gone["answer"] == ("yes", "A", "The chair disappears from view.")[gone["meta"]["variant"]]
    )
    kept = tasks.build_d2(
        FWD_TURN, first, [det("chair", (400, 200, 600, 500), 0.9, 1)], traj_id="abd"
    )
    assert kept["meta"]["disappears"] is False
    assert kept["answer"] == ("no", "B", "The chair remains visible.")[kept["meta"]["variant"]]
    # cut by the image edge: detected but filtered out -> ambiguous, skipped
    assert tasks.build_d2(FWD_TURN, first, [det("chair", (0, 200, 200, 500), 0.9, 1)]) is None
    assert tasks.build_d2(FWD_TURN, [det("chair", (100, 200, 300, 500), 0.9, None)], []) is None


# ----------------------------------------------------------------------------- max reward
def _random_frame(rng, ids):
    out = []
    for track_id in rng.sample(ids, rng.randint(0, len(ids))):
        x1, y1 = rng.randint(0, 700), rng.randint(0, 700)
        box = (x1, y1, x1 + rng.randint(20, 300), y1 + rng.randint(20, 300))
        out.append(
            det(
                rng.choice(["chair", "lamp"]),
                box,
                round(rng.uniform(0.2, 1.0), 2),
                None if rng.random() < 0.1 else track_id,
            )
        )
    return out


def test_every_record_scores_its_own_answer_fully():
    rng = random.Random(7)
    trajs, records = [], []
    for i in range(150):
        actions = _random_actions(rng)
        trajs.append(
            {"traj_id": f"traj{i}", "actions": actions, "target_frame": rng.randint(1, 40)}
        )
        first, last = _random_frame(rng, [1, 2, 3, 4]), _random_frame(rng, [1, 2, 3, 5])
        records += tasks.build_object_records(
            actions, first, last, traj_id=f"traj{i}", target_frame=trajs[-1]["target_frame"]
        )
    records += tasks.build_motion_records(trajs, seed=3)
    kinds = {(r["task_type"], r["meta"].get("variant")) for r in records}
    for task in ("A1", "A2", "A3", "A4", "D1"):
        assert any(k[0] == task for k in kinds), task
    for task in ("D2", "D3", "D4"):
        assert {v for t, v in kinds if t == task} == {0, 1, 2}, task
    inputs = [
        {"response": r["answer"], "ground_truth": ground_truth_json(r["task_type"], r["answer"])}
        for r in records
    ]
    results = compute_score(inputs)
    bad = [
        (r["task_type"], r["answer"], s) for r, s in zip(records, results) if s["overall"] != 1.0
    ]
    assert not bad
    for r in records:
        assert r["prompt"].count("<image>") == len(r["images"])
        assert not re.search(r"\{[A-Z_0-9]+\}", r["prompt"] + r["answer"])
        assert len(r["answer"]) <= 200
    json.dumps(records)
