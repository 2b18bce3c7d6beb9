"""What a UperNet segmenter is (`SegmentationConfig`) and the four official ADE20K models.

The official configs (semantic_segmentation/configs/mamba_vision/*.py in NVlabs/MambaVision) build
`MM_mamba_vision` from only dim, in_dim, depths, num_heads, window_size, mlp_ratio and layer_scale:
its drop_path_rate stays at the constructor's default 0.2 (the config's value is ignored) and it
has no conv layer scale. The heads are mmseg's UPerHead and FCNHead from upernet_swin.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mambavision_jax.errors import UserError
from mambavision_jax.models.config import ConfigError, MambaVisionConfig, _Fields, unknown_names_message

# mmseg's SegDataPreProcessor in upernet_swin.py: pixel values 0-255, RGB.
ADE20K_MEAN = (123.675, 116.28, 103.53)
ADE20K_STD = (58.395, 57.12, 57.375)


def _pair(owner: str, field: str, v) -> tuple[int, int]:
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)):
        raise ConfigError(f"{owner}.{field} must be two positive integers, got {v!r}")
    return (int(v[0]), int(v[1]))


@dataclasses.dataclass(frozen=True)
class SegmentationConfig(_Fields):
    """Every field of a UperNet segmenter on a MambaVision backbone.

    backbone: the backbone's MambaVisionConfig (num_classes 0; the segmentation windows);
    num_classes: classes of both heads; channels / pool_scales / dropout_ratio: UPerHead's;
    aux_channels / aux_in_index / aux_num_convs / aux_concat_input: FCNHead's (auxiliary=False
    leaves it out); test_scale: whole-mode inference resizes to fit (long, short) keeping the
    aspect ratio (mmseg's Resize(scale=(2048, 512), keep_ratio=True)); crop_size / stride: slide
    inference; mean / std: normalisation of 0-255 RGB pixels; name: the official model it
    derives from (None for a custom one).
    """

    backbone: MambaVisionConfig
    num_classes: int = 150
    channels: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    dropout_ratio: float = 0.1
    auxiliary: bool = True
    aux_channels: int = 256
    aux_in_index: int = 2
    aux_num_convs: int = 1
    aux_concat_input: bool = False
    test_scale: tuple[int, int] = (2048, 512)
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    mean: tuple[float, ...] = ADE20K_MEAN
    std: tuple[float, ...] = ADE20K_STD
    name: str | None = None

    def __post_init__(self):
        own, set_ = "SegmentationConfig", object.__setattr__
        if isinstance(self.backbone, dict):
            set_(self, "backbone", MambaVisionConfig.from_dict(self.backbone))
        if not isinstance(self.backbone, MambaVisionConfig):
            raise ConfigError(f"{own}.backbone must be a MambaVisionConfig, got {self.backbone!r}")
        if self.backbone.num_classes != 0:
            set_(self, "backbone", self.backbone.replace(num_classes=0))
        for field in ("num_classes", "channels", "aux_channels", "aux_num_convs"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{own}.{field} must be a positive integer, got {v!r}")
        if not 0 <= self.aux_in_index < len(self.backbone.depths):
            raise ConfigError(f"{own}.aux_in_index must name a stage (0-3), got {self.aux_in_index!r}")
        scales = self.pool_scales
        if not (
            isinstance(scales, (list, tuple)) and scales and all(isinstance(s, int) and s > 0 for s in scales)
        ):
            raise ConfigError(f"{own}.pool_scales must be positive integers, got {scales!r}")
        set_(self, "pool_scales", tuple(scales))
        if not (isinstance(self.dropout_ratio, (int, float)) and 0 <= self.dropout_ratio < 1):
            raise ConfigError(f"{own}.dropout_ratio must be in [0, 1), got {self.dropout_ratio!r}")
        set_(self, "dropout_ratio", float(self.dropout_ratio))
        for field in ("auxiliary", "aux_concat_input"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{own}.{field} must be True or False, got {getattr(self, field)!r}")
        for field in ("test_scale", "crop_size", "stride"):
            set_(self, field, _pair(own, field, getattr(self, field)))
        for field in ("mean", "std"):
            v = getattr(self, field)
            if not (isinstance(v, (list, tuple)) and len(v) == self.backbone.in_chans):
                raise ConfigError(f"{own}.{field} must have one value per input channel, got {v!r}")
            set_(self, field, tuple(float(x) for x in v))
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ConfigError(f"{own}.name must be None or a non-empty string, got {self.name!r}")

    @property
    def in_channels(self) -> tuple[int, ...]:
        """Channels of the four backbone maps the decode head takes."""
        return self.backbone.stage_dims

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["backbone"] = self.backbone.to_dict()
        return d


def _official(name, backbone_name, *, dim, in_dim, depths, num_heads, window_size, layer_scale, **kw):
    backbone = MambaVisionConfig(
        name=backbone_name,
        dim=dim,
        in_dim=in_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        drop_path_rate=0.2,  # MM_mamba_vision passes no drop_path_rate: the default applies
        layer_scale=layer_scale,
        layer_scale_conv=None,
        num_classes=0,
    )
    return SegmentationConfig(backbone=backbone, name=name, **kw)


# The official ADE20K models: name -> config (windows from each mmseg config file).
SEG_CONFIGS: dict[str, SegmentationConfig] = {
    "mamba_vision_160k_ade20k-512x512_tiny": _official(
        "mamba_vision_160k_ade20k-512x512_tiny",
        "mamba_vision_T",
        dim=80,
        in_dim=32,
        depths=(1, 3, 8, 4),
        num_heads=(2, 4, 8, 16),
        window_size=(8, 8, 64, 32),
        layer_scale=None,
    ),
    "mamba_vision_160k_ade20k-512x512_small": _official(
        "mamba_vision_160k_ade20k-512x512_small",
        "mamba_vision_S",
        dim=96,
        in_dim=64,
        depths=(3, 3, 7, 5),
        num_heads=(2, 4, 8, 16),
        window_size=(8, 8, 160, 56),
        layer_scale=None,
    ),
    "mamba_vision_160k_ade20k-512x512_base": _official(
        "mamba_vision_160k_ade20k-512x512_base",
        "mamba_vision_B",
        dim=128,
        in_dim=64,
        depths=(3, 3, 10, 5),
        num_heads=(2, 4, 8, 16),
        window_size=(8, 8, 64, 32),
        layer_scale=1e-5,
    ),
    "mamba_vision_160k_ade20k-640x640_l3_21k": _official(
        "mamba_vision_160k_ade20k-640x640_l3_21k",
        "mamba_vision_L3_512_21k",
        dim=256,
        in_dim=64,
        depths=(3, 3, 20, 10),
        num_heads=(4, 8, 16, 32),
        window_size=(8, 8, 64, 32),
        layer_scale=1e-5,
        test_scale=(2560, 640),
        crop_size=(640, 640),
        stride=(426, 426),
    ),
}
# Short names: create_segmenter("tiny").
SEG_ALIASES = {n.rsplit("_", 1)[-1] if "l3" not in n else "l3": n for n in SEG_CONFIGS}


def list_segmenters() -> list[str]:
    return list(SEG_CONFIGS)


def segmentation_config(name: str) -> SegmentationConfig:
    """The config of an official segmenter, by its name or short name (tiny, small, base, l3)."""
    full = SEG_ALIASES.get(name, name)
    if full not in SEG_CONFIGS:
        raise UserError(
            unknown_names_message("segmentation_config", [name], [*SEG_ALIASES, *SEG_CONFIGS], "model")
        )
    return SEG_CONFIGS[full]
