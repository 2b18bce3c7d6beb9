"""The embedded default: a small MambaVision trained on scikit-learn's handwritten digits.

No network and no download: the digits ship inside scikit-learn and are packaged as the TFDS data
set `mv_digits` on first use. A reduced MambaVision-T (same blocks: conv stages, Mamba mixers and
windowed attention, fewer and narrower) trains in a few minutes on 2 CPU cores.

python train.py --config configs/demo.py --workdir runs/demo
"""

from mambavision_jax.train.config import base_config


def get_config(arg=None):
    c = base_config()
    c.seed = 0
    c.model.name = "mamba_vision_T"
    c.model.overrides = dict(
        dim=32, in_dim=16, depths=(1, 1, 2, 2), num_heads=(2, 2, 4, 8), window_size=(8, 8, 4, 2)
    )
    c.model.drop_path_rate = 0.0

    c.data.name = "mv_digits"
    c.data.dir = "runs/tfds"
    c.data.eval_split = "test"
    c.data.image_size = 64
    c.data.crop_pct = 1.0
    c.data.crop_mode = "center"
    c.data.scale = (0.6, 1.0)  # digits must stay legible
    c.data.ratio = (0.8, 1.25)
    c.data.hflip = 0.0  # a mirrored 2 is not a 2
    c.data.auto_augment = ""
    c.data.re_prob = 0.0
    c.data.num_workers = 0  # 8x8 digits: worker processes would cost more than they save
    c.data.num_threads = 2

    c.batch_size = 64
    c.total_epochs = 12
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 0.05
    c.schedule.warmup_epochs = 1
    c.schedule.warmup_lr = 1e-5
    c.schedule.min_lr = 1e-5
    c.schedule.cooldown_epochs = 0
    c.mixup.prob = 0.0  # label smoothing only
    c.ema.decay = 0.9  # a short run: average over the last ~10 steps
    c.mesa.weight = 0.0

    c.log_every_steps = 20
    return c
