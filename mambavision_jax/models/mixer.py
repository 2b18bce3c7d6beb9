"""MambaVisionMixer: the official Mamba mixer variant (no causal conv, no z gating, two paths)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mambavision_jax import ops
from mambavision_jax.models.layers import Linear, torch_default_kernel_init


class DepthwiseConv1d(nnx.Module):
    """Depthwise conv1d over tokens with PyTorch's padding='same' (symmetric) and no bias.

    Written as shifted multiply-adds: XLA on the CPU ran a grouped conv ~20x slower.
    The kernel has Flax's grouped-conv layout (k, 1, C).
    """

    def __init__(self, channels: int, kernel_size: int = 3, *, rngs: nnx.Rngs):
        if kernel_size % 2 != 1:
            raise ValueError("only odd kernel sizes have PyTorch's symmetric 'same' padding")
        self.kernel_size = kernel_size
        self.kernel = nnx.Param(torch_default_kernel_init(rngs.params(), (kernel_size, 1, channels)))

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, L, C)
        k, L = self.kernel_size, x.shape[1]
        pad = k // 2
        w = self.kernel[...].astype(x.dtype)[:, 0, :]
        xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
        return sum(xp[:, i : i + L, :] * w[i] for i in range(k))


class MambaVisionMixer(nnx.Module):
    """d_state 8, d_conv 3, expand 1 as every official variant uses it.

    x, z = split(in_proj(u)); x = silu(conv(x)); z = silu(conv(z));
    dt, B, C = split(x_proj(x)); y = scan(x, dt_proj(dt), A, B, C, D, delta_bias=dt_proj.bias);
    out = out_proj([y, z]). The dt_proj bias is added twice (by the Linear and as delta_bias), as
    in the official code. scan_impl / scan_sharding: `ops.selective_scan`'s impl and sharding.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 8,
        d_conv: int = 3,
        expand: int = 1,
        scan_impl: str = "auto",
        scan_sharding: ops.ScanSharding | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.d_inner = int(expand * d_model)
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_impl, self.scan_sharding = scan_impl, scan_sharding
        half = self.d_inner // 2
        self.in_proj = Linear(d_model, self.d_inner, bias=False, dtype=dtype, rngs=rngs)
        self.x_proj = Linear(half, self.dt_rank + 2 * d_state, bias=False, dtype=dtype, rngs=rngs)
        self.dt_proj = Linear(self.dt_rank, half, bias=True, dtype=dtype, rngs=rngs)
        self.A_log = nnx.Param(jnp.log(jnp.tile(jnp.arange(1, d_state + 1, dtype=jnp.float32), (half, 1))))
        self.D = nnx.Param(jnp.ones((half,), jnp.float32))
        self.out_proj = Linear(self.d_inner, d_model, bias=False, dtype=dtype, rngs=rngs)
        self.conv1d_x = DepthwiseConv1d(half, d_conv, rngs=rngs)
        self.conv1d_z = DepthwiseConv1d(half, d_conv, rngs=rngs)

    def __call__(self, u: jax.Array) -> jax.Array:  # (B, L, C)
        xz = self.in_proj(u)
        x, z = jnp.split(xz, 2, axis=-1)
        x = jax.nn.silu(self.conv1d_x(x))
        z = jax.nn.silu(self.conv1d_z(z))
        dt, B, C = jnp.split(self.x_proj(x), [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        delta = self.dt_proj(dt)
        A = -jnp.exp(self.A_log[...])
        y = ops.selective_scan(
            x,
            delta,
            A,
            B,
            C,
            self.D[...],
            delta_bias=self.dt_proj.bias[...],
            delta_softplus=True,
            impl=self.scan_impl,
            sharding=self.scan_sharding,
        )
        return self.out_proj(jnp.concatenate([y.astype(z.dtype), z], axis=-1))


class Attention(nnx.Module):
    """Multi-head self-attention inside a window: qkv (with bias) -> softmax(q k^T / sqrt(hd)) v -> proj."""

    def __init__(
        self, dim: int, num_heads: int, *, attn_impl: str = "auto", dtype=jnp.float32, rngs: nnx.Rngs
    ):
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if attn_impl not in ops.ATTN_IMPLS:
            raise ValueError(f"unknown attn_impl {attn_impl!r}; valid: {ops.ATTN_IMPLS}")
        self.num_heads, self.head_dim, self.attn_impl = num_heads, dim // num_heads, attn_impl
        self.qkv = Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = Linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, N, C)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        return self.proj(ops.attention(qkv, impl=self.attn_impl).reshape(b, n, c))
