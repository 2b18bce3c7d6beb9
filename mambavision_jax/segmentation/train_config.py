"""Training configs of the segmenters (`config.task = "segmentation"`, run by
`segmentation.train_task` on the shared loop): the official mmseg recipe of
semantic_segmentation/configs/mamba_vision/*.py in NVlabs/MambaVision. Only ml_collections is
imported here: config files are read before JAX starts."""

from __future__ import annotations

import ml_collections

from mambavision_jax.train.config import base_config


def seg_fields() -> ml_collections.ConfigDict:
    """`config.seg`: the train pipeline, loss and schedule of the official 512x512 ADE20K recipe."""
    s = ml_collections.ConfigDict()
    # mmseg's train pipeline (data.seg_transforms.SegAugConfig)
    s.scale = (2048, 512)  # RandomResize's (w, h) before the ratio; the test Resize is the model's test_scale
    s.ratio_range = (0.5, 2.0)
    s.crop_size = (512, 512)
    s.cat_max_ratio = 0.75
    s.flip_prob = 0.5
    s.photometric = True  # PhotoMetricDistortion with its defaults
    s.aux_weight = 0.4  # FCNHead's loss_weight
    # mmengine LinearLR(start_factor=warmup_factor, end=warmup_steps) + PolyLR(power, eta_min=min_lr)
    s.warmup_steps = 1500
    s.warmup_factor = 1e-6
    s.poly_power = 1.0
    s.min_lr = 0.0
    s.no_decay_keys = ("norm",)  # paramwise_cfg custom_keys with decay_mult 0
    s.eval_max_images = 0  # > 0: evaluate on the first N images only (a quick look at a big set)
    s.test_mode = "whole"  # the official test_cfg; "slide": crops of the model's crop_size every stride
    return s


def segmentation_config(
    model: str,
    *,
    lr: float,
    weight_decay: float = 0.01,
    batch_size: int = 16,
    crop: int = 512,
    dtype: str = "bfloat16",
) -> ml_collections.ConfigDict:
    """The official ADE20K recipe for one segmenter (160k iterations at `batch_size`, AdamW, AMP
    as bfloat16 compute), on the data set `ade20k` built by `make_seg_dataset --ade`."""
    c = base_config()
    c.task = "segmentation"
    c.model.name = model  # a segmenter: tiny, small, base, l3 (segmentation.list_segmenters())
    c.model.dtype = dtype
    c.data.name = "ade20k"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = crop
    c.seg = seg_fields()
    c.seg.crop_size = (crop, crop)
    c.seg.scale = (4 * crop, crop)
    c.batch_size = batch_size
    c.eval_batch_size = batch_size  # unused: whole-mode evaluation runs one image at a time
    c.total_steps = 160_000
    c.optimizer.name = "adamw"
    c.optimizer.lr = lr
    c.optimizer.weight_decay = weight_decay
    c.optimizer.betas = (0.9, 0.999)
    c.optimizer.eps = 1e-8
    c.optimizer.clip_grad = None
    c.ema.enabled = False
    c.mesa.weight = 0.0
    c.mixup.prob = 0.0
    c.bn_stats = "per_device"  # the backbone's plain BatchNorm per GPU; the heads' SyncBN is global
    c.log_every_steps = 50
    c.eval_every_steps = 10_000  # val_interval
    c.checkpoint_every_steps = 10_000
    return c
