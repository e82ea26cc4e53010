"""The GRPO rollout loop: image-conditioned rollouts feeding the same ``Trainer`` (loss ``grpo``).

One iteration (EasyR1's ``ray_trainer.fit`` step, paper.md §9):

1. ``rollout_prompts`` prompts (a ``data.distill.grpo_pipeline`` batch: left-padded, with the
   images) -> ``generate`` ``n`` responses each (temperature 1, top_p 1, stop at ``<|im_end|>``,
   at most ``max_response_length`` tokens); row ``b * n + s`` is sample ``s`` of prompt ``b``;
2. the responses are decoded and scored by the injected reward function (default
   ``supervision.reward.compute_score``, key ``overall``) -> ``group_advantages``;
3. old log-probs by the policy's *training* forward (``losses.grpo.response_logprobs``, not the
   sampler's), reference log-probs by the same forward on the frozen reference (full-parameter:
   a copy of the initial weights; LoRA: the same model with its adapters zeroed, i.e. the base
   weights, no second copy);
4. ``ppo_epochs`` passes over mini-batches of ``global_batch_prompts * n`` responses, each one
   ``Trainer.train_step`` (official shape: 4 prompts x 4 per rollout, 2 prompts per update = two
   optimizer steps per rollout, the second off-policy).

Metrics per iteration: ``reward`` (mean ``overall``), ``reward_<task>`` per task type,
``format_rate`` (mean ``format`` sub-score), ``response_length``, the loss aux (``kl``,
``clip_frac_*``, ``ratio``, ``entropy``, ...) averaged over the iteration's optimizer steps, and
``rollout_s`` / ``logprob_s`` / ``update_s``. Validation (``val_*``) samples once per prompt at
temperature 0.6, top_p 0.95 on the ``eval`` split, as EasyR1 validates.

``train_grpo(config, workdir)`` is the config-driven run (``experiments.train`` dispatches to it
when ``config.loss == "grpo"``): ``config.total_steps`` counts rollout iterations (EasyR1's
"steps"; the optimizer takes ``steps_per_iteration`` per iteration), checkpoints hold the policy,
optimizer, step, RNG and the prompt iterator, so a workdir resumes exactly; the reference is
rebuilt from ``config.init_from``. Rollout keys are ``fold_in(key(seed), iteration)``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax import sharding as shd
from w2v_jax.config_parsing import dataclass_from_dict
from w2v_jax.generate import SamplingConfig, generate
from w2v_jax.processing.rope_index import decode_position_ids
from w2v_jax.processing.tokenizer import load_tokenizer, special_token_ids
from w2v_jax.train.losses.grpo import group_advantages, response_logprobs

RewardFn = Callable[[Sequence[Mapping[str, str]]], Sequence[Mapping[str, float]]]


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Rollout settings (``config.grpo``); defaults = the official EasyR1 run (paper.md §9).

    n: responses per prompt (>= 2). rollout_prompts: prompts per iteration (EasyR1
    ``rollout_batch_size``). global_batch_prompts: prompts per optimizer step (EasyR1
    ``global_batch_size``; x n responses). ppo_epochs: passes over the rollout.
    temperature / top_p: rollout sampling; val_temperature / val_top_p / val_n: validation.
    val_before_train: one validation before the first iteration (the eval prompts are those of
    the data builder's eval function, e.g. ``config.data.num_eval_batches`` batches). reward_key: the score entry used as the reward.
    """

    n: int = 4
    rollout_prompts: int = 4
    global_batch_prompts: int = 2
    ppo_epochs: int = 1
    max_response_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    val_temperature: float = 0.6
    val_top_p: float = 0.95
    val_n: int = 1
    val_before_train: bool = True
    reward_key: str = "overall"

    def __post_init__(self):
        for name in ("rollout_prompts", "global_batch_prompts", "ppo_epochs",
                     "max_response_length", "val_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config.grpo.{name}={value!r}: must be an int >= 1")
        if not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"config.grpo.n={self.n!r}: must be an int >= 2 (group advantages "
                             "need at least two responses per prompt)")
        if self.rollout_prompts % self.global_batch_prompts:
            raise ValueError(
                f"config.grpo.rollout_prompts={self.rollout_prompts} must be divisible by "
                f"config.grpo.global_batch_prompts={self.global_batch_prompts}")

    @classmethod
    def from_dict(cls, d: Any) -> "GRPOConfig":
        """From ``config.grpo``; unknown keys raise ValueError naming them."""
        return dataclass_from_dict(cls, d, where="config.grpo")

    @property
    def steps_per_iteration(self) -> int:
        """Optimizer steps per rollout iteration."""
        return self.rollout_prompts // self.global_batch_prompts * self.ppo_epochs


