"""Basic layers with PyTorch semantics where parity needs them.

Parameter names follow Flax (kernel/bias/scale, BatchNorm mean/var); the converter maps them to the
official PyTorch names. Parameters are float32; `dtype` is the compute dtype.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from mambavision_jax import xla_cpu

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


def on_cpu() -> bool:
    """Whether code being traced now will run on the CPU (the default backend); decided at trace
    time, so that the CPU-only formulations below never reach an accelerator."""
    return jax.default_backend() == "cpu"


# --- Convolution with a CPU-friendly kernel gradient ----------------------------------------------
# XLA on the CPU computes a convolution's kernel gradient as a convolution whose "kernel" is the
# whole feature map and whose output is the small (kh, kw, Cin, Cout) kernel: it ran 2-4x slower
# than the forward convolution (and needed layout transposes of the activations). One matmul per
# kernel tap, contracting over (batch, height, width), is the same arithmetic at matmul speed.
# The forward pass and the input gradient stay XLA's own convolutions. This is YNNPACK's weakness
# (jaxlib 0.10): with XLA's Eigen convolutions (mambavision_jax.xla_cpu, on by default) XLA's own
# kernel gradient was ~4% faster per MambaVision-T train step than these taps, so it is used then.

_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC_HWIO,
                                    precision=precision)


def _conv_nhwc_fwd(x, w, strides, padding, precision):
    return _conv_nhwc(x, w, strides, padding, precision), (x, w)


def _conv_nhwc_bwd(strides, padding, precision, res, g):
    x, w = res
    _, x_vjp = jax.vjp(lambda x_: lax.conv_general_dilated(
        x_, w, strides, padding, dimension_numbers=_NHWC_HWIO, precision=precision), x)
    (dx,) = x_vjp(g)
    kh, kw, cin, cout = w.shape
    (sh, sw), (b, ho, wo, _) = strides, g.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    g2 = g.reshape(-1, cout)
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                           (1, sh, sw, 1))
            taps.append(lax.dot_general(xs.reshape(-1, cin), g2, (((0,), (0,)), ((), ())),
                                        precision=precision, preferred_element_type=jnp.float32))
    dw = jnp.stack(taps).reshape(w.shape).astype(w.dtype)
    return dx, dw


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated` (the `nnx.Conv` hook): on the CPU, plain NHWC convolutions get
    the matmul kernel gradient above; everything else is passed through unchanged."""
    plain = (
        on_cpu() and not xla_cpu.eigen_convolutions()
        and lhs.ndim == 4 and feature_group_count == 1 and not kwargs.get("out_sharding")
        and kwargs.get("preferred_element_type") is None and kwargs.get("batch_group_count", 1) == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and not isinstance(padding, str) and all(lo >= 0 and hi >= 0 for lo, hi in padding)
        and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC_HWIO))
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision,
                                        **kwargs)
    return _conv_nhwc(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)


def Conv2d(in_ch: int, out_ch: int, *, stride: int = 1, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """3x3 conv with PyTorch's explicit (1, 1) padding: 'SAME' pads (0, 1) on even inputs with
    stride 2, which shifts the sampling grid and breaks parity."""
    return nnx.Conv(in_ch, out_ch, kernel_size=(3, 3), strides=(stride, stride),
                    padding=((1, 1), (1, 1)), use_bias=bias, dtype=dtype,
                    kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(in_ch * 9),
                    conv_general_dilated=conv_general_dilated, rngs=rngs)


def Linear(in_f: int, out_f: int, *, bias: bool = True, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_f, out_f, use_bias=bias, dtype=dtype, kernel_init=linear_kernel_init,
                      bias_init=nnx.initializers.zeros, rngs=rngs)


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

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1,
                 num_groups: int = 1, use_running_average: bool = False, dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
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
        return self.fc2(gelu_exact(self.fc1(x)))


def gelu_exact(x: jax.Array) -> jax.Array:
    """The exact (erf) GELU. In float32 as PyTorch writes it, 0.5 x (1 + erf(x / sqrt 2)): on the
    CPU XLA's erf is a short polynomial while `jax.nn.gelu`'s erfc form is ~3x dearer, and its
    gradient made an MLP's backward pass ~1.5x slower. Other dtypes keep `jax.nn.gelu`, whose erfc
    form keeps the relative precision of the negative tail in low precision."""
    if x.dtype != jnp.float32:
        return jax.nn.gelu(x, approximate=False)
    return 0.5 * x * (1.0 + lax.erf(x * np.float32(np.sqrt(0.5))))
