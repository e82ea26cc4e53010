"""MindJourney's spatial beam search (research/grpo.md §5) as a cost-accounted test-time baseline.

The world model imagines, the evaluated VLM scores and answers. Per question (only the first
image is explored, as in MindJourney):

1. Primitives ``move forward 0.75 m``, ``turn left 27°``, ``turn right 27°`` extend each beam's
   action history; a candidate is dropped when it turns back right after the opposite turn, or
   when its net turn exceeds 60° or its total forward motion 1.5 m. Every candidate's view is
   imagined from the ORIGINAL image along its whole trajectory (one world-model call each, at the
   world model's resolution; K scaled to it).
2. ``scorer="vlm"`` (MindJourney): two VLM calls per step score every imagined view 0-9 with the
   released prompts (exploration, then helpfulness; "Output: 3,5,2"), each view shown as
   "Imagined image of index k if you move forward 0.75 meters, then turn left 27 degrees".
   Unparsable replies get random scores 0-5 (seeded), as released. The top ``beam`` views by
   exploration with score >= ``threshold`` become the next beams; views with helpfulness >=
   ``threshold`` join the evidence (best first), at most ``max_evidence`` in all.
   ``scorer="all"`` (the ablation ViSA found about as good): no scoring calls; every candidate is
   expanded and every imagined view is evidence, up to ``max_evidence``.
3. ``steps`` rounds, then one answer call: the original image(s), the question, the choices and
   the evidence views with their trajectory texts; graded by the item's own format rule.

Differences from the released code, on purpose: one view per candidate (the end of its
trajectory; the release also samples views every 0.25 m / 3° inside a primitive), the budgets
bound the net turn and total forward motion (the release compares only with the previous
action), and the answer is graded by SAT's contains-the-choice rule rather than the last line.

Cost per question: world-model calls and network evaluations and their FLOPs
(``cost.imagine_cost``; zero for an oracle teacher without a ``model``), VLM calls, prompt and
generated tokens and FLOPs (``cost.vlm_flops``), wall seconds.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Sequence

import numpy as np

from w2v_jax import actions, geometry
from w2v_jax.eval import cost, formats

SCORERS = ("vlm", "all")
EXPLORE_SYSTEM = (
    "You are an AI assistant designed to help with spatial reasoning in a 3D indoor scene. You "
    "must analyze any provided images and score imagined images based on how suitable they are "
    "for exploring these action consequences in order to answer the question from the "
    "choices.\n\nRules:\n1. You'll be provided with images (including imagined images), a "
    "question, and a set of answer choices. You should score all imagined images.\n2. You should "
    "output a list of scores from 0 to 9, separated by ','. For example: Output: 3,5,2,9,0,1\n")
HELPFUL_SYSTEM = (
    "You are an AI assistant designed to help with spatial reasoning in a 3D indoor scene. You "
    "must analyze any provided images and score imagined images based on how helpful they are "
    "for answering the questions. Hint: They may not be correct for answering the questions, but "
    "they will be helpful for excluding the wrong answers. The scores should also consider the "
    "image quality. If the image quality is very bad, it should receive a low score. Otherwise, "
    "the score should be augmented.\n\nRules:\n1. You'll be provided with images (including "
    "imagined images), a question, and a set of answer choices. You should score all imagined "
    "images.\n2. You should output a list of scores from 0 to 9, separated by ','. For example: "
    "Output: 3,5,2,9,0,1\n")
ANSWER_SYSTEM = (
    "You are an AI assistant designed to help with spatial reasoning in a 3D indoor scene. You "
    "must analyze any provided images or observations and answer the question.\n\nRules:\n1. You "
    "should output the exact answer from the choices.\n2. You will be provided with multiple "
    "imagined views if you taking corresponding actions to help you answer the questions.\n3. "
    "Your final line must only include the exact answer choice.\n")
SCORE_MAX_NEW_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """MindJourney's released settings (SVC scripts) by default; see the module doc."""

    forward_m: float = 0.75
    turn_deg: float = 27.0
    max_turn_deg: float = 60.0
    max_forward_m: float = 1.5
    beam: int = 2
    steps: int = 3
    threshold: int = 8
    max_evidence: int = 18
    scorer: str = "vlm"
    default_hfov_deg: float = 90.0  # K for images without one (real benchmarks)

    def __post_init__(self):
        if self.scorer not in SCORERS:
            raise ValueError(f"SearchConfig.scorer must be one of {SCORERS}, got {self.scorer!r}")
        for name in ("beam", "steps", "max_evidence"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SearchConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def primitives(self) -> tuple[actions.Action, ...]:
        return (actions.Action("forward", self.forward_m),
                actions.Action("turn_left", self.turn_deg),
                actions.Action("turn_right", self.turn_deg))


def allowed(history: Sequence[actions.Action], step: actions.Action, config: SearchConfig) -> bool:
    """No immediate reversal of a turn; net turn and total forward motion within the budgets."""
    if history and {history[-1].name, step.name} == {"turn_left", "turn_right"}:
        return False
    traj = list(history) + [step]
    net_turn = sum(a.signed for a in traj if a.is_turn)
    forward = sum(a.value for a in traj if a.name == "forward")
    return abs(net_turn) <= config.max_turn_deg + 1e-9 and forward <= config.max_forward_m + 1e-9


def trajectory_text(traj: Sequence[actions.Action]) -> str:
    """'move forward 0.75 meters, then turn left 27 degrees'."""
    return ", then ".join(a.text() for a in traj)


def parse_scores(response: str) -> list[int] | None:
    """MindJourney's ``_process_list``: the integers after 'Output:' separated by ','."""
    text = response or ""
    if "Output:" in text:
        text = text.split("Output:")[1]
    try:
        return [int(v.strip()) for v in text.split(",")]
    except ValueError:
        return None


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))


