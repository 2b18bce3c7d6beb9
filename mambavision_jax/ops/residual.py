"""`residual_barrier(x)`: where the gradient of a residual stream is computed once.

Without it XLA-CPU fused the backward residual sum of a whole stage (the LayerNorm input gradients
of every later block) into each block's weight-gradient operand, recomputing it once per block:
quadratic work that took ~20% of a MambaVision-T train step. XLA-CPU drops
`lax.optimization_barrier`, so a conditional stands in: its result is a buffer that no consumer
can fuse into. The identity in the forward pass, and on other backends.
"""

from __future__ import annotations

import jax

from mambavision_jax.ops.backend import platform


@jax.custom_vjp
def _materialize_grad(x):
    return x


def _materialize_grad_fwd(x):
    return x, None


def _materialize_grad_bwd(_, g):
    # Both branches are the identity; the predicate only has to be unknown to the compiler (it is
    # True unless g holds a NaN, and then the result is the same).
    flat = g.reshape(-1)
    return (jax.lax.cond(flat[0] == flat[0], lambda t: t, lambda t: t + 0.0, g),)


_materialize_grad.defvjp(_materialize_grad_fwd, _materialize_grad_bwd)


def residual_barrier(x: jax.Array, *, platform_name: str | None = None) -> jax.Array:
    """x; on the CPU (default: the backend being traced for) its gradient is materialised here."""
    return _materialize_grad(x) if (platform_name or platform()) == "cpu" else x
