"""MambaVision-T2 on ImageNet-1K, the official recipe."""

from mambavision_jax.train.config import imagenet_config


def get_config(arg=None):
    return imagenet_config("mamba_vision_T2", mesa=0.75, drop_path_rate=0.2)
