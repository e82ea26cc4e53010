"""Camera conventions: OpenCV camera, Z-up world, relative yaw positive to the right."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2v_jax import actions, geometry


def test_intrinsics_from_hfov_90():
    K = geometry.intrinsics_from_hfov(1024, 768, 90.0)
    np.testing.assert_allclose(K, [[512, 0, 512], [0, 512, 384], [0, 0, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="hfov_deg"):
        geometry.intrinsics_from_hfov(64, 64, 180.0)


def test_look_c2w_axes_and_right_handed():
    c2w = geometry.look_c2w([1.0, 2.0, 1.5], heading_deg=90.0)
    R = c2w[:3, :3]
    np.testing.assert_allclose(R[:, 2], [0, 1, 0], atol=1e-6)  # looks along +y
    np.testing.assert_allclose(R[:, 0], [1, 0, 0], atol=1e-6)  # right is +x when facing +y
    np.testing.assert_allclose(R[:, 1], [0, 0, -1], atol=1e-6)  # image down is world down
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-6)
    np.testing.assert_allclose(c2w[:3, 3], [1, 2, 1.5])
    # pitch down: forward gets a negative z component
    assert geometry.look_c2w([0, 0, 1], 0.0, pitch_deg=20.0)[2, 2] < 0


def test_point_left_is_centred_after_turn_left():
    """A point 30 deg left of the optical axis projects to the centre after `turn left 30 degrees`."""
    K = geometry.intrinsics_from_hfov(64, 48, 90.0)
    c2w0 = geometry.look_c2w([0.5, -1.0, 1.2], heading_deg=25.0)
    # 30 deg left of the camera's forward axis, 3 m away, at camera height
    point_cam = 3.0 * np.array([-np.sin(np.deg2rad(30)), 0.0, np.cos(np.deg2rad(30))])
    point_world = c2w0[:3, :3] @ point_cam + c2w0[:3, 3]
    uv0, _ = geometry.project(K, c2w0, point_world[None])
    assert uv0[0, 0] < 32 - 10  # starts well left of centre
    poses, keys = actions.integrate(actions.parse_actions("turn left 30 degrees"), c2w0=c2w0)
    uv, depth = geometry.project(K, poses[keys[-1]], point_world[None])
    np.testing.assert_allclose(uv[0], [32.0, 24.0], atol=1e-3)
    np.testing.assert_allclose(depth[0], 3.0, atol=1e-5)
    T = geometry.relative_pose(c2w0, poses[-1])
    np.testing.assert_allclose(geometry.relative_yaw_deg(T), -30.0, atol=1e-4)


def test_turn_right_is_positive_yaw_and_world_heading_decreases():
    c2w0 = geometry.look_c2w([0, 0, 1], heading_deg=0.0)
    poses, _ = actions.integrate([actions.Action("turn_right", 40)], c2w0=c2w0)
    np.testing.assert_allclose(
        geometry.relative_yaw_deg(geometry.relative_pose(c2w0, poses[-1])), 40.0, atol=1e-4
    )
    # heading is counter-clockwise, so turning right decreases it: matches look_c2w(heading=-40)
    np.testing.assert_allclose(poses[-1], geometry.look_c2w([0, 0, 1], -40.0), atol=1e-5)


def test_project_pixel_centre_convention():
    K = geometry.intrinsics_from_hfov(4, 4, 90.0)
    origins, dirs = geometry.pixel_rays(K, np.eye(4), 4, 4)
    # a point on pixel (i=1, j=2)'s ray projects to its centre (2.5, 1.5)
    uv, z = geometry.project(K, np.eye(4), (origins[1, 2] + 2.0 * dirs[1, 2])[None])
    np.testing.assert_allclose(uv[0], [2.5, 1.5], atol=1e-5)
    np.testing.assert_allclose(z[0], 2.0, atol=1e-6)  # unnormalised dirs: t == z-depth


def test_relative_pose_and_invert():
    a = geometry.look_c2w([1, 2, 1], 30.0, 10.0)
    b = geometry.look_c2w([-1, 0.5, 1.4], 170.0)
    T = geometry.relative_pose(a, b)
    np.testing.assert_allclose(a @ T, b, atol=1e-5)
    np.testing.assert_allclose(geometry.invert_pose(a) @ a, np.eye(4), atol=1e-5)


def test_plucker_identity_and_jax_numpy_agree():
    K = geometry.intrinsics_from_hfov(8, 6, 60.0)
    rays = geometry.plucker_rays(K, np.eye(4, dtype=np.float32), 6, 8)
    assert rays.shape == (6, 8, 6)
    np.testing.assert_allclose(rays[..., 3:], 0.0)  # identity camera: zero moment
    np.testing.assert_allclose(np.linalg.norm(rays[..., :3], axis=-1), 1.0, rtol=1e-6)
    centre_dir = rays[3, 4, :3]  # pixel centre (4.5, 3.5) is 0.5 px off the principal point
    assert centre_dir[2] > 0.99
    T = geometry.relative_pose(geometry.look_c2w([0, 0, 1], 0), geometry.look_c2w([1, 0.5, 1], 20))
    rays_np = geometry.plucker_rays(K, T, 6, 8)
    rays_jax = jax.jit(geometry.plucker_rays, static_argnums=(2, 3))(jnp.asarray(K), jnp.asarray(T), 6, 8)
    assert isinstance(rays_jax, jax.Array)
    np.testing.assert_allclose(np.asarray(rays_jax), rays_np, atol=1e-5)
    # moment is o x d: orthogonal to d
    np.testing.assert_allclose(np.sum(rays_np[..., :3] * rays_np[..., 3:], -1), 0.0, atol=1e-5)


def test_boxes_to_1000():
    b = geometry.boxes_to_1000([[0, 10, 32, 64], [-3, 0, 70, 20]], 64, 64)
    np.testing.assert_array_equal(b, [[0, 156, 500, 1000], [0, 0, 1000, 312]])
