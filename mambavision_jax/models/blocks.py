"""The stem, the convolutional and the hybrid (Mamba / attention) stages, all NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mambavision_jax import ops
from mambavision_jax.models.config import HYBRID_STAGES, MambaVisionConfig, RuntimeConfig
from mambavision_jax.models.layers import BatchNorm, Conv2d, DropPath, LayerNorm, Mlp, ReLU
from mambavision_jax.models.mixer import Attention, MambaVisionMixer


class PatchEmbed(nnx.Module):
    """conv3x3/2 -> BN(1e-4) -> ReLU -> conv3x3/2 -> BN(1e-4) -> ReLU; indices as the official Sequential."""

    def __init__(self, config: MambaVisionConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        conv = {
            "stride": 2,
            "bias": False,
            "dtype": runtime.compute_dtype,
            "conv_impl": runtime.conv_impl,
            "rngs": rngs,
        }
        bn = {"eps": 1e-4, "num_groups": runtime.bn_groups, "dtype": runtime.compute_dtype}
        self.conv_down = nnx.List(
            [
                Conv2d(config.in_chans, config.in_dim, **conv),
                BatchNorm(config.in_dim, **bn),
                ReLU(),
                Conv2d(config.in_dim, config.dim, **conv),
                BatchNorm(config.dim, **bn),
                ReLU(),
            ]
        )

    def __call__(self, x):
        for layer in self.conv_down:
            x = layer(x)
        return x


class Downsample(nnx.Module):
    """conv3x3/2 with (1, 1) padding, no bias, no norm; channels x2."""

    def __init__(self, dim: int, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        self.reduction = nnx.List(
            [
                Conv2d(
                    dim,
                    2 * dim,
                    stride=2,
                    bias=False,
                    dtype=runtime.compute_dtype,
                    conv_impl=runtime.conv_impl,
                    rngs=rngs,
                )
            ]
        )

    def __call__(self, x):
        return self.reduction[0](x)


def _layer_scale(dim: int, value: float | None) -> nnx.Param | None:
    return None if value is None else nnx.Param(jnp.full((dim,), value, jnp.float32))


def _scaled(y, gamma: nnx.Param | None):
    return y if gamma is None else y * gamma[...].astype(y.dtype)


class ConvBlock(nnx.Module):
    """conv -> BN -> GELU(tanh) -> conv -> BN -> (gamma) -> DropPath -> residual."""

    def __init__(
        self,
        dim: int,
        config: MambaVisionConfig,
        runtime: RuntimeConfig,
        *,
        drop_path: float,
        rng_stream,
        rngs: nnx.Rngs,
    ):
        conv = {"bias": True, "dtype": runtime.compute_dtype, "conv_impl": runtime.conv_impl, "rngs": rngs}
        bn = {"eps": 1e-5, "num_groups": runtime.bn_groups, "dtype": runtime.compute_dtype}
        self.conv1 = Conv2d(dim, dim, **conv)
        self.norm1 = BatchNorm(dim, **bn)
        self.conv2 = Conv2d(dim, dim, **conv)
        self.norm2 = BatchNorm(dim, **bn)
        self.gamma = _layer_scale(dim, config.layer_scale_conv)
        self.drop_path = DropPath(drop_path, rng_stream=rng_stream)

    def __call__(self, x):
        y = jax.nn.gelu(self.norm1(self.conv1(x)), approximate=True)
        y = _scaled(self.norm2(self.conv2(y)), self.gamma)
        return x + self.drop_path(y)


class Block(nnx.Module):
    """x + DropPath(gamma_1 * mixer(LN(x))); x + DropPath(gamma_2 * MLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        config: MambaVisionConfig,
        runtime: RuntimeConfig,
        *,
        attention: bool,
        drop_path: float,
        rng_stream,
        rngs: nnx.Rngs,
    ):
        dtype = runtime.compute_dtype
        self.norm1 = LayerNorm(dim, rngs=rngs)
        if attention:
            self.mixer = Attention(dim, num_heads, attn_impl=runtime.attn_impl, dtype=dtype, rngs=rngs)
        else:
            self.mixer = MambaVisionMixer(
                dim,
                d_state=8,
                d_conv=3,
                expand=1,
                scan_impl=runtime.scan_impl,
                scan_sharding=runtime.scan_sharding,
                dtype=dtype,
                rngs=rngs,
            )
        self.drop_path = DropPath(drop_path, rng_stream=rng_stream)
        self.norm2 = LayerNorm(dim, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), dtype=dtype, rngs=rngs)
        self.gamma_1 = _layer_scale(dim, config.layer_scale)
        self.gamma_2 = _layer_scale(dim, config.layer_scale)
        self.dtype = dtype

    def __call__(self, x):
        x = ops.residual_barrier(x)
        x = x + self.drop_path(_scaled(self.mixer(self.norm1(x)).astype(self.dtype), self.gamma_1))
        x = ops.residual_barrier(x)
        x = x + self.drop_path(_scaled(self.mlp(self.norm2(x)).astype(self.dtype), self.gamma_2))
        return x


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

    def __init__(
        self,
        stage: int,
        config: MambaVisionConfig,
        runtime: RuntimeConfig,
        *,
        drop_path: list[float],
        rng_stream,
        rngs: nnx.Rngs,
    ):
        dim, depth = config.stage_dims[stage], config.depths[stage]
        self.conv = stage not in HYBRID_STAGES
        self.window_size, self.remat = config.window_size[stage], runtime.remat
        if self.conv:
            blocks = [
                ConvBlock(dim, config, runtime, drop_path=drop_path[i], rng_stream=rng_stream, rngs=rngs)
                for i in range(depth)
            ]
        else:
            attn = set(attention_block_indices(depth))
            blocks = [
                Block(
                    dim,
                    config.num_heads[stage],
                    config,
                    runtime,
                    attention=i in attn,
                    drop_path=drop_path[i],
                    rng_stream=rng_stream,
                    rngs=rngs,
                )
                for i in range(depth)
            ]
        self.blocks = nnx.List(blocks)
        last = stage == len(config.depths) - 1
        self.downsample = None if last else Downsample(dim, runtime, rngs=rngs)

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
