"""Learning-rate schedule of the official MambaVision run, as an optax schedule.

The official `train.py` builds its scheduler with its own copy of timm's factory
(`mambavision/scheduler/scheduler_factory.py`), which differs from timm's in one important way:
all times are counted in optimizer *updates*, not epochs::

    n_iter       = data_len // (batch_size * world_size)      # 1281167 // 4096 = 312
    CosineLRScheduler(t_initial=epochs * n_iter, warmup_t=warmup_epochs * n_iter,
                      lr_min=min_lr, warmup_lr_init=warmup_lr, t_in_epochs=lr_ep,   # lr_ep: False
                      cycle_mul=1., cycle_decay=lr_cycle_decay, cycle_limit=1, k_decay=1.,
                      warmup_prefix=False (default), noise_range_t=None)
    num_epochs   = t_initial // n_iter + cooldown_epochs      # 310 + 10

and the train loop calls, *before* each optimizer step,
``lr_scheduler.step_update(num_updates=epoch * num_iters + batch_idx + 1)``.
So the update with 0-based index ``s`` (optax's ``count``) uses ``_get_lr(s + 1)``: the very first
update already uses ``warmup_lr + 1 * (lr - warmup_lr) / warmup_t``, never ``warmup_lr`` itself.
`cosine_schedule` bakes that ``+1`` in (``step_offset=1``).

Warmup is *not* a prefix (``warmup_prefix=False``): the cosine runs over ``t`` in
``[0, t_initial)`` with the warmup overlapping its first ``warmup_t`` updates. Once ``t >=
t_initial * cycle_limit`` the lr is ``lr_min`` forever; the cooldown epochs are simply the
epochs trained after the cosine has ended (create_scheduler adds them to the epoch count).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

__all__ = [
    "timm_cosine_lr",
    "cosine_schedule",
    "make_schedule",
    "num_train_epochs",
]


def timm_cosine_lr(
    t,
    *,
    base_lr: float,
    t_initial: int,
    lr_min: float = 0.0,
    warmup_t: int = 0,
    warmup_lr_init: float = 0.0,
    warmup_prefix: bool = False,
    cycle_mul: float = 1.0,
    cycle_decay: float = 1.0,
    cycle_limit: int = 1,
    k_decay: float = 1.0,
):
    """`CosineLRScheduler._get_lr(t)` (official copy == timm 1.0.31) for one param group, jittable.

    ``t`` is the scheduler time (an int or int array); the result is float32.
    ``cycle_mul != 1`` is not supported (the official recipe uses 1).
    """
    if cycle_mul != 1.0:
        raise NotImplementedError("cycle_mul != 1 is not implemented (the official recipe uses 1)")
    if t_initial <= 0:
        raise ValueError("t_initial must be > 0")
    t = jnp.asarray(t)
    tf = t.astype(jnp.float32)

    # Warmup: warmup_lr_init + t * (base_lr - warmup_lr_init) / warmup_t, for t < warmup_t.
    if warmup_t:
        warmup_step = (base_lr - warmup_lr_init) / warmup_t  # python float64, as timm
        warm = warmup_lr_init + tf * jnp.float32(warmup_step)
    else:
        warm = jnp.float32(0.0)

    tc = t - warmup_t if warmup_prefix else t
    # cycle_mul == 1: i = t // t_initial, t_curr = t - i * t_initial (integer maths, exact).
    i = tc // t_initial
    t_curr = (tc - i * t_initial).astype(jnp.float32)
    gamma = jnp.float32(cycle_decay) ** i.astype(jnp.float32)
    lr_max = jnp.float32(base_lr) * gamma
    # timm: lr_min + 0.5 * (lr_max - lr_min) * (1 + cos(pi * frac)), frac = t_curr^k / t_i^k.
    # Evaluated as (lr_max - lr_min) * sin(pi/2 * (1 - frac))^2 (identical in exact arithmetic):
    # in float32, 1 + cos(pi * frac) cancels near the end of the cosine (~3e-6 relative error),
    # whereas 1 - frac = (t_i - t_curr) / t_i is exact from integers and sin(small angle) keeps full
    # relative precision.
    t_i = jnp.float32(t_initial)
    if k_decay == 1.0:
        rest = (t_initial - (tc - i * t_initial)).astype(jnp.float32) / t_i
    else:
        rest = (t_i**k_decay - t_curr**k_decay) / t_i**k_decay
    half = jnp.sin(jnp.float32(math.pi / 2) * rest)
    cos_lr = lr_min + (lr_max - lr_min) * (half * half)
    # Past the last allowed cycle timm returns lr_min (this is what the cooldown epochs see).
    after = jnp.where(i < cycle_limit, cos_lr, jnp.float32(lr_min))
    if warmup_t:
        return jnp.where(t < warmup_t, warm, after).astype(jnp.float32)
    return after.astype(jnp.float32)


def cosine_schedule(
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: int = 0,
    warmup_lr: float = 0.0,
    min_lr: float = 0.0,
    *,
    warmup_prefix: bool = False,
    cycle_decay: float = 1.0,
    cycle_limit: int = 1,
    k_decay: float = 1.0,
    step_offset: int = 1,
) -> optax.Schedule:
    """The official per-update cosine schedule: ``schedule(count)`` is the lr of update ``count``.

    Args:
      base_lr: peak lr (``--lr``; the official run does not scale it with the batch size).
      steps_per_epoch: ``n_iter = data_len // global_batch`` of the official factory.
      epochs: cosine length in epochs (``--epochs``, 310), *without* the cooldown epochs.
      warmup_epochs / warmup_lr / min_lr: ``--warmup-epochs`` / ``--warmup-lr`` / ``--min-lr``.
      step_offset: 1 mirrors ``step_update(num_updates=... + batch_idx + 1)`` being called before
        ``optimizer.step()``; 0 would give timm's value at the update count itself.
    """
    t_initial = int(epochs) * int(steps_per_epoch)
    warmup_t = int(warmup_epochs) * int(steps_per_epoch)

    def schedule(count):
        return timm_cosine_lr(
            jnp.asarray(count) + step_offset,
            base_lr=base_lr,
            t_initial=t_initial,
            lr_min=min_lr,
            warmup_t=warmup_t,
            warmup_lr_init=warmup_lr,
            warmup_prefix=warmup_prefix,
            cycle_decay=cycle_decay,
            cycle_limit=cycle_limit,
            k_decay=k_decay,
        )

    return schedule


def num_train_epochs(epochs: int, cooldown_epochs: int, cycle_limit: int = 1) -> int:
    """Epochs the official run trains: ``get_cycle_length() // n_iter + cooldown_epochs``."""
    return int(epochs) * max(1, int(cycle_limit)) + int(cooldown_epochs)


def _get(cfg, name, default):
    try:
        return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    except AttributeError:
        return default


def make_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """`cosine_schedule` from the config (``config.total_epochs`` is the cosine length, i.e.
    ``--epochs``; training then runs ``total_epochs + schedule.cooldown_epochs`` epochs, see
    `num_train_epochs`)."""
    s = config.schedule
    return cosine_schedule(
        base_lr=config.optimizer.lr,
        steps_per_epoch=steps_per_epoch,
        epochs=config.total_epochs,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr,
        min_lr=s.min_lr,
        cycle_decay=_get(s, "cycle_decay", 1.0),
        cycle_limit=_get(s, "cycle_limit", 1),
        k_decay=_get(s, "k_decay", 1.0),
    )
