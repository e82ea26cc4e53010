"""World-model losses: ``flow_matching`` (rectified flow), ``regression`` (its deterministic twin).

Batch (from ``w2v_jax.data.view_pairs``), B examples of M source and N target views of H x W pixels:

- ``source`` (B, M, H, W, 3) float32 in [-1, 1]; ``target`` (B, N, H, W, 3) float32 in [-1, 1];
- ``plucker_src`` (B, M, H, W, 6) / ``plucker_tgt`` (B, N, H, W, 6): Plücker rays in the first
  source camera's frame (metres);
- ``example_mask`` (B,) optional, 0 marks a padding row.

Rectified flow: ``x_t = (1 - t) x0 + t eps`` with eps ~ N(0, I); the velocity is ``eps - x0``. The
network predicts ``x0`` or the velocity (``model.config.prediction``) and the loss is the per-pixel
MSE against that target. With probability ``source_drop_prob`` an example's source images are
dropped (``source_keep = 0``) so classifier-free guidance works at sampling time.

Registered once as ``flow_matching``; its options (``config.loss_kwargs``) choose the variant:
``time_sampling`` ('logit_normal': t = sigmoid(N(time_mean, time_std)), the SD3 default with
median t = 0.5; or 'uniform'), ``terminal_prob`` (a share of the examples at exactly t = 1, pure
noise: the sampler's first step), ``source_drop_prob`` (0.1) and ``self_cond_prob`` (default:
0.5 for a model with ``config.self_condition``, else 0). The world-model configs:

- ``small``: self-conditioned model, ``loss_kwargs = {terminal_prob: 0.25}``;
- ``small_plain``: the defaults.

Historical variants (README, world-model variants table) by their kwargs: high-noise
``time_mean=1.0`` (median t = 0.73); uniform ``time_sampling='uniform'``; terminal
``terminal_prob=0.25``; terminal-half ``terminal_prob=0.5``. None of them closed the box-IoU gap to
the regression twin.

Both losses return ``aux`` with sums over examples: ``loss_sum`` (sum of per-example mean squared
errors), ``weight`` (number of real examples), ``x0_mse_sum`` (error of the implied clean image in
[-1, 1] units, comparable between the two losses) and ``images`` (target images in the batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from w2v_jax.train.losses.registry import register_loss

TIME_SAMPLINGS = ("logit_normal", "uniform")


def _inputs(batch: dict):
    missing = [k for k in ("source", "target", "plucker_src", "plucker_tgt") if k not in batch]
    if missing:
        raise ValueError(
            f"world-model batch lacks {missing}; needs source, target, plucker_src, plucker_tgt "
            f"(got keys {sorted(batch)})")
    src = jnp.asarray(batch["source"], jnp.float32)
    tgt = jnp.asarray(batch["target"], jnp.float32)
    b = src.shape[0]
    mask = batch.get("example_mask")
    mask = jnp.ones((b,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    return src, tgt, batch["plucker_src"], batch["plucker_tgt"], mask


def sample_time(rng, batch_size: int, time_sampling: str = "logit_normal", mean: float = 0.0,
                std: float = 1.0):
    """Flow times (B,) in (0, 1): ``sigmoid(N(mean, std))`` (logit-normal) or uniform (``mean``
    and ``std`` are ignored)."""
    if time_sampling == "logit_normal":
        return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch_size,)))
    if time_sampling == "uniform":
        return jax.random.uniform(rng, (batch_size,), minval=1e-4, maxval=1.0)
    raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")


def _per_example_mse(pred, target):
    return jnp.mean(jnp.square(pred - target), axis=tuple(range(1, pred.ndim)))


def _implied_x0(out, x_t, tb, prediction):
    """The clean image implied by a network output (``x0`` or velocity ``eps - x0``)."""
    return out if prediction == "x0" else x_t - tb * out


def check_options(*, time_sampling: str, source_drop_prob: float, time_mean: float,
                  time_std: float, terminal_prob: float, self_cond_prob: float | None) -> None:
    """ValueError naming the first ``flow_matching`` option with a bad value."""
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"loss_kwargs.time_sampling must be one of {TIME_SAMPLINGS}, got "
                         f"{time_sampling!r}")
    if not (isinstance(time_mean, (int, float)) and abs(time_mean) < float("inf")):
        raise ValueError(f"loss_kwargs.time_mean must be a finite number, got {time_mean!r}")
    if not (isinstance(time_std, (int, float)) and 0 < time_std < float("inf")):
        raise ValueError(f"loss_kwargs.time_std must be a finite number > 0, got {time_std!r}")
    if not (isinstance(terminal_prob, (int, float)) and 0.0 <= terminal_prob <= 1.0):
        raise ValueError(f"loss_kwargs.terminal_prob must be in [0, 1], got {terminal_prob!r}")
    if not (isinstance(source_drop_prob, (int, float)) and 0.0 <= source_drop_prob < 1.0):
        raise ValueError(f"loss_kwargs.source_drop_prob must be in [0, 1), got "
                         f"{source_drop_prob!r}")
    if self_cond_prob is not None and not (
            isinstance(self_cond_prob, (int, float)) and 0.0 <= self_cond_prob <= 1.0):
        raise ValueError(f"loss_kwargs.self_cond_prob must be in [0, 1] or None (from the model "
                         f"config), got {self_cond_prob!r}")


@register_loss("flow_matching", validate=check_options)
def flow_matching(model, batch, rng, *, time_sampling: str = "logit_normal",
                  source_drop_prob: float = 0.1, time_mean: float = 0.0, time_std: float = 1.0,
                  terminal_prob: float = 0.0, self_cond_prob: float | None = None):
    """Rectified-flow loss ``(loss, aux)`` (module docstring), with these options.

    ``time_sampling``: 'logit_normal' (sigmoid of N(time_mean, time_std)) or 'uniform'.
    ``source_drop_prob``: probability of dropping an example's source images (the CFG
    unconditional branch). ``terminal_prob``: probability that an example's t is exactly 1.
    ``self_cond_prob`` (None: 0.5 if ``model.config.self_condition`` else 0; an explicit value
    must agree with the model): the first ``round(B * self_cond_prob)`` examples of the
    (shuffled) batch first get a no-gradient pass without an estimate; its clipped x0 is their
    ``self_cond`` input in the trained pass, the others get zeros. That extra forward costs about
    ``self_cond_prob / 3`` of a training step.
    """
    prediction = model.config.prediction
    if prediction not in ("x0", "velocity"):
        raise ValueError(
            f"flow_matching needs model.config.prediction in ('x0', 'velocity'), got "
            f"{prediction!r} (use the 'regression' loss for a regression model)")
    self_condition = bool(getattr(model.config, "self_condition", False))
    if self_cond_prob is None:
        self_cond_prob = 0.5 if self_condition else 0.0
    if self_condition != (self_cond_prob > 0):
        want = "self_cond_prob > 0" if self_condition else "self_cond_prob = 0"
        raise ValueError(f"model.config.self_condition={self_condition} needs loss_kwargs "
                         f"{want}, got self_cond_prob={self_cond_prob}")
    src, x0, rays_src, rays_tgt, mask = _inputs(batch)
    b = x0.shape[0]
    k_t, k_eps, k_drop, k_term = jax.random.split(rng, 4)
    t = sample_time(k_t, b, time_sampling, time_mean, time_std)
    if terminal_prob:
        t = jnp.where(jax.random.uniform(k_term, (b,)) < terminal_prob, 1.0, t)
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    tb = t[:, None, None, None, None]
    x_t = (1.0 - tb) * x0 + tb * eps
    keep = (jax.random.uniform(k_drop, (b,)) >= source_drop_prob).astype(jnp.float32)
    if self_condition:
        n = min(b, max(1, int(round(b * self_cond_prob))))
        first = model(src[:n], rays_src[:n], x_t[:n], rays_tgt[:n], t[:n],
                      source_keep=keep[:n])
        estimate = jnp.clip(_implied_x0(first, x_t[:n], tb[:n], prediction), -1.0, 1.0)
        sc = jnp.concatenate([jax.lax.stop_gradient(estimate),
                              jnp.zeros((b - n,) + x0.shape[1:], jnp.float32)])
        out = model(src, rays_src, x_t, rays_tgt, t, source_keep=keep, self_cond=sc)
    else:
        out = model(src, rays_src, x_t, rays_tgt, t, source_keep=keep)
    target = x0 if prediction == "x0" else eps - x0
    x0_hat = _implied_x0(out, x_t, tb, prediction)
    per_example = _per_example_mse(out, target)
    loss_sum = jnp.sum(per_example * mask)
    weight = jnp.sum(mask)
    aux = {
        "loss_sum": loss_sum,
        "weight": weight,
        "x0_mse_sum": jnp.sum(_per_example_mse(x0_hat, x0) * mask),
        "images": weight * x0.shape[1],
    }
    return loss_sum / jnp.maximum(weight, 1.0), aux


@register_loss("regression")
def regression(model, batch: dict, rng):
    """Deterministic twin: one pass with an empty target slot (zeros at t = 1), MSE to target."""
    del rng
    if model.config.prediction != "regression":
        raise ValueError(
            f"the regression loss needs model.config.prediction == 'regression', got "
            f"{model.config.prediction!r}")
    src, x0, rays_src, rays_tgt, mask = _inputs(batch)
    b = x0.shape[0]
    out = model(src, rays_src, jnp.zeros_like(x0), rays_tgt, jnp.ones((b,), jnp.float32))
    per_example = _per_example_mse(out, x0)
    loss_sum = jnp.sum(per_example * mask)
    weight = jnp.sum(mask)
    aux = {"loss_sum": loss_sum, "weight": weight, "x0_mse_sum": loss_sum,
           "images": weight * x0.shape[1]}
    return loss_sum / jnp.maximum(weight, 1.0), aux
