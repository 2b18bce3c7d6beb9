"""Softmax attention over the tokens of a window: `attention(qkv, impl=)`.

impl: "xla" (`jax.nn.dot_product_attention`'s XLA formulation), "cudnn" (cuDNN's fused
attention), "bhnd" (explicit (batch, heads, tokens, head dim) matmuls) or "auto": "bhnd" on a CPU,
where XLA ran the (B, N, heads, hd) einsums ~1.3x slower forward and backward; cuDNN on a GPU where
it applies (bf16 / f16, head dim a multiple of 8 up to 128: MambaVision-T/S/B's 32, not L's 49,
falling back to XLA when cuDNN's trace-time checks refuse); XLA elsewhere (TPU, float32).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mambavision_jax.ops.backend import platform

ATTN_IMPLS = ("auto", "xla", "cudnn", "bhnd")


def resolve_attn_impl(impl: str, dtype, head_dim: int, *, platform_name: str | None = None) -> str:
    """What `impl` means for `dtype` and `head_dim` on `platform_name` (default: the backend
    being traced for)."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"unknown attn_impl {impl!r}; valid: {ATTN_IMPLS}")
    if impl != "auto":
        return impl
    plat = platform_name or platform()
    if plat == "cpu":
        return "bhnd"
    cudnn_ok = (
        plat == "gpu"
        and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        and head_dim % 8 == 0
        and head_dim <= 128
    )
    return "cudnn" if cudnn_ok else "xla"


def attention(qkv: jax.Array, *, impl: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(hd)) v; qkv: (B, N, 3, heads, hd) packed as the qkv projection gives
    it -> (B, N, heads, hd)."""
    chosen = resolve_attn_impl(impl, qkv.dtype, qkv.shape[-1])
    if chosen == "bhnd":
        return _attention_bhnd(qkv)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    try:
        return jax.nn.dot_product_attention(q, k, v, implementation=chosen)
    except (RuntimeError, ValueError, NotImplementedError):
        if impl != "auto":
            raise
        # cuDNN's trace-time checks (library version, shape support) said no: use XLA.
        return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def _attention_bhnd(qkv):
    hd = qkv.shape[-1]
    q, k, v = jnp.moveaxis(qkv, (2, 3), (0, 2))  # each (B, heads, N, hd)
    s = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * jnp.asarray(1.0 / math.sqrt(hd), q.dtype)
    p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.swapaxes(jnp.matmul(p, v), 1, 2)
