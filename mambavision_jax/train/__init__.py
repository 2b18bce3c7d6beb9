"""Training: optimizer, schedules, sharding, checkpoints, steps and the loop."""

from mambavision_jax.train.config import base_config, imagenet_config
from mambavision_jax.train.loop import NonFiniteLossError, train_and_evaluate

__all__ = ["NonFiniteLossError", "base_config", "imagenet_config", "train_and_evaluate"]
