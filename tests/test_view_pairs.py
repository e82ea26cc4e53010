"""World-model input: view pairs from posed clips, flips, Plücker rays, the RealEstate10K loader."""
import numpy as np
import pytest
from PIL import Image

from w2v_jax import geometry
from w2v_jax.data import realestate10k, view_pairs as clips
from world_model_fixtures import H, K16, fake_clip


def test_source_plucker_rays_are_identity_rays():
    clip = fake_clip()
    for flip in (False, True):
        ex = clips.make_example(clip, np.array([2]), np.array([5]), flip=flip)
        rays = ex["plucker_src"][0]
        np.testing.assert_allclose(rays[..., 3:], 0.0, atol=1e-6)  # moment o x d = 0
        np.testing.assert_allclose(ex["rel_src"][0], np.eye(4), atol=1e-5)
        K = ex["K"]
        j, i = np.meshgrid(np.arange(H) + 0.5, np.arange(H) + 0.5)
        d = np.stack([(j - K[0, 2]) / K[0, 0], (i - K[1, 2]) / K[1, 1], np.ones_like(j)], -1)
        np.testing.assert_allclose(rays[..., :3], d / np.linalg.norm(d, axis=-1, keepdims=True),
                                   atol=1e-6)
    # target rays: metric relative pose of frame 5 seen from frame 2 (not renormalised)
    ex = clips.make_example(clip, np.array([2]), np.array([5]))
    c2w = clip["c2w"].astype(np.float64)
    rel = geometry.relative_pose(c2w[2], c2w[5])
    np.testing.assert_allclose(ex["rel_tgt"][0], rel, atol=1e-5)
    np.testing.assert_allclose(ex["plucker_tgt"][0], geometry.plucker_rays(K16, rel, H, H),
                               atol=1e-5)


def test_flip_mirrors_images_and_rays_consistently():
    clip = fake_clip()
    a = clips.make_example(clip, np.array([0]), np.array([5]), flip=False)
    b = clips.make_example(clip, np.array([0]), np.array([5]), flip=True)
    np.testing.assert_array_equal(b["target"], a["target"][:, :, ::-1])
    # mirrored ray at (i, W-1-j): d' = F d, moment' = (F o) x (F d) = -F (o x d)
    F = np.array([-1.0, 1.0, 1.0])
    ra, rb = a["plucker_tgt"][0], b["plucker_tgt"][0][:, ::-1]
    np.testing.assert_allclose(rb[..., :3], ra[..., :3] * F, atol=1e-5)
    np.testing.assert_allclose(rb[..., 3:], -ra[..., 3:] * F, atol=1e-5)


def test_choose_views_and_pair_dataset():
    rng = np.random.default_rng(0)
    cfg = clips.PairConfig(first_source_prob=1.0, last_target_prob=1.0)
    s, t = clips.choose_views(7, cfg, rng)
    assert s.tolist() == [0] and t.tolist() == [6]
    cfg = clips.PairConfig(num_source=2, num_target=3)
    for _ in range(20):
        s, t = clips.choose_views(9, cfg, rng)
        assert len(set(s.tolist() + t.tolist())) == 5
    with pytest.raises(ValueError, match="num_frames"):
        clips.choose_views(1, cfg, rng)
    source = [fake_clip(seed=i, size=32) for i in range(4)]
    ds = clips.pair_dataset(source, batch_size=2, config=clips.PairConfig(image_size=16), seed=3)
    it = iter(ds)
    first = next(it)
    assert first["source"].shape == (2, 1, 16, 16, 3)
    assert first["plucker_tgt"].shape == (2, 1, 16, 16, 6)
    assert first["source"].min() >= -1 and first["source"].max() <= 1
    state = it.get_state()
    b1 = next(it)
    it.set_state(state)
    b2 = next(it)
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])


def test_realestate10k_loader(tmp_path):
    root = tmp_path / "re10k"
    frames = root / "seq0"
    frames.mkdir(parents=True)
    w2c = []
    lines = ["https://www.youtube.com/watch?v=xyz"]
    for f in range(3):
        c2w = geometry.egocentric_step(forward_m=0.5 * f, yaw_right_deg=10.0 * f).astype(np.float64)
        m = np.linalg.inv(c2w)[:3]
        w2c.append(m)
        ts = 1000 * (f + 1)
        lines.append(" ".join([str(ts), "0.5", "0.8", "0.5", "0.5", "0", "0"]
                              + [f"{v:.9f}" for v in m.reshape(-1)]))
        Image.fromarray(np.full((40, 64, 3), 40 * f, np.uint8)).save(frames / f"{ts}.png")
    (root / "seq0.txt").write_text("\n".join(lines) + "\n")
    source = realestate10k.RealEstate10KSource(str(root), image_size=16, max_frames=4)
    clip = source[0]
    assert clip["frames"].shape == (4, 16, 16, 3) and clip["num_frames"] == 3
    np.testing.assert_array_equal(clip["frame_mask"], [True, True, True, False])
    expected = geometry.egocentric_step(forward_m=1.0, yaw_right_deg=20.0)
    np.testing.assert_allclose(clip["c2w"][2], expected, atol=1e-5)
    # fx = 0.5 * 64 px, crop 40x40 centred, resize to 16: fx' = 32 * 16 / 40; cx' = (32 - 12) * 0.4
    np.testing.assert_allclose(clip["K"], [[12.8, 0, 8.0], [0, 12.8, 8.0], [0, 0, 1]], atol=1e-5)
    assert clip["frames"][1].mean() == 40
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.txt").write_text("123 1 2 3\n456 1 2 3\n")
    with pytest.raises(ValueError, match="expected 19 numbers"):
        realestate10k.read_realestate10k_cameras(str(bad / "x.txt"))