# ---------------------------------------------------------------------------- host-side batches
def flat_images(pixel_values: np.ndarray, image_grid_thw: np.ndarray):
    """Per-example images ``(B, P, D)`` / ``(B, I, 3)`` (zero padding last in each row) -> the
    flat layout ``generate`` takes: ``(B * P, D)`` with every real patch first, in prompt order,
    and ``(B * I, 3)`` with every real grid row first (padding = zero patches / (0, 0, 0))."""
    pv, grid = np.asarray(pixel_values), np.asarray(image_grid_thw)
    counts = np.prod(grid, axis=-1).sum(axis=-1)
    real = np.concatenate([pv[b, :counts[b]] for b in range(pv.shape[0])], axis=0)
    flat_pv = np.zeros((pv.shape[0] * pv.shape[1], pv.shape[2]), pv.dtype)
    flat_pv[:len(real)] = real
    rows = grid.reshape(-1, 3)
    keep = np.prod(rows, axis=-1) > 0
    flat_grid = np.zeros_like(rows)
    flat_grid[:keep.sum()] = rows[keep]
    return flat_pv, flat_grid


def response_batch(prompts: Mapping[str, np.ndarray], tokens: np.ndarray, lengths: np.ndarray,
                   n: int) -> dict[str, np.ndarray]:
    """The ``grpo`` loss batch (without ``old_logp`` / ``ref_logp`` / ``advantages``) of ``n``
    responses per prompt: prompt rows repeated ``n`` times, then the response tokens; response
    positions follow the sampler (``decode_position_ids``: slot - left padding + rope delta)."""
    ids, mask = np.asarray(prompts["input_ids"]), np.asarray(prompts["attention_mask"])
    length = ids.shape[1]
    steps = tokens.shape[1]
    rep = lambda x: np.repeat(np.asarray(x), n, axis=0)  # noqa: E731
    response_mask = (np.arange(steps)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    left_pad = rep(length - mask.sum(axis=1))[:, None]
    slots = np.arange(length, length + steps)[None, :]
    response_pos = decode_position_ids(slots, rep(prompts["rope_deltas"]), left_pad)
    prompt_pos = rep(np.transpose(np.asarray(prompts["position_ids"]), (1, 0, 2)))  # (B, 3, L)
    return {
        "input_ids": np.concatenate([rep(ids), np.asarray(tokens)], axis=1).astype(np.int32),
        "attention_mask": np.concatenate([rep(mask), response_mask], axis=1).astype(np.int32),
        "position_ids": np.concatenate(
            [prompt_pos, np.transpose(response_pos, (1, 0, 2))], axis=2).astype(np.int32),
        "pixel_values": rep(prompts["pixel_values"]),
        "image_grid_thw": rep(prompts["image_grid_thw"]).astype(np.int32),
        "response_mask": response_mask,
    }


def _texts(x: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(x).reshape(-1)]


def reference_state(model: nnx.Module, lora: bool) -> Any:
    """The frozen reference as an ``nnx.State`` of ``model`` (same graphdef): with LoRA the
    current state with every ``nnx.LoRAParam`` zeroed (the adapters' delta is 0, so this is the
    base model and the base weights are shared, not copied); else a copy of every variable."""
    state = nnx.state(model)
    if lora:
        return nnx.map_state(
            lambda path, v: v.replace(jnp.zeros_like(v[...])) if isinstance(v, nnx.LoRAParam)
            else v, state)
    return jax.tree.map(jnp.copy, state)


# ---------------------------------------------------------------------------- the loop
class GRPOLoop:
    """Rollouts -> rewards -> advantages -> log-probs -> ``trainer.train_step`` mini-batches.

    Args:
      trainer: a ``Trainer`` with ``loss="grpo"`` over a ``Qwen2_5_VL``; its mesh is the rollout
        mesh too. reference: ``reference_state(trainer.model, lora)``.
      config: ``GRPOConfig``. stop_tokens / pad_id: sampling ids (``<|im_end|>``,
        ``<|endoftext|>``). decode: ``tokens (list of int lists) -> list of str``.
      reward_fn: EasyR1's batch reward signature (``compute_score``). seed: rollout keys.
    """

    def __init__(self, trainer, reference: Any, config: GRPOConfig, *, stop_tokens: Sequence[int],
                 pad_id: int, decode: Callable[[list[list[int]]], list[str]],
                 reward_fn: RewardFn | None = None, seed: int = 0):
        if reward_fn is None:
            from w2v_jax.supervision.reward import compute_score as reward_fn
        self.trainer, self.reference, self.config = trainer, reference, config
        self.reward_fn, self.decode, self.seed = reward_fn, decode, int(seed)
        self.mesh = trainer.mesh
        self.graphdef = nnx.split(trainer.model)[0]
        common = dict(stop_tokens=tuple(stop_tokens), pad_id=int(pad_id),
                      max_new_tokens=config.max_response_length)
        self.sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p,
                                       num_samples=config.n, **common)
        self.val_sampling = SamplingConfig(temperature=config.val_temperature,
                                           top_p=config.val_top_p, num_samples=config.val_n,
                                           **common)

    # ------------------------------------------------------------------ pieces
    def rollout(self, prompts: Mapping[str, Any], key: jax.Array,
                sampling: SamplingConfig | None = None) -> dict:
        """Samples and scores responses; returns ``{"batch", "sampler_logp", "scores",
        "responses", "lengths", "task_type"}`` (rows ``b * n + s``)."""
        sampling = sampling or self.sampling
        pv, grid = flat_images(prompts["pixel_values"], prompts["image_grid_thw"])
        with shd.rules_context(self.mesh):
            gen = generate(self.trainer.model, prompts["input_ids"], prompts["attention_mask"],
                           pixel_values=pv, image_grid_thw=grid,
                           position_ids=prompts["position_ids"],
                           rope_deltas=prompts["rope_deltas"], config=sampling, key=key)
        tokens, lengths, logp = jax.device_get((gen.tokens, gen.lengths, gen.logprobs))
        n = sampling.num_samples
        responses = self.decode([row[:k].tolist() for row, k in zip(tokens, lengths)])
        truths = np.repeat(_texts(prompts["ground_truth"]), n).tolist()
        scores = self.reward_fn([{"response": r, "ground_truth": g}
                                 for r, g in zip(responses, truths)])
        return {"batch": response_batch(prompts, tokens, lengths, n), "sampler_logp": logp,
                "scores": list(scores), "responses": responses, "lengths": lengths,
                "task_type": np.repeat(_texts(prompts["task_type"]), n).tolist()}

    def logprobs(self, state: Any, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """``(B, T)`` response log-probs of ``batch`` under ``state`` (a model ``nnx.State``),
        computed in micro-batches of the update's size (the training forward)."""
        rows = batch["input_ids"].shape[0]
        chunk = self.config.global_batch_prompts * self.config.n // self.trainer.grad_accum_steps
        out = []
        with shd.rules_context(self.mesh):
            for start in range(0, rows, chunk):
                part = {k: v[start:start + chunk] for k, v in batch.items()}
                out.append(jax.device_get(
                    _logprobs(self.graphdef, state, shd.shard_batch(part, self.mesh))))
        return np.concatenate(out, axis=0)

    def iteration(self, prompts: Mapping[str, Any], iteration: int) -> dict:
        """One GRPO iteration on a prompt batch; returns the metrics row (host floats)."""
        cfg = self.config
        t0 = time.perf_counter()
        key = jax.random.fold_in(jax.random.key(self.seed), iteration)
        out = self.rollout(prompts, key)
        rewards = np.asarray([s[cfg.reward_key] for s in out["scores"]], np.float32)
        batch = dict(out["batch"], advantages=group_advantages(rewards, cfg.n))
        t1 = time.perf_counter()
        batch["old_logp"] = self.logprobs(nnx.state(self.trainer.model), batch)
        batch["ref_logp"] = self.logprobs(self.reference, batch)
        t2 = time.perf_counter()
        rows = cfg.global_batch_prompts * cfg.n
        steps = []
        for _ in range(cfg.ppo_epochs):
            for start in range(0, len(rewards), rows):
                steps.append(self.trainer.train_step(
                    {k: v[start:start + rows] for k, v in batch.items()}))
        steps = jax.device_get(steps)
        t3 = time.perf_counter()
        row = {k: float(np.mean([s[k] for s in steps])) for k in steps[0]}
        row.update({k: float(np.max([s[k] for s in steps])) for k in steps[0]
                    if k.endswith("_max")})
        row.update({k: float(np.min([s[k] for s in steps])) for k in steps[0]
                    if k.endswith("_min")})
        row.update(reward_metrics(out["scores"], out["task_type"], cfg.reward_key))
        row["response_length"] = float(np.mean(out["lengths"]))
        row["advantage_abs"] = float(np.mean(np.abs(batch["advantages"])))
        row.update(rollout_s=t1 - t0, logprob_s=t2 - t1, update_s=t3 - t2,
                   rollout_tokens_per_s=float(np.sum(out["lengths"])) / max(t1 - t0, 1e-9),
                   optimizer_step=float(self.trainer.step))
        return row

    def validate(self, batches, iteration: int = 0) -> dict:
        """``val_*`` reward metrics of one sampled response per prompt over ``batches``."""
        scores, tasks = [], []
        for i, prompts in enumerate(batches):
            key = jax.random.fold_in(jax.random.key(self.seed + 1), iteration * 100003 + i)
            out = self.rollout(prompts, key, self.val_sampling)
            keep = np.repeat(np.asarray(prompts.get(
                "example_mask", np.ones(len(out["lengths"]) // self.val_sampling.num_samples,
                                        bool))), self.val_sampling.num_samples)
            scores += [s for s, k in zip(out["scores"], keep) if k]
            tasks += [t for t, k in zip(out["task_type"], keep) if k]
        if not scores:
            raise ValueError("validation got no prompts (empty eval split?)")
        return {f"val_{k}": v for k, v in
                reward_metrics(scores, tasks, self.config.reward_key).items()}


@partial(jax.jit, static_argnums=0)
def _logprobs(graphdef, state, batch):
    return response_logprobs(nnx.merge(graphdef, state), batch)


def reward_metrics(scores: Sequence[Mapping[str, float]], task_types: Sequence[str],
                   key: str = "overall") -> dict[str, float]:
    """``reward`` (mean ``key``), ``reward_<task>`` per task type and ``format_rate`` (mean of
    the ``format`` sub-score where the scorer reports one)."""
    values = np.asarray([s[key] for s in scores], np.float64)
    out = {"reward": float(values.mean())}
    for task in sorted(set(task_types)):
        out[f"reward_{task}"] = float(np.mean(
            [v for v, t in zip(values, task_types) if t == task]))
    fmt = [s["format"] for s in scores if "format" in s]
    if fmt:
        out["format_rate"] = float(np.mean(fmt))
    return out


# ---------------------------------------------------------------------------- the run
def train_grpo(config, workdir: str, reward_fn: RewardFn | None = None):
    """GRPO from ``config`` in ``workdir`` (module doc); returns the ``GRPOLoop``.

    Writes ``config.json``, ``metrics.jsonl`` (one line per iteration, ``step`` = iteration;
    validation lines carry ``val_*``), ``tokenizer/``, ``checkpoints/<optimizer step>/``.
    ``stop_at_step`` / ``time_budget_s`` stop early (in iterations / seconds of this process) with
    a final checkpoint, as for ``Trainer.fit``.
    """
    from w2v_jax.train import runs
    from w2v_jax.train.checkpoint import Checkpointer
    from w2v_jax.train.metrics import MetricsWriter
    from w2v_jax.train.optim import OptimizerConfig
    from w2v_jax.train.run import loss_kwargs, prepare_workdir, validate_config
    from w2v_jax.train.trainer import Trainer, check_finite

    gcfg = validate_grpo_config(config)
    mesh = validate_config(config)
    if jax.process_count() > 1:
        raise ValueError("GRPO rollouts run in one process for now (jax.process_count() = "
                         f"{jax.process_count()}); use one host with many devices")
    workdir = os.path.abspath(workdir)
    config = prepare_workdir(config, workdir)
    tokenizer = load_tokenizer(config.data.tokenizer_dir)
    model = runs.build_vlm(config, mesh)
    lora = config.trainable == "lora"
    iterations = config.total_steps
    trainer = Trainer(model, OptimizerConfig.from_dict(config.optimizer), "grpo",
                      loss_kwargs=loss_kwargs(config), mesh=mesh, trainable=config.trainable,
                      grad_accum_steps=config.grad_accum_steps,
                      total_steps=max(iterations * gcfg.steps_per_iteration, 1), seed=config.seed)
    reference = reference_state(trainer.model, lora)
    ids = special_token_ids(tokenizer)
    loop = GRPOLoop(trainer, reference, gcfg, stop_tokens=(ids["eos_token_id"],),
                    pad_id=ids["pad_token_id"], reward_fn=reward_fn, seed=config.seed,
                    decode=lambda rows: tokenizer.batch_decode(rows, skip_special_tokens=True))
    from w2v_jax.data.builders import get_data_builder

    prompts, eval_fn = get_data_builder(config.data.name)(
        config.data, workdir=workdir, batch_size=gcfg.rollout_prompts, seed=config.seed,
        process_index=0, process_count=1)
    it = iter(prompts)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                        max_to_keep=config.checkpoint.max_to_keep,
                        async_save=config.checkpoint.async_save)
    writer = None
    per = gcfg.steps_per_iteration
    stop = config.get("stop_at_step", 0)
    end = min(stop, iterations) if stop else iterations
    meta = {"config": json.loads(config.to_json_best_effort())}
    try:
        if ckpt.latest_step() is not None:
            trainer.restore(ckpt, data_iterator=it)
        start = trainer.step // per
        writer = MetricsWriter(workdir, resume_step=start)
        from tqdm.auto import tqdm

        bar = tqdm(total=end, initial=start, disable=not config.progress, desc="grpo")
        if start == 0 and gcfg.val_before_train and eval_fn is not None:
            writer.write(0, loop.validate(eval_fn(), 0))
        budget = config.get("time_budget_s", 0)
        deadline = time.monotonic() + budget if budget else None
        for iteration in range(start, end):
            if deadline is not None and time.monotonic() >= deadline:
                break  # the final checkpoint below is still written
            row = loop.iteration(next(it), iteration)
            check_finite(iteration + 1, row)
            done = iteration + 1
            writer.write(done, row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}")
            every = config.eval_every_steps
            if eval_fn is not None and every and done % every == 0:
                writer.write(done, loop.validate(eval_fn(), done))
            if config.checkpoint.every_steps and done % config.checkpoint.every_steps == 0:
                trainer.save(ckpt, it, meta)
        bar.close()
        if trainer.step not in ckpt.all_steps():
            ckpt.wait()
            trainer.save(ckpt, it, meta)
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()
    return loop


def validate_grpo_config(config) -> GRPOConfig:
    """The GRPO-specific checks (before anything compiles); returns the ``GRPOConfig``."""
    gcfg = GRPOConfig.from_dict(config.get("grpo") or {})
    if config.model.name != "vlm":
        raise ValueError(f"config.model.name={config.model.name!r}: GRPO trains the 'vlm'")
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rows = gcfg.global_batch_prompts * gcfg.n
    div = shd.batch_divisor(mesh) * config.grad_accum_steps
    if rows % div:
        raise ValueError(
            f"config.grpo.global_batch_prompts*n = {rows} responses per update must be divisible "
            f"by mesh.data*mesh.fsdp*grad_accum_steps = {div}")
    if config.batch_size != rows:
        raise ValueError(f"config.batch_size={config.batch_size} must equal "
                         f"config.grpo.global_batch_prompts*n = {rows} (responses per update)")
    from w2v_jax.train import runs

    runs.check_init_from(config)
    runs.check_package_split(config, "grpo")
    return gcfg
