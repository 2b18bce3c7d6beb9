"""Softmax attention over the tokens of a window: `attention(qkv, impl=)`.

impl: "xla" (`jax.nn.dot_product_attention`'s XLA formulation), "cudnn" (cuDNN's fused
attention), "bhnd" (explicit (batch, heads, tokens, head dim) matmuls), "blockwise" (online
softmax over blocks of keys, never holding more than a (query block, key block) score tile) or
"auto": "bhnd" on a CPU, where XLA ran the (B, N, heads, hd) einsums ~1.3x slower forward and
backward; cuDNN on a GPU where it applies (bf16 / f16, head dim a multiple of 8 up to 128:
MambaVision-T/S/B's 32, not L's 49, falling back to XLA when cuDNN's trace-time checks refuse);
XLA elsewhere (TPU, float32). Windows longer than `BLOCKWISE_MIN_TOKENS` (the segmentation
backbones': small's 160² = 25,600 tokens would need a 21 GB score matrix) take "blockwise" where
"auto" would otherwise build the whole matrix.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mambavision_jax.ops.backend import platform

ATTN_IMPLS = ("auto", "xla", "cudnn", "bhnd", "blockwise")
# Above this many tokens per window "auto" avoids the (tokens x tokens) matrix (the classification
# windows have at most 32² = 1,024 tokens, tiny's segmentation window 64² = 4,096: both exact as before).
BLOCKWISE_MIN_TOKENS = 4096
BLOCK = 1024  # query and key block of "blockwise": a (B, heads, 1024, 1024) float32 tile per step


def resolve_attn_impl(
    impl: str, dtype, head_dim: int, *, platform_name: str | None = None, tokens: int = 0
) -> str:
    """What `impl` means for `dtype`, `head_dim` and `tokens` per window on `platform_name`
    (default: the backend being traced for)."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"unknown attn_impl {impl!r}; valid: {ATTN_IMPLS}")
    if impl != "auto":
        return impl
    plat = platform_name or platform()
    cudnn_ok = (
        plat == "gpu"
        and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        and head_dim % 8 == 0
        and head_dim <= 128
    )
    if cudnn_ok:
        return "cudnn"  # flash attention: no score matrix at any length
    if tokens > BLOCKWISE_MIN_TOKENS:
        return "blockwise"
    return "bhnd" if plat == "cpu" else "xla"


def attention(qkv: jax.Array, *, impl: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(hd)) v; qkv: (B, N, 3, heads, hd) packed as the qkv projection gives
    it -> (B, N, heads, hd)."""
    chosen = resolve_attn_impl(impl, qkv.dtype, qkv.shape[-1], tokens=qkv.shape[1])
    if chosen == "bhnd":
        return _attention_bhnd(qkv)
    if chosen == "blockwise":
        return attention_blockwise(qkv)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    try:
        return jax.nn.dot_product_attention(q, k, v, implementation=chosen)
    except (RuntimeError, ValueError, NotImplementedError):
        if impl != "auto":
            raise
        # cuDNN's trace-time checks (library version, shape support) said no: use XLA, or the
        # blockwise form where XLA would build the whole score matrix.
        if qkv.shape[1] > BLOCKWISE_MIN_TOKENS:
            return attention_blockwise(qkv)
        return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def _attention_bhnd(qkv):
    hd = qkv.shape[-1]
    q, k, v = jnp.moveaxis(qkv, (2, 3), (0, 2))  # each (B, heads, N, hd)
    s = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * jnp.asarray(1.0 / math.sqrt(hd), q.dtype)
    p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.swapaxes(jnp.matmul(p, v), 1, 2)


def attention_blockwise(qkv: jax.Array, *, block: int = BLOCK) -> jax.Array:
    """`attention` without the (N, N) score matrix: queries in blocks (lax.map), and for each, an
    online softmax over key blocks (lax.scan) carrying the running max, normaliser and weighted
    sum, in float32. Keys padded up to whole blocks are masked out. Each key step is
    rematerialised in the backward pass, so training memory stays at one tile per step too."""
    b, n, _, h, hd = qkv.shape
    nb = -(-n // block)
    pad = nb * block - n
    q, k, v = (jnp.moveaxis(qkv[:, :, i], 1, 2) for i in range(3))  # (B, heads, N, hd)
    if pad:
        q, k, v = (jnp.pad(t, ((0, 0), (0, 0), (0, pad), (0, 0))) for t in (q, k, v))
    scale = jnp.asarray(1.0 / math.sqrt(hd), q.dtype)
    kb = k.reshape(b, h, nb, block, hd).transpose(2, 0, 1, 3, 4)  # (blocks, B, heads, block, hd)
    vb = v.reshape(b, h, nb, block, hd).transpose(2, 0, 1, 3, 4)
    valid = (jnp.arange(nb * block) < n).reshape(nb, block)

    def one_query_block(qi):
        qi = qi * scale  # (B, heads, block, hd)

        @jax.checkpoint
        def step(carry, kv):
            m, l, acc = carry
            kj, vj, ok = kv
            s = jnp.matmul(qi, jnp.swapaxes(kj, -1, -2)).astype(jnp.float32)
            s = jnp.where(ok, s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            l = l * corr + p.sum(-1)
            acc = acc * corr[..., None] + jnp.matmul(p.astype(vj.dtype), vj).astype(jnp.float32)
            return (m_new, l, acc), None

        init = (
            jnp.full(qi.shape[:-1], -jnp.inf, jnp.float32),
            jnp.zeros(qi.shape[:-1], jnp.float32),
            jnp.zeros(qi.shape, jnp.float32),
        )
        (_, l, acc), _ = jax.lax.scan(step, init, (kb, vb, valid))
        return (acc / l[..., None]).astype(qkv.dtype)

    qb = q.reshape(b, h, nb, block, hd).transpose(2, 0, 1, 3, 4)
    out = jax.lax.map(one_query_block, qb)  # (blocks, B, heads, block, hd)
    out = out.transpose(1, 0, 3, 2, 4).reshape(b, nb * block, h, hd)
    return out[:, :n]
