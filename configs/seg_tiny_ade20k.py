"""UperNet + MambaVision-T on ADE20K, 512x512, the official recipe
(semantic_segmentation/configs/mamba_vision/mamba_vision_160k_ade20k-512x512_tiny.py): AdamW lr 5e-5,
wd 0.01 (none on norms), 1,500 warmup + poly to 160k iterations at batch 16 (16 GPUs x 1), AMP,
the backbone from the ImageNet-1K weights. Official mIoU 46.0 (single scale, whole mode).

python -m mambavision_jax.data.make_seg_dataset --ade ADEChallengeData2016 --name ade20k --data_dir D
python train.py --config configs/seg_tiny_ade20k.py --workdir runs/seg_tiny --config.data.dir=D
"""

from mambavision_jax.segmentation.train_config import segmentation_config


def get_config(arg=None):
    c = segmentation_config("tiny", lr=5e-5)
    c.init_from = "nvidia/MambaVision-T-1K"
    return c
