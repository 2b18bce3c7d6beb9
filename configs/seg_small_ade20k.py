"""UperNet + MambaVision-S on ADE20K, 512x512, the official recipe
(mamba_vision_160k_ade20k-512x512_small.py): AdamW lr 6e-5, wd 0.01, batch 16 (8 GPUs x 2), AMP.
Official mIoU 48.2. See configs/seg_tiny_ade20k.py for the data set."""

from mambavision_jax.segmentation.train_config import segmentation_config


def get_config(arg=None):
    c = segmentation_config("small", lr=6e-5)
    c.init_from = "nvidia/MambaVision-S-1K"
    return c
