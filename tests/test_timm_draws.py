"""RandomResizedCrop and the RandAugment driver against timm, fed the SAME random draws.

timm draws from Python's `random` and `np.random`; this package from one `np.random.Generator`.
Each test records every draw timm makes (seeded, wrapped), then replays those values, in order,
through a stand-in Generator into our function, checking that each of our draws is the same kind
of draw over the same range. Equal outputs then mean equal logic: the order of the draws, what
each one decides (crop box, op choice, probability, magnitude noise, sign, interpolation), and
the fallbacks.
"""

from __future__ import annotations

import random
import sys
import types

import numpy as np
import pytest
from PIL import Image

from mambavision_jax.data import rand_augment as ra
from mambavision_jax.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    random_resized_crop,
    random_resized_crop_params,
)

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
from timm.data import auto_augment as taa  # noqa: E402
from timm.data import transforms as ttf  # noqa: E402


class Replay:
    """A `np.random.Generator` stand-in that returns timm's recorded draws in order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def _next(self, kind, *args):
        assert self.draws, f"we draw {kind}{args} after timm's last draw"
        got_kind, got_args, value = self.draws.pop(0)
        assert (got_kind, got_args) == (kind, args), (
            f"we draw {kind}{args} where timm drew {got_kind}{got_args}"
        )
        return value

    def uniform(self, low=0.0, high=1.0):
        return self._next("uniform", float(low), float(high))

    def integers(self, low, high=None, size=None):
        # randint(a, b) and random.choice over n values are integers(a, b + 1) / integers(0, n).
        if size is None:
            return self._next("integers", int(low), int(high))
        return np.asarray(self._next("integers", int(low), int(high), int(size)))

    def random(self):
        return self._next("random")

    def normal(self, loc=0.0, scale=1.0):
        return self._next("normal", float(loc), float(scale))


def _record(monkeypatch, seed):
    """Seed timm's generators and log each of its draws as (kind, args, value) in our terms."""
    py, npr = random.Random(seed), np.random.RandomState(seed)
    log = []

    def uniform(a, b):
        v = py.uniform(a, b)
        log.append(("uniform", (float(a), float(b)), v))
        return v

    def randint(a, b):
        v = py.randint(a, b)
        log.append(("integers", (int(a), int(b) + 1), v))
        return v

    def rand():
        v = py.random()
        log.append(("random", (), v))
        return v

    def gauss(mu, sigma):
        v = py.gauss(mu, sigma)
        log.append(("normal", (float(mu), float(sigma)), v))
        return v

    def choice(seq):
        i = py.randrange(len(seq))
        log.append(("integers", (0, len(seq)), i))
        return seq[i]

    def np_choice(a, size=None, replace=True, p=None):
        assert replace and p is None, "timm's weighted op choice is not what the recipe uses"
        idx = npr.randint(0, len(a), size=size)
        log.append(("integers", (0, len(a), int(size)), idx.copy()))
        return [a[i] for i in idx]

    for name, fn in (
        ("uniform", uniform),
        ("randint", randint),
        ("random", rand),
        ("gauss", gauss),
        ("choice", choice),
    ):
        monkeypatch.setattr(random, name, fn)
    monkeypatch.setattr(taa.np.random, "choice", np_choice)
    return log


def _photo(w, h, seed):
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (7 * xx + 3 * yy) % 256], -1)
    return Image.fromarray(np.clip(img + r.integers(-20, 21, img.shape), 0, 255).astype(np.uint8))


# (width, height, scale, ratio): square, landscape, portrait, and extreme shapes and scale ranges that
# exhaust the 10 tries and reach both fallback branches (too wide, too tall) and the whole image.
RRC_CASES = [
    (64, 64, (0.08, 1.0), (3 / 4, 4 / 3)),
    (333, 250, (0.08, 1.0), (3 / 4, 4 / 3)),
    (90, 301, (0.08, 1.0), (3 / 4, 4 / 3)),
    (400, 20, (0.5, 1.0), (3 / 4, 4 / 3)),
    (20, 400, (0.5, 1.0), (3 / 4, 4 / 3)),
    (50, 40, (1.0, 1.0), (2.0, 3.0)),
    (40, 50, (0.9, 1.0), (0.5, 2.0)),
]


@pytest.mark.parametrize("w,h,scale,ratio", RRC_CASES)
def test_random_resized_crop_params_match_timm(monkeypatch, w, h, scale, ratio):
    img = Image.new("RGB", (w, h))
    branches = set()
    for seed in range(40):
        log = _record(monkeypatch, seed)
        ref = ttf.RandomResizedCropAndInterpolation.get_params(img, scale, ratio)
        monkeypatch.undo()
        branches.add("try" if log and log[-1][0] == "integers" else "fallback")
        replay = Replay(log)
        assert random_resized_crop_params(w, h, replay, scale, ratio) == tuple(ref), seed
        assert not replay.draws, "timm drew more than we did"
    if (w, h) in ((400, 20), (20, 400), (50, 40)):
        assert "fallback" in branches  # the case exercises the center-crop fallback


