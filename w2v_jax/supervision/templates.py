"""Prompt templates of the eight World2VLM tasks and the answer-string builders (paper.md §5).

Wording is the official one, character for character:
  A1-A4  `02_*/svc_dataset_gen/templates.jsonl` (one variant per task, picked with `rng.choice`);
  D1-D4  the templates hard-coded in `generate_detect_prompts_norm_1000.py` (D1 one variant,
         D2/D3/D4 three each), picked by `variant_index(key)` = sum of the key's code points mod
         the variant count, with key `"{traj_id}:{label}:{target_frame}"` (+ `":pos"`/`":neg"` for
         D4); `d_variant_key` builds it.
A prompt starts with one `<image>` tag per image (ms-swift style); slots are `{NAME}` and are filled
in one pass, so a value containing braces is never re-substituted.

Answers: numbers with at most 3 decimals and trailing zeros stripped (`format_number`), actions
as `move forward 1.5 meters` / `turn left 30 degrees` joined with `; ` (`format_actions`), boxes
as `[x1, y1, x2, y2]` integers in 0-1000.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from w2v_jax.actions import Action, format_actions, format_number

__all__ = [
    "Template",
    "A_TEMPLATES",
    "D_TEMPLATES",
    "TEMPLATES",
    "variant_index",
    "d_variant_key",
    "format_number",
    "format_actions",
    "action_text",
    "claim_text",
    "natural_sequence_text",
    "step_count_text",
    "box_text",
    "true_false",
    "yes_no",
    "visibility_choice",
    "visibility_sentence",
    "identity_choice",
    "identity_sentence",
]

_SLOT = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")


@dataclasses.dataclass(frozen=True)
class Template:
    """One prompt variant: the user text, the assistant answer pattern, the number of images."""

    task_type: str
    user: str
    answer: str
    num_images: int

    @property
    def slots(self) -> frozenset[str]:
        """Slot names used by the prompt and the answer."""
        return frozenset(_SLOT.findall(self.user) + _SLOT.findall(self.answer))

    def fill(self, slots: Mapping[str, str]) -> tuple[str, str]:
        """(prompt, answer) with every `{NAME}` replaced; extra slots are ignored.

        Raises ValueError naming the missing slots.
        """
        missing = sorted(self.slots - set(slots))
        if missing:
            raise ValueError(
                f"{self.task_type} template needs slots {sorted(self.slots)}; missing {missing}"
            )

        def sub(text: str) -> str:
            return _SLOT.sub(lambda m: str(slots[m.group(1)]), text)

        return sub(self.user), sub(self.answer)


_ALLOWED_ACTIONS = (
    "Write the full action sequence using ';' as a separator. Allowed actions:\n"
    "- move forward/backward/left/right X meters\n- turn left/right X degrees"
)

A_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "A1": (
        Template(
            "A1",
            "<image><image>How many meters did the camera move to get the second image? "
            "Answer as: move {DIR} X meters.",
            "move {DIR} {DIST} meters",
            2,
        ),
    ),
    "A2": (
        Template(
            "A2",
            "<image><image>How many degrees did the camera turn to get the second image? "
            "Answer as: turn {TURN_DIR} X degrees.",
            "turn {TURN_DIR} {ANGLE} degrees",
            2,
        ),
    ),
    "A3": (
        Template(
            "A3",
            "<image><image>To move from the first image to the second image, the camera used "
            "2 or 3 actions in order. " + _ALLOWED_ACTIONS,
            "{ACTION_SEQ}",
            2,
        ),
    ),
    "A4": (
        Template(
            "A4",
            '<image><image>True or false: the camera did "{CLAIM_ACTION}" to get the second image.',
            "{TF}",
            2,
        ),
    ),
}

_D_OBJECT = "<image><image>In the first image, the {OBJECT} is at bbox {BBOX_1}. "
_D_AFTER = 'After the camera does "{ACTION_SEQ}", '
_D2_HEAD = "<image>In the image, the {OBJECT} is at bbox {BBOX_1}. " + _D_AFTER
_D3_HEAD = (
    "<image><image>The {OBJECT} in the first image (bbox {BBOX_1}) and the {OBJECT} in the second "
    "image (bbox {BBOX_2}) are the same physical object. "
)
_D4_HEAD = _D_OBJECT + _D_AFTER + "the second image shows a {OBJECT} at bbox {BBOX_2}. "

D_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "D1": (
        Template(
            "D1",
            _D_OBJECT
            + "Bboxes use normalized integer coordinates in [0,1000]. "
            + _D_AFTER
            + "give the bbox of the same {OBJECT} in the second image. "
            "Answer with bbox [x1, y1, x2, y2] only.",
            "{BBOX_2}",
            2,
        ),
    ),
    "D2": (
        Template(
            "D2",
            _D2_HEAD + "does this {OBJECT} disappear from view? Answer with yes or no.",
            "{YN}",
            1,
        ),
        Template(
            "D2",
            _D2_HEAD + "which visibility result is correct?\nA. the object disappears from view\n"
            "B. the object remains visible\nAnswer with A or B only.",
            "{VIS_CHOICE}",
            1,
        ),
        Template(
            "D2",
            _D2_HEAD + "state the visibility result in one short sentence.",
            "{VIS_NL}",
            1,
        ),
    ),
    "D3": (
        Template(
            "D3",
            _D3_HEAD + "The camera used 1 or 2 actions in order. " + _ALLOWED_ACTIONS,
            "{ACTION_SEQ}",
            2,
        ),
        Template(
            "D3",
            _D3_HEAD + "Infer the ordered camera actions and report the step count.",
            "{ACTION_COUNT} steps | {ACTION_SEQ}",
            2,
        ),
        Template(
            "D3",
            _D3_HEAD + "Explain the camera motion in one concise sentence.",
            "{ACTION_SEQ_NL}",
            2,
        ),
    ),
    "D4": (
        Template(
            "D4",
            _D4_HEAD + "Are these the same physical object instance? Answer with yes or no.",
            "{YN}",
            2,
        ),
        Template(
            "D4",
            _D4_HEAD + "Which identity judgment is correct?\nA. same physical object instance\n"
            "B. different object instance\nAnswer with A or B only.",
            "{IDENTITY_CHOICE}",
            2,
        ),
        Template(
            "D4",
            _D4_HEAD + "Answer in one short sentence whether they refer to the same instance.",
            "{IDENTITY_NL}",
            2,
        ),
    ),
}

TEMPLATES: dict[str, tuple[Template, ...]] = {**A_TEMPLATES, **D_TEMPLATES}


# ----------------------------------------------------------------------------- variant choice
def variant_index(key: str, num_variants: int) -> int:
    """Official D-variant rule: sum of the code points of `key`, modulo `num_variants`."""
    if num_variants < 1:
        raise ValueError(f"num_variants must be >= 1, got {num_variants}")
    return sum(ord(ch) for ch in key) % num_variants


def d_variant_key(traj_id: str, label: str, target_frame: int, polarity: str | None = None) -> str:
    """`"{traj_id}:{label}:{target_frame}"`, plus `":pos"`/`":neg"` for D4 (polarity)."""
    if polarity not in (None, "pos", "neg"):
        raise ValueError(f"polarity must be None, 'pos' or 'neg', got {polarity!r}")
    key = f"{traj_id}:{label}:{int(target_frame)}"
    return key if polarity is None else f"{key}:{polarity}"


# ----------------------------------------------------------------------------- answer strings
def action_text(action: Action) -> str:
    """`move forward 1.5 meters` or `turn left 30 degrees`."""
    return format_actions([action])


def claim_text(actions: Sequence[Action]) -> str:
    """A4 claim: `X`, `X and Y`, or `X, Y and Z`."""
    texts = [action_text(a) for a in actions]
    if len(texts) <= 1:
        return "".join(texts)
    return ", ".join(texts[:-1]) + " and " + texts[-1]


def natural_sequence_text(actions: Sequence[Action]) -> str:
    """D3 sentence: `First move forward 1 meters, Then turn left 30 degrees.`"""
    if not actions:
        return ""
    words = ("First", "Then", "Next", "Finally")
    parts = [f"{words[min(i, 3)]} {action_text(a)}" for i, a in enumerate(actions)]
    return ", ".join(parts) + "."


def step_count_text(actions: Sequence[Action]) -> str:
    """D3 step-count answer: `2 steps | move forward 1 meters; turn left 30 degrees`."""
    return f"{len(actions)} steps | {format_actions(actions)}"


def box_text(box: Sequence[int]) -> str:
    """`[x1, y1, x2, y2]` (integers, 0-1000)."""
    return "[" + ", ".join(str(int(v)) for v in box) + "]"


def true_false(value: bool) -> str:
    return "true" if value else "false"


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def visibility_choice(disappears: bool) -> str:
    """D2 A/B answer: A = disappears from view, B = remains visible."""
    return "A" if disappears else "B"


def visibility_sentence(disappears: bool, label: str) -> str:
    return f"The {label} disappears from view." if disappears else f"The {label} remains visible."


def identity_choice(same: bool) -> str:
    """D4 A/B answer: A = same physical object instance, B = different instance."""
    return "A" if same else "B"


def identity_sentence(same: bool) -> str:
    if same:
        return "They are the same physical object instance."
    return "They are different object instances."
