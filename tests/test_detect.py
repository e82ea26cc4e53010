"""Detection on teacher views: the oracle, the image-only colour/shape detector, the matcher."""

import numpy as np
import pytest

from w2v_jax.sim import clips, render_views
from w2v_jax.sim import scene as scene_lib
from w2v_jax.sim.scene import COLORS, PALETTE, WALL_TINTS
from w2v_jax.supervision import detect, tasks

RES = 64


@pytest.fixture(scope="module")
def renders():
    """Two scenes x (first, last) views of four trajectory kinds, rendered in one call each."""
    cfg = clips.ClipConfig(resolution=RES)
    out = []
    for seed in (11, 12):
        scene = scene_lib.sample_scene(seed)
        poses = []
        for index, kind in enumerate(("forward", "turn_left", "left", "forward_turn_left")):
            _, c2w, _ = clips.plan_clip(scene, seed, index, kind, cfg)
            poses += [c2w[0], c2w[-1]]
        views = {k: np.asarray(v) for k, v in
                 render_views(scene, np.stack(poses), cfg.K, RES, RES, 2).items()}
        out.append((scene, views))
    return out


def _views(views):
    return [{k: v[i] for k, v in views.items()} for i in range(len(views["rgb"]))]


def test_oracle_is_the_renderers_truth(renders):
    scene, views = renders[0]
    oracle = detect.OracleDetector(scene)
    for view in _views(views):
        dets = oracle.detect(view)
        visible = np.flatnonzero(np.asarray(view["visible"]))
        assert sorted(d["track_id"] for d in dets) == sorted(visible.tolist())
        for d in dets:
            k = d["track_id"]
            assert d["box"] == view["box"][k].tolist()
            assert d["label"] == scene_lib.SHAPES[int(scene.type[k])]
            assert d["score"] == 1.0 and d["pixels"] == int(view["visible_pixels"][k])
        assert [d["pixels"] for d in dets] == sorted((d["pixels"] for d in dets), reverse=True)
        tasks.validate_detections(dets, "oracle")  # the task builders' input format
    named = detect.OracleDetector(scene, vocabulary="color_shape", min_pixels=30).detect(
        _views(views)[0])
    assert all(d["pixels"] >= 30 and d["label"].split()[0] in COLORS for d in named)
    with pytest.raises(ValueError, match="visible_pixels"):
        oracle.detect(views["rgb"][0])


def test_color_detector_finds_rendered_objects(renders):
    """Images only in. Recall: the oracle objects the task filter keeps, found by any detection;
    precision: the detections the filter keeps, each a real object."""
    filt = tasks.DetectionFilter()
    color = detect.ColorShapeDetector()
    preds, truth = [], []
    for scene, views in renders:
        oracle = detect.OracleDetector(scene)
        for view in _views(views):
            image = np.round(view["rgb"] * 255).astype(np.uint8)  # what gets packaged
            preds.append(color.detect(image))
            truth.append(oracle.detect(view))
            assert all(d["track_id"] is None for d in preds[-1])
    kept = lambda dets: [[d for d in ds if filt.keeps(d)] for ds in dets]
    found = detect.detection_metrics(preds, kept(truth))
    real = detect.detection_metrics(kept(preds), truth)
    assert found["true"] >= 12 and real["predicted"] >= 12
    assert found["recall"] >= 0.85 and real["precision"] >= 0.85, (found, real)
    assert found["mean_iou"] >= 0.8 and found["label_accuracy"] >= 0.6, found


def test_color_detector_on_a_drawn_image():
    img = np.zeros((RES, RES, 3), np.float32) + np.asarray(WALL_TINTS[0]) * 0.6
    img[30:50, 10:26] = PALETTE[COLORS.index("red")] * 0.8  # flat faces: a cube-like patch
    yy, xx = np.mgrid[:RES, :RES]
    disc = (yy - 20) ** 2 + (xx - 45) ** 2 <= 64
    shade = 0.45 + 0.5 * np.clip(1 - (yy - 12) / 16.0, 0, 1)  # brightness falls down the disc
    img[disc] = (PALETTE[COLORS.index("cyan")][None] * shade[disc][:, None])
    dets = detect.ColorShapeDetector(vocabulary="color_shape").detect(img)
    by_color = {d["color"]: d for d in dets}
    assert set(by_color) == {"red", "cyan"}
    assert by_color["red"]["box"] == [156, 469, 406, 781]  # pixels [10, 30, 26, 50] of 64
    assert by_color["red"]["label"] == "red cube"
    assert by_color["cyan"]["shape"] == "sphere"
    assert detect.ColorShapeDetector().detect(np.full((RES, RES, 3), 0.5)) == []
    with pytest.raises(ValueError, match="shape"):
        detect.ColorShapeDetector().detect(np.zeros((RES, RES)))
    with pytest.raises(ValueError, match="vocabulary"):
        detect.ColorShapeDetector(vocabulary="yolo")


