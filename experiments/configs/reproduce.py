"""The main job (``w2v_jax.reproduce``): teacher -> distillation set -> base VLM -> SFT -> GRPO ->
ablations -> evaluation -> report -> released models.

    python -m experiments.reproduce --config=experiments/configs/reproduce.py:small \
        --workdir=DIR --cpu_devices=2

``arg``: ``small`` (the committed CPU result: every stage trained here from scratch, <= 2.5 h on 2
cores; writes ``results/reproduce_small.*`` and ``results/models/``), ``demo`` (``make demo``:
starts from the released teacher and base in ``results/models/``, a smaller distillation set and
shorter SFT / GRPO, the main rows only; <= 15 min), ``tiny`` (seconds per stage; tests).

Each stage's own config is a field: ``teacher.world_model`` (``world_model.py:small``),
``base`` (``vlm.py:base_small``), ``sft`` (``vlm.py:sft_small``), ``grpo`` (``vlm.py:grpo_small``)
-- every run field is an override, e.g. ``--config.sft.total_steps=800``. The pipeline fills in
the data and ``init_from`` paths. Changes from those presets (and why) are set below.
"""
import ml_collections

from experiments.configs import vlm, world_model

ARGS = ("small", "demo", "tiny")
RELEASED = "results/models"

WORLD_MODEL_CARD = (
    "Camera-conditioned flow-matching DiT (w2v_jax.models.world_model, preset `small`, "
    "self-conditioned) trained from scratch on posed clips of procedural rooms at 32 px "
    "(data_gen.render_clips: 500 scenes, seed 2024), batch 32 for up to 4,000 steps in a 38-min "
    "wall budget (the step reached is named below). Load with "
    "`w2v_jax.train.runs.load_world_model(DIR)`; sample with `w2v_jax.models.world_model.imagine` "
    "(euler, 3 steps, cfg 1.5 as used here). Held-out quality: results/world_model_small.md.")
BASE_CARD = (
    "Qwen2.5-VL-architecture student (~5 M parameters: text 256 wide x 4 layers, vision 128 x 4, "
    "1k BPE vocabulary) pretrained from scratch on static perception of rendered rooms only "
    "(object lists, grounding, counting, existence, left/right, nearer, nearest as A-D, which "
    "image): it has never seen camera motion. A Hugging Face Qwen2.5-VL directory: "
    "`w2v_jax.train.runs.load_vlm(DIR)` or `transformers.Qwen2_5_VLForConditionalGeneration`. "
    "Images: 32 px views resized to 56 px (4 visual tokens).")
