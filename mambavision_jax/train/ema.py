"""Model EMA of the official run: timm `ModelEmaV2` (``--model-ema --model-ema-decay 0.9998``).

The official `train.py` creates ``utils.ModelEmaV2(model, decay=0.9998)`` (no decay warmup, no
update-count dependence: that is `ModelEmaV3`, which it does not use) as a deep copy of the model
at start, and calls ``model_ema.update(model)`` after EVERY optimizer step. `ModelEmaV2.update`
walks the whole ``state_dict()``, i.e. parameters AND buffers (BatchNorm running mean / var, and
``num_batches_tracked``), and sets ``ema = decay * ema + (1 - decay) * model``.

So: initialise the EMA tree as a copy of the initial params + batch stats, and call `ema_update`
with the new params + batch stats after each step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["ema_update"]


def ema_update(ema_tree, new_tree, decay):
    """``decay * ema + (1 - decay) * new`` leafwise (timm ModelEmaV2.update); jittable.

    ``decay`` may be a Python float or a traced scalar. Floating leaves keep their dtype (the math
    runs in the leaf dtype, like torch's in-place update of float32 EMA tensors). Integer leaves
    (e.g. a step counter mirrored from torch's ``num_batches_tracked``) are computed in float32 and
    truncated back, which is what ``copy_`` of a float result into an int64 tensor does. Other
    leaves (PRNG keys, bools) keep the EMA's value: they are not in a torch ``state_dict``.
    """
    if isinstance(decay, (int, float)):
        # timm computes (1. - self.decay) in Python double, then each factor is rounded to the
        # tensor dtype; 1 - float32(0.9998) would differ from float32(1 - 0.9998) by ~1e-5 rel.
        one_minus = 1.0 - float(decay)
    else:
        one_minus = None

    def one(e, m):
        e = jnp.asarray(e)
        m = jnp.asarray(m)
        if jnp.issubdtype(e.dtype, jnp.floating):
            dt = e.dtype
        elif jnp.issubdtype(e.dtype, jnp.integer):
            dt = jnp.float32
        else:
            return e
        d = jnp.asarray(decay, dt)
        omd = jnp.asarray(one_minus, dt) if one_minus is not None else (1 - d)
        v = d * e.astype(dt) + omd * m.astype(dt)
        if dt != e.dtype:
            v = jnp.trunc(v).astype(e.dtype)
        return v

    return jax.tree_util.tree_map(one, ema_tree, new_tree)
