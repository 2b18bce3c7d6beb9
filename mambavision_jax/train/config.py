"""The training config: every field with its default (the official ImageNet-1K recipe,
docs/architecture.md section 5), so config files only state what differs and an unknown field is an error.

Derived quantities (steps per epoch, warmup steps, total steps) are computed by the trainer from
the data set size and `batch_size`, never stored here, so `--config.batch_size=...` stays coherent.
"""

from __future__ import annotations

import ml_collections

# A segmenter's test modes (`segmentation.inference`): here, in the leaf every config file and CLI
# reads before JAX starts, so `seg.test_mode`, `--mode` and the inference code share one list.
SEG_TEST_MODES = ("whole", "slide")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 31

    c.model = ml_collections.ConfigDict()
    c.model.name = "mamba_vision_T"
    c.model.num_classes = -1  # -1: the data set's number of classes
    c.model.drop_path_rate = -1.0  # -1: the variant's own
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    c.model.scan_impl = "auto"
    c.model.remat = False  # recompute block activations in the backward (large variants)
    # Architecture overrides for experiments (e.g. the demo's small model): a dict of
    # create_model arguments (depths, dim, in_dim, num_heads, window_size, ...).
    c.model.overrides = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = "imagenet2012"  # any TFDS image classification data set
    c.data.dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir (None: TFDS default)
    c.data.train_split = "train"
    c.data.eval_split = ""  # "": validation, else test
    c.data.image_size = 224
    c.data.crop_pct = -1.0  # -1: the variant's pretrained cfg
    c.data.crop_mode = ""  # "": the variant's pretrained cfg
    # grain worker processes (0: threads in this process) and threads per process; -1 = from the
    # host's core count: cores - 1 workers (0 on <= 2 cores), 2 threads per worker (data.pipeline)
    c.data.num_workers = -1
    c.data.num_threads = -1
    c.data.device_prefetch = 2  # batches put on the devices ahead of the running step
    # timm create_transform(is_training=True) with the official arguments
    c.data.random_resized_crop = True
    c.data.scale = (0.08, 1.0)
    c.data.ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.data.interpolation = "random"
    c.data.hflip = 0.5
    c.data.auto_augment = "rand-m9-mstd0.5-inc1"  # "" for none
    c.data.re_prob = 0.25
    c.data.re_mode = "pixel"
    c.data.re_count = 1
    # Approximate JPEG decoding at 1/2..1/8 size when a crop is downscaled >= 2x (TrainAugConfig);
    # off: the exact path, pixel-identical to timm's transform (benchmarks/RESULTS.md)
    c.data.fast_decode = False
    # "cv2": the crop's resize and RandAugment's geometric ops / Sharpness with OpenCV (approximate,
    # ~1.7x less CPU per image; statistics in benchmarks/RESULTS.md), its table-lookup ops on arrays
    # (exact); "pil": the exact path, pixel-identical to timm's transform (TrainAugConfig.resampler)
    c.data.resampler = "cv2"

    c.batch_size = 4096  # global, over all hosts and devices
    c.eval_batch_size = -1  # -1: batch_size
    c.total_epochs = 310  # the cosine length; training adds schedule.cooldown_epochs
    c.total_steps = -1  # > 0: train exactly this many steps instead

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "lamb"
    c.optimizer.lr = 5e-3  # not scaled with the batch size (official)
    c.optimizer.weight_decay = 0.05
    c.optimizer.betas = (0.9, 0.999)
    c.optimizer.eps = 1e-8
    c.optimizer.clip_grad = 5.0  # global-norm clip before the optimizer; None: off
    c.optimizer.max_grad_norm = 1.0  # LAMB's own global clip (timm)

    c.schedule = ml_collections.ConfigDict()
    c.schedule.warmup_epochs = 20
    c.schedule.warmup_lr = 1e-6
    c.schedule.min_lr = 5e-6
    c.schedule.cooldown_epochs = 10

    c.mixup = ml_collections.ConfigDict()
    c.mixup.mixup_alpha = 0.8
    c.mixup.cutmix_alpha = 1.0
    c.mixup.prob = 1.0
    c.mixup.switch_prob = 0.5
    c.mixup.label_smoothing = 0.1

    c.ema = ml_collections.ConfigDict()
    c.ema.enabled = True
    c.ema.decay = 0.9998

    c.mesa = ml_collections.ConfigDict()
    c.mesa.weight = 0.5  # 0 disables; loss += weight * 50 * KL(ema/3 || model/3)
    c.mesa.start_ratio = 0.25

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by fsdp
    c.mesh.fsdp = 1
    c.mesh.min_size_to_shard_mb = 1.0
    c.bn_stats = "global"  # global (sync BN under jit) | per_device (official DDP)

    c.log_every_steps = 50
    c.eval_every_steps = -1  # -1: once per epoch
    c.checkpoint_every_steps = -1  # -1: once per epoch
    c.keep_checkpoints = 3
    c.init_from = ""  # a converted / PyTorch / orbax checkpoint to fine-tune from
    c.init_from_ema = False
    # Resuming a workdir whose stored config differs in a guarded field (model, classes, batch,
    # data, seed, augmentation, schedule, ...: train/workdir.py MAY_CHANGE lists the others) is
    # refused; name the fields allowed to change here, comma-separated ("batch_size,optimizer.lr").
    c.resume_changes = ""
    return c


