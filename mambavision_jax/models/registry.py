"""The 11 official variants, their pretrained configs, and `create_model` / `list_models`."""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mambavision_jax.models.mamba_vision import MambaVision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """What evaluation needs to preprocess like the official code (timm's pretrained_cfg)."""
    hf_hub_id: str
    url: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 1.0
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000


_HF = "https://huggingface.co/nvidia/{}/resolve/main/{}"
_T = dict(dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
          drop_path_rate=0.2)
_B = dict(dim=128, in_dim=64, depths=(3, 3, 10, 5), num_heads=(2, 4, 8, 16),
          window_size=(8, 8, 14, 7), drop_path_rate=0.3, layer_scale=1e-5)
_L = dict(dim=196, in_dim=64, depths=(3, 3, 10, 5), num_heads=(4, 8, 16, 32),
          window_size=(8, 8, 14, 7), drop_path_rate=0.3, layer_scale=1e-5)
_L2 = dict(_L, depths=(3, 3, 12, 5))
_L3 = dict(dim=256, in_dim=64, depths=(3, 3, 20, 10), num_heads=(4, 8, 16, 32),
           window_size=(8, 8, 16, 8), drop_path_rate=0.5, layer_scale=1e-5)

# name: (architecture kwargs, pretrained cfg)
VARIANTS: dict[str, tuple[dict[str, Any], PretrainedCfg]] = {
    "mamba_vision_T": (_T, PretrainedCfg("nvidia/MambaVision-T-1K", _HF.format("MambaVision-T-1K", "mambavision_tiny_1k.pth.tar"))),
    "mamba_vision_T2": (dict(_T, depths=(1, 3, 11, 4)), PretrainedCfg("nvidia/MambaVision-T2-1K", _HF.format("MambaVision-T2-1K", "mambavision_tiny2_1k.pth.tar"), crop_pct=0.98)),
    "mamba_vision_S": (dict(_T, dim=96, in_dim=64, depths=(3, 3, 7, 5)), PretrainedCfg("nvidia/MambaVision-S-1K", _HF.format("MambaVision-S-1K", "mambavision_small_1k.pth.tar"), crop_pct=0.93)),
    "mamba_vision_B": (_B, PretrainedCfg("nvidia/MambaVision-B-1K", _HF.format("MambaVision-B-1K", "mambavision_base_1k.pth.tar"))),
    "mamba_vision_B_21k": (_B, PretrainedCfg("nvidia/MambaVision-B-21K", _HF.format("MambaVision-B-21K", "mambavision_base_21k.pth.tar"))),
    "mamba_vision_L": (_L, PretrainedCfg("nvidia/MambaVision-L-1K", _HF.format("MambaVision-L-1K", "mambavision_large_1k.pth.tar"))),
    "mamba_vision_L_21k": (_L, PretrainedCfg("nvidia/MambaVision-L-21K", _HF.format("MambaVision-L-21K", "mambavision_large_21k.pth.tar"))),
    "mamba_vision_L2": (_L2, PretrainedCfg("nvidia/MambaVision-L2-1K", _HF.format("MambaVision-L2-1K", "mambavision_large2_1k.pth.tar"))),
    "mamba_vision_L2_512_21k": (dict(_L2, window_size=(8, 8, 32, 16)), PretrainedCfg("nvidia/MambaVision-L2-512-21K", _HF.format("MambaVision-L2-512-21K", "mambavision_L2_21k_240m_512.pth.tar"), input_size=(3, 512, 512), crop_pct=0.93, crop_mode="squash")),
    "mamba_vision_L3_256_21k": (_L3, PretrainedCfg("nvidia/MambaVision-L3-256-21K", _HF.format("MambaVision-L3-256-21K", "mambavision_L3_21k_740m_256.pth.tar"), input_size=(3, 256, 256))),
    "mamba_vision_L3_512_21k": (dict(_L3, window_size=(8, 8, 32, 16)), PretrainedCfg("nvidia/MambaVision-L3-512-21K", _HF.format("MambaVision-L3-512-21K", "mambavision_L3_21k_740m_512.pth.tar"), input_size=(3, 512, 512), crop_pct=0.93, crop_mode="squash")),
}


def list_models(pattern: str = "*") -> list[str]:
    """Official variant names matching a shell-style pattern, e.g. list_models("*_21k")."""
    return [n for n in VARIANTS if fnmatch.fnmatch(n, pattern)]


def _lookup(name: str):
    if name not in VARIANTS:
        close = [n for n in VARIANTS if name.lower() in n.lower() or n.lower() in name.lower()]
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Known models: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def model_args(name: str) -> dict[str, Any]:
    """The architecture keyword arguments of a variant."""
    return dict(_lookup(name)[0])


def pretrained_cfg(name: str) -> PretrainedCfg:
    return _lookup(name)[1]


def create_model(name: str, *, num_classes: int = 1000, dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                 features_only: bool = False, out_indices=(0, 1, 2, 3), **overrides) -> MambaVision:
    """Build an official variant with the official init (no weights are downloaded here: use
    `load_torch_checkpoint` for converted weights).

    `overrides` replace architecture arguments (drop_path_rate, scan_impl, attn_impl, bn_groups, remat,
    in_chans, ...). With `features_only=True` the model returns the stage maps named by
    `out_indices` (see `mambavision_jax.models.features`).
    """
    kwargs = model_args(name)
    unknown = set(overrides) - _OVERRIDABLE
    if unknown:
        raise TypeError(f"create_model: unknown argument(s) {sorted(unknown)}; allowed: {sorted(_OVERRIDABLE)}")
    kwargs.update(overrides)
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    model = MambaVision(num_classes=num_classes, dtype=dtype, rngs=rngs, **kwargs)
    model.name, model.pretrained_cfg = name, pretrained_cfg(name)
    if features_only:
        from mambavision_jax.models.features import FeatureExtractor
        return FeatureExtractor(model, out_indices=out_indices)
    return model


_OVERRIDABLE = {"dim", "in_dim", "depths", "num_heads", "window_size", "mlp_ratio", "drop_path_rate",
                "in_chans", "layer_scale", "layer_scale_conv", "scan_impl", "attn_impl",
                "bn_groups", "remat"}
