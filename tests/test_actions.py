"""Action grammar, canonical form, integration against closed forms, trajectory sampling."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2v_jax import geometry
from w2v_jax.actions import (
    Action,
    NAMES,
    TrajectoryConfig,
    canonicalize,
    format_actions,
    format_number,
    integrate,
    parse_actions,
    relative_motion,
    sample_scene_trajectories,
    sample_trajectory,
    segment_frames,
)


def test_parse_paper_grammar_variants():
    text = "Move forward 1.5 meters, then turn LEFT 30 degrees and move right 1 meter; turn right 5 degree."
    assert parse_actions(text) == [
        Action("forward", 1.5),
        Action("turn_left", 30),
        Action("right", 1.0),
        Action("turn_right", 5),
    ]
    assert parse_actions("move backward .5 meters") == [Action("backward", 0.5)]
    assert parse_actions("turn left 30 degrees, and then move forward 2 meters") == [
        Action("turn_left", 30), Action("forward", 2)]


@pytest.mark.parametrize(
    "bad",
    ["", "move up 1 meters", "turn left 30 meters", "move forward meters", "jump 3", "move forward -1 meters"],
)
def test_parse_errors_name_text_and_grammar(bad):
    with pytest.raises(ValueError) as err:
        parse_actions(bad)
    assert "move forward|backward|left|right" in str(err.value)


def test_format_numbers_and_actions():
    assert format_number(1.5) == "1.5"
    assert format_number(40.0) == "40"
    assert format_number(0.12345) == "0.123"
    assert format_number(2.0004) == "2"
    assert format_number(-0.0001) == "0"
    assert format_actions([Action("forward", 1.30), Action("turn_left", 40)]) == (
        "move forward 1.3 meters; turn left 40 degrees")


def test_action_validation():
    with pytest.raises(ValueError, match="Action.name"):
        Action("shift_left", 1.0)
    with pytest.raises(ValueError, match="Action.value"):
        Action("forward", -1.0)
    with pytest.raises(ValueError, match="Action.value"):
        Action("forward", float("nan"))


_action = st.builds(
    Action,
    st.sampled_from(NAMES),
    st.integers(0, 100_000).map(lambda k: k / 1000),  # exactly representable with 3 decimals
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_action, min_size=1, max_size=5))
def test_parse_format_round_trip(acts):
    text = format_actions(acts)
    assert parse_actions(text) == acts
    assert parse_actions(text.upper()) == acts
    assert format_actions(parse_actions(text)) == text


def test_canonicalize_merges_and_drops():
    acts = [Action("forward", 1.0), Action("backward", 0.3), Action("turn_left", 10), Action("turn_right", 9.5),
            Action("left", 0.01), Action("forward", 0.5)]
    # forward 0.7; yaw -0.5 dropped; left 0.01 dropped; then forward 0.7 + 0.5 merge
    assert canonicalize(acts) == [Action("forward", 1.2)]
    assert canonicalize([Action("turn_left", 30), Action("turn_left", 20), Action("right", 0.5)]) == [
        Action("turn_left", 50), Action("right", 0.5)]
    assert canonicalize([Action("forward", 1.0), Action("backward", 1.0)]) == []


def test_segment_frame_counts():
    assert segment_frames(Action("forward", 0.3)) == 8  # floor of 8 frames
    assert segment_frames(Action("forward", 3.0)) == 16  # ceil(3.0/0.2)+1
    assert segment_frames(Action("turn_left", 100)) == 21


def test_integrate_closed_form_multi_step():
    """left 0.6 -> forward 1.5 -> turn right 40: exact pose in closed form."""
    acts = parse_actions("move left 0.6 meters; move forward 1.5 meters; turn right 40 degrees")
    c2w0 = geometry.look_c2w([2.0, 1.0, 1.2], heading_deg=60.0)
    poses, keys = integrate(acts, c2w0=c2w0)
    n1, n2, n3 = (segment_frames(a) for a in acts)
    assert keys == [0, n1 - 1, n1 + n2 - 2, n1 + n2 + n3 - 3]
    assert poses.shape == (keys[-1] + 1, 4, 4)
    psi = np.deg2rad(60.0)
    fwd, left = np.array([np.cos(psi), np.sin(psi), 0]), np.array([-np.sin(psi), np.cos(psi), 0])
    expected_pos = np.array([2.0, 1.0, 1.2]) + 0.6 * left + 1.5 * fwd
    np.testing.assert_allclose(poses[keys[1]][:3, 3], np.array([2.0, 1.0, 1.2]) + 0.6 * left, atol=1e-5)
    np.testing.assert_allclose(poses[-1], geometry.look_c2w(expected_pos, 60.0 - 40.0), atol=1e-5)
    motion = relative_motion(c2w0, poses[-1])
    np.testing.assert_allclose([motion["right_m"], motion["forward_m"], motion["yaw_right_deg"]],
                               [-0.6, 1.5, 40.0], atol=1e-5)
    # every step respects the step limits
    for a, b in zip(poses[:-1], poses[1:]):
        m = relative_motion(a, b)
        assert math.hypot(m["right_m"], m["forward_m"]) <= 0.2 + 1e-6
        assert abs(m["yaw_right_deg"]) <= 5.0 + 1e-4


def test_integrate_errors():
    with pytest.raises(ValueError, match="at least one action"):
        integrate([])


def test_sampling_grids_and_determinism():
    paper = TrajectoryConfig.paper()
    seen_d, seen_a = set(), set()
    rng = np.random.default_rng(0)
    for _ in range(400):
        t = sample_trajectory(rng, paper, "forward")
        seen_d.add(t.actions[0].value)
        t = sample_trajectory(rng, paper, "turn_left")
        seen_a.add(t.actions[0].value)
    assert min(seen_d) >= 0.1 and max(seen_d) <= 6.0
    assert all(abs(v * 10 - round(v * 10)) < 1e-6 for v in seen_d)  # 0.1 grid
    assert seen_a <= {float(x) for x in range(10, 101, 10)} and len(seen_a) == 10
    trajs = sample_scene_trajectories(7, paper)
    assert [t.kind for t in trajs] == list(paper.kinds)
    assert [a.name for a in trajs[-1].actions] == ["left", "forward", "turn_right"]
    assert trajs == sample_scene_trajectories(7, paper)
    with pytest.raises(ValueError, match="trajectory kind"):
        sample_trajectory(0, paper, "orbit")


def test_room_config_fits_small_rooms():
    room = TrajectoryConfig.room()
    for seed in range(50):
        for t in sample_scene_trajectories(seed, room):
            for a in t.actions:
                assert a.value <= (90 if a.is_turn else 1.5)
