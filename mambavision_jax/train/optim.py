"""Optimizers of the official MambaVision recipe as optax transformations over pytrees.

The official `train.py` does (config `opt: lamb`, `clip_grad: 5.0`, `clip_mode: norm`)::

    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))   # timm
    ...
    loss.backward()                         # (through NativeScaler with --amp: unscale_ first)
    dispatch_clip_grad(model.parameters(), value=5.0, mode='norm')  # torch clip_grad_norm_
    optimizer.step()

`create_optimizer_v2` builds two param groups with `param_groups_weight_decay` (1-D params and
names ending in ``.bias`` get ``weight_decay=0``; MambaVision has no ``no_weight_decay()`` method,
and timm ignores the ``_no_weight_decay`` attribute set on ``A_log``/``D``, so the 2-D ``A_log`` IS
decayed while the 1-D ``D`` is not) and hands them to `timm.optim.Lamb` with its defaults
(``max_grad_norm=1.0``, ``grad_averaging=True``, ``trust_clip=False``, ``always_adapt=False``).
Lamb skips the trust ratio for a group whose ``weight_decay`` is 0, so the no-decay group is plain
Adam (with Lamb's global clip). `lamb` below reproduces that per leaf with a boolean ``mask``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mambavision_jax.train.schedule import make_schedule

__all__ = [
    "MomentsState",
    "LambState",
    "lamb",
    "adamw",
    "clip_grad_norm",
    "weight_decay_mask",
    "param_name",
    "make_optimizer",
]

ScalarOrSchedule = float | jax.Array | optax.Schedule


# ----------------------------------------------------------------------------------------------
# Parameter names and the weight-decay mask
# ----------------------------------------------------------------------------------------------


def _key_name(k) -> str | None:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    return str(k)


def param_name(path) -> str:
    """Dotted name of a key path, e.g. ``levels.2.blocks.0.mixer.A_log``.

    A trailing ``.value`` attribute (how `flax.nnx.Variable` appears in a flattened `nnx.State`) is
    dropped so that names match the module attribute path (and the official torch names' shape).
    """
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return ".".join(_key_name(k) for k in keys)


def weight_decay_mask(params, no_weight_decay: Collection[str] = (), exclude_1d: bool = True):
    """True where a leaf is weight-decayed, as timm's `param_groups_weight_decay` decides.

    timm: no decay if ``param.ndim <= 1 or name.endswith('.bias')`` (when ``filter_bias_and_bn``)
    or the name matches a ``model.no_weight_decay()`` pattern (fnmatch); everything else decays.
    The official model defines no ``no_weight_decay()``, so the default ``()`` is what it does.
    Leaves are Python bools (static), so `lamb` resolves the two groups at trace time.
    """

    def one(path, leaf):
        name = param_name(path)
        ndim = np.ndim(leaf) if not hasattr(leaf, "ndim") else leaf.ndim
        if exclude_1d and (ndim <= 1 or name.endswith(".bias")):
            return False
        if any(fnmatch.fnmatch(name, pat) for pat in no_weight_decay):
            return False
        return True

    return jax.tree_util.tree_map_with_path(one, params)


# ----------------------------------------------------------------------------------------------
# Gradient clipping (torch.nn.utils.clip_grad_norm_)
# ----------------------------------------------------------------------------------------------


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_(params, max_norm)` (timm ``--clip-grad N --clip-mode norm``).

    Unlike `optax.clip_by_global_norm`, torch scales by ``min(max_norm / (norm + 1e-6), 1)``; the
    1e-6 is kept so the clipped gradients match bit for bit in intent.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        norm = optax.global_norm(updates)
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        updates = jax.tree_util.tree_map(lambda g: g * coef.astype(g.dtype), updates)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# LAMB (timm.optim.Lamb)
# ----------------------------------------------------------------------------------------------


class MomentsState(NamedTuple):
    """State of `lamb` and `adamw` (torch names: ``step``, ``exp_avg``, ``exp_avg_sq``)."""

    count: jax.Array  # number of updates done (torch's step before its increment)
    mu: optax.Updates  # exp_avg
    nu: optax.Updates  # exp_avg_sq


LambState = MomentsState


def _init_moments(params) -> MomentsState:
    """Zero first and second moments and a zero step count (LAMB and AdamW alike)."""
    zeros = lambda p: jnp.zeros_like(p)
    return MomentsState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree_util.tree_map(zeros, params),
        nu=jax.tree_util.tree_map(zeros, params),
    )


def _resolve_mask(mask, params):
    if mask is None:
        return jax.tree_util.tree_map(lambda _: True, params)
    if callable(mask):
        return mask(params)
    return mask


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Any = None,
    grad_averaging: bool = True,
    max_grad_norm: float | None = 1.0,
    trust_clip: bool = False,
    always_adapt: bool = False,
    bias_correction: bool = True,
) -> optax.GradientTransformation:
    """`timm.optim.Lamb` (timm 1.0.31, ``decoupled_decay=False``, ``caution=False``) in optax.

    One update, per leaf ``p`` with gradient ``g``:

    1. ``g /= max(||all grads||_2 / max_grad_norm, 1)``: Lamb's own global clip, norm over ALL
       params of both groups, taken before anything else (``_get_clip_grad_norm``).
    2. ``m = lerp(m, g, 1 - b1)`` (``grad_averaging``; else ``m = b1 m + g``),
       ``v = b2 v + (1 - b2) g^2``.
    3. ``u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)`` with ``bc = 1 - b^step``.
    4. Decayed leaves (``mask`` True and ``weight_decay != 0``): ``u += weight_decay * p``
       (coupled, added BEFORE the trust ratio).
    5. If decayed or ``always_adapt``: ``u *= ||p|| / ||u||`` (1 if either norm is 0; ``min(., 1)``
       with ``trust_clip``). The no-decay group gets NO trust ratio (timm: ``weight_decay == 0``).
    6. update ``= -lr * u``.

    Args:
      learning_rate: float or optax schedule of the update count (see `schedule.cosine_schedule`).
      mask: pytree of bools (or a callable params -> pytree) selecting the decayed leaves, i.e.
        timm's decay group; None decays every leaf (a single timm group).
    """
    beta3 = 1.0 - b1 if grad_averaging else 1.0

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("lamb needs the params (weight decay and trust ratio use them)")
        count = state.count
        lr = learning_rate(count) if callable(learning_rate) else learning_rate

        grads = updates
        if max_grad_norm is not None:
            gnorm = optax.global_norm(grads)
            clip = jnp.maximum(gnorm / max_grad_norm, 1.0)
            grads = jax.tree_util.tree_map(lambda g: g / clip.astype(g.dtype), grads)

        if grad_averaging and beta3 < 0.5:
            # torch.lerp_(end, w) computes self + w * (end - self) for w < 0.5.
            mu = jax.tree_util.tree_map(lambda m, g: m + beta3 * (g - m), state.mu, grads)
        elif grad_averaging:
            mu = jax.tree_util.tree_map(lambda m, g: g - (g - m) * (1.0 - beta3), state.mu, grads)
        else:
            mu = jax.tree_util.tree_map(lambda m, g: m * b1 + g * beta3, state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: v * b2 + (1.0 - b2) * (g * g), state.nu, grads)

        step = (count + 1).astype(jnp.float32)
        if bias_correction:
            bc1, bc2 = _bias_correction(b1, step), _bias_correction(b2, step)
        else:
            bc1 = bc2 = jnp.float32(1.0)
        sqrt_bc2 = jnp.sqrt(bc2)

        mask_tree = _resolve_mask(mask, params)

        def leaf_update(m, v, p, decay):
            u = (m / bc1.astype(m.dtype)) / (jnp.sqrt(v) / sqrt_bc2.astype(v.dtype) + eps)
            static = isinstance(decay, (bool, np.bool_))
            if static:
                decayed = bool(decay) and weight_decay != 0
                if decayed:
                    u = u + weight_decay * p
                if decayed or always_adapt:
                    u = u * _trust_ratio(p, u, trust_clip)
            else:  # traced / array mask: same maths with where
                decay = jnp.asarray(decay, bool)
                if weight_decay != 0:
                    u = u + jnp.where(decay, weight_decay, 0.0).astype(u.dtype) * p
                adapt = jnp.logical_or(decay & (weight_decay != 0), always_adapt)
                u = u * jnp.where(adapt, _trust_ratio(p, u, trust_clip), 1.0).astype(u.dtype)
            return (-lr * u).astype(p.dtype)

        new_updates = jax.tree_util.tree_map(leaf_update, mu, nu, params, mask_tree)
        return new_updates, MomentsState(count=optax.safe_int32_increment(count), mu=mu, nu=nu)

    return optax.GradientTransformation(_init_moments, update_fn)


def _bias_correction(beta: float, step):
    """``1 - beta ** step`` accurate in float32.

    torch/timm evaluate it in Python double; ``1 - float32(0.999) ** 1`` in float32 would be off by
    1.3e-5 relative (cancellation), so use ``-expm1(step * log(beta))`` with ``log(beta)`` in double.
    """
    if beta == 0:
        return jnp.float32(1.0)
    return -jnp.expm1(step * jnp.float32(math.log(beta)))


def _trust_ratio(p, u, trust_clip):
    # timm `_lamb_trust_ratio`: ||w|| / ||u||, set to 1 if either norm is 0.
    w_norm = jnp.linalg.norm(p.reshape(-1).astype(jnp.float32))
    u_norm = jnp.linalg.norm(u.reshape(-1).astype(jnp.float32))
    safe_u = jnp.where(u_norm > 0, u_norm, 1.0)
    ratio = jnp.where(w_norm > 0, jnp.where(u_norm > 0, w_norm / safe_u, 1.0), 1.0)
    if trust_clip:
        ratio = jnp.minimum(ratio, 1.0)  # LAMBC
    return ratio.astype(u.dtype)


# ----------------------------------------------------------------------------------------------
# AdamW (torch.optim.AdamW via timm 'adamw')
# ----------------------------------------------------------------------------------------------


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Any = None,
) -> optax.GradientTransformation:
    """timm ``--opt adamw`` = `torch.optim.AdamW` (single-tensor, non-amsgrad) on timm's two groups.

    torch: ``p *= 1 - lr * wd`` (decay group only), ``m = lerp(m, g, 1 - b1)``,
    ``v = b2 v + (1 - b2) g^2``, ``p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)``; the returned
    update is the difference of the two. ``mask=None`` decays every leaf (a single timm group).
    """
    beta3 = 1.0 - b1

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("adamw needs the params (weight decay uses them)")
        count = state.count
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        if beta3 < 0.5:
            mu = jax.tree_util.tree_map(lambda m, g: m + beta3 * (g - m), state.mu, updates)
        else:
            mu = jax.tree_util.tree_map(lambda m, g: g - (g - m) * (1.0 - beta3), state.mu, updates)
        nu = jax.tree_util.tree_map(lambda v, g: v * b2 + (1.0 - b2) * (g * g), state.nu, updates)
        step = (count + 1).astype(jnp.float32)
        bc1, bc2 = _bias_correction(b1, step), _bias_correction(b2, step)
        step_size = lr / bc1
        sqrt_bc2 = jnp.sqrt(bc2)
        mask_tree = _resolve_mask(mask, params)

        def leaf(m, v, p, decay):
            upd = -(step_size * (m / (jnp.sqrt(v) / sqrt_bc2 + eps)))
            if weight_decay != 0:
                if isinstance(decay, (bool, np.bool_)):
                    if decay:
                        upd = upd - (lr * weight_decay) * p
                else:
                    upd = upd - jnp.where(jnp.asarray(decay, bool), lr * weight_decay, 0.0) * p
            return upd.astype(p.dtype)

        new_updates = jax.tree_util.tree_map(leaf, mu, nu, params, mask_tree)
        return new_updates, MomentsState(count=optax.safe_int32_increment(count), mu=mu, nu=nu)

    return optax.GradientTransformation(_init_moments, update_fn)


# ----------------------------------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------------------------------


def _get(cfg, name, default):
    try:
        return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    except AttributeError:
        return default


def make_optimizer(
    config,
    steps_per_epoch: int,
    no_weight_decay: Collection[str] = (),
    schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """``chain(clip_grad_norm(config.optimizer.clip_grad), lamb|adamw(schedule, ...))``.

    The gradient clip (``--clip-grad 5.0 --clip-mode norm``) runs BEFORE the optimizer, as in the
    official loop; LAMB then applies its own global clip to 1.0 (``max_grad_norm``, timm default;
    optional ``config.optimizer.max_grad_norm`` overrides). The weight-decay mask is computed from
    the params handed to ``init``/``update`` (`weight_decay_mask`), so the same transformation works
    on a plain dict of arrays or on an `nnx.State`.

    Args:
      config: ConfigDict with ``optimizer.{name, lr, weight_decay, betas, eps, clip_grad}``,
        ``schedule.{warmup_epochs, warmup_lr, min_lr, cooldown_epochs}``, ``total_epochs``.
      steps_per_epoch: optimizer updates per epoch (official: ``data_len // global_batch``).
      no_weight_decay: extra fnmatch patterns on dotted names excluded from decay (timm's
        ``model.no_weight_decay()``; empty for MambaVision).
      schedule: overrides the lr schedule built by `schedule.make_schedule`.
    """
    oc = config.optimizer
    if schedule is None:
        schedule = make_schedule(config, steps_per_epoch)
    b1, b2 = (float(b) for b in oc.betas)
    wd = float(oc.weight_decay)

    def mask(params):
        return weight_decay_mask(params, no_weight_decay=no_weight_decay)

    name = oc.name.lower()
    if name == "lamb":
        opt = lamb(
            schedule,
            b1=b1,
            b2=b2,
            eps=float(oc.eps),
            weight_decay=wd,
            mask=mask,
            max_grad_norm=_get(oc, "max_grad_norm", 1.0),
        )
    elif name == "adamw":
        opt = adamw(schedule, b1=b1, b2=b2, eps=float(oc.eps), weight_decay=wd, mask=mask)
    else:
        raise ValueError(f"unknown optimizer {oc.name!r} (expected 'lamb' or 'adamw')")

    clip = _get(oc, "clip_grad", None)
    if clip is None:
        return opt
    return optax.chain(clip_grad_norm(float(clip)), opt)
