"""The stem, the convolutional and the hybrid (Mamba / attention) stages, all NHWC."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mambavision_jax.models.layers import (BatchNorm, Conv2d, DropPath, LayerNorm, Mlp, ReLU, on_cpu)
from mambavision_jax.models.mixer import Attention, MambaVisionMixer


class PatchEmbed(nnx.Module):
    """conv3x3/2 -> BN(1e-4) -> ReLU -> conv3x3/2 -> BN(1e-4) -> ReLU; indices as the official Sequential."""

    def __init__(self, in_chans: int, in_dim: int, dim: int, *, bn_groups: int = 1, dtype, rngs: nnx.Rngs):
        self.conv_down = nnx.List([
            Conv2d(in_chans, in_dim, stride=2, bias=False, dtype=dtype, rngs=rngs),
            BatchNorm(in_dim, eps=1e-4, num_groups=bn_groups, dtype=dtype),
            ReLU(),
            Conv2d(in_dim, dim, stride=2, bias=False, dtype=dtype, rngs=rngs),
            BatchNorm(dim, eps=1e-4, num_groups=bn_groups, dtype=dtype),
            ReLU(),
        ])

    def __call__(self, x):
        for layer in self.conv_down:
            x = layer(x)
        return x


class Downsample(nnx.Module):
    """conv3x3/2 with (1, 1) padding, no bias, no norm; channels x2."""

    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.reduction = nnx.List([Conv2d(dim, 2 * dim, stride=2, bias=False, dtype=dtype, rngs=rngs)])

    def __call__(self, x):
        return self.reduction[0](x)


class ConvBlock(nnx.Module):
    """conv -> BN -> GELU(tanh) -> conv -> BN -> (gamma) -> DropPath -> residual."""

    def __init__(self, dim: int, *, drop_path: float, layer_scale: float | None, bn_groups: int = 1,
                 rng_stream, dtype, rngs: nnx.Rngs):
        self.conv1 = Conv2d(dim, dim, bias=True, dtype=dtype, rngs=rngs)
        self.norm1 = BatchNorm(dim, eps=1e-5, num_groups=bn_groups, dtype=dtype)
        self.conv2 = Conv2d(dim, dim, bias=True, dtype=dtype, rngs=rngs)
        self.norm2 = BatchNorm(dim, eps=1e-5, num_groups=bn_groups, dtype=dtype)
        if layer_scale is not None:
            self.gamma = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))
        self.drop_path = DropPath(drop_path, rng_stream=rng_stream)

    def __call__(self, x):
        y = jax.nn.gelu(self.norm1(self.conv1(x)), approximate=True)
        y = self.norm2(self.conv2(y))
        if hasattr(self, "gamma"):
            y = y * self.gamma[...].astype(y.dtype)
        return x + self.drop_path(y)


class Block(nnx.Module):
    """x + DropPath(gamma_1 * mixer(LN(x))); x + DropPath(gamma_2 * MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, *, attention: bool, mlp_ratio: float,
                 drop_path: float, layer_scale: float | None, scan_impl: str, rng_stream,
                 dtype, rngs: nnx.Rngs, attn_impl: str = "auto"):
        self.norm1 = LayerNorm(dim, rngs=rngs)
        if attention:
            self.mixer = Attention(dim, num_heads, attn_impl=attn_impl, dtype=dtype, rngs=rngs)
        else:
            self.mixer = MambaVisionMixer(dim, d_state=8, d_conv=3, expand=1, scan_impl=scan_impl,
                                          dtype=dtype, rngs=rngs)
        self.drop_path = DropPath(drop_path, rng_stream=rng_stream)
        self.norm2 = LayerNorm(dim, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
        if layer_scale is not None:
            self.gamma_1 = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))
            self.gamma_2 = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))
        self.dtype = dtype

    def _scale(self, name, y):
        return y * getattr(self, name)[...].astype(y.dtype) if hasattr(self, name) else y

    def __call__(self, x):
        x = _residual_barrier(x)
        x = x + self.drop_path(self._scale("gamma_1", self.mixer(self.norm1(x)).astype(self.dtype)))
        x = _residual_barrier(x)
        x = x + self.drop_path(self._scale("gamma_2", self.mlp(self.norm2(x)).astype(self.dtype)))
        return x


