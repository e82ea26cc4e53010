"""The main job's pipeline: stage order, done-markers, resume, config checks, rows and targets.

The stages themselves are the library functions tested elsewhere (builders, Trainer, GRPO,
evaluation); here they are replaced by recorders, except in the slow end-to-end run of the tiny
config.
"""
import json
import os

import pytest

from experiments.configs import reproduce as reproduce_config
from w2v_jax.reproduce import pipeline, report
from w2v_jax.reproduce import stages as st


def _config(stages="teacher,distill,base"):
    c = reproduce_config.get_config("tiny")
    c.stages = stages
    return c


def _recorders(monkeypatch, calls, fail=()):
    def make(name):
        def fn(config, workdir):
            calls.append(name)
            if name in fail:
                raise RuntimeError(f"{name} failed")
            return {"ran": name}
        return fn
    monkeypatch.setattr(pipeline, "STAGE_FNS", {n: make(n) for n in st.STAGES})


@pytest.mark.parametrize("arg", reproduce_config.ARGS)
def test_every_config_arg_builds_and_names_known_stages(arg):
    c = reproduce_config.get_config(arg)
    assert pipeline.selected_stages(c)
    assert set(c.evaluate.models) <= set(st.MODEL_RUNS)
    with pytest.raises(ValueError, match="allowed"):
        reproduce_config.get_config("huge")


def test_forward_and_inverse_tasks_partition_the_eight_tasks():
    from w2v_jax.supervision.build import TASK_TYPES

    assert sorted(st.FORWARD_TASKS + st.INVERSE_TASKS) == sorted(TASK_TYPES)
    assert not set(st.FORWARD_TASKS) & set(st.INVERSE_TASKS)


def test_unknown_stage_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown \\['trian'\\].*teacher,distill"):
        pipeline.selected_stages(_config("teacher,trian"))


def test_stages_run_in_pipeline_order_and_a_rerun_skips_finished_ones(tmp_path, monkeypatch):
    calls = []
    _recorders(monkeypatch, calls)
    pipeline.run(_config("base,teacher"), str(tmp_path))  # order comes from STAGES, not the flag
    assert calls == ["teacher", "base"]
    done = st.read_done(str(tmp_path), "teacher")
    assert done["summary"] == {"ran": "teacher"} and done["wall_seconds"] >= 0
    pipeline.run(_config("teacher,distill,base"), str(tmp_path))
    assert calls == ["teacher", "base", "distill"]


def test_a_failed_stage_leaves_no_marker_and_the_rerun_resumes_there(tmp_path, monkeypatch):
    calls = []
    _recorders(monkeypatch, calls, fail=("distill",))
    with pytest.raises(RuntimeError, match="distill failed"):
        pipeline.run(_config(), str(tmp_path))
    assert st.is_done(str(tmp_path), "teacher") and not st.is_done(str(tmp_path), "distill")
    _recorders(monkeypatch, calls)
    pipeline.run(_config(), str(tmp_path))
    assert calls == ["teacher", "distill", "distill", "base"]


def test_a_workdir_of_another_config_is_refused_naming_the_fields(tmp_path, monkeypatch):
    _recorders(monkeypatch, [])
    pipeline.run(_config("teacher"), str(tmp_path))
    other = _config("teacher")
    other.distill.num_scenes = 99
    with pytest.raises(ValueError, match="distill.*reproduce.json to resume, or use a new"):
        pipeline.check_config(other, str(tmp_path))
    changed_stages_only = _config("teacher,distill")  # stages / progress are run options
    changed_stages_only.progress = True
    pipeline.check_config(changed_stages_only, str(tmp_path))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a build of this tool"):
        pipeline.check_config(_config(), str(tmp_path / "foreign"))


def test_missing_reused_models_and_missing_inputs_are_named(tmp_path):
    c = _config()
    c.world_model = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="config.world_model=.*no such directory"):
        pipeline.check_config(c, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="stage 'sft' needs stage 'distill' first"):
        st.sft(_config(), str(tmp_path))


