"""MambaVision-T on ImageNet-1K, the official recipe (mambavision/configs/mambavision_tiny_1k.yaml).

python train.py --config configs/tiny.py --workdir runs/tiny --config.data.dir=$TFDS_DATA_DIR
"""

from mambavision_jax.train.config import imagenet_config


def get_config(arg=None):
    return imagenet_config("mamba_vision_T", mesa=0.5, drop_path_rate=0.2)
