"""The teacher seam (supervision/teachers.py): the renderer oracle and the world-model teacher."""
import numpy as np
import pytest

from w2v_jax import actions, sim
from w2v_jax.models import world_model as wm
from w2v_jax.supervision import teachers
from world_model_fixtures import H, K16, randomize, tiny_model

TRAJ = "move forward 0.4 meters; turn left 20 degrees"


@pytest.fixture(scope="module")
def view():
    scene = sim.sample_scene(3)
    c2w0 = sim.sample_camera(4, scene)
    return scene, c2w0, np.asarray(sim.render(scene, c2w0, K16, H, H)["rgb"])


def test_renderer_teacher_renders_the_trajectory_end_and_key_frames(view):
    scene, c2w0, image = view
    oracle = teachers.RendererTeacher(supersample=1)
    end = oracle.views(image, K16, TRAJ, scene=scene, c2w_source=c2w0, seed=0)
    keys = oracle.views(image, K16, TRAJ, scene=scene, c2w_source=c2w0, seed=0, key_frames=True)
    assert end.shape == (1, H, H, 3) and keys.shape == (2, H, H, 3)
    np.testing.assert_allclose(keys[-1], end[0], atol=1e-5)
    poses, frames = actions.integrate(actions.parse_actions(TRAJ), c2w0)
    for got, frame in zip(keys, frames[1:]):
        truth = np.asarray(sim.render(scene, poses[frame], K16, H, H)["rgb"])
        np.testing.assert_allclose(got, truth, atol=1e-5)


def test_world_model_teacher_is_imagine_with_its_settings(view):
    scene, c2w0, image = view
    model = randomize(tiny_model())
    teacher = teachers.WorldModelTeacher(model, steps=2, cfg=1.5)
    got = teacher.views(image, K16, actions.parse_actions(TRAJ), scene=scene, c2w_source=c2w0,
                        seed=3, key_frames=True)
    want = wm.imagine(model, image, K16, TRAJ, steps=2, cfg=1.5, seed=3, key_frames=True)
    np.testing.assert_array_equal(got, want)
    assert teacher.name == "world_model" and teachers.RendererTeacher().name == "renderer"


def test_teacher_settings_are_validated():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        teachers.WorldModelTeacher(tiny_model(), steps=0)
    with pytest.raises(ValueError, match="cfg must be a finite number"):
        teachers.WorldModelTeacher(tiny_model(), cfg=float("nan"))
    with pytest.raises(ValueError, match="render_chunk must be an integer >= 1"):
        teachers.RendererTeacher(render_chunk=0)
    with pytest.raises(ValueError, match=r"c2w_source must be \(4, 4\)"):
        teachers.RendererTeacher().poses(np.eye(3), TRAJ)