def test_fidelity_pools_the_matched_pairs_of_the_d_tasks():
    fid = {"D1": {"matched": 2, "iou_at_0.5": 0.5}, "D2": {"matched": 6, "accuracy": 1.0},
           "D3": {"matched": 2, "exact": 0.0}, "D4": {"matched": 0, "accuracy": 0.0}}
    assert st.fidelity_score(fid) == pytest.approx((1 + 6 + 0) / 10)
    assert st.fidelity_score({"D1": {"matched": 0, "iou_at_0.5": 1.0}}) == 0.0


def _aggregate(acc, n=100):
    cats = {c: {"n": n, "score": a, "se": (a * (1 - a) / n) ** 0.5, "chance": 0.5}
            for c, a in acc.items()}
    return {"sat_like": {"format": "sat", "categories": cats,
                         "summary": {"headline": sum(acc.values()) / len(acc),
                                     "macro": sum(acc.values()) / len(acc)}},
            "mindcube_like": {"format": "mindcube", "categories": {},
                              "summary": {"overall": 0.4, "n": 100}}}


def test_row_metrics_macro_and_its_standard_error():
    row = report.row_metrics(_aggregate({"ego_movement": 0.5, "goal_aim": 0.9}))
    assert row["sat_like_dynamic_macro"] == pytest.approx(0.7)
    se = ((0.25 / 100) + (0.09 / 100)) ** 0.5 / 2
    assert row["sat_like_dynamic_macro_se"] == pytest.approx(se)
    assert row["mindcube_like_overall_se"] == pytest.approx((0.24 / 100) ** 0.5)
    assert row["sat_like"]["goal_aim"]["accuracy"] == 0.9


def _rows(w, b, t, sft, fwd, inv, fw_flops=1e6, tt_flops=1e8):
    r = {"base": {"sat_like_dynamic_macro": b}, "test_time_search": {
        "sat_like_dynamic_macro": t, "flops_per_question": tt_flops},
        "world2vlm": {"sat_like_dynamic_macro": w, "flops_per_question": fw_flops,
                      "tasks_mean_reward": 0.6},
        "world2vlm_sft": {"sat_like_dynamic_macro": sft, "tasks_mean_reward": 0.5},
        "forward_only": {"sat_like_dynamic_macro": fwd},
        "inverse_only": {"sat_like_dynamic_macro": inv}}
    return r


def test_targets_are_judged_from_the_rows():
    met = report.targets(_rows(0.8, 0.6, 0.7, 0.79, 0.6, 0.7), 0.9)
    assert all(met[k]["met"] for k in ("sat_gain_vs_base", "sat_vs_test_time",
                                       "flops_ratio_test_time_over_world2vlm",
                                       "bidirectional_vs_forward_only",
                                       "bidirectional_vs_inverse_only",
                                       "grpo_tasks_reward_gain", "grpo_sat_change",
                                       "label_fidelity"))
    assert met["flops_ratio_test_time_over_world2vlm"]["value"] == pytest.approx(100.0)
    missed = report.targets(_rows(0.7, 0.6, 0.75, 0.8, 0.85, 0.7, tt_flops=2e7), 0.5)
    assert not missed["sat_gain_vs_base"]["met"]  # +10 points < 15
    assert not missed["sat_vs_test_time"]["met"]
    assert not missed["flops_ratio_test_time_over_world2vlm"]["met"]  # 20x
    assert not missed["bidirectional_vs_forward_only"]["met"]
    assert not missed["grpo_sat_change"]["met"]  # -10 points
    assert not missed["label_fidelity"]["met"]
    assert report.targets({}, None)["sat_gain_vs_base"]["met"] is None


def test_ranked_metrics_come_from_the_likelihood_run_only():
    runs = {"model": _aggregate({"ego_movement": 0.1}),
            "ranked": _aggregate({"ego_movement": 0.6, "goal_aim": 0.8})}
    row = report.ranked_metrics(runs)
    assert row["sat_like_dynamic_macro_ranked"] == pytest.approx(0.7)
    assert row["sat_like_dynamic_macro_ranked_se"] == pytest.approx(
        ((0.24 / 100) + (0.16 / 100)) ** 0.5 / 2)
    assert row["sat_like_ranked"]["goal_aim"]["accuracy"] == 0.8
    assert "sat_like_dynamic_macro" not in row
    assert report.ranked_metrics(runs, "blind_ranked") == {}


