"""The 11 official variants (their `MambaVisionConfig` and pretrained cfg), `create_model` and
`list_models`."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any

from flax import nnx

from mambavision_jax.models.config import MambaVisionConfig, RuntimeConfig, unknown_names_message
from mambavision_jax.models.mamba_vision import MambaVision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        raise ValueError(f"unknown model {name!r}{hint} Known models: {', '.join(CONFIGS)}")


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


_ARCH_FIELDS = MambaVisionConfig.field_names()
_RUNTIME_FIELDS = RuntimeConfig.field_names()


def split_overrides(overrides: dict[str, Any], what: str = "create_model") -> tuple[dict, dict]:
    """({architecture field: value}, {runtime field: value}); an unknown name is a TypeError that
    lists the valid ones."""
    unknown = [k for k in overrides if k not in _ARCH_FIELDS and k not in _RUNTIME_FIELDS]
    if unknown:
        raise TypeError(unknown_names_message(what, unknown, [*_ARCH_FIELDS, *_RUNTIME_FIELDS], "argument"))
    arch = {k: v for k, v in overrides.items() if k in _ARCH_FIELDS}
    runtime = {k: v for k, v in overrides.items() if k in _RUNTIME_FIELDS}
    return arch, runtime


def create_model(
    name_or_config: str | MambaVisionConfig,
    *,
    pretrained: bool = False,
    rngs: nnx.Rngs | None = None,
    runtime: RuntimeConfig | None = None,
    features_only: bool = False,
    out_indices=(0, 1, 2, 3),
    **overrides,
) -> MambaVision:
    """Build an official variant (by name) or any `MambaVisionConfig` with the official init (no
    weights are downloaded here: use `load_torch_checkpoint` for converted weights).

    `overrides` replace fields of the architecture (`MambaVisionConfig`: num_classes, dim, depths,
    drop_path_rate, ...) or of `runtime` (`RuntimeConfig`: dtype, scan_impl, attn_impl,
    conv_impl, remat, bn_groups), e.g. `create_model("mamba_vision_T", num_classes=10,
    dtype=jnp.bfloat16)`. With `features_only=True` the model returns the stage maps named by
    `out_indices` (see `mambavision_jax.models.features`).

    `pretrained=True`: the official weights from the Hugging Face hub, downloaded and converted on
    first use, then cached (`mambavision_jax.hub.from_pretrained`; also takes revision=, token=,
    cache_dir=); `num_classes` other than 1000 gives a fresh head.
    """
    if pretrained:
        from mambavision_jax.hub import create_pretrained

        if runtime is not None:
            overrides["runtime"] = runtime
        return create_pretrained(
            name_or_config, rngs=rngs, features_only=features_only, out_indices=out_indices, **overrides
        )
    if isinstance(name_or_config, MambaVisionConfig):
        config = name_or_config
    elif isinstance(name_or_config, str):
        config = model_config(name_or_config)
    else:
        raise TypeError(
            f"create_model: expected a model name or a MambaVisionConfig, got {type(name_or_config).__name__}"
        )
    arch, run = split_overrides(overrides)
    config = config.replace(**arch) if arch else config
    runtime = runtime if runtime is not None else RuntimeConfig()
    runtime = runtime.replace(**run) if run else runtime
    model = MambaVision(config, runtime, rngs=rngs if rngs is not None else nnx.Rngs(0))
    if features_only:
        from mambavision_jax.models.features import FeatureExtractor

        return FeatureExtractor(model, out_indices=out_indices)
    return model
