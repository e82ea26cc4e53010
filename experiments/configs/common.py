"""The run skeleton every training config shares (``w2v_jax.train.run`` reads these fields).

    c = common.run_config(loss="next_token", batch_size=16, total_steps=200)
    c.model = ...; c.data = ...          # the config's own model and data
"""
import ml_collections


def optimizer(learning_rate: float, **overrides) -> ml_collections.ConfigDict:
    """``OptimizerConfig`` fields: AdamW, linear warmup then cosine decay to
    ``end_lr_ratio * learning_rate`` (``decay_steps`` 0 = over ``total_steps``), global-norm
    clipping, decoupled weight decay, optional param groups."""
    fields = dict(learning_rate=learning_rate, warmup_steps=0, decay_steps=0, end_lr_ratio=0.1,
                  b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=1.0, param_groups=())
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def run_config(*, loss: str, batch_size: int, total_steps: int, learning_rate: float,
               **optimizer_overrides) -> ml_collections.ConfigDict:
    """A config with every run field set to its default; the caller adds ``model`` and ``data``.

    Fields: ``seed``; ``total_steps`` (the schedule horizon); ``stop_at_step`` (> 0: stop there
    while the schedule still spans ``total_steps``); ``time_budget_s`` (> 0: stop after that much
    training wall time, with a final checkpoint); ``batch_size`` (global, split over
    ``mesh.data * mesh.fsdp``); ``grad_accum_steps``; ``loss`` and ``loss_kwargs`` (keyword
    arguments of the registered loss); ``trainable`` (``all``, ``lora``, ``all_but:NAME``);
    ``ema_decay``; ``mesh`` (-1 fills the devices); ``optimizer``; ``checkpoint``; logging.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = total_steps
    c.stop_at_step = 0
    c.time_budget_s = 0.0
    c.batch_size = batch_size
    c.grad_accum_steps = 1
    c.loss = loss
    c.loss_kwargs = ml_collections.ConfigDict()
    c.trainable = "all"
    c.ema_decay = 0.0
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.optimizer = optimizer(learning_rate, **optimizer_overrides)
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, max_to_keep=3, async_save=True))
    c.log_every_steps = 1
    c.eval_every_steps = 100
    c.progress = True
    return c