@jax.custom_vjp
def _materialize_grad(x):
    return x


def _materialize_grad_fwd(x):
    return x, None


def _materialize_grad_bwd(_, g):
    # A conditional's result is a buffer that no consumer can fuse into, so XLA must compute the
    # gradient once here. Both branches are the identity; the predicate only has to be unknown to
    # the compiler (it is True unless g holds a NaN, and then the result is the same).
    flat = g.reshape(-1)
    return (jax.lax.cond(flat[0] == flat[0], lambda t: t, lambda t: t + 0.0, g),)


_materialize_grad.defvjp(_materialize_grad_fwd, _materialize_grad_bwd)


def _residual_barrier(x):
    """On the CPU, materialise the gradient of the residual stream at this point.

    Without it XLA-CPU fused the backward residual sum of a whole stage (the LayerNorm input
    gradients of every later block) into each block's weight-gradient operand, recomputing it once
    per block: quadratic work that took ~20% of a MambaVision-T train step. (XLA-CPU drops
    `lax.optimization_barrier`, so it cannot serve here.) The identity in the forward pass.
    """
    return _materialize_grad(x) if on_cpu() else x


def attention_block_indices(depth: int) -> range:
    """The second half of a hybrid stage attends (for odd depths, the larger half is Mamba)."""
    return range(depth // 2 + 1, depth) if depth % 2 else range(depth // 2, depth)


def window_partition(x: jax.Array, ws: int) -> jax.Array:
    """(B, H, W, C) with H, W multiples of ws -> (B * H/ws * W/ws, ws*ws, C), row-major in a window."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: jax.Array, ws: int, h: int, w: int) -> jax.Array:
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class MambaVisionLayer(nnx.Module):
    """One stage: ConvBlocks (stages 1-2) or windowed hybrid Blocks (3-4), then the downsample."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, *, conv: bool,
                 downsample: bool, mlp_ratio: float, drop_path: list[float],
                 layer_scale: float | None, layer_scale_conv: float | None, scan_impl: str,
                 bn_groups: int, remat: bool, rng_stream, dtype, rngs: nnx.Rngs,
                 attn_impl: str = "auto"):
        self.conv, self.window_size, self.remat = conv, window_size, remat
        if conv:
            blocks = [ConvBlock(dim, drop_path=drop_path[i], layer_scale=layer_scale_conv,
                                bn_groups=bn_groups, rng_stream=rng_stream, dtype=dtype, rngs=rngs)
                      for i in range(depth)]
        else:
            attn = set(attention_block_indices(depth))
            blocks = [Block(dim, num_heads, attention=i in attn, mlp_ratio=mlp_ratio,
                            drop_path=drop_path[i], layer_scale=layer_scale, scan_impl=scan_impl,
                            attn_impl=attn_impl, rng_stream=rng_stream, dtype=dtype, rngs=rngs)
                      for i in range(depth)]
        self.blocks = nnx.List(blocks)
        self.downsample = Downsample(dim, dtype=dtype, rngs=rngs) if downsample else None

    def _run_blocks(self, x):
        for blk in self.blocks:
            if self.remat:
                x = nnx.remat(lambda m, y: m(y))(blk, x)
            else:
                x = blk(x)
        return x

    def forward_stage(self, x):
        """The stage output before the downsample (what detection/segmentation heads take)."""
        if self.conv:
            return self._run_blocks(x)
        _, h, w, _ = x.shape
        ws = self.window_size
        # Pad right/bottom to whole windows; padded tokens are not masked (as the official code).
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = jnp.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
        hp, wp = h + pad_b, w + pad_r
        x = window_reverse(self._run_blocks(window_partition(x, ws)), ws, hp, wp)
        return x[:, :h, :w, :]

    def __call__(self, x):
        x = self.forward_stage(x)
        return x if self.downsample is None else self.downsample(x)
