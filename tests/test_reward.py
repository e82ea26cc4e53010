"""The World2VLM reward: hand-computed cases per task, the D2/D4 variant fix, robustness."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2v_jax.supervision import reward
from w2v_jax.supervision.reward import compute_score, ground_truth_json, score

approx = pytest.approx


def overall(response, task_type, answer, **kw):
    return score(response, task_type, answer, **kw)["overall"]


# ----------------------------------------------------------------------------- A1 / A2
def test_single_action_exact_and_partial():
    gt = "move forward 1.3 meters"
    assert score(gt, "A1", gt) == {"overall": 1.0, "format": 1.0, "action": 1.0, "numeric": 1.0}
    assert overall("Move Forward 1.3 Meters.", "A1", gt) == 1.0
    # |err| = 1.0 m: numeric = 1 - (1.0 - 0.5) / 4.5 = 0.8889; 0.10 + 0.35 + 0.55 * 0.8889
    assert overall("move forward 2.3 meters", "A1", gt) == approx(0.938889, abs=1e-6)
    # within the 0.5 m tolerance: full credit
    assert overall("move forward 1.7 meters", "A1", gt) == 1.0
    # |err| >= 5 m: numeric 0
    assert overall("move forward 7 meters", "A1", gt) == approx(0.45)
    # wrong direction: format only
    assert overall("move backward 1.3 meters", "A1", gt) == approx(0.1)
    # the best of several predicted actions: forward 6 (err 4.7 -> numeric 0.0667)
    assert overall("move backward 1 meters; move forward 6 meters", "A1", gt) == approx(
        0.486667, abs=1e-6
    )
    assert overall("it moved a bit", "A1", gt) == 0.0
    # a turn answer against a move ground truth parses but never matches
    assert overall("turn left 1.3 degrees", "A1", gt) == approx(0.1)


def test_angle_partial_credit():
    gt = "turn left 40 degrees"
    assert overall(gt, "A2", gt) == 1.0
    assert overall("turn left 44 degrees", "A2", gt) == 1.0
    # |err| = 20 deg: numeric = 1 - 15 / 85 = 0.8235
    assert overall("turn left 60 degrees", "A2", gt) == approx(0.902941, abs=1e-6)
    assert overall("turn left 130 degrees", "A2", gt) == approx(0.45)
    assert overall("turn right 40 degrees", "A2", gt) == approx(0.1)


def test_ground_truth_without_action_scores_zero():
    assert score("move forward 1 meters", "A1", "forward one meter") == {
        "overall": 0.0,
        "format": 0.0,
        "action": 0.0,
        "numeric": 0.0,
    }


# ----------------------------------------------------------------------------- A3 / D3
def test_sequence_cases():
    gt = "move forward 1.3 meters; turn left 40 degrees"
    assert overall(gt, "A3", gt) == 1.0
    assert overall("First move forward 1.3 meters, Then turn left 40 degrees.", "A3", gt) == 1.0
    # swapped order: action multiset 1, order 0, numeric 0 -> 0.10 + 0.25
    assert overall("turn left 40 degrees; move forward 1.3 meters", "A3", gt) == approx(0.35)
    # one of two: action 1/2, order 1/2, numeric 1/2
    assert overall("move forward 1.3 meters", "A3", gt) == approx(0.55)
    # an extra action: action 2/3, order 1, numeric 1, minus 0.03
    assert overall(gt + "; move left 1 meters", "A3", gt) == approx(0.886667, abs=1e-6)
    # numeric partial at position 2: |err| = 20 deg -> 0.8235 / 2
    assert overall("move forward 1.3 meters; turn left 60 degrees", "A3", gt) == approx(
        0.1 + 0.25 + 0.35 + 0.3 * (1 + 1 - 15 / 85) / 2
    )
    assert overall("no idea", "A3", gt) == 0.0
    # the penalty floors at zero: many wrong actions
    assert overall("; ".join(["turn right 5 degrees"] * 6), "A3", gt) == 0.0


def test_d3_answer_variants_score_full():
    seq = "move forward 1.3 meters; turn left 40 degrees"
    for answer in (
        seq,
        f"2 steps | {seq}",
        "First move forward 1.3 meters, Then turn left 40 degrees.",
    ):
        assert overall(answer, "D3", answer) == 1.0
        assert overall(seq, "D3", answer) == 1.0


# ----------------------------------------------------------------------------- D1
def test_box_cases():
    gt = "[100, 200, 300, 400]"
    assert overall(gt, "D1", gt) == 1.0
    assert overall("bbox [100,200,300,400]", "D1", gt) == 1.0
    # a box inside other text: format 0.4 -> 0.2 * 0.4 + 0.15 + 0.65
    assert overall("box: [100, 200, 300, 400]", "D1", gt) == approx(0.88)
    # shifted 50 right: IoU 0.6, centre 1 - 50 / 169.71, L1 1 - 25 / 180, size 1
    s = score("[150, 200, 350, 400]", "D1", gt)
    assert s["iou"] == approx(0.6)
    assert s["center"] == approx(1 - 50 / (0.6 * math.hypot(200, 200)))
    assert s["l1"] == approx(1 - 25 / 180)
    assert s["overall"] == approx(0.826643, abs=1e-6)
    # corners swapped: validity 0.3, geometry (1.0) * (0.3 + 0.21)
    assert overall("[300, 400, 100, 200]", "D1", gt) == approx(0.2 + 0.15 * 0.3 + 0.65 * 0.51)
    # out of range by 100 on one coordinate: validity 0.7 + 0.3 * (1 - 25 / 200)
    s = score("[-100, 200, 300, 400]", "D1", gt)
    assert s["validity"] == approx(0.9625)
    assert s["overall"] == approx(0.803435, abs=1e-6)
    assert score("nothing", "D1", gt) == {
        "overall": 0.0,
        "format": 0.0,
        "validity": 0.0,
        "geometry": 0.0,
        "iou": 0.0,
        "center": 0.0,
        "size": 0.0,
        "l1": 0.0,
    }


# ----------------------------------------------------------------------------- binary
def test_binary_official_yes_no():
    assert overall("True.", "A4", "true") == 1.0
    assert overall("yes", "A4", "true") == 1.0
    assert overall("false", "A4", "true") == approx(0.2)
    assert overall("maybe", "A4", "true") == 0.0
    assert overall("yes, it does", "D2", "yes") == 0.0  # the whole text must be the word
    assert overall("No!", "D4", "no") == 1.0


def test_d2_choice_and_sentence_variants_fixed():
    assert overall("A", "D2", "A") == 1.0
    assert overall("(b)", "D2", "B") == 1.0
    assert overall("B", "D2", "A") == approx(0.2)
    assert overall("yes", "D2", "A") == 0.0  # asked for A or B
    gone = "The chair disappears from view."
    kept = "The chair remains visible."
    assert overall(gone, "D2", gone) == 1.0
    assert overall(kept, "D2", kept) == 1.0
    assert overall("It is no longer visible.", "D2", gone) == 1.0
    assert overall("The chair does not disappear.", "D2", kept) == 1.0
    assert overall(kept, "D2", gone) == approx(0.2)
    assert overall("A chair.", "D2", gone) == 0.0
    # the official scorer gives these variants a constant 0 (paper.md §12.4)
    assert overall(gone, "D2", gone, fix_d_variants=False) == 0.0
    assert overall("A", "D2", "A", fix_d_variants=False) == 0.0


def test_d4_choice_and_sentence_variants_fixed():
    same = "They are the same physical object instance."
    different = "They are different object instances."
    assert overall(same, "D4", same) == 1.0
    assert overall(different, "D4", different) == 1.0
    assert overall("They are not the same object.", "D4", different) == 1.0
    assert overall(same, "D4", different) == approx(0.2)
    assert overall("A", "D4", "A") == 1.0
    assert overall("A", "D4", "B") == approx(0.2)


# ----------------------------------------------------------------------------- dispatch
def test_overlong_response_is_minus_one():
    long = "move forward 1 meters; " * 10  # 230 characters
    assert score(long, "A3", "move forward 1 meters") == {"overall": -1.0, "format": 0.0}
    exactly_200 = "x" * 200
    assert overall("  " + exactly_200 + "  ", "A1", "move forward 1 meters") == 0.0


def test_unknown_task_exact_match_and_batch_api():
    inputs = [
        {"response": "Foo.", "ground_truth": ground_truth_json("Z9", "foo")},
        {
            "response": "move forward 1 meters",
            "ground_truth": ground_truth_json("A1", "move forward 1 meters"),
        },
        {"response": "bar", "ground_truth": "bar"},  # not JSON: the whole string is the answer
        {"response": None, "ground_truth": ""},
    ]
    out = compute_score(inputs)
    assert [o["overall"] for o in out] == [1.0, 1.0, 1.0, 0.0]
    assert json.loads(ground_truth_json("D2", "A")) == {"task_type": "D2", "answer": "A"}
    with pytest.raises(ValueError, match="reward_inputs"):
        compute_score({"response": "x", "ground_truth": "y"})


TASKS = st.one_of(st.sampled_from(reward.TASK_TYPES + ("", "a1", "D5")), st.text(max_size=4))
_PIECES = st.sampled_from(
    [
        "move ",
        "turn ",
        "forward ",
        "left ",
        "right ",
        "backward ",
        "1.5 ",
        "-3 ",
        "40 ",
        "meters",
        "degrees",
        "; ",
        "[",
        "]",
        ", ",
        "100",
        "-20",
        "2000",
        "bbox",
        "yes",
        "no",
        "A",
        "B",
        ".",
        "The chair disappears from view",
        "remains visible",
        "same",
        "different",
        "\n",
    ]
)
TEXT = st.one_of(st.text(max_size=300), st.lists(_PIECES, max_size=60).map("".join))


@settings(max_examples=300, deadline=None)
@given(TEXT, TASKS, TEXT)
def test_never_crashes_and_stays_in_range(response, task_type, answer):
    gt = json.dumps({"task_type": task_type, "answer": answer})
    for fix in (True, False):
        result = compute_score([{"response": response, "ground_truth": gt}], fix_d_variants=fix)[0]
        assert -1.0 <= result["overall"] <= 1.0
        assert all(0.0 <= v <= 1.0 for k, v in result.items() if k != "overall")
        if len(response.strip()) > 200:
            assert result["overall"] == -1.0
