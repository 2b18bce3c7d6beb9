"""The segmentation train / test transforms against mmseg 1.2.2's own transforms (the official
ADE20K pipeline), driven by the same numpy random state: pixel-identical images and labels."""

import importlib

import numpy as np
import pytest
from official_seg import _install_seg_shims

from mambavision_jax.data import seg_transforms as st

_install_seg_shims()  # mmcv-lite beside mmseg: a stub mmcv._ext (tests/official_seg.py)
mmseg_module = importlib.import_module

TRAIN_STEPS = [
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
]


def _mmseg_transforms(steps):
    mmseg_module("mmseg.datasets")  # registers mmseg's transforms
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS

    init_default_scope("mmseg")
    return [TRANSFORMS.build(dict(s)) for s in steps]


def _sample(rs, h, w, num_classes=6):
    """A textured image and a label map of blocks where one class dominates, so RandomCrop's
    cat_max_ratio re-draws happen."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), rs.randint(0, 256, (h, w))], -1).astype(np.uint8)
    label = np.zeros((h, w), np.uint8)
    for _ in range(4):
        y, x = rs.randint(0, h), rs.randint(0, w)
        label[y : y + h // 5, x : x + w // 4] = rs.randint(1, num_classes)
    label[rs.rand(h, w) < 0.02] = 255
    return img, label


@pytest.mark.parametrize("shape", [(375, 500), (211, 173), (600, 1300)])
def test_train_pipeline_matches_mmseg(shape):
    ref = _mmseg_transforms(TRAIN_STEPS)
    rs0 = np.random.RandomState(123)
    aug = st.SegAugConfig()
    flipped = 0
    for seed in range(6):
        img, label = _sample(rs0, *shape)
        np.random.seed(seed)
        results = {"img": img[..., ::-1].copy(), "gt_seg_map": label.copy(), "seg_fields": ["gt_seg_map"]}
        results["img_shape"] = results["ori_shape"] = shape
        for t in ref:
            results = t(results)
        rs = np.random.RandomState(seed)
        got = st.train_augment_seg(img, label, rs, aug)
        h, w = results["gt_seg_map"].shape
        np.testing.assert_array_equal(got["valid"], [h, w])
        np.testing.assert_array_equal(got["image"][:h, :w], results["img"][..., ::-1])
        np.testing.assert_array_equal(got["label"][:h, :w], results["gt_seg_map"])
        assert (got["label"][h:] == 255).all() and (got["label"][:, w:] == 255).all()
        assert np.random.random_sample() == rs.random_sample()  # the same number of draws
        flipped += bool(results["flip"])
    assert 0 < flipped < 6


def test_each_step_matches_mmseg():
    """Resize, crop, flip and photometric distortion one at a time, over many draws."""
    ref = dict(zip(("resize", "crop", "flip", "photo"), _mmseg_transforms(TRAIN_STEPS)))
    rs0 = np.random.RandomState(7)
    img, label = _sample(rs0, 333, 517)
    ours = {
        "resize": lambda i, l, rs: st.random_resize(i, l, rs, (2048, 512), (0.5, 2.0)),
        "crop": lambda i, l, rs: st.random_crop(i, l, rs, (128, 160), 0.75),
        "flip": lambda i, l, rs: st.random_flip(i, l, rs, 0.5),
        "photo": lambda i, l, rs: (st.photo_metric_distortion(i, rs), l),
    }
    ref["crop"] = _mmseg_transforms([dict(type="RandomCrop", crop_size=(128, 160), cat_max_ratio=0.75)])[0]
    for name, fn in ours.items():
        for seed in range(8):
            np.random.seed(seed)
            results = {"img": img[..., ::-1].copy(), "gt_seg_map": label.copy(), "seg_fields": ["gt_seg_map"]}
            results = ref[name](results)
            got_img, got_label = fn(img, label, np.random.RandomState(seed))
            np.testing.assert_array_equal(got_img, results["img"][..., ::-1], err_msg=f"{name} {seed}")
            np.testing.assert_array_equal(got_label, results["gt_seg_map"], err_msg=f"{name} {seed}")


def test_test_resize_and_padding_match_mmseg():
    torch = pytest.importorskip("torch")
    (resize,) = _mmseg_transforms([dict(type="Resize", scale=(2048, 512), keep_ratio=True)])
    rs = np.random.RandomState(0)
    for h, w in [(375, 500), (512, 3000), (97, 61)]:
        img, _ = _sample(rs, h, w)
        want = resize({"img": img[..., ::-1].copy()})["img"][..., ::-1]
        np.testing.assert_array_equal(st.eval_resize(img), want)
    # SegDataPreProcessor's padding of a normalised crop: 0 in the image, 255 in the labels
    stack_batch = mmseg_module("mmseg.utils").stack_batch
    SegDataSample = mmseg_module("mmseg.structures").SegDataSample
    PixelData = mmseg_module("mmengine.structures").PixelData
    img, label = _sample(rs, 100, 70)
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.from_numpy(label[None].astype(np.int64))))
    normed = (torch.from_numpy(img).permute(2, 0, 1).float() - 100.0) / 50.0
    inputs, samples = stack_batch([normed], [sample], size=(128, 96), pad_val=0, seg_pad_val=255)
    p_img, p_label, valid = st.pad_to(img, label, (128, 96))
    vh, vw = valid
    mask = (np.arange(128)[:, None] < vh) & (np.arange(96)[None] < vw)
    ours = (p_img.astype(np.float32) - 100.0) / 50.0 * mask[..., None]
    np.testing.assert_allclose(ours, inputs[0].permute(1, 2, 0).numpy(), rtol=0, atol=0)
    np.testing.assert_array_equal(p_label, samples[0].gt_sem_seg.data[0].numpy())
