"""The 11 official variants: their architectures (`MambaVisionConfig`) and pretrained cfgs (the
official preprocessing, timm's pretrained_cfg), looked up by name. A leaf of the models package
(it builds no model), so the model itself and the converters can read it without import cycles."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any

from mambavision_jax.imagenet import IMAGENET_MEAN, IMAGENET_STD
from mambavision_jax.models.config import ConfigError, MambaVisionConfig


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """What evaluation needs to preprocess like the official code (timm's pretrained_cfg)."""

    hf_hub_id: str | None = None
    url: str | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 1.0
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000


def _cfg(hub_name: str, filename: str, **kwargs) -> PretrainedCfg:
    return PretrainedCfg(
        hf_hub_id=f"nvidia/{hub_name}",
        url=f"https://huggingface.co/nvidia/{hub_name}/resolve/main/{filename}",
        **kwargs,
    )


# ------------------------------------------------------------------ architectures
_T = MambaVisionConfig(
    name="mamba_vision_T",
    dim=80,
    in_dim=32,
    depths=(1, 3, 8, 4),
    num_heads=(2, 4, 8, 16),
    window_size=(8, 8, 14, 7),
    drop_path_rate=0.2,
)
_B = MambaVisionConfig(
    name="mamba_vision_B",
    dim=128,
    in_dim=64,
    depths=(3, 3, 10, 5),
    num_heads=(2, 4, 8, 16),
    window_size=(8, 8, 14, 7),
    drop_path_rate=0.3,
    layer_scale=1e-5,
)
_L = MambaVisionConfig(
    name="mamba_vision_L",
    dim=196,
    in_dim=64,
    depths=(3, 3, 10, 5),
    num_heads=(4, 8, 16, 32),
    window_size=(8, 8, 14, 7),
    drop_path_rate=0.3,
    layer_scale=1e-5,
)
_L3 = MambaVisionConfig(
    name="mamba_vision_L3_256_21k",
    dim=256,
    in_dim=64,
    depths=(3, 3, 20, 10),
    num_heads=(4, 8, 16, 32),
    window_size=(8, 8, 16, 8),
    drop_path_rate=0.5,
    layer_scale=1e-5,
)
_L2 = _L.replace(name="mamba_vision_L2", depths=(3, 3, 12, 5))

CONFIGS: dict[str, MambaVisionConfig] = {
    "mamba_vision_T": _T,
    "mamba_vision_T2": _T.replace(name="mamba_vision_T2", depths=(1, 3, 11, 4)),
    "mamba_vision_S": _T.replace(name="mamba_vision_S", dim=96, in_dim=64, depths=(3, 3, 7, 5)),
    "mamba_vision_B": _B,
    "mamba_vision_B_21k": _B.replace(name="mamba_vision_B_21k"),
    "mamba_vision_L": _L,
    "mamba_vision_L_21k": _L.replace(name="mamba_vision_L_21k"),
    "mamba_vision_L2": _L2,
    "mamba_vision_L2_512_21k": _L2.replace(name="mamba_vision_L2_512_21k", window_size=(8, 8, 32, 16)),
    "mamba_vision_L3_256_21k": _L3,
    "mamba_vision_L3_512_21k": _L3.replace(name="mamba_vision_L3_512_21k", window_size=(8, 8, 32, 16)),
}

# ------------------------------------------------------------------ pretrained cfgs
_512 = {"input_size": (3, 512, 512), "crop_pct": 0.93, "crop_mode": "squash"}
PRETRAINED_CFGS: dict[str, PretrainedCfg] = {
    "mamba_vision_T": _cfg("MambaVision-T-1K", "mambavision_tiny_1k.pth.tar"),
    "mamba_vision_T2": _cfg("MambaVision-T2-1K", "mambavision_tiny2_1k.pth.tar", crop_pct=0.98),
    "mamba_vision_S": _cfg("MambaVision-S-1K", "mambavision_small_1k.pth.tar", crop_pct=0.93),
    "mamba_vision_B": _cfg("MambaVision-B-1K", "mambavision_base_1k.pth.tar"),
    "mamba_vision_B_21k": _cfg("MambaVision-B-21K", "mambavision_base_21k.pth.tar"),
    "mamba_vision_L": _cfg("MambaVision-L-1K", "mambavision_large_1k.pth.tar"),
    "mamba_vision_L_21k": _cfg("MambaVision-L-21K", "mambavision_large_21k.pth.tar"),
    "mamba_vision_L2": _cfg("MambaVision-L2-1K", "mambavision_large2_1k.pth.tar"),
    "mamba_vision_L2_512_21k": _cfg("MambaVision-L2-512-21K", "mambavision_L2_21k_240m_512.pth.tar", **_512),
    "mamba_vision_L3_256_21k": _cfg(
        "MambaVision-L3-256-21K", "mambavision_L3_21k_740m_256.pth.tar", input_size=(3, 256, 256)
    ),
    "mamba_vision_L3_512_21k": _cfg("MambaVision-L3-512-21K", "mambavision_L3_21k_740m_512.pth.tar", **_512),
}

# name: (config, pretrained cfg)
VARIANTS: dict[str, tuple[MambaVisionConfig, PretrainedCfg]] = {
    n: (CONFIGS[n], PRETRAINED_CFGS[n]) for n in CONFIGS
}


def list_models(pattern: str = "*") -> list[str]:
    """Official variant names matching a shell-style pattern, e.g. list_models("*_21k")."""
    return [n for n in CONFIGS if fnmatch.fnmatch(n, pattern)]


def _check_name(name: str) -> None:
    if name not in CONFIGS:
        close = difflib.get_close_matches(str(name), list(CONFIGS), n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} Known models: {', '.join(CONFIGS)}")


def model_config(name: str) -> MambaVisionConfig:
    """The architecture of an official variant."""
    _check_name(name)
    return CONFIGS[name]


def model_args(name: str) -> dict[str, Any]:
    """The architecture fields of a variant as a dict (`model_config(name).to_dict()` without the name)."""
    d = model_config(name).to_dict()
    del d["name"]
    return d


def pretrained_cfg(name: str) -> PretrainedCfg:
    _check_name(name)
    return PRETRAINED_CFGS[name]


def pretrained_cfg_for(config: MambaVisionConfig) -> PretrainedCfg:
    """The pretrained cfg of `config.name` when it is official, with the config's classes and input
    channels; else a default one (224 px, ImageNet mean / std)."""
    base = PRETRAINED_CFGS.get(config.name) if config.name is not None else None
    if base is None:
        base = PretrainedCfg()
    if (base.num_classes, base.input_size[0]) == (config.num_classes, config.in_chans):
        return base
    return dataclasses.replace(
        base, num_classes=config.num_classes, input_size=(config.in_chans, *base.input_size[1:])
    )
