"""Procedural scenes and the JAX ray caster: exact depths, boxes, conventions, determinism."""

import itertools

import jax
import numpy as np
import pytest

from w2v_jax import actions, geometry, sim

H = W = 32  # one image size and K = 4 object slots for most renders keep compilations few
K32 = geometry.intrinsics_from_hfov(W, H, 90.0)


def _sampled(seed):
    return sim.sample_scene(seed, num_objects=(3, 4), max_objects=4)


def _one(shape, color="red", size="large", xy=(2.0, 0.0), yaw=0.0, room=(3.0, 3.0, 3.0)):
    return sim.make_scene(
        [dict(shape=shape, color=color, size=size, xy=xy, yaw=yaw)], room=room, max_objects=4
    )


def test_sphere_depth_matches_analytic_intersection():
    scene = _one("sphere", xy=(1.5, 0.3))
    c2w = geometry.look_c2w([0.0, 0.0, 0.55], heading_deg=5.0, pitch_deg=4.0)
    out = sim.render(scene, c2w, K32, H, W)
    # exact ray / sphere intersection in float64, per pixel
    origins, dirs = (x.astype(np.float64) for x in geometry.pixel_rays(K32, c2w, H, W))
    centre, r = np.array([1.5, 0.3, 0.4]), 0.4
    oc = origins - centre
    a, b, c = np.sum(dirs * dirs, -1), np.sum(oc * dirs, -1), np.sum(oc * oc, -1) - r * r
    disc = b * b - a * c
    hit = disc > 0
    t = (-b - np.sqrt(np.where(hit, disc, 0.0))) / a
    inst, depth = np.asarray(out["instance"]), np.asarray(out["depth"])
    assert hit.sum() > 40
    assert np.sum((inst == 0) != hit) <= 2  # silhouettes agree up to grazing pixels
    both = hit & (inst == 0)
    np.testing.assert_allclose(depth[both], t[both], atol=2e-4)
    # the nearest visible point is 2 m minus the radius, roughly straight ahead
    assert abs(depth[both].min() - (np.hypot(1.5, 0.3) - 0.4)) < 0.02


