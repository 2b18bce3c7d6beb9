"""MambaVision-B on ImageNet-1K, the official recipe (35 warmup epochs, wd 0.075, mesa from 30%)."""

from mambavision_jax.train.config import imagenet_config


def get_config(arg=None):
    return imagenet_config(
        "mamba_vision_B",
        weight_decay=0.075,
        warmup_epochs=35,
        mesa=1.0,
        mesa_start_ratio=0.3,
        drop_path_rate=0.3,
    )
