"""The embedded segmentation demo: a small UperNet + MambaVision trained on `mv_seg_digits`
(scikit-learn's digits pasted on coloured backgrounds, a label per pixel: background or the
digit; built on first use, no network), with the official recipe's pipeline, loss, optimizer and
schedule at 64x64. The real UperNet (PPM, FPN, FCN auxiliary head) on the reduced MambaVision-T of
configs/demo.py, whose backbone starts from the classification demo's weights, as the official
recipe starts from ImageNet-1K weights (from scratch, --config.init_from=, it stays at the
all-background answer for ~800 steps):

python train.py --config configs/demo.py --workdir runs/demo          # the classification demo
python train.py --config configs/seg_demo.py --workdir runs/seg_demo  # init_from runs/demo
"""

from mambavision_jax.segmentation.train_config import segmentation_config


def get_config(arg=None):
    c = segmentation_config("tiny", lr=1e-3, weight_decay=0.01, batch_size=16, crop=64, dtype="float32")
    c.seed = 0
    c.model.overrides = dict(
        dim=32,
        in_dim=16,
        depths=(1, 1, 2, 2),
        num_heads=(2, 2, 4, 8),
        window_size=(8, 8, 4, 2),
        channels=64,
        aux_channels=32,
        test_scale=(256, 64),  # the 64x64 test images stay as they are
    )
    c.model.drop_path_rate = 0.0
    c.init_from = "runs/demo"  # the classification demo's run (its best checkpoint)
    c.data.name = "mv_seg_digits"
    c.data.dir = "runs/tfds"
    c.data.eval_split = "test"
    c.data.num_workers = 0
    c.data.num_threads = 2
    c.seg.warmup_steps = 50
    c.total_steps = 600
    c.bn_stats = "global"
    c.log_every_steps = 25
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 200
    return c