def test_box_face_depth_is_constant_and_exact():
    # camera at the cube's centre height facing its front face (x = 2 - 0.4 = 1.6)
    scene = _one("cube", xy=(2.0, 0.0))
    out = sim.render(scene, geometry.look_c2w([0.0, 0.0, 0.4], 0.0), K32, H, W)
    inst, depth = np.asarray(out["instance"]), np.asarray(out["depth"])
    assert (inst == 0).sum() > 20
    np.testing.assert_allclose(depth[inst == 0], 1.6, atol=1e-4)
    # the +x wall of the 3 m room is perpendicular to the optical axis: the centre row reads 3 m
    # wherever the cube does not cover it
    row = depth[H // 2 - 1][inst[H // 2 - 1] == -1]
    np.testing.assert_allclose(row, 3.0, atol=1e-4)
    # rotated by 45 deg, the nearest edge is at 2 - 0.4 * sqrt(2)
    out45 = sim.render(
        _one("cube", xy=(2.0, 0.0), yaw=45.0), geometry.look_c2w([0, 0, 0.4], 0.0), K32, H, W
    )
    d45 = np.asarray(out45["depth"])[np.asarray(out45["instance"]) == 0]
    assert abs(d45.min() - (2.0 - 0.4 * np.sqrt(2.0))) < 0.06  # unrotated: 1.6


def test_cylinder_cap_from_above():
    # looking straight down from 2 m onto a large cylinder (top cap at z = 0.8): every object pixel
    # is on the cap at depth 1.2, and the cap covers pi * (f r / 1.2)^2 pixels
    scene = _one("cylinder", xy=(0.0, 0.0))
    out = sim.render(scene, geometry.look_c2w([0.0, 0.0, 2.0], 0.0, pitch_deg=90.0), K32, H, W)
    inst, depth = np.asarray(out["instance"]), np.asarray(out["depth"])
    np.testing.assert_allclose(depth[inst == 0], 1.2, atol=1e-4)
    expected = np.pi * (K32[0, 0] * 0.4 / 1.2) ** 2
    assert abs((inst == 0).sum() - expected) < 0.08 * expected
    np.testing.assert_allclose(depth[inst == -1], 2.0, atol=1e-4)  # the floor around it


def test_image_orientation_and_turn_left_centres_object():
    """An object 30 deg left of the optical axis appears left of centre; after `turn left 30
    degrees` it is centred. An object below the camera appears in the lower half."""
    c2w0 = geometry.look_c2w([0.0, 0.0, 1.2], heading_deg=0.0)
    ang = np.deg2rad(30.0)
    scene = _one("sphere", xy=(2.5 * np.cos(ang), 2.5 * np.sin(ang)), room=(4.0, 4.0, 3.0))
    box0 = np.asarray(sim.render(scene, c2w0, K32, H, W)["box"][0])
    assert (box0[0] + box0[2]) / 2 < 350 and (box0[1] + box0[3]) / 2 > 500
    poses, keys = actions.integrate(actions.parse_actions("turn left 30 degrees"), c2w0)
    box1 = np.asarray(sim.render(scene, poses[keys[-1]], K32, H, W)["box"][0])
    assert abs((box1[0] + box1[2]) / 2 - 500) <= 35


def test_modal_boxes_match_instance_mask_and_sit_inside_amodal():
    scene = _sampled(3)
    checked = 0
    for cam_seed in range(6):
        cam = sim.sample_camera(cam_seed, scene)
        out = sim.render(scene, cam, K32, H, W)
        inst = np.asarray(out["instance"])
        for k in range(scene.max_objects):
            mask = inst == k
            assert int(out["visible_pixels"][k]) == mask.sum()
            assert bool(out["visible"][k]) == mask.any()
            if not mask.any():
                np.testing.assert_array_equal(out["box"][k], [-1, -1, -1, -1])
                continue
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            px = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            np.testing.assert_array_equal(out["box"][k], geometry.boxes_to_1000(px, W, H))
            assert bool(out["in_frustum"][k])
            # a mask pixel counts whole, so the modal box may pass the true outline by < 1 pixel
            amodal, modal = np.asarray(out["amodal_box"][k]), np.asarray(out["box"][k])
            tol = 1000 // W + 1
            assert np.all(amodal[:2] <= modal[:2] + tol) and np.all(amodal[2:] >= modal[2:] - tol)
            checked += 1
    assert checked >= 3
    np.testing.assert_allclose(
        out["center_cam"], geometry.world_to_camera(cam, scene.center), atol=1e-4
    )


def test_amodal_box_of_object_behind_camera_is_invalid():
    scene = _one("cube", xy=(-2.0, 0.0))
    out = sim.render(scene, geometry.look_c2w([0.0, 0.0, 1.2], 0.0), K32, H, W)
    assert not bool(out["in_frustum"][0]) and not bool(out["visible"][0])
    np.testing.assert_array_equal(out["amodal_box"][0], [-1] * 4)
    assert not np.any(np.asarray(out["in_frustum"])[1:])  # empty slots


def test_identical_seeds_identical_scenes_and_renders():
    a, b, c = _sampled(11), _sampled(11), _sampled(12)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.center, c.center)
    cam = sim.sample_camera(5, a)
    np.testing.assert_array_equal(cam, sim.sample_camera(5, b))
    ra, rb = sim.render(a, cam, K32, H, W), sim.render(b, cam, K32, H, W)
    for key in ra:
        np.testing.assert_array_equal(ra[key], rb[key])
    assert sim.scene_metadata(a) == sim.scene_metadata(b)


def test_sampled_objects_never_overlap_and_fit_the_room():
    for seed in range(40):
        s = sim.sample_scene(seed)
        meta = sim.scene_metadata(s)
        assert 3 <= len(meta["objects"]) <= 10
        hx, hy = meta["room"]["half_extents"]
        for o in meta["objects"]:
            assert abs(o["center"][0]) + o["footprint_radius"] <= hx
            assert abs(o["center"][1]) + o["footprint_radius"] <= hy
            assert o["center"][2] == pytest.approx(o["half_extents"][2])  # resting on the floor
        for o, p in itertools.combinations(meta["objects"], 2):
            gap = np.hypot(o["center"][0] - p["center"][0], o["center"][1] - p["center"][1])
            assert gap >= o["footprint_radius"] + p["footprint_radius"]


