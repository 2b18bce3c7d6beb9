"""Selective scan in plain XLA: a sequential ``lax.scan`` and a parallel ``lax.associative_scan``.

Layout is channels-last (token-major), matching the NHWC model:
``u, delta: (batch, L, d)``, ``A: (d, n)``, ``B, C: (batch, L, n)``, ``D, delta_bias: (d,)``.
All arithmetic is float32 (bf16/f16 inputs are upcast; float64 inputs, with x64 enabled, stay
float64 so that finite-difference gradient checks are meaningful); the result has ``u.dtype``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["prepare_inputs", "selective_scan_sequential", "selective_scan_associative"]


def compute_dtype(*xs):
    """float32, or float64 if any input is float64 (only possible with x64 enabled)."""
    return jnp.result_type(jnp.float32, *(jnp.asarray(x).dtype for x in xs if x is not None))


def prepare_inputs(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Upcasts to the compute dtype and applies ``delta_bias`` / softplus.

    Returns (u, dt, A, B, C, D) with D possibly None.
    """
    cdt = compute_dtype(u, delta, A, B, C, D, delta_bias)
    u = jnp.asarray(u).astype(cdt)
    dt = jnp.asarray(delta).astype(cdt)
    A = jnp.asarray(A).astype(cdt)
    B = jnp.asarray(B).astype(cdt)
    C = jnp.asarray(C).astype(cdt)
    if delta_bias is not None:
        dt = dt + jnp.asarray(delta_bias).astype(cdt)
    if delta_softplus:
        dt = jax.nn.softplus(dt)
    if D is not None:
        D = jnp.asarray(D).astype(cdt)
    return u, dt, A, B, C, D


def check_shapes(u, delta, A, B, C, D=None, delta_bias=None):
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, L, d), got shape {u.shape}")
    b, l, d = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta shape {delta.shape} != u shape {u.shape}")
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d={d}, n), got {A.shape}")
    n = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if x.shape != (b, l, n):
            raise ValueError(f"{name} must be (batch, L, n) = {(b, l, n)}, got {x.shape}")
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and np.shape(x) != (d,):
            raise ValueError(f"{name} must be (d={d},), got {np.shape(x)}")


def selective_scan_sequential(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """``lax.scan`` over L with the discretisation inside the step (no (b, L, d, n) tensor forward)."""
    out_dtype = u.dtype
    u, dt, A, B, C, D = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    b, _, d = u.shape
    n = A.shape[1]

    def step(h, xs):
        u_t, dt_t, b_t, c_t = xs  # (b, d), (b, d), (b, n), (b, n)
        dA = jnp.exp(dt_t[:, :, None] * A)  # (b, d, n)
        h = dA * h + (dt_t * u_t)[:, :, None] * b_t[:, None, :]
        y_t = jnp.sum(h * c_t[:, None, :], axis=-1)  # (b, d)
        return h, y_t

    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (u, dt, B, C))  # time-major
    h0 = jnp.zeros((b, d, n), u.dtype)
    _, y = lax.scan(step, h0, xs)
    y = jnp.swapaxes(y, 0, 1)
    if D is not None:
        y = y + u * D
    return y.astype(out_dtype)


def _combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_r * a_l, a_r * b_l + b_r


def selective_scan_associative(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """``lax.associative_scan`` over (exp(dt A), dt B u) pairs; materialises (b, L, d, n) tensors."""
    out_dtype = u.dtype
    u, dt, A, B, C, D = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    a = jnp.exp(dt[..., None] * A)  # (b, L, d, n)
    bx = (dt * u)[..., None] * B[:, :, None, :]  # (b, L, d, n)
    _, h = lax.associative_scan(_combine, (a, bx), axis=1)
    y = jnp.einsum("bldn,bln->bld", h, C, precision=lax.Precision.HIGHEST)
    if D is not None:
        y = y + u * D
    return y.astype(out_dtype)