def _teacher_cost(teacher) -> dict:
    model = getattr(teacher, "model", None)
    if model is None or not hasattr(model, "config"):
        return {"evals": 0, "flops": 0.0}
    return cost.imagine_cost(model.config, 1, teacher.steps, teacher.method, teacher.cfg)


def _context(item, images, question_choices) -> str:
    text = "These are the images that pair with the question.\n"
    for k in range(len(images)):
        text += f"Image {k + 1}:<image>"
    text += "\nImage 1 is your current egocentric view\n"
    text += f"Question: {item['question']}\n\nAnswer Choices:\n"
    text += "".join(f"  - {c}\n" for c in question_choices) + "\n"
    return text


def _views_text(trajs) -> str:
    return "".join("Below are the imagined views after taking actions."
                   f"Imagined image of index {k} if you {trajectory_text(t)}:\n<image>\n"
                   for k, t in enumerate(trajs))


class MindJourney:
    """``search(item)`` -> record with the response, score and cost of one question.

    ``answerer``: the evaluated VLM (``VLMAnswerer`` or anything with its call); ``teacher``: the
    imagination engine, the teacher seam's ``teacher.views(image, K, trajectory, seed=...) ->
    (1, h, w, 3)`` in [0, 1] (``supervision.teachers.WorldModelTeacher``; its
    ``model.config.image_size`` fixes the resolution).
    """

    def __init__(self, answerer, teacher, config: SearchConfig = SearchConfig(), seed: int = 0):
        self.answerer, self.teacher, self.config, self.seed = answerer, teacher, config, seed
        self.world_cost = _teacher_cost(teacher)

    def _imagine(self, image: np.ndarray, K: np.ndarray, traj, seed: int) -> np.ndarray:
        model = getattr(self.teacher, "model", None)
        size = model.config.image_size if model is not None else image.shape[0]
        small = _resize(image, size)
        K_small = geometry.scale_intrinsics(K, size / image.shape[1], size / image.shape[0])
        view = self.teacher.views(small, K_small, list(traj), seed=seed)[0]
        return np.round(np.clip(view, 0.0, 1.0) * 255.0).astype(np.uint8)

    def _ask(self, prompt, max_new_tokens, tally) -> str:
        answer = self.answerer([prompt], max_new_tokens)[0]
        tally["vlm_calls"] += 1
        tally["vlm_prompt_tokens"] += answer.prompt_tokens
        tally["vlm_generated_tokens"] += answer.generated_tokens
        tally["vlm_flops"] += answer.flops
        return answer.text

    def search(self, item: dict, images: Sequence[np.ndarray], K=None) -> dict:
        """Run the search for ``item`` whose images are given decoded (uint8 (H, W, 3))."""
        cfg, t0 = self.config, time.perf_counter()
        rng = np.random.default_rng([self.seed, zlib.crc32(item["id"].encode())])
        first = np.asarray(images[0])
        if K is None:
            K = geometry.intrinsics_from_hfov(first.shape[1], first.shape[0],
                                              cfg.default_hfov_deg)
        tally = dict(world_model_calls=0, world_model_evals=0, world_model_flops=0.0,
                     vlm_calls=0, vlm_prompt_tokens=0, vlm_generated_tokens=0, vlm_flops=0.0)
        context = _context(item, images, item["choices"])
        beams: list[tuple] = [()]
        evidence: list[tuple] = []  # (trajectory, view)
        for step in range(cfg.steps):
            cands = [h + (p,) for h in beams for p in cfg.primitives if allowed(h, p, cfg)]
            if not cands:
                break
            views = []
            for traj in cands:
                views.append(self._imagine(first, K, traj, seed=len(evidence) + 31 * step))
                tally["world_model_calls"] += 1
                tally["world_model_evals"] += self.world_cost["evals"]
                tally["world_model_flops"] += self.world_cost["flops"]
            if cfg.scorer == "all":
                explore = helpful = [cfg.threshold] * len(cands)
                beams = cands
            else:
                shown = tuple(images) + tuple(views)
                text = context + _views_text(cands) + "Output a list of scores.\nOutput: "
                scores = []
                for system in (EXPLORE_SYSTEM, HELPFUL_SYSTEM):
                    prompt = formats.Prompt(item["id"], f"score{step}", text, shown,
                                            tuple(item["choices"]), system=system)
                    parsed = parse_scores(self._ask(prompt, SCORE_MAX_NEW_TOKENS, tally))
                    if parsed is None:
                        parsed = [int(v) for v in rng.integers(0, 6, len(cands))]
                    scores.append(parsed[:len(cands)])
                explore, helpful = scores
                ranked = sorted(range(len(explore)), key=lambda k: -explore[k])[:cfg.beam]
                beams = [cands[k] for k in ranked if explore[k] >= cfg.threshold]
            order = sorted(range(len(helpful)), key=lambda k: -helpful[k])
            for k in order:
                if helpful[k] >= cfg.threshold and len(evidence) < cfg.max_evidence:
                    evidence.append((cands[k], views[k]))
            if not beams:
                break
        text = (context + "Below are the imagined views you would obtain if you took the "
                "corresponding actions. These are provided to help you answer the question.\n"
                "You can include them in your reasoning, but you should still only output the "
                "exact answer at the last line\n")
        text += "".join(f"Imagined image of index {k} if you {trajectory_text(t)}:\n<image>\n"
                        for k, (t, _) in enumerate(evidence))
        text += "Output the exact answer from the choices.\nAnswer: "
        prompt = formats.Prompt(item["id"], "answer", text,
                                tuple(images) + tuple(v for _, v in evidence),
                                tuple(item["choices"]), system=ANSWER_SYSTEM)
        response = self._ask(prompt, formats.MAX_NEW_TOKENS[formats.format_of(item)], tally)
        scored = formats.score(item, response)
        tally["wall_s"] = time.perf_counter() - t0
        return dict(id=item["id"], suite=item["suite"], category=item["category"],
                    variant="test_time", response=response, answer=item["answer"], **scored,
                    evidence=[trajectory_text(t) for t, _ in evidence], cost=tally)
