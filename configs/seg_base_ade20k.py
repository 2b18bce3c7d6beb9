"""UperNet + MambaVision-B on ADE20K, 512x512, the official recipe
(mamba_vision_160k_ade20k-512x512_base.py): AdamW lr 5e-5, wd 0.01, batch 16 (16 GPUs x 1), AMP.
Official mIoU 49.1. See configs/seg_tiny_ade20k.py for the data set."""

from mambavision_jax.segmentation.train_config import segmentation_config


def get_config(arg=None):
    c = segmentation_config("base", lr=5e-5)
    c.init_from = "nvidia/MambaVision-B-1K"
    return c
