"""UperNet on a MambaVision backbone: the official `EncoderDecoder(MM_mamba_vision, UPerHead,
FCNHead)` of semantic_segmentation/ in NVlabs/MambaVision, NHWC."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mambavision_jax.models.config import MambaVisionConfig, RuntimeConfig
from mambavision_jax.models.layers import LayerNorm
from mambavision_jax.models.mamba_vision import DEFAULT_RUNTIME, MambaVision
from mambavision_jax.models.registry import split_overrides
from mambavision_jax.segmentation.config import SegmentationConfig, segmentation_config
from mambavision_jax.segmentation.heads import FCNHead, UPerHead
from mambavision_jax.segmentation.layers import resize_bilinear


class SegmentationBackbone(MambaVision):
    """`MM_mamba_vision`: the classification MambaVision without its BatchNorm and head, returning
    each stage's output before its downsample through a channels-first LayerNorm `outnorm{i}`.
    Windows come from the config; padding to whole windows is not masked (as the official)."""

    def __init__(
        self, config: MambaVisionConfig, runtime: RuntimeConfig = DEFAULT_RUNTIME, *, rngs: nnx.Rngs
    ):
        super().__init__(config.replace(num_classes=0), runtime, rngs=rngs)
        del self.norm  # the official `del self.norm; del self.head`
        self.out_indices = tuple(range(len(config.depths)))
        for i in self.out_indices:
            setattr(self, f"outnorm{i}", LayerNorm(self.stage_dims[i], rngs=rngs))

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        feats = self.forward_intermediates(x, self.out_indices)
        return [getattr(self, f"outnorm{i}")(f).astype(self.dtype) for i, f in zip(self.out_indices, feats)]


class SegOutputs(NamedTuple):
    """What `UperNet.forward_heads` returns: the backbone maps and both heads' logits at 1/4 of
    the input (aux is None without an auxiliary head)."""

    features: list[jax.Array]
    decode: jax.Array
    aux: jax.Array | None


class UperNet(nnx.Module):
    """backbone -> decode_head (UPerHead) [+ auxiliary_head (FCNHead), used by the training loss].

    `model(x)`: images (B, H, W, 3) normalised with `config.mean` / `config.std` (0-255 RGB
    pixels) -> float32 logits (B, H, W, num_classes) at the input size: mmseg's `encode_decode`
    (the decode head's 1/4-scale logits resized bilinearly, align_corners=False). Any H, W >= 32.
    `model.eval()` for inference (BatchNorm running statistics, no dropout).
    """

    def __init__(
        self, config: SegmentationConfig, runtime: RuntimeConfig = DEFAULT_RUNTIME, *, rngs: nnx.Rngs
    ):
        if not isinstance(config, SegmentationConfig):
            raise TypeError(
                f"UperNet(config, ...): config must be a SegmentationConfig, got {type(config).__name__}"
            )
        self.config, self.runtime = config, runtime
        dtype = runtime.compute_dtype
        self.backbone = SegmentationBackbone(config.backbone, runtime, rngs=rngs)
        self.decode_head = UPerHead(
            config.in_channels,
            config.channels,
            config.num_classes,
            pool_scales=config.pool_scales,
            dropout=config.dropout_ratio,
            dtype=dtype,
            rngs=rngs,
        )
        self.auxiliary_head = (
            FCNHead(
                config.in_channels[config.aux_in_index],
                config.aux_channels,
                config.num_classes,
                num_convs=config.aux_num_convs,
                concat_input=config.aux_concat_input,
                dropout=config.dropout_ratio,
                dtype=dtype,
                rngs=rngs,
            )
            if config.auxiliary
            else None
        )

    @property
    def name(self) -> str | None:
        return self.config.name

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward_heads(self, x: jax.Array, *, aux: bool = True) -> SegOutputs:
        feats = self.backbone(x)
        decode = self.decode_head(feats).astype(jnp.float32)
        aux_logits = None
        if aux and self.auxiliary_head is not None:
            aux_logits = self.auxiliary_head(feats[self.config.aux_in_index]).astype(jnp.float32)
        return SegOutputs(feats, decode, aux_logits)

    def __call__(self, x: jax.Array) -> jax.Array:
        return resize_bilinear(self.forward_heads(x, aux=False).decode, x.shape[1:3])


def create_segmenter(
    name_or_config: str | SegmentationConfig = "tiny",
    *,
    rngs: nnx.Rngs | None = None,
    runtime: RuntimeConfig | None = None,
    **overrides,
) -> UperNet:
    """An official segmenter by name (`list_segmenters()`, or tiny / small / base / l3) or any
    `SegmentationConfig`, randomly initialised and in eval mode (weights: `load_checkpoint`).

    `overrides` replace fields of the `SegmentationConfig` (num_classes, channels, ...), of the
    backbone's `MambaVisionConfig` (window_size, drop_path_rate, ...) or of `runtime` (dtype,
    attn_impl, ...), e.g. `create_segmenter("tiny", num_classes=21, dtype="bfloat16")`."""
    if isinstance(name_or_config, SegmentationConfig):
        config = name_or_config
    elif isinstance(name_or_config, str):
        config = segmentation_config(name_or_config)
    else:
        raise TypeError(
            f"create_segmenter: expected a model name or a SegmentationConfig, got {type(name_or_config).__name__}"
        )
    seg = {k: overrides.pop(k) for k in list(overrides) if k in SegmentationConfig.field_names()}
    arch, run = split_overrides(overrides, "create_segmenter")
    if arch:
        seg["backbone"] = config.backbone.replace(**arch)
    config = config.replace(**seg) if seg else config
    runtime = runtime if runtime is not None else RuntimeConfig()
    runtime = runtime.replace(**run) if run else runtime
    model = UperNet(config, runtime, rngs=rngs if rngs is not None else nnx.Rngs(0))
    model.eval()
    return model
