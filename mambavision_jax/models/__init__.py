from mambavision_jax.models.features import FeatureExtractor
from mambavision_jax.models.mamba_vision import MambaVision
from mambavision_jax.models.registry import (VARIANTS, PretrainedCfg, create_model, list_models,
                                             model_args, pretrained_cfg)

__all__ = ["FeatureExtractor", "MambaVision", "PretrainedCfg", "VARIANTS", "create_model",
           "list_models", "model_args", "pretrained_cfg"]
