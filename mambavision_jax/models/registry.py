"""`create_model`: a MambaVision of an official variant (by name) or of any `MambaVisionConfig`,
with the official initialisation and no weights. The variants' tables (`list_models`,
`model_config`, `pretrained_cfg`, ...) live in `models.catalog` and are re-exported here. Weights
come from `mambavision_jax.weights` / `mambavision_jax.from_pretrained`, a layer above this one."""

from __future__ import annotations

from typing import Any

from flax import nnx

from mambavision_jax.models.catalog import (  # noqa: F401 - re-exported: they were defined here
    CONFIGS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRETRAINED_CFGS,
    VARIANTS,
    PretrainedCfg,
    list_models,
    model_args,
    model_config,
    pretrained_cfg,
    pretrained_cfg_for,
)
from mambavision_jax.models.config import MambaVisionConfig, RuntimeConfig, unknown_names_message
from mambavision_jax.models.mamba_vision import MambaVision

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
    """Build an official variant (by name) or any `MambaVisionConfig` with the official init and
    no weights (weights: `mambavision_jax.create_model(name, pretrained=True)`,
    `mambavision_jax.from_pretrained`, or `mambavision_jax.weights.load`).

    `overrides` replace fields of the architecture (`MambaVisionConfig`: num_classes, dim, depths,
    drop_path_rate, ...) or of `runtime` (`RuntimeConfig`: dtype, scan_impl, attn_impl,
    conv_impl, remat, bn_groups), e.g. `create_model("mamba_vision_T", num_classes=10,
    dtype=jnp.bfloat16)`. With `features_only=True` the model returns the stage maps named by
    `out_indices` (see `mambavision_jax.models.features`). `pretrained=True` is refused here (this
    layer downloads nothing): the package's top-level `mambavision_jax.create_model` takes it.
    """
    if pretrained:
        raise TypeError(
            "models.create_model builds a model without weights; for the official weights call "
            "mambavision_jax.create_model(name, pretrained=True) or mambavision_jax.from_pretrained(name)"
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
