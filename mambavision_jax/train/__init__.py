"""Training: optimizer, schedules, sharding, checkpoints, steps and the loop.

The names below are imported on first use, so that reading a training run's checkpoints
(`train.checkpoint`, used by `mambavision_jax.weights`) does not import the training loop.
"""

_EXPORTS = {
    "NonFiniteLossError": "mambavision_jax.train.loop",
    "train_and_evaluate": "mambavision_jax.train.loop",
    "base_config": "mambavision_jax.train.config",
    "imagenet_config": "mambavision_jax.train.config",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mambavision_jax.train' has no attribute {name!r}")


__all__ = ["NonFiniteLossError", "base_config", "imagenet_config", "train_and_evaluate"]