def imagenet_config(
    name: str,
    *,
    lr: float = 5e-3,
    weight_decay: float = 0.05,
    warmup_epochs: int = 20,
    mesa: float,
    mesa_start_ratio: float = 0.25,
    drop_path_rate: float | None = None,
) -> ml_collections.ConfigDict:
    """The official ImageNet-1K recipe for one variant (mambavision/configs/*.yaml)."""
    c = base_config()
    c.model.name = name
    if drop_path_rate is not None:
        c.model.drop_path_rate = drop_path_rate
    c.optimizer.lr = lr
    c.optimizer.weight_decay = weight_decay
    c.schedule.warmup_epochs = warmup_epochs
    c.mesa.weight = mesa
    c.mesa.start_ratio = mesa_start_ratio
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Catch bad values early, with the field named."""

    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"config.{field}: {msg}")

    need(c.batch_size > 0, "batch_size", f"must be > 0, got {c.batch_size}")
    need(c.total_epochs > 0 or c.total_steps > 0, "total_epochs", "set total_epochs or total_steps > 0")
    need(
        c.model.dtype in ("float32", "bfloat16"), "model.dtype", f"float32 or bfloat16, got {c.model.dtype!r}"
    )
    need(c.bn_stats in ("global", "per_device"), "bn_stats", f"global or per_device, got {c.bn_stats!r}")
    need(c.optimizer.name in ("lamb", "adamw"), "optimizer.name", f"lamb or adamw, got {c.optimizer.name!r}")
    need(0.0 <= c.ema.decay < 1.0, "ema.decay", f"must be in [0, 1), got {c.ema.decay}")
    need(c.mesa.weight == 0 or c.ema.enabled, "mesa.weight", "mesa needs the EMA teacher (ema.enabled)")
    need(c.optimizer.lr > 0, "optimizer.lr", f"must be > 0, got {c.optimizer.lr}")
    need(c.log_every_steps > 0, "log_every_steps", f"must be > 0, got {c.log_every_steps}")
    need(c.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {c.keep_checkpoints}")
    need(
        c.eval_batch_size == -1 or c.eval_batch_size > 0,
        "eval_batch_size",
        f"must be > 0 (or -1: batch_size), got {c.eval_batch_size}",
    )
    need(
        c.data.image_size >= 32,
        "data.image_size",
        f"must be >= 32 (the model downsamples 32x), got {c.data.image_size}",
    )
    need(c.data.num_workers >= -1, "data.num_workers", f"must be >= 0 or -1 (auto), got {c.data.num_workers}")
    need(
        c.data.num_threads >= 1 or c.data.num_threads == -1,
        "data.num_threads",
        f"must be >= 1 or -1 (auto), got {c.data.num_threads}",
    )
    need(c.data.device_prefetch >= 1, "data.device_prefetch", f"must be >= 1, got {c.data.device_prefetch}")
    need(
        c.data.re_mode in ("pixel", "rand", "const"),
        "data.re_mode",
        f"pixel, rand or const, got {c.data.re_mode!r}",
    )
    need(
        c.data.resampler in ("cv2", "pil"),
        "data.resampler",
        f"cv2 (fast, approximate) or pil (exact, timm's pixels), got {c.data.resampler!r}",
    )
    need(0.0 <= c.data.re_prob <= 1.0, "data.re_prob", f"must be in [0, 1], got {c.data.re_prob}")
    need(0.0 <= c.mixup.prob <= 1.0, "mixup.prob", f"must be in [0, 1], got {c.mixup.prob}")
    need(
        0.0 <= c.mixup.label_smoothing < 1.0,
        "mixup.label_smoothing",
        f"must be in [0, 1), got {c.mixup.label_smoothing}",
    )
    need(
        c.schedule.warmup_epochs >= 0,
        "schedule.warmup_epochs",
        f"must be >= 0, got {c.schedule.warmup_epochs}",
    )
    need(c.mesh.fsdp >= 1, "mesh.fsdp", f"must be >= 1, got {c.mesh.fsdp}")
    if "seg" in c:  # a segmentation config (segmentation.train_config)
        need(
            c.seg.test_mode in SEG_TEST_MODES,
            "seg.test_mode",
            f"one of {', '.join(SEG_TEST_MODES)}, got {c.seg.test_mode!r}",
        )
