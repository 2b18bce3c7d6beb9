"""UperNet + MambaVision-L3 (ImageNet-21K, 512) on ADE20K, 640x640, the official recipe
(mamba_vision_160k_ade20k-640x640_l3_21k.py): AdamW lr 8e-5, wd 0.05, batch 16 (16 GPUs x 1),
no AMP (float32: the official disables it for L3), val every 5,000 iterations. Official mIoU 53.2.
See configs/seg_tiny_ade20k.py for the data set."""

from mambavision_jax.segmentation.train_config import segmentation_config


def get_config(arg=None):
    c = segmentation_config("l3", lr=8e-5, weight_decay=0.05, crop=640, dtype="float32")
    c.init_from = "nvidia/MambaVision-L3-512-21K"
    c.eval_every_steps = 5_000
    c.model.remat = True
    return c
