"""Basic layers with PyTorch semantics where parity needs them.

Parameter names follow Flax (kernel/bias/scale, BatchNorm mean/var); the converter maps them to the
official PyTorch names. Parameters are float32; `dtype` is the compute dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mambavision_jax import ops

# timm's trunc_normal_(std=.02) cuts at +-2 in absolute terms (100 std): in effect a plain normal.
linear_kernel_init = nnx.initializers.normal(stddev=0.02)


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
    """PyTorch's default conv init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = math.prod(shape[:-1])  # HWIO / (k, 1, C) depthwise: everything but the output axis
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def Conv2d(
    in_ch: int, out_ch: int, *, stride: int = 1, bias: bool, dtype, conv_impl: str = "auto", rngs: nnx.Rngs
) -> nnx.Conv:
    """3x3 conv with PyTorch's explicit (1, 1) padding: 'SAME' pads (0, 1) on even inputs with
    stride 2, which shifts the sampling grid and breaks parity. `conv_impl`: see `ops.conv`."""
    return nnx.Conv(
        in_ch,
        out_ch,
        kernel_size=(3, 3),
        strides=(stride, stride),
        padding=((1, 1), (1, 1)),
        use_bias=bias,
        dtype=dtype,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(in_ch * 9),
        conv_general_dilated=ops.conv_hook(conv_impl),
        rngs=rngs,
    )


def Linear(in_f: int, out_f: int, *, bias: bool = True, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        in_f,
        out_f,
        use_bias=bias,
        dtype=dtype,
        kernel_init=linear_kernel_init,
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


def LayerNorm(dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # PyTorch's eps (Flax defaults to 1e-6) and the two-pass variance; computed in float32.
    return nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, dtype=jnp.float32, rngs=rngs)


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with torch.nn.BatchNorm semantics.

    Train mode normalises with the biased batch variance but updates the running variance with the
    unbiased one (n / (n - 1)), momentum is PyTorch's (new = (1 - m) old + m batch), and statistics
    are two-pass in float32. `num_groups > 1` computes statistics per group of the batch, as the
    official recipe's per-GPU BatchNorm does (DDP without SyncBN); the running statistics then
    take the mean of the groups' statistics. Under `jax.jit` with the batch sharded over devices,
    `num_groups = 1` gives global (synchronised) statistics.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        num_groups: int = 1,
        use_running_average: bool = False,
        dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs  # deterministic init: scale 1, bias 0
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.num_groups, self.use_running_average, self.dtype = num_groups, use_running_average, dtype
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            y = (xf - self.mean[...]) * jax.lax.rsqrt(self.var[...] + self.eps)
        else:
            g = self.num_groups
            if x.shape[0] % g:
                raise ValueError(f"BatchNorm: batch {x.shape[0]} is not divisible by num_groups={g}")
            xg = xf.reshape((g, x.shape[0] // g) + x.shape[1:])
            axes = tuple(range(1, xg.ndim - 1))
            mean = jnp.mean(xg, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
            y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
            n = math.prod(xg.shape[1:-1])
            m = self.momentum
            batch_mean = jnp.mean(mean.reshape(g, -1), axis=0)
            batch_var = jnp.mean(var.reshape(g, -1), axis=0) * (n / max(n - 1, 1))
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(batch_mean)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(batch_var)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class DropPath(nnx.Module):
    """Stochastic depth per sample (per window in stages 3-4, where the batch axis is windows).

    Every DropPath of a model shares one RngStream, so the model's RNG state is a single counter.
    """

    def __init__(self, rate: float, *, rng_stream: nnx.RngStream | None, deterministic: bool = False):
        self.rate, self.deterministic = rate, deterministic
        self.rngs = rng_stream if rate > 0 else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.rate == 0.0 or self.deterministic:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return x * mask.astype(x.dtype) / jnp.asarray(keep, x.dtype)


class ReLU(nnx.Module):
    """Stateless, so that `conv_down` keeps the official Sequential's indices (0, 1, 3, 4)."""

    def __call__(self, x):
        return jax.nn.relu(x)


class Mlp(nnx.Module):
    """timm's Mlp: fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.fc1 = Linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = Linear(hidden, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.fc2(ops.gelu_exact(self.fc1(x)))
