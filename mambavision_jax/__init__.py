"""MambaVision in JAX / Flax NNX: faithful models, exact PyTorch converters, sharded training."""

from mambavision_jax import xla_cpu  # noqa: F401 - `mvj.xla_cpu.use_eigen_convolutions()`
from mambavision_jax.models import (
    FeatureExtractor,
    MambaVision,
    MambaVisionConfig,
    RuntimeConfig,
    create_model,
    list_models,
    model_config,
    pretrained_cfg,
)

__version__ = "0.1.0"


def __getattr__(name):
    # The converters import torch/safetensors lazily; keep `import mambavision_jax` light.
    if name in (
        "load_torch_checkpoint",
        "to_torch_state_dict",
        "save_torch_checkpoint",
        "load_state_dict",
        "from_torch_state_dict",
    ):
        from mambavision_jax import convert

        return getattr(convert, name)
    if name == "load_checkpoint":  # a training run's checkpoints, or any model checkpoint
        from mambavision_jax.inference import load_checkpoint

        return load_checkpoint
    if name == "from_pretrained":  # official weights from the Hugging Face hub, converted once
        from mambavision_jax.hub import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'mambavision_jax' has no attribute {name!r}")


__all__ = [
    "FeatureExtractor",
    "MambaVision",
    "MambaVisionConfig",
    "RuntimeConfig",
    "create_model",
    "list_models",
    "model_config",
    "pretrained_cfg",
    "load_torch_checkpoint",
    "to_torch_state_dict",
    "save_torch_checkpoint",
    "load_checkpoint",
    "from_pretrained",
]
