"""Hand cases for the official scoring rules (w2v_jax.eval.scoring)."""

import math

import pytest

from w2v_jax.eval import scoring


def test_mra_hand_cases_and_threshold_floats():
    assert scoring.mra(1.0, 1.0) == 1.0
    assert scoring.mra(1.5, 1.0) == pytest.approx(0.1)  # 50 % off: only theta = 0.50
    assert scoring.mra(2.0, 1.0) == 0.0
    assert scoring.mra(1.05, 1.0) == 1.0  # 5 % off in float64 still passes theta = 0.95
    assert scoring.mra(105, 100) == 1.0
    # lmms-eval's float arithmetic: 1.1 vs 1 is 0.10000000000000009 off -> fails 0.9 and 0.95
    assert scoring.mra(1.1, 1.0) == pytest.approx(0.9)
    assert scoring.mra(11, 10) == pytest.approx(0.9)
    assert scoring.mra(None, 3.0) == 0.0
    assert len(scoring.MRA_THRESHOLDS) == 10
    with pytest.raises(ValueError, match="ground truth > 0"):
        scoring.mra(1.0, 0.0)


def test_parse_number_first_token_rule():
    assert scoring.parse_number("3.5 meters") == 3.5
    assert scoring.parse_number("4.") == 4.0  # trailing period stripped
    assert scoring.parse_number("12") == 12.0
    assert scoring.parse_number("about 3 meters") is None  # first token is not a number
    assert scoring.parse_number(" 3") is None  # split(' ') gives '' first, as lmms-eval does
    assert scoring.parse_number("") is None


def test_vsi_choice_first_token_letter():
    assert scoring.vsi_choice_correct("B.", "B")
    assert scoring.vsi_choice_correct("b is right", "B")
    assert not scoring.vsi_choice_correct("B) left", "B")
    assert not scoring.vsi_choice_correct("The answer is B", "B")


def test_sat_correct_contains_rule():
    choices = ["rotated left", "rotated right"]
    assert scoring.sat_correct("Rotated LEFT.", choices, "rotated left")
    assert not scoring.sat_correct("rotated left or rotated right", choices, "rotated left")
    assert not scoring.sat_correct("left", choices, "rotated left")
    assert not scoring.sat_correct("rotated right", choices, "rotated left")
    # a choice inside a longer choice is not counted on its own
    nested = ["look straight", "look straight and then left"]
    assert scoring.sat_correct("look straight and then left", nested,
                               "look straight and then left")
    assert scoring.sat_correct("I would look straight.", nested, "look straight")
    with pytest.raises(ValueError, match="not one of the choices"):
        scoring.sat_correct("x", choices, "up")


def test_extract_choice_priority_order():
    assert scoring.extract_choice("<answer>B. Left</answer>") == "B"
    assert scoring.extract_choice("A. no, C. yes") == "C"  # last match of the top pattern
    assert scoring.extract_choice("The answer is D") == "D"
    assert scoring.extract_choice("Answer: A") == "A"
    assert scoring.extract_choice("**B**") == "B"
    assert scoring.extract_choice("nothing here") is None
    assert scoring.extract_choice("E.") is None  # E is not in the default letters
    assert scoring.extract_choice("E.", letters="ABCDE") == "E"
    assert scoring.extract_choice("") is None


def test_circular_and_se():
    results = [("a", True), ("a", True), ("b", True), ("b", False), ("c", False), ("c", False)]
    assert scoring.circular(results) == pytest.approx(1 / 3)
    assert scoring.circular([]) == 0.0
    assert scoring.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert math.isclose(scoring.binomial_se(0.6, 150), math.sqrt(0.24 / 150))