@pytest.mark.parametrize("color", COLORS)
def test_pixel_classes_over_shading(color):
    shading = np.linspace(0.4, 1.0, 7)
    patch = PALETTE[COLORS.index(color)][None] * shading[:, None]
    classes = detect.classify_pixels(patch[None].astype(np.float32))
    assert (classes == COLORS.index(color)).all()


def test_room_colours_are_background():
    walls = np.concatenate([WALL_TINTS * s for s in (0.4, 0.6, 1.0)])
    floor = np.array([[0.53, 0.51, 0.47], [0.36, 0.34, 0.32]])  # lit floor tiles
    ceiling = np.array([[0.368, 0.368, 0.368]])
    pixels = np.concatenate([walls, floor, ceiling])[None].astype(np.float32)
    assert (detect.classify_pixels(pixels) == -1).all()


def det(label, box, color=None, score=0.9):
    d = {"label": label, "box": list(box), "score": score, "track_id": None}
    if color:
        d["color"] = color
    return d


def test_match_instances_by_label_and_appearance():
    first = [det("cube", (100, 100, 200, 200), "red"), det("cube", (300, 300, 400, 400), "blue"),
             det("sphere", (600, 600, 700, 700), "red")]
    last = [det("cube", (700, 100, 800, 200), "blue"),  # moved far: appearance carries it
            det("cube", (0, 0, 100, 100), "green"),  # new object
            det("sphere", (610, 600, 710, 700), "red")]
    a, b = detect.match_instances(first, last)
    assert [d["track_id"] for d in a] == [0, 1, 2]
    assert [d["track_id"] for d in b] == [1, 3, 2]
    assert first[0]["track_id"] is None  # inputs untouched
    # look-alikes (same label and colour): overlap decides
    twins_a = [det("cube", (100, 100, 200, 200), "red"), det("cube", (600, 100, 700, 200), "red")]
    twins_b = [det("cube", (590, 110, 690, 210), "red"), det("cube", (110, 100, 210, 200), "red")]
    _, b = detect.match_instances(twins_a, twins_b)
    assert [d["track_id"] for d in b] == [1, 0]
    # without appearance a match needs IoU >= min_iou
    _, b = detect.match_instances([det("cube", (100, 100, 200, 200))],
                                  [det("cube", (150, 100, 250, 200)),
                                   det("cube", (700, 700, 800, 800))])
    assert [d["track_id"] for d in b] == [0, 1]
    _, b = detect.match_instances([det("cube", (100, 100, 200, 200))],
                                  [det("cube", (190, 100, 290, 200))])
    assert [d["track_id"] for d in b] == [1]


def test_detection_metrics_hand_case():
    truth = [[det("cube", (0, 0, 100, 100)), det("sphere", (500, 500, 600, 600))], []]
    preds = [[det("sphere", (0, 0, 100, 50)),  # IoU 0.5, wrong label
              det("sphere", (500, 500, 600, 600)),
              det("cube", (800, 800, 900, 900))],
             [det("cube", (0, 0, 10, 10))]]
    m = detect.detection_metrics(preds, truth)
    assert (m["predicted"], m["true"], m["matched"]) == (4, 2, 2)
    assert m["precision"] == 0.5 and m["recall"] == 1.0
    assert m["mean_iou"] == pytest.approx(0.75) and m["label_accuracy"] == 0.5
    assert m["recall_labeled"] == 0.5 and m["precision_labeled"] == 0.25
    with pytest.raises(ValueError, match="images"):
        detect.detection_metrics(preds, truth[:1])
