"""mmseg's ADE20K pipelines (the official MambaVision segmentation configs,
`configs/_base_/datasets/ade20k.py`), ported to numpy + OpenCV with the same random draws:

    train: LoadImageFromFile, LoadAnnotations(reduce_zero_label=True),
           RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
           RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75), RandomFlip(prob=0.5),
           PhotoMetricDistortion, PackSegInputs (+ SegDataPreProcessor's padding to the crop)
    test:  LoadImageFromFile, Resize(scale=(2048, 512), keep_ratio=True), LoadAnnotations

Every random draw goes through `rs`, a `numpy.random.RandomState`, with the calls mmseg / mmcv make
on numpy's global state in the same order (`random_sample` for the resize ratio, `randint` for the
crop offsets and the photometric coin flips, `uniform` for their amounts, `choice` for the flip),
so a RandomState seeded as `np.random.seed(s)` reproduces mmseg's output pixel for pixel
(tests/test_seg_transforms.py). Resizes are mmcv's: `cv2.resize` bilinear for images, nearest for
label maps, at mmcv's `rescale_size`. Images are decoded with OpenCV (`cv2.imdecode`, IMREAD_COLOR,
as mmcv's LoadImageFromFile) and label maps with PIL (`np.array(Image.open(...))`, as mmseg's
LoadAnnotations), so the pixels are mmseg's too.

mmseg works on BGR images; these work on RGB. Every step is per channel except the HSV round trip,
which OpenCV does the same way from either order (COLOR_RGB2HSV on RGB = COLOR_BGR2HSV on BGR).
"""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np
from PIL import Image

from mambavision_jax.errors import UserError
from mambavision_jax.segmentation.metrics import IGNORE_INDEX, reduce_zero_label

__all__ = [
    "SegAugConfig",
    "decode_image",
    "decode_label",
    "load_label",
    "rescale_size",
    "imrescale",
    "random_resize",
    "random_crop",
    "random_flip",
    "photo_metric_distortion",
    "pad_to",
    "train_augment_seg",
    "eval_resize",
]


@dataclasses.dataclass(frozen=True)
class SegAugConfig:
    """The train pipeline's arguments (defaults: the official 512x512 ADE20K recipe)."""

    scale: tuple[int, int] = (2048, 512)  # RandomResize's (w, h) before the ratio (mmcv order)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)  # (h, w)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True  # PhotoMetricDistortion with its defaults
    ignore_index: int = IGNORE_INDEX


# ------------------------------------------------------------------ decoding
def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> uint8 RGB (H, W, 3), as mmcv's LoadImageFromFile decodes (cv2, colour,
    EXIF orientation applied), converted from BGR."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError("not an image OpenCV can decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_label(data: bytes) -> np.ndarray:
    """Encoded label map (PNG: grey or palette indices) -> uint8 (H, W), as mmseg's LoadAnnotations
    (PIL, 'unchanged', squeezed)."""
    with io.BytesIO(data) as buf:
        arr = np.array(Image.open(buf))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise UserError(f"a label map must have one channel (class indices), got shape {arr.shape}")
    return arr.astype(np.uint8)


def load_label(data: bytes, reduce_zero: bool) -> np.ndarray:
    """`decode_label`, then mmseg's reduce_zero_label when the data set uses it (ADE20K)."""
    label = decode_label(data)
    return reduce_zero_label(label) if reduce_zero else label


# ------------------------------------------------------------------ geometry (mmcv)
def rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.rescale_size: the (w, h) that fits inside `scale` (long, short edges) keeping the ratio."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def imrescale(img: np.ndarray, scale: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """mmcv.imrescale with the cv2 backend: bilinear (images) or nearest (label maps)."""
    h, w = img.shape[:2]
    size = rescale_size(w, h, scale)
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def random_resize(img, label, rs: np.random.RandomState, scale, ratio_range):
    """mmcv RandomResize(scale, ratio_range, keep_ratio=True) with mmseg's Resize."""
    lo, hi = ratio_range
    ratio = rs.random_sample() * (hi - lo) + lo
    target = int(scale[0] * ratio), int(scale[1] * ratio)
    return imrescale(img, target), imrescale(label, target, nearest=True)


