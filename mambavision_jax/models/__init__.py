from mambavision_jax.models.config import ConfigError, MambaVisionConfig, RuntimeConfig
from mambavision_jax.models.features import FeatureExtractor
from mambavision_jax.models.mamba_vision import MambaVision
from mambavision_jax.models.registry import (
    VARIANTS,
    PretrainedCfg,
    create_model,
    list_models,
    model_args,
    model_config,
    pretrained_cfg,
)

__all__ = [
    "VARIANTS",
    "ConfigError",
    "FeatureExtractor",
    "MambaVision",
    "MambaVisionConfig",
    "PretrainedCfg",
    "RuntimeConfig",
    "create_model",
    "list_models",
    "model_args",
    "model_config",
    "pretrained_cfg",
]
