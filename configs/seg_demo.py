"""The embedded segmentation demo: a small UperNet + MambaVision trained on `mv_seg_digits`
(scikit-learn's digits pasted on coloured backgrounds, a label per pixel: background or the
digit; built on first use, no network), with the official recipe's pipeline, loss, optimizer and
schedule at 64x64: the real UperNet (PPM, FPN, FCN auxiliary head) on the reduced MambaVision-T of
configs/demo.py, from scratch.

python train.py --config configs/seg_demo.py --workdir runs/seg_demo

The official pipeline with three demo choices: no flips (a mirrored 2 is not a 2), no photometric
distortion and a milder rescale (0.75-1.33 instead of 0.5-2.0), so the digits stay legible in the
64x64 crops; batch 32 at lr 2e-3 (a from-scratch model; the official 5e-5 fine-tunes ImageNet weights).
The model learns where the digits are in the first few hundred steps and which digit they are only
after that: see benchmarks/RESULTS.md (the demo's mIoU curve) for what it reaches and how fast.
"""

from mambavision_jax.segmentation.train_config import segmentation_config


def get_config(arg=None):
    c = segmentation_config("tiny", lr=2e-3, weight_decay=0.01, batch_size=32, crop=64, dtype="float32")
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
    c.data.name = "mv_seg_digits"
    c.data.dir = "runs/tfds"
    c.data.eval_split = "test"
    c.data.num_workers = 0
    c.data.num_threads = 2
    c.seg.flip_prob = 0.0
    c.seg.photometric = False
    c.seg.ratio_range = (0.75, 1.33)
    c.seg.warmup_steps = 50
    c.total_steps = 1200
    c.bn_stats = "global"
    c.log_every_steps = 25
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    return c
