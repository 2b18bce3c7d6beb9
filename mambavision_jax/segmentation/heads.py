"""mmseg's UPerHead and FCNHead (decode_heads/uper_head.py, psp_head.py, fcn_head.py), NHWC, with
mmseg's module names (psp_modules.{i}.1, bottleneck, lateral_convs, fpn_convs, fpn_bottleneck,
convs, conv_seg) so the checkpoint converter is a table."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mambavision_jax.segmentation.layers import AdaptiveAvgPool2d, ConvModule, resize_bilinear


class _ClassifierMixin:
    """BaseDecodeHead.cls_seg: Dropout2d (whole channels per image, training only) -> 1x1 conv."""

    def _init_classifier(self, channels: int, num_classes: int, dropout: float, dtype, rngs: nnx.Rngs):
        self.conv_seg = nnx.Conv(
            channels,
            num_classes,
            kernel_size=(1, 1),
            dtype=dtype,
            kernel_init=nnx.initializers.normal(stddev=0.01),  # mmseg's init_cfg for conv_seg
            bias_init=nnx.initializers.zeros,
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs) if dropout > 0 else None

    def cls_seg(self, feat: jax.Array) -> jax.Array:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class UPerHead(nnx.Module, _ClassifierMixin):
    """PPM (pyramid pooling: per scale, adaptive average pool -> 1x1 ConvModule -> bilinear back) on the last map, lateral 1x1 convs, top-down cumulative adds, 3x3 FPN convs, concat
    at the finest scale, fpn_bottleneck, classifier."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        *,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        conv = {"dtype": dtype, "rngs": rngs}
        # mmseg's PPM is a ModuleList of Sequential(AdaptiveAvgPool2d, ConvModule): psp_modules.{i}.1
        self.psp_modules = nnx.List(
            [
                nnx.List([AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1, **conv)])
                for s in pool_scales
            ]
        )
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, **conv)
        self.lateral_convs = nnx.List([ConvModule(c, channels, 1, **conv) for c in in_channels[:-1]])
        self.fpn_convs = nnx.List([ConvModule(channels, channels, 3, **conv) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, **conv)
        self._init_classifier(channels, num_classes, dropout, dtype, rngs)

    def psp_forward(self, x: jax.Array) -> jax.Array:
        outs = [x] + [resize_bilinear(conv(pool(x)), x.shape[1:3]) for pool, conv in self.psp_modules]
        return self.bottleneck(jnp.concatenate(outs, axis=-1))

    def __call__(self, inputs: Sequence[jax.Array]) -> jax.Array:
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        n = len(laterals)
        for i in range(n - 1, 0, -1):  # top-down: each level adds the (already summed) coarser one
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n - 1)] + [laterals[-1]]
        outs = [outs[0]] + [resize_bilinear(o, outs[0].shape[1:3]) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(jnp.concatenate(outs, axis=-1)))


class FCNHead(nnx.Module, _ClassifierMixin):
    """num_convs 3x3 ConvModules (-> concat with the input -> conv_cat) -> classifier, on one map."""

    def __init__(
        self,
        in_ch: int,
        channels: int,
        num_classes: int,
        *,
        num_convs: int = 1,
        concat_input: bool = False,
        dropout: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        conv = {"dtype": dtype, "rngs": rngs}
        self.convs = nnx.List(
            [ConvModule(in_ch if i == 0 else channels, channels, 3, **conv) for i in range(num_convs)]
        )
        self.conv_cat = ConvModule(in_ch + channels, channels, 3, **conv) if concat_input else None
        self._init_classifier(channels, num_classes, dropout, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        feats = x
        for conv in self.convs:
            feats = conv(feats)
        if self.conv_cat is not None:
            feats = self.conv_cat(jnp.concatenate([x, feats], axis=-1))
        return self.cls_seg(feats)
