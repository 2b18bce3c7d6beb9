"""MambaVision in JAX / Flax NNX: faithful models, exact PyTorch converters, sharded training."""

from mambavision_jax import xla_cpu  # noqa: F401 - `mvj.xla_cpu.use_eigen_convolutions()`
from mambavision_jax.models import (
    FeatureExtractor,
    MambaVision,
    MambaVisionConfig,
    RuntimeConfig,
    list_models,
    model_config,
    pretrained_cfg,
)
from mambavision_jax.models import create_model as _create_model
from mambavision_jax.version import __version__


def create_model(name_or_config, *, pretrained: bool = False, **kwargs):
    """`models.create_model` (an official variant by name, or any MambaVisionConfig, with the
    official init); `pretrained=True`: the official weights from the Hugging Face hub, downloaded
    and converted on first use, then cached (`hub.create_pretrained`; also takes revision=,
    token=, cache_dir=; `num_classes` other than the checkpoint's gives a fresh head)."""
    if pretrained:
        from mambavision_jax.hub import create_pretrained

        return create_pretrained(name_or_config, **kwargs)
    return _create_model(name_or_config, **kwargs)


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
    if name == "load_checkpoint":  # any weights: a training run, a file, a folder, a hub id
        from mambavision_jax.weights import load_checkpoint

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
    "__version__",
    "load_torch_checkpoint",
    "to_torch_state_dict",
    "save_torch_checkpoint",
    "load_checkpoint",
    "from_pretrained",
]