WORLD2VLM_CARD = (
    "The base student after World2VLM post-training on the distillation set imagined by "
    "world_model_small (tasks A1-A4 / D1-D4, colour detector, QC): SFT then GRPO with the "
    "official rule-based reward. Same format and loading as vlm_base_small.")


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ValueError(f"config arg {arg!r}: allowed {ARGS}")
    scale = "tiny" if arg == "tiny" else "small"
    c = ml_collections.ConfigDict()
    c.stages = "teacher,distill,base,sft,grpo,ablations,evaluate,report,release"
    c.progress = True
    c.world_model = ""  # an existing world-model training workdir: the teacher stage trains none
    c.base_model = ""  # an existing base VLM (workdir or HF directory): no perception pretraining

    c.teacher = ml_collections.ConfigDict()
    c.teacher.clips = ml_collections.ConfigDict(dict(num_scenes=500, seed=2024, resolution=32,
                                                     eval_fraction=0.1))
    c.teacher.world_model = world_model.get_config(scale)
    # the sampler the distillation set, the test-time search and the sheet imagine with: the
    # settings chosen on validation pairs for the world model (results/world_model_small.md)
    c.teacher.sampler = ml_collections.ConfigDict(dict(steps=3, cfg=1.5))

    c.distill = ml_collections.ConfigDict(dict(
        num_scenes=160, seed=0, resolution=32, supersample=2, vocabulary="shape",
        grpo_per_task=16, eval_fraction=0.1, shuffle_seed=42, qc=True))

    c.perception = ml_collections.ConfigDict(dict(
        num_scenes=300, seed=0, resolution=32, views_per_scene=4, eval_fraction=0.05,
        shuffle_seed=42))
    # the base is pretrained in two runs: first the vision tower learns to see on the object
    # lists alone (an answer the text cannot predict), at the full lr; then every perception
    # task from there, the tower at a tenth of the lr (vlm.py). Trained on the mix from the start,
    # the tower's output becomes a near-constant vector the language model reads as a marker.
    # total_steps 0: no first run.
    c.base_align = vlm.get_config(f"base_{scale}")
    c.base_align.data.tasks = ("objects",)
    c.base_align.optimizer.param_groups = ()
    c.base = vlm.get_config(f"base_{scale}")
    c.sft = vlm.get_config(f"sft_{scale}")
    c.grpo = vlm.get_config(f"grpo_{scale}")
    for run in (c.base_align, c.base, c.sft, c.grpo):
        run.progress = True
    # the ablations: SFT only (World2VLM's SFT recipe and steps) -- compared with world2vlm_sft
    c.ablations = ml_collections.ConfigDict(dict(
        runs=("oracle_teacher", "forward_only", "inverse_only")))

    c.evaluate = ml_collections.ConfigDict(dict(
        suites=("sat_like", "vsi_like", "mindcube_like"), per_category=60, seed=0,
        resolution=32, num_frames=16, tasks_items=400, batch_size=16,
        models=("base", "world2vlm_sft", "world2vlm", "oracle_teacher", "forward_only",
                "inverse_only"),
        search_model="base", blind_model="world2vlm",
        # MindJourney's released search (beam 2, 3 steps, VLM scorer), evidence capped at 6 views
        # (the small student's context: 4 tokens per 32 px view), on the first 30 questions of
        # each SAT-like category (it costs tens of plain answers per question; 0 = all)
        search=ml_collections.ConfigDict(dict(scorer="vlm", steps=3, beam=2, max_evidence=6,
                                              per_category=30))))

    c.report = ml_collections.ConfigDict(dict(
        name=f"reproduce_{arg}", results_dir="results" if arg == "small" else "",
        title=f"World2VLM at small scale ({arg})",
        command=f"python -m experiments.reproduce --config=experiments/configs/reproduce.py:{arg}"
                " --workdir=DIR --cpu_devices=2"))
    c.release = ml_collections.ConfigDict(dict(
        out_dir=RELEASED if arg == "small" else "", max_mb=60,
        world_model_card=WORLD_MODEL_CARD, base_card=BASE_CARD, world2vlm_card=WORLD2VLM_CARD))

    if arg == "small":
        # budget: the world model 36 min, the four SFT runs 4 x ~8 min, the base ~12 min
        c.base_align.total_steps = 300
        c.base_align.checkpoint.every_steps = 100
        c.base_align.eval_every_steps = 300
        c.base.total_steps = 1200
        c.base.checkpoint.every_steps = 200
        c.base.eval_every_steps = 400
        c.sft.total_steps = 600
        c.sft.checkpoint.every_steps = 200
        c.sft.eval_every_steps = 200
        c.grpo.total_steps = 30
    elif arg == "demo":
        # teacher and base only record the released models (nothing is trained)
        c.stages = "teacher,distill,base,sft,grpo,evaluate,report"
        c.world_model = f"{RELEASED}/world_model_small"
        c.base_model = f"{RELEASED}/vlm_base_small"
        c.distill.num_scenes = 40
        c.sft.total_steps = 150
        c.sft.checkpoint.every_steps = 50
        c.sft.eval_every_steps = 50
        c.grpo.total_steps = 6
        c.grpo.eval_every_steps = 3
        c.grpo.checkpoint.every_steps = 3
        c.evaluate.per_category = 20
        c.evaluate.tasks_items = 100
        c.evaluate.models = ("base", "world2vlm_sft", "world2vlm")
        c.evaluate.search.steps = 2
        c.evaluate.search.max_evidence = 4
        c.evaluate.search.per_category = 10
    else:  # tiny: every stage in seconds (tests)
        c.progress = False
        for run in (c.base_align, c.base, c.sft, c.grpo):
            run.progress = False
        c.teacher.clips.num_scenes = 6
        c.teacher.clips.resolution = 16
        c.teacher.world_model.total_steps = 4
        c.teacher.world_model.checkpoint.every_steps = 2
        c.teacher.world_model.eval_every_steps = 4
        c.teacher.sampler.steps = 1
        c.distill.num_scenes = 4
        c.distill.resolution = 16
        c.distill.grpo_per_task = 2
        c.distill.eval_fraction = 0.25
        c.distill.qc = False  # a 4-step world model imagines noise: QC would drop it all
        c.perception.num_scenes = 4
        c.perception.resolution = 16
        c.perception.eval_fraction = 0.25
        c.base_align.total_steps = c.base.total_steps = c.sft.total_steps = 2
        c.grpo.total_steps = 2
        c.evaluate.suites = ("sat_like", "mindcube_like")
        c.evaluate.per_category = 1
        c.evaluate.resolution = 16
        c.evaluate.tasks_items = 4
        c.evaluate.batch_size = 4
        c.evaluate.search.steps = 1
        c.evaluate.search.beam = 1
        c.evaluate.search.max_evidence = 2
        c.evaluate.search.per_category = 0
    return c
