"""The PyTorch operations mmseg's heads use, NHWC, written to match torch to the last bit of
their definitions: bilinear resize with align_corners=False (no antialiasing: jax.image.resize
antialiases when it shrinks), adaptive average pooling with torch's overlapping bins, and
mmcv's ConvModule (conv without bias -> BatchNorm -> ReLU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax.models.layers import BatchNorm, torch_default_bias_init, torch_default_kernel_init


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's upsample_bilinear2d source indices and weights for one axis (align_corners=False,
    size given: scale = n_in / n_out; negative source coordinates clamp to 0)."""
    scale = n_in / n_out
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """F.interpolate(x, size, mode="bilinear", align_corners=False) on (B, H, W, C)."""
    h, w = int(size[0]), int(size[1])
    if (h, w) == x.shape[1:3]:
        return x
    i0, i1, lam = _linear_taps(x.shape[1], h)
    lam = jnp.asarray(lam, x.dtype)[None, :, None, None]
    x = x[:, i0] * (1 - lam) + x[:, i1] * lam
    j0, j1, mu = _linear_taps(x.shape[2], w)
    mu = jnp.asarray(mu, x.dtype)[None, None, :, None]
    return x[:, :, j0] * (1 - mu) + x[:, :, j1] * mu


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging weights of torch's adaptive_avg_pool: bin i covers
    [floor(i n_in / n_out), ceil((i + 1) n_in / n_out)), so bins overlap when n_out does not
    divide n_in."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool2d(nnx.Module):
    """nn.AdaptiveAvgPool2d(size) on (B, H, W, C); stateless, so PPM keeps mmseg's indices."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: jax.Array) -> jax.Array:
        ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], self.size), x.dtype)
        pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], self.size), x.dtype)
        return jnp.einsum("ph,bhwc,qw->bpqc", ph, x, pw, precision=jax.lax.Precision.HIGHEST)


def conv2d(in_ch: int, out_ch: int, kernel: int, *, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2) with PyTorch's default init."""
    p = kernel // 2
    return nnx.Conv(
        in_ch,
        out_ch,
        kernel_size=(kernel, kernel),
        padding=((p, p), (p, p)),
        use_bias=bias,
        dtype=dtype,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(in_ch * kernel * kernel),
        rngs=rngs,
    )


class ConvModule(nnx.Module):
    """mmcv's ConvModule with norm_cfg=SyncBN, act_cfg=ReLU: `conv` (no bias) -> `bn` -> ReLU.
    BatchNorm statistics are global over a batch sharded across devices, as SyncBN's."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = conv2d(in_ch, out_ch, kernel, bias=False, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(out_ch, eps=1e-5, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))
