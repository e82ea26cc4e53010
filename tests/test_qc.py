"""QC of teacher views: blur, temporal change, degenerate boxes."""

import numpy as np
import pytest
from scipy import ndimage

from w2v_jax.sim.scene import FLOOR_COLORS, PALETTE, WALL_TINTS
from w2v_jax.supervision import qc

RES = 64


def room_like(shift: int = 0) -> np.ndarray:
    """A sharp 64-px test view: wall, checker floor, three flat-shaded blocks (float [0, 1])."""
    img = np.zeros((RES, RES, 3))
    img[:28] = WALL_TINTS[1] * 0.6
    yy, xx = np.mgrid[28:RES, :RES]
    checker = ((yy // 6) + ((xx + shift) // 8)) % 2
    img[28:] = np.where(checker[..., None] == 0, FLOOR_COLORS[0], FLOOR_COLORS[1]) * 0.95
    for k, (y, x) in enumerate(((30, 8), (36, 30), (26, 48))):
        x = x + shift
        img[y:y + 10, x:x + 9] = PALETTE[k + 1] * 0.95  # top face
        img[y + 10:y + 20, x:x + 9] = PALETTE[k + 1] * 0.55  # side face
    return np.clip(img, 0, 1)


def blur(img, sigma):
    return ndimage.gaussian_filter(img, (sigma, sigma, 0))


def test_laplacian_variance_is_the_opencv_measure():
    img = room_like()
    grey = img @ np.array([0.299, 0.587, 0.114]) * 255.0
    expected = ndimage.laplace(grey, mode="nearest").var()
    assert qc.laplacian_variance(img) == pytest.approx(expected)
    assert qc.laplacian_variance((img * 255).round().astype(np.uint8)) == pytest.approx(
        expected, rel=0.02)
    assert qc.laplacian_variance(np.full((8, 8, 3), 0.3)) == 0.0


def test_sharp_views_pass_and_blurred_views_fail():
    source, view = room_like(), room_like(shift=3)
    assert qc.check_views(source, [view]) == []
    for sigma in (1.0, 1.5):
        reasons = qc.check_views(source, [blur(view, sigma)])
        assert [qc.reason_kind(r) for r in reasons] == ["blur"]
        assert "view 0" in reasons[0]
    assert qc.laplacian_variance(blur(view, 1.0)) < qc.laplacian_variance(view)


def test_collapsed_model_output_fails():
    """A near-uniform grey view with faint noise (what an untrained world model returns)."""
    rng = np.random.default_rng(0)
    grey = np.clip(0.45 + 0.01 * rng.standard_normal((RES, RES, 3)), 0, 1)
    assert [qc.reason_kind(r) for r in qc.check_views(room_like(), [grey])] == ["blur"]


def test_duplicated_and_wild_views_fail_the_change_test():
    source = room_like()
    reasons = qc.check_views(source, [room_like(shift=3), room_like(shift=3)])
    assert [qc.reason_kind(r) for r in reasons] == ["static"]  # view 1 repeats view 0
    assert "view 1" in reasons[0]
    assert [qc.reason_kind(r) for r in qc.check_views(source, [source.copy()])] == ["static"]
    inverted = np.where(source > 0.5, 0.0, 1.0)
    assert qc.mean_abs_change(source, inverted) > 0.4
    assert [qc.reason_kind(r) for r in qc.check_views(source, [inverted])] == ["change"]
    with pytest.raises(ValueError, match="same shape"):
        qc.mean_abs_change(source, source[:32])


def test_disabled_qc_passes_everything():
    off = qc.QCConfig(enabled=False)
    assert qc.check_views(room_like(), [room_like(), blur(room_like(), 3)], off) == []
    kept, reasons = qc.filter_degenerate([{"box": [0, 0, 5, 5]}], off)
    assert len(kept) == 1 and reasons == []


def test_degenerate_boxes():
    dets = [{"label": "cube", "box": [100, 100, 200, 220]},  # fine
            {"label": "cube", "box": [100, 100, 105, 300]},  # side 5 < 10
            {"label": "cube", "box": [0, 0, 1000, 100]},  # aspect 10
            {"label": "cube", "box": [0, 0, 1000, 950]},  # area 0.95
            {"label": "cube", "box": [300, 300, 300, 400]}]  # empty
    kept, reasons = qc.filter_degenerate(dets)
    assert kept == dets[:1]
    assert [qc.reason_kind(r) for r in reasons] == ["degenerate_box"] * 4
    assert "aspect" in reasons[1] and "area" in reasons[2]


def test_config_validation():
    with pytest.raises(ValueError, match="change_min"):
        qc.QCConfig(change_min=0.5, change_max=0.4)
    with pytest.raises(ValueError, match="blur_min"):
        qc.QCConfig(blur_min=-1)
    with pytest.raises(ValueError, match="max_box_area"):
        qc.QCConfig(max_box_area=0)
    with pytest.raises(ValueError, match="shape"):
        qc.check_views(room_like(), [np.zeros((RES, RES))])