def random_crop(img, label, rs: np.random.RandomState, crop_size, cat_max_ratio, ignore_index=IGNORE_INDEX):
    """mmseg RandomCrop: up to 10 re-draws until no class (but ignore_index) covers cat_max_ratio
    or more of the crop's labelled pixels; the 11th box is taken unchecked, as mmseg does."""
    ch, cw = crop_size

    def draw():
        off_h = rs.randint(0, max(img.shape[0] - ch, 0) + 1)
        off_w = rs.randint(0, max(img.shape[1] - cw, 0) + 1)
        return off_h, off_h + ch, off_w, off_w + cw

    y1, y2, x1, x2 = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            labels, cnt = np.unique(label[y1:y2, x1:x2], return_counts=True)
            cnt = cnt[labels != ignore_index]
            if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
            y1, y2, x1, x2 = draw()
    return img[y1:y2, x1:x2, ...], label[y1:y2, x1:x2]


def random_flip(img, label, rs: np.random.RandomState, prob: float):
    """mmcv RandomFlip(prob, direction='horizontal'): `np.random.choice` of the direction."""
    if rs.choice(["horizontal", None], p=[prob, 1.0 - prob]) is None:
        return img, label
    return np.ascontiguousarray(img[:, ::-1]), np.ascontiguousarray(label[:, ::-1])


# ------------------------------------------------------------------ photometric (mmseg)
def _convert(img, alpha=1, beta=0):
    img = img.astype(np.float32) * alpha + beta
    return np.clip(img, 0, 255).astype(np.uint8)


def photo_metric_distortion(
    img,
    rs: np.random.RandomState,
    brightness_delta: int = 32,
    contrast_range=(0.5, 1.5),
    saturation_range=(0.5, 1.5),
    hue_delta: int = 18,
):
    """mmseg PhotoMetricDistortion: brightness, contrast (first or last), saturation, hue, each with
    probability 0.5, in mmseg's draw order."""
    if rs.randint(2):
        img = _convert(img, beta=rs.uniform(-brightness_delta, brightness_delta))
    mode = rs.randint(2)
    if mode == 1 and rs.randint(2):
        img = _convert(img, alpha=rs.uniform(*contrast_range))
    if rs.randint(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rs.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rs.randint(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + rs.randint(-hue_delta, hue_delta)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0 and rs.randint(2):
        img = _convert(img, alpha=rs.uniform(*contrast_range))
    return img


# ------------------------------------------------------------------ packing
def pad_to(img, label, size, ignore_index=IGNORE_INDEX):
    """SegDataPreProcessor's stack_batch: pad right / bottom to `size` (h, w), labels with
    ignore_index. The image is padded with 0 here and masked to 0 after normalisation on the device
    (`valid`: the unpadded (h, w)), which is what mmseg's pad of the normalised image gives."""
    h, w = label.shape
    ph, pw = size[0] - h, size[1] - w
    if ph < 0 or pw < 0:
        raise UserError(f"a crop of {h}x{w} is larger than the batch size {size}")
    img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_index)
    return img, label, np.array([h, w], np.int32)


def train_augment_seg(img, label, rs: np.random.RandomState, aug: SegAugConfig = SegAugConfig()):
    """The official train pipeline after loading: uint8 RGB (H, W, 3) and label (H, W) (reduce_zero
    already applied) -> {"image" uint8 crop_size + (3,), "label" uint8 crop_size, "valid" int32 (2,)}."""
    img, label = random_resize(img, label, rs, aug.scale, aug.ratio_range)
    img, label = random_crop(img, label, rs, aug.crop_size, aug.cat_max_ratio, aug.ignore_index)
    img, label = random_flip(img, label, rs, aug.flip_prob)
    if aug.photometric:
        img = photo_metric_distortion(img, rs)
    img, label, valid = pad_to(img, label, aug.crop_size, aug.ignore_index)
    return {"image": img, "label": label, "valid": valid}


def eval_resize(img, scale=(2048, 512)) -> np.ndarray:
    """The test pipeline's Resize(scale, keep_ratio=True) (bilinear, cv2); labels stay as they are."""
    return imrescale(img, tuple(scale))
