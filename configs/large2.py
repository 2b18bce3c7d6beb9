"""MambaVision-L2 on ImageNet-1K, the official recipe (wd 0.12, mesa 6.0); remat to fit memory."""

from mambavision_jax.train.config import imagenet_config


def get_config(arg=None):
    c = imagenet_config("mamba_vision_L2", weight_decay=0.12, mesa=6.0, drop_path_rate=0.3)
    c.model.remat = True
    return c