def test_names_are_unique_and_use_size_only_when_needed():
    for seed in range(40):
        names = sim.object_names(sim.sample_scene(seed))
        assert len(set(names)) == len(names)
    s = sim.make_scene(
        [
            dict(shape="cube", color="red", size="large", xy=(1.0, 1.0)),
            dict(shape="cube", color="red", size="small", xy=(-1.0, 1.0)),
            dict(shape="sphere", color="red", size="small", xy=(1.0, -1.0)),
        ]
    )
    assert sim.object_names(s) == ["large red cube", "small red cube", "red sphere"]


def test_make_scene_rejects_bad_input():
    ok = dict(shape="cube", color="red", size="large", xy=(0.0, 0.0))
    with pytest.raises(ValueError, match="color"):
        sim.make_scene([dict(ok, color="pink")])
    with pytest.raises(ValueError, match="repeats"):
        sim.make_scene([ok, dict(ok, xy=(1.5, 1.5))])
    with pytest.raises(ValueError, match="overlaps"):
        sim.make_scene([ok, dict(ok, shape="sphere", xy=(0.3, 0.0))])
    with pytest.raises(ValueError, match="room"):
        sim.make_scene([dict(ok, xy=(2.9, 0.0))], room=(3.0, 3.0, 3.0))


def test_wall_tints_differ_in_scene_and_in_rendered_views():
    for seed in range(20):
        walls = np.asarray(sim.sample_scene(seed).wall_color)
        for i, j in itertools.combinations(range(4), 2):
            assert np.abs(walls[i] - walls[j]).max() > 0.05
    empty = sim.make_scene([], room=(3.0, 3.0, 3.0), max_objects=4)
    centre = []
    for heading in (0.0, 90.0, 180.0, 270.0):
        rgb = np.asarray(
            sim.render(empty, geometry.look_c2w([0.0, 0.0, 1.5], heading), K32, H, W)["rgb"]
        )
        centre.append(rgb[8:16, 12:20].mean((0, 1)))  # plain wall above the skirting, between seams
    for i, j in itertools.combinations(range(4), 2):
        assert np.abs(centre[i] - centre[j]).max() > 0.03


def test_sample_camera_is_free_and_faces_objects():
    seen = 0
    for seed in range(12):
        scene = _sampled(seed)
        c2w = sim.sample_camera(seed, scene)
        assert 1.2 <= c2w[2, 3] <= 1.6
        assert sim.free_space(scene, c2w[None, :2, 3], 0.5, 0.5)[0]
        assert c2w[2, 2] < 0  # looks slightly down
        seen += bool(np.any(np.asarray(sim.render(scene, c2w, K32, H, W)["visible"])))
    assert seen >= 11


def test_vmap_over_cameras_and_scenes_equals_loop():
    scenes = [_sampled(s) for s in (21, 22)]
    cams = np.stack(
        [[sim.sample_camera(10 * i + j, s) for j in range(3)] for i, s in enumerate(scenes)]
    )
    many = sim.render_views(scenes[0], cams[0], K32, H, W)
    batch = sim.render_batch(sim.stack_scenes(scenes), cams, K32, H, W)
    batch1 = sim.render_batch(sim.stack_scenes(scenes), cams[:, 0], K32, H, W)
    for i, j in itertools.product(range(2), range(3)):
        single = sim.render(scenes[i], cams[i, j], K32, H, W)
        for key, v in single.items():
            np.testing.assert_allclose(batch[key][i, j], v, atol=1e-5, err_msg=key)
            if i == 0:
                np.testing.assert_allclose(many[key][j], v, atol=1e-5, err_msg=key)
            if j == 0:
                np.testing.assert_allclose(batch1[key][i], v, atol=1e-5, err_msg=key)


def test_supersampling_is_a_box_filter_of_the_fine_render():
    scene = _sampled(4)
    cam = sim.sample_camera(4, scene)
    K16 = geometry.intrinsics_from_hfov(16, 16, 90.0)
    ss = sim.render(scene, cam, K16, 16, 16, supersample=2)
    fine = sim.render(scene, cam, K32, H, W)  # K32 == K16 scaled by 2
    np.testing.assert_allclose(
        ss["rgb"], np.asarray(fine["rgb"]).reshape(16, 2, 16, 2, 3).mean((1, 3)), atol=1e-5
    )
    plain = sim.render(scene, cam, K16, 16, 16)
    np.testing.assert_array_equal(ss["instance"], plain["instance"])
    np.testing.assert_allclose(ss["depth"], plain["depth"])
    assert float(np.asarray(ss["rgb"]).min()) >= 0.0 and float(np.asarray(ss["rgb"]).max()) <= 1.0
