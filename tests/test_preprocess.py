"""Eval preprocessing and training augmentation against timm (the official pipeline's library)."""

from __future__ import annotations

import io
import random
import sys
import types

import numpy as np
import pytest
from PIL import Image

from mambavision_jax.data import rand_augment as ra
from mambavision_jax.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    TrainAugConfig,
    eval_transform,
    random_erasing,
    random_resized_crop_params,
    train_transform,
)


def _timm():
    # The PyPI torchvision is a CUDA build whose fake-op registrations fail beside the CPU torch.
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    import timm.data

    return timm.data


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 RGB image: smooth gradients, hard edges and noise (so every resampling
    filter tap matters)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
    img[h // 4 : h // 2, w // 3 : w // 2] = (250, 20, 60)
    img += r.normal(0, 25, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encoded(arr: np.ndarray, fmt: str) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    img = Image.open(io.BytesIO(buf.getvalue()))
    img.load()
    return img


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("size_wh", [(333, 250), (250, 333)])
def test_eval_transform_matches_timm(fmt, size_wh):
    timm_data = _timm()
    img = _encoded(_photo(*size_wh), fmt)
    for crop_mode in ("center", "squash"):
        for crop_pct in (0.875, 1.0, 0.93):
            cfg = timm_data.resolve_data_config(
                {
                    "input_size": (3, 224, 224),
                    "crop_pct": crop_pct,
                    "crop_mode": crop_mode,
                    "interpolation": "bicubic",
                    "mean": IMAGENET_DEFAULT_MEAN,
                    "std": IMAGENET_DEFAULT_STD,
                }
            )
            assert cfg["crop_pct"] == crop_pct and cfg["crop_mode"] == crop_mode
            ref = timm_data.create_transform(**cfg, is_training=False)(img).numpy().transpose(1, 2, 0)
            ours = eval_transform(img, 224, crop_pct, crop_mode)
            assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
            # Same PIL resize and crop, same float32 ops: expect bit equality. 1e-6 is far below
            # one uint8 level (1 / 255 / 0.229 = 0.017), so any pixel difference would fail.
            np.testing.assert_allclose(
                ours, ref, rtol=0, atol=1e-6, err_msg=f"{fmt} {size_wh} {crop_mode} {crop_pct}"
            )


def test_eval_transform_accepts_arrays_and_bytes():
    arr = _photo(120, 90)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    a = eval_transform(arr, 64, 0.875, "center")
    np.testing.assert_array_equal(a, eval_transform(Image.fromarray(arr), 64, 0.875, "center"))
    np.testing.assert_array_equal(a, eval_transform(buf.getvalue(), 64, 0.875, "center"))
    grey = eval_transform(arr[..., 0], 64, 1.0, "squash")
    np.testing.assert_allclose(grey[..., 0] * 0.229 + 0.485, grey[..., 1] * 0.224 + 0.456, atol=1e-6)


def _all_ops():
    return sorted(set(ra.RAND_TRANSFORMS) | set(ra.RAND_INCREASING_TRANSFORMS))


@pytest.mark.parametrize("name", _all_ops())
def test_rand_augment_ops_match_timm(name, monkeypatch):
    """Every op of both RandAugment sets equals timm's function at the same magnitude and sign."""
    _timm()
    from timm.data import auto_augment as taa

    img = _encoded(_photo(61, 47, seed=3), "PNG")
    fill = tuple(min(255, round(255 * m)) for m in IMAGENET_DEFAULT_MEAN)
    hparams = {"translate_const": 100, "img_mean": fill}
    resamples = (
        (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
        if name in ra._GEOMETRIC
        else (Image.Resampling.BICUBIC,)
    )
    for magnitude in (0.0, 3.7, 9.0, 10.0):
        if name.startswith("Posterize") and ra.op_args(name, magnitude)[0] <= 0:
            continue  # 0 bits: Pillow 13 raises inside timm; tested below
        for negate in (False, True) if name in ra.SIGNED_OPS else (False,):
            # timm negates when random.random() > 0.5
            monkeypatch.setattr(random, "random", lambda: 1.0 if negate else 0.0)  # noqa: B023 - used in this iteration
            args = taa.LEVEL_TO_ARG[name](magnitude, hparams) if taa.LEVEL_TO_ARG[name] else ()
            monkeypatch.undo()
            assert args == ra.op_args(name, magnitude, negate, hparams)
            for resample in resamples:
                ref = taa.NAME_TO_OP[name](img, *args, fillcolor=fill, resample=resample)
                ours = ra.apply_op(
                    img, name, magnitude, negate=negate, resample=resample, fill=fill, hparams=hparams
                )
                np.testing.assert_array_equal(
                    np.asarray(ours), np.asarray(ref), err_msg=f"{name} m={magnitude} neg={negate}"
                )


def test_posterize_zero_bits_is_black():
    img = Image.fromarray(_photo(20, 10))
    out = ra.apply_op(img, "PosterizeIncreasing", 10.0)
    assert out.size == img.size and out.mode == "RGB" and not np.asarray(out).any()


def test_rand_augment_config_parsing():
    t = ra.rand_augment_transform("rand-m9-mstd0.5-inc1")
    assert (t.ops, t.num_layers, t.magnitude, t.magnitude_std, t.prob) == (
        ra.RAND_INCREASING_TRANSFORMS,
        2,
        9.0,
        0.5,
        0.5,
    )
    t = ra.rand_augment_transform("rand-m7-n3-mstd101-p0.7")
    assert (t.ops, t.num_layers, t.magnitude, t.magnitude_std, t.prob) == (
        ra.RAND_TRANSFORMS,
        3,
        7.0,
        float("inf"),
        0.7,
    )


def test_rand_augment_outputs_valid_images():
    t = ra.rand_augment_transform("rand-m9-mstd0.5-inc1", fill=(124, 116, 104), translate_const=100)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(40):
        w, h = int(rng.integers(16, 90)), int(rng.integers(16, 90))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out = t(img, rng)
        arr = np.asarray(out)
        assert out.mode == "RGB" and out.size == (w, h) and arr.dtype == np.uint8
        changed += not np.array_equal(arr, np.asarray(img))
    assert changed > 20  # two ops at p=0.5 each: ~75% of images change
    # Magnitude noise can clip to 10; every op must survive it.
    hard = ra.RandAugment(ops=ra.RAND_INCREASING_TRANSFORMS, num_layers=15, magnitude=10.0, prob=1.0)
    assert np.asarray(hard(Image.fromarray(_photo(40, 30)), rng)).shape == (30, 40, 3)


def test_random_erasing_pixel_mode():
    rng = np.random.default_rng(0)
    x = np.zeros((224, 224, 3), np.float32)
    assert not random_erasing(x.copy(), rng, prob=0.0).any()
    fractions, values = [], []
    for _ in range(30):
        out = random_erasing(np.zeros((224, 224, 3), np.float32), rng, prob=1.0, mode="pixel")
        box = np.abs(out).sum(-1) > 0
        rows, cols = np.where(box.any(1))[0], np.where(box.any(0))[0]
        # one filled axis-aligned rectangle
        assert (
            box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all() and box.sum() == rows.size * cols.size
        )
        fractions.append(box.mean())
        values.append(out[box])
    # area fraction in [0.02, 1/3] up to rounding of the box sides
    assert 0.015 < min(fractions) and max(fractions) < 0.35
    v = np.concatenate(values)
    assert abs(v.mean()) < 0.02 and abs(v.std() - 1.0) < 0.02  # per-pixel N(0, 1) noise


def test_random_erasing_rand_and_const_modes():
    rng = np.random.default_rng(1)
    out = random_erasing(np.full((64, 64, 3), 5.0, np.float32), rng, prob=1.0, mode="rand")
    box = out[..., 0] != 5.0
    assert box.any() and all(np.unique(out[box][:, c]).size == 1 for c in range(3))
    out = random_erasing(np.full((64, 64, 3), 5.0, np.float32), rng, prob=1.0, mode="const")
    assert (out == 0).any() and set(np.unique(out)) == {0.0, 5.0}


def test_random_resized_crop_params_in_bounds():
    rng = np.random.default_rng(0)
    for _ in range(300):
        w, h = int(rng.integers(8, 400)), int(rng.integers(8, 400))
        top, left, ch, cw = random_resized_crop_params(w, h, rng)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0


def test_random_resized_crop_equals_torchvision_resized_crop():
    _timm()
    import torchvision.transforms.functional as F

    img = _encoded(_photo(333, 250), "JPEG")
    seed = 5
    top, left, h, w = random_resized_crop_params(333, 250, np.random.default_rng(seed))
    from mambavision_jax.data.transforms import random_resized_crop

    ours = random_resized_crop(img, np.random.default_rng(seed), 96, interpolation="bicubic")
    ref = F.resized_crop(img, top, left, h, w, [96, 96], F.InterpolationMode.BICUBIC)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_train_transform_deterministic_and_shapes():
    img = _encoded(_photo(333, 250), "JPEG")
    a = train_transform(img, np.random.default_rng(7), 96)
    b = train_transform(img, np.random.default_rng(7), 96)
    c = train_transform(img, np.random.default_rng(8), 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # every augmentation off = timm's no-aug path = eval transform with crop_pct 1.0
    plain = train_transform(img, np.random.default_rng(0), 96, TrainAugConfig.none())
    np.testing.assert_array_equal(plain, eval_transform(img, 96, 1.0, "center"))


class _ReplayRandom:
    """Python `random`'s API over a numpy Generator: timm's code then makes our draws."""

    def __init__(self, rng):
        self.rng = rng

    def random(self):
        return self.rng.random()

    def uniform(self, a, b):
        return self.rng.uniform(a, b)

    def randint(self, a, b):  # inclusive, as random.randint
        return int(self.rng.integers(a, b + 1))


@pytest.mark.parametrize("count", [1, 3])
def test_erasing_boxes_equal_timm_random_erasing(monkeypatch, count):
    _timm()
    import torch
    from timm.data import random_erasing as timm_re

    from mambavision_jax.data.transforms import erasing_boxes

    re = timm_re.RandomErasing(probability=0.6, mode="const", max_count=count, device="cpu")
    erased = 0
    for seed in range(40):
        h, w = (224, 224) if seed % 2 else (96, 160)
        monkeypatch.setattr(timm_re, "random", _ReplayRandom(np.random.default_rng(seed)))
        ref = re(torch.ones(3, h, w)).numpy()[0] == 0  # const mode: the boxes are the zeros
        boxes = erasing_boxes(np.random.default_rng(seed), h, w, 0.6, min_count=1, max_count=count)
        assert boxes.shape == (count, 4) and boxes.dtype == np.int32
        ours = np.zeros((h, w), bool)
        for top, left, bh, bw in boxes:
            ours[top : top + bh, left : left + bw] = True
        np.testing.assert_array_equal(ours, ref)
        erased += ours.any()
    assert 15 < erased < 35  # probability 0.6


def test_erase_on_device_fills_the_boxes():
    import jax

    from mambavision_jax.data.device_ops import erase_key, erase_on_device

    x = np.full((6, 64, 48, 3), 5.0, np.float32)
    boxes = np.zeros((6, 2, 4), np.int32)
    boxes[0, 0] = (10, 4, 30, 20)
    boxes[1] = [(0, 0, 8, 8), (4, 4, 8, 8)]  # overlapping: filled in order
    boxes[3, 1] = (50, 40, 14, 8)  # touches the bottom right corner
    key = erase_key(3, 17)
    out = np.asarray(erase_on_device(key, x, boxes, "pixel"))
    inside = np.zeros(x.shape[:3], bool)
    inside[0, 10:40, 4:24] = inside[1, 0:12, 0:12] = True
    inside[1, 8:12, 0:4] = inside[1, 0:4, 8:12] = False  # the union of the two 8x8 boxes
    inside[3, 50:64, 40:48] = True
    assert (out[~inside] == 5.0).all()
    v = out[inside]
    assert not (v == 5.0).any() and abs(v.mean()) < 0.1 and abs(v.std() - 1) < 0.1
    np.testing.assert_array_equal(out, np.asarray(erase_on_device(key, x, boxes, "pixel")))
    assert not np.array_equal(out, np.asarray(erase_on_device(erase_key(3, 18), x, boxes, "pixel")))
    # an example's fill depends on its index and the key, not on the rest of the batch
    np.testing.assert_array_equal(out[:2], np.asarray(erase_on_device(key, x[:2], boxes[:2], "pixel")))
    rand = np.asarray(erase_on_device(key, x, boxes, "rand"))
    assert all(np.unique(rand[0, 10:40, 4:24, c]).size == 1 for c in range(3))
    assert (rand[~inside] == 5.0).all() and not (rand[inside] == 5.0).any()
    const = np.asarray(erase_on_device(key, x, boxes, "const"))
    assert (const[inside] == 0).all() and (const[~inside] == 5.0).all()
    with pytest.raises(ValueError, match="erasing mode"):
        erase_on_device(key, x, boxes, "noise")
    assert jax.jit(erase_on_device, static_argnames="mode")(key, x, boxes, mode="pixel").shape == x.shape


def test_erase_on_device_statistics_match_timm_pixel_mode():
    """Over many draws: erased fraction and fill statistics as timm's RandomErasing(p=0.25, pixel)."""
    from mambavision_jax.data.device_ops import erase_key, erase_on_device
    from mambavision_jax.data.transforms import erasing_boxes

    rng = np.random.default_rng(0)
    boxes = np.stack([erasing_boxes(rng, 64, 64, 0.25) for _ in range(512)])
    out = np.asarray(erase_on_device(erase_key(0, 0), np.zeros((512, 64, 64, 3), np.float32), boxes))
    erased = (out != 0).any(-1)
    per_image = erased.mean((1, 2))
    assert 0.19 < (per_image > 0).mean() < 0.31  # probability 0.25
    hit = per_image[per_image > 0]
    # area fraction ~ U(0.02, 1/3): mean ~0.177 (box sides are rounded)
    assert 0.015 < hit.min() and hit.max() < 0.36 and abs(hit.mean() - 0.177) < 0.03
    v = out[erased]
    assert abs(v.mean()) < 0.01 and abs(v.std() - 1.0) < 0.01


@pytest.mark.parametrize("resampler", ["pil", "cv2"])
def test_train_augment_is_train_transform_before_normalisation(resampler):
    from mambavision_jax.data.transforms import normalize, train_augment

    img = _encoded(_photo(333, 250), "JPEG")
    for seed in range(6):
        aug = TrainAugConfig(re_prob=0.0, resampler=resampler)
        u = train_augment(img, np.random.default_rng(seed), 96, aug)
        assert u.dtype == np.uint8 and u.shape == (96, 96, 3)
        np.testing.assert_array_equal(
            normalize(u), train_transform(img, np.random.default_rng(seed), 96, aug)
        )


@pytest.mark.parametrize("size_wh", [(333, 250), (250, 333)])
def test_eval_crop_uint8_matches_timm_prefetcher_transform(size_wh):
    """The uint8 eval path equals timm's eval transform with use_prefetcher=True (uint8 out)."""
    timm_data = _timm()
    from mambavision_jax.data.transforms import eval_crop_uint8

    img = _encoded(_photo(*size_wh), "JPEG")
    for crop_mode, crop_pct in (("center", 0.875), ("squash", 0.93)):
        t = timm_data.create_transform(
            input_size=(3, 224, 224),
            crop_pct=crop_pct,
            crop_mode=crop_mode,
            interpolation="bicubic",
            is_training=False,
            use_prefetcher=True,
        )
        ref = np.asarray(t(img))
        ref = ref.transpose(1, 2, 0) if ref.shape[0] == 3 else ref
        ours = eval_crop_uint8(img, 224, crop_pct, crop_mode)
        assert ours.dtype == np.uint8 and ref.dtype == np.uint8
        np.testing.assert_array_equal(ours, ref)


def _jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("resampler", ["pil", "cv2"])
def test_fast_decode_is_exact_unless_the_crop_shrinks_2x(resampler):
    from mambavision_jax.data.transforms import train_augment

    full = TrainAugConfig(resampler=resampler)
    draft = TrainAugConfig(fast_decode=True, resampler=resampler)
    data = _jpeg_bytes(_photo(333, 250))  # crops <= 250 px: never reduced for a 224 output
    for seed in range(5):
        exact = train_augment(data, np.random.default_rng(seed), 224, full)
        fast = train_augment(data, np.random.default_rng(seed), 224, draft)
        np.testing.assert_array_equal(fast, exact)  # also: the same draws for flip and RandAugment
    png = io.BytesIO()
    Image.fromarray(_photo(640, 500)).save(png, format="PNG")  # not a JPEG: the full decode
    np.testing.assert_array_equal(
        train_augment(png.getvalue(), np.random.default_rng(0), 96, draft),
        train_augment(png.getvalue(), np.random.default_rng(0), 96, full),
    )


def test_fast_decode_reduced_crops_stay_close_to_exact():
    from mambavision_jax.data.image_io import decode_rgb
    from mambavision_jax.data.transforms import (
        draft_random_resized_crop,
        random_resized_crop,
    )

    r = np.random.default_rng(0)
    yy, xx = np.mgrid[0:800, 0:960].astype(np.float64)
    smooth = np.stack([xx / 960 * 255, yy / 800 * 255, 128 + 100 * np.sin(xx / 40 + yy / 60)], -1)
    data = _jpeg_bytes(np.clip(smooth + r.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8))
    for seed in range(4):
        kw = dict(scale=(0.6, 1.0), interpolation="bicubic")  # crops >= 448 px: 1/2 or 1/4 decode
        exact = np.asarray(random_resized_crop(decode_rgb(data), np.random.default_rng(seed), 112, **kw))
        fast = np.asarray(draft_random_resized_crop(data, np.random.default_rng(seed), 112, **kw))
        assert fast.shape == exact.shape == (112, 112, 3) and fast.dtype == np.uint8
        diff = np.abs(fast.astype(float) - exact.astype(float))
        assert diff.mean() < 3.0 and not np.array_equal(fast, exact)  # approximate, but close
        assert np.abs(fast.mean((0, 1)) - exact.mean((0, 1))).max() < 1.0