@pytest.mark.parametrize("w,h", [(333, 250), (48, 61)])
def test_random_resized_crop_images_match_timm(monkeypatch, w, h):
    """The whole transform with 'random' interpolation: box, interpolation choice and pixels."""
    t = ttf.RandomResizedCropAndInterpolation(32, interpolation="random")
    for seed in range(12):
        img = _photo(w, h, seed)
        log = _record(monkeypatch, seed)
        ref = t(img)
        monkeypatch.undo()
        replay = Replay(log)
        ours = random_resized_crop(img, replay, 32)
        assert not replay.draws
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref), err_msg=f"seed {seed}")


_POSTERIZE = taa.ImageOps.posterize


def _posterize_allowing_zero_bits(img, bits):
    """Pillow < 13 (the official environment): 0 bits keeps nothing (black); Pillow 13 raises."""
    return img.point(lambda v: 0) if bits == 0 else _POSTERIZE(img, bits)


FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_DEFAULT_MEAN)


# The official string, uniform magnitude noise with a per-op probability, and the default op set.
@pytest.mark.parametrize(
    "config", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-mstd101-p0.7-inc1", "rand-m10-n4-mstd1"]
)
def test_rand_augment_matches_timm_with_the_same_draws(monkeypatch, config):
    ref_t = taa.rand_augment_transform(config, {"translate_const": 14, "img_mean": FILL})
    ours_t = ra.rand_augment_transform(config, fill=FILL, translate_const=14)
    names = [op.name for op in ref_t.ops]
    assert list(ours_t.ops) == names  # the same op set in the same order (op choice is by index)

    applied_ref, applied_ours = [], []
    real_call = taa.AugmentOp.__call__

    def ref_call(op, img):  # log the ops timm applies (after its probability draw)
        out = real_call(op, img)
        if out is not img:
            applied_ref.append(op.name)
        return out

    real_apply = ra.apply_op

    def ours_apply(img, name, magnitude, **kw):
        applied_ours.append(name)
        return real_apply(img, name, magnitude, **kw)

    kinds, n_applied = set(), 0
    for seed in range(30):
        img = _photo(32, 30, seed)
        applied_ref.clear()
        applied_ours.clear()
        log = _record(monkeypatch, seed)
        monkeypatch.setattr(taa.AugmentOp, "__call__", ref_call)
        monkeypatch.setattr(taa.ImageOps, "posterize", _posterize_allowing_zero_bits)
        ref = ref_t(img)
        monkeypatch.undo()
        kinds |= {k for k, _, _ in log}
        replay = Replay(log)
        monkeypatch.setattr(ra, "apply_op", ours_apply)
        ours = ours_t(img, replay)
        monkeypatch.undo()
        assert not replay.draws, "timm drew more than we did"
        assert applied_ours == applied_ref, f"seed {seed}"
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref), err_msg=f"{config} seed {seed}")
        n_applied += len(applied_ref)
    assert 0 < n_applied < 30 * ours_t.num_layers  # some ops ran and some were skipped (prob 0.5 / 0.7)
    # The draws covered: op choice, the sign, and the magnitude noise (normal or uniform) and the
    # per-op probability where the config has them.
    assert "integers" in kinds and "random" in kinds
    assert ("uniform" if "mstd101" in config else "normal") in kinds


@pytest.mark.parametrize("resampler", ["pil", "cv2"])
def test_train_augment_matches_timm_train_transform_with_the_same_draws(monkeypatch, resampler):
    """timm's whole uint8 training transform (`create_transform(is_training=True,
    use_prefetcher=True)` with the official RandomResizedCrop and RandAugment; no flip, which
    torchvision draws from torch) fed the same draws as `train_augment`: the exact path ('pil')
    gives timm's pixels; the default OpenCV path makes exactly the same draws and lands close."""
    from timm.data import create_transform

    from mambavision_jax.data.transforms import TrainAugConfig, train_augment

    size = 48
    t = create_transform(
        size,
        is_training=True,
        use_prefetcher=True,
        hflip=0.0,
        vflip=0.0,
        color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="random",
        re_prob=0.0,
        mean=IMAGENET_DEFAULT_MEAN,
    )
    aug = TrainAugConfig(hflip=0.0, resampler=resampler)
    mads = []
    for seed in range(16):
        img = _photo(333, 250, seed)
        log = _record(monkeypatch, seed)
        monkeypatch.setattr(taa.ImageOps, "posterize", _posterize_allowing_zero_bits)
        ref = np.asarray(t(img))
        monkeypatch.undo()
        ref = ref.transpose(1, 2, 0) if ref.shape[0] == 3 else ref
        replay = Replay(log)
        ours = train_augment(img, replay, size, aug)
        assert not replay.draws, "timm drew more than we did"
        assert ours.shape == ref.shape == (size, size, 3) and ours.dtype == ref.dtype == np.uint8
        if resampler == "pil":
            np.testing.assert_array_equal(ours, ref, err_msg=f"seed {seed}")
        mads.append(np.abs(ours.astype(float) - ref.astype(float)).mean())
    if resampler == "cv2":
        assert np.mean(mads) < 3.0 and 0 < max(mads) < 10.0, mads