def test_markdown_lists_every_row_and_target():
    rows = {"base": report.row_metrics(_aggregate({"ego_movement": 0.5})),
            "world2vlm": {**report.row_metrics(_aggregate({"ego_movement": 0.75})),
                          **report.ranked_metrics({"ranked": _aggregate({"ego_movement": 0.9})})}}
    summary = {"title": "t", "command": "cmd", "rows": rows, "label_fidelity": 0.9,
               "targets": report.targets(rows, 0.9), "stage_seconds": {"sft": 12.0}}
    md = report.markdown(summary)
    assert "| base | 50.0 ± 5.0 | – |" in md
    assert "| world2vlm | 75.0 ± 4.3 | 90.0 ± 3.0 |" in md
    ranked_table = md[md.index("chosen by likelihood"):]
    assert "| world2vlm | 90.0 ± 3.0 |" in ranked_table and "| base |" not in ranked_table
    assert "| sat_gain_vs_base | +25.0 | >= +15.0 points | yes |" in md
    assert "sft 12" in md


def test_sheet_text_is_wrapped_and_control_characters_are_drawn_as_question_marks():
    text = report._wrap("<image>move\x17 left " + "word " * 60, width=20, lines=3)
    assert all(c.isprintable() or c == "\n" for c in text)
    assert text.startswith("move? left")
    lines = text.split("\n")
    assert len(lines) == 3 and lines[-1].endswith(" …")


def test_examples_round_trip_with_their_images_and_answers(tmp_path):
    items = [{"id": f"s{k}", "suite": "sat_like", "category": c, "question": "q?",
              "choices": ["a", "b"], "answer": "a", "meta": {}, "images": [b"\x89PNG" + bytes([k])]}
             for k, c in enumerate(["ego_movement", "ego_movement", "goal_aim"])]
    path = tmp_path / "ex.jsonl"
    path.write_text(report.examples_jsonl(items, {"base": {"s0": "a", "s2": "b"}}))
    rows = report.read_examples(str(path))
    assert [r["id"] for r in rows] == ["s0", "s2"]  # one per category
    assert rows[1]["images"] == [b"\x89PNG\x02"] and rows[1]["responses"] == {"base": "b"}


@pytest.mark.slow
def test_the_tiny_pipeline_runs_end_to_end_and_resumes(tmp_path):
    """Every real stage at the tiny config (~5 min): outputs, report, release, and a rerun
    that skips everything."""
    work = str(tmp_path / "run")
    c = reproduce_config.get_config("tiny")
    pipeline.run(c, work)
    paths = pipeline.results_paths(c, work)
    with open(paths["json"]) as f:
        summary = json.load(f)
    assert set(summary["rows"]) == set(report.ROWS)
    for name in ("base", "world2vlm", "oracle_teacher"):
        row = summary["rows"][name]
        assert 0.0 <= row["sat_like_dynamic_macro"] <= 1.0 and row["flops_per_question"] > 0
    tt = summary["rows"]["test_time_search"]
    assert tt["flops_per_question"] > summary["rows"]["base"]["flops_per_question"]
    for key in ("bars", "curve", "sheet"):
        assert os.path.getsize(paths[key]) > 1000
    from w2v_jax.train import runs

    # the base is two runs: the object lists alone, then every perception task from there
    align = runs.read_run_config(os.path.join(work, "base", "align"))
    assert list(align["data"]["tasks"]) == ["objects"]
    assert runs.read_run_config(os.path.join(work, "base", "run"))["init_from"] == os.path.join(
        work, "base", "align")
    model, tok = runs.load_vlm(os.path.join(work, "release", "world2vlm_small"))
    assert runs.vlm_image_config(os.path.join(work, "release", "world2vlm_small"))
    released_wm = os.path.join(work, "release", "world_model_small")
    runs.load_world_model(released_wm)
    step = os.listdir(os.path.join(released_wm, "checkpoints"))[0]
    with open(os.path.join(released_wm, "README.md")) as f:  # the card names the step released
        assert f"training step {step}." in f.read()
    with open(os.path.join(work, "release", "world2vlm_small", "README.md")) as f:
        assert "options ranked by likelihood" in f.read()
    assert "sat_like_dynamic_macro_ranked" in summary["rows"]["world2vlm"]
    assert pipeline.run(c, work) == {}
