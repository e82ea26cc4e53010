"""Runner, aggregation, blind baseline, hygiene and leak report on hand-made items."""

import numpy as np
import pytest

from w2v_jax.eval import formats, runner
from w2v_jax.eval.inference import Answer


class Stub:
    """Answers with ``reply(prompt)``; records every prompt it saw."""

    def __init__(self, reply):
        self.reply, self.seen = reply, []

    def __call__(self, prompts, max_new_tokens):
        self.seen += list(prompts)
        return [Answer(self.reply(p), 10, 2, 1.0, 0.01) for p in prompts]


def _image(v):
    return np.full((8, 8, 3), v, np.uint8)


def sat_items(n=8):
    items = []
    for k in range(n):
        choices = ["rotated left", "rotated right"]
        items.append(dict(id=f"s{k}", suite="sat_like", category="ego_movement",
                          images=[_image(10 + k)], question="How did the camera move?",
                          choices=choices if k % 2 else choices[::-1], answer="rotated left",
                          meta={"label": "left"}))
    return items


def mc_items(n=8):
    return [dict(id=f"m{k}", suite="mindcube_like", category="among", images=[_image(k)],
                 question="Where? A. a B. b C. c D. d",
                 choices=["A. a", "B. b", "C. c", "D. d"], answer="ABCD"[k % 4],
                 meta={"label": "abcd"[k % 4]}) for k in range(n)]


def test_constant_answer_scores_chance():
    items = sat_items() + mc_items()
    records = runner.run(Stub(lambda p: p.choices[0] if p.item_id.startswith("s") else "A."),
                         items)
    res = runner.aggregate(items, records)
    sat = res["sat_like"]["categories"]["ego_movement"]
    assert sat["score"] == pytest.approx(0.5) and sat["chance"] == 0.5
    assert sat["circular"] == 0.0  # first option in both orders is right in at most one
    assert res["mindcube_like"]["summary"]["overall"] == pytest.approx(0.25)
    assert len([r for r in records if r["suite"] == "sat_like"]) == 2 * 8  # both orders


def test_correct_answers_score_one_and_circular_counts_items():
    items = sat_items(4)
    records = runner.run(Stub(lambda p: "rotated left"), items)
    res = runner.aggregate(items, records)["sat_like"]
    assert res["categories"]["ego_movement"]["circular"] == 1.0
    assert res["summary"]["headline"] == 1.0 and res["summary"]["macro_circular"] == 1.0


def test_blind_blanks_every_image():
    items = sat_items(3) + mc_items(2)
    stub = Stub(lambda p: "x")
    runner.run(stub, items, blind=True)
    assert stub.seen and all(
        im.shape == (8, 8, 3) and np.all(im == runner.BLANK_VALUE)
        for p in stub.seen for im in p.images)
    seeing = Stub(lambda p: "x")
    runner.run(seeing, items)
    assert any(np.any(im != runner.BLANK_VALUE) for p in seeing.seen for im in p.images)


def test_vsi_overall_is_mean_of_eight_tasks_with_direction_levels_averaged():
    cats = {"object_counting": 1.0, "object_abs_distance": 0.0, "object_size_estimation": 0.0,
            "room_size_estimation": 0.0, "object_rel_distance": 1.0,
            "object_rel_direction_easy": 1.0, "object_rel_direction_medium": 0.0,
            "object_rel_direction_hard": 0.0, "route_planning": 0.0,
            "obj_appearance_order": 0.0}
    items = []
    for cat, right in cats.items():
        numeric = cat in formats.VSI_NUMERIC
        items.append(dict(id=cat, suite="vsi_like", category=cat, images=[_image(0)],
                          question="q", choices=[] if numeric else ["A. x", "B. y"],
                          answer="2" if numeric else "A", meta={}))
    records = runner.run(Stub(lambda p: ("2" if "Options" not in p.text else "A")
                              if cats[p.item_id] else "B"), items)
    res = runner.aggregate(items, records)["vsi_like"]["summary"]
    assert res["tasks"]["object_rel_direction"] == pytest.approx(1 / 3)
    assert len(res["tasks"]) == 8
    assert res["overall"] == pytest.approx((1 + 1 + 1 / 3) / 8)


def test_vsi_prompt_is_lmms_evals():
    item = dict(id="v", suite="vsi_like", category="route_planning", images=[1, 2],
                question="Q?", choices=["A. x", "B. y"], answer="A", meta={})
    text = formats.prompts(item)[0].text
    assert text == ("<image><image>These are frames of a video.\nQ?\nOptions:\nA. x\nB. y\n"
                    "Answer with the option's letter from the given choices directly.")
    assert formats.MAX_NEW_TOKENS["vsi"] == 16


def test_leaks_flag_blind_above_chance():
    items = sat_items(40)
    records = runner.run(Stub(lambda p: "rotated left"), items, blind=True)
    flagged = runner.leaks(runner.aggregate(items, records))
    assert [(x["suite"], x["category"]) for x in flagged] == [("sat_like", "ego_movement")]
    records = runner.run(Stub(lambda p: p.choices[0]), items, blind=True)
    assert runner.leaks(runner.aggregate(items, records)) == []


def test_hygiene_reports_imbalance():
    items = sat_items(8)
    report = runner.hygiene(items)["sat_like/ego_movement"]
    assert report["positions"] == {"0": 0.5, "1": 0.5}
    skewed = [dict(i, choices=["rotated left", "rotated right"]) for i in items]
    assert not runner.hygiene(skewed)["sat_like/ego_movement"]["balanced"]
    assert runner.hygiene(mc_items(8))["mindcube_like/among"]["balanced"]
