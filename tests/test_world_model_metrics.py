"""World-model metrics: PSNR/SSIM with masks, co-visibility, warp, reprojection, box matcher."""
import jax
import numpy as np

from w2v_jax import geometry
from w2v_jax.models.world_model import metrics


def test_psnr_ssim_and_masks():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.psnr(a, b), 10 * np.log10(1 / mse), rtol=1e-5)
    mask = np.zeros((2, 16, 16), bool)
    mask[:, :8] = True
    mse_m = np.mean((a - b)[:, :8] ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.psnr(a, b, mask), 10 * np.log10(1 / mse_m), rtol=1e-5)
    assert np.isnan(metrics.psnr(a, b, np.zeros_like(mask))).all()
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-5)
    s = np.asarray(metrics.ssim(a, b))
    assert (s < 0.95).all() and (s > 0).all()
    # masked SSIM over everything equals the plain one
    np.testing.assert_allclose(metrics.ssim(a, b, np.ones_like(mask)), s, atol=1e-6)
    # reference: scipy's 11-tap gaussian (sigma 1.5, radius 5) with the borders cropped = 'valid'
    from scipy.ndimage import gaussian_filter

    def blur(x):
        y = gaussian_filter(x.astype(np.float64), sigma=1.5, truncate=3.4, axes=(0, 1))
        return y[5:-5, 5:-5]

    x, y = a[0], b[0]
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    np.testing.assert_allclose(float(s[0]), ref.mean(), atol=1e-5)


def test_covisibility_warp_and_reprojection_on_renders():
    from w2v_jax import sim

    scene = sim.sample_scene(11)
    c2w0 = sim.sample_camera(12, scene)
    K = geometry.intrinsics_from_hfov(32, 32, 90.0)
    c2w1 = c2w0 @ geometry.egocentric_step(right_m=0.3, forward_m=0.3, yaw_right_deg=15.0)
    r0, r1 = (jax.tree.map(np.asarray, sim.render(scene, c, K, 32, 32, 2)) for c in (c2w0, c2w1))
    rel = geometry.relative_pose(c2w0, c2w1)
    assert metrics.covisible_mask(r0["depth"], r0["depth"], K, np.eye(4)).all()
    same = metrics.warp_baseline(r0["rgb"], r0["depth"], K, np.eye(4))
    np.testing.assert_allclose(same, r0["rgb"])
    cov = metrics.covisible_mask(r1["depth"], r0["depth"], K, rel)
    assert 0.3 < cov.mean() < 1.0
    warp = metrics.warp_baseline(r0["rgb"], r0["depth"], K, rel)
    psnr_warp = float(metrics.psnr(warp, r1["rgb"], cov))
    psnr_copy = float(metrics.psnr(r0["rgb"], r1["rgb"], cov))
    assert psnr_warp > psnr_copy + 3.0
    e_true = metrics.reprojection_error(r1["rgb"], r0["rgb"], r0["depth"], r1["depth"], K, rel)
    e_copy = metrics.reprojection_error(r0["rgb"], r0["rgb"], r0["depth"], r1["depth"], K, rel)
    assert e_true < 0.5 * e_copy


def test_box_matcher():
    truth = np.full((16, 16, 3), 0.8, np.float32)
    inst = np.full((16, 16), -1, np.int32)
    truth[2:6, 3:9] = [0.9, 0.1, 0.1]
    inst[2:6, 3:9] = 0
    truth[10:14, 10:15] = [0.1, 0.2, 0.9]
    inst[10:14, 10:15] = 1
    res = metrics.match_boxes(truth, truth, inst)
    np.testing.assert_allclose(res["iou"], [1.0, 1.0])
    assert res["visible_pred"].all()
    pred = np.full_like(truth, 0.8)
    pred[3:7, 3:9] = [0.85, 0.15, 0.1]  # red object shifted down by one row, blue one missing
    res = metrics.match_boxes(pred, truth, inst, extra_prototypes={2: [0.1, 0.9, 0.1]})
    np.testing.assert_allclose(res["iou"], [18 / 30, 0.0, np.nan])  # id 2: not truly visible
    np.testing.assert_array_equal(res["visible_pred"], [True, False, False])
    np.testing.assert_array_equal(res["visible_true"], [True, True, False])
