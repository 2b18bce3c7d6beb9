"""Per-example image transforms (numpy / PIL, CPU): timm's eval preprocessing and training recipe.

Eval follows `timm.data.transforms_imagenet_eval` (which the official validate.py uses): torchvision's
PIL resize and center crop, reproduced here with the same PIL calls and the same integer rounding, so
the outputs are identical (tests/test_preprocess.py). Training follows
`timm.data.transforms_imagenet_train` with the official MambaVision arguments (`TrainAugConfig()`),
resampling with OpenCV by default (approximate, faster: `opencv_ops`); `TrainAugConfig(resampler=
"pil")` is the exact path, pixel-identical to timm's.
`eval_transform` / `train_transform` return float32 HWC arrays normalised with the model's mean / std;
`eval_crop_uint8` / `train_augment` (+ `erasing_boxes`) stop before normalisation and return uint8, for
the training loop, which normalises and erases on the device as timm's prefetching loader does.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

from mambavision_jax.data import opencv_ops
from mambavision_jax.data.image_io import to_pil_rgb, to_rgb_uint8
from mambavision_jax.data.rand_augment import rand_augment_transform

# One definition of the ImageNet statistics, the models' pretrained cfgs'; the data names stay.
from mambavision_jax.imagenet import IMAGENET_MEAN as IMAGENET_DEFAULT_MEAN
from mambavision_jax.imagenet import IMAGENET_STD as IMAGENET_DEFAULT_STD

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_RANDOM_INTERPOLATION = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
ERASE_MODES = ("pixel", "rand", "const")


def pil_interpolation(name: str) -> int:
    try:
        return _INTERPOLATION[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; one of {sorted(_INTERPOLATION)}") from None


# ---- building blocks (torchvision semantics for PIL images) ----


def normalize(img, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> np.ndarray:
    """uint8 RGB (PIL or array) -> float32 HWC, (x / 255 - mean) / std in float32 as ToTensor +
    Normalize compute it (same operations and order, so the results are bit-identical)."""
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def resize_short_side(img: Image.Image, size: int, interpolation: int) -> Image.Image:
    """torchvision Resize(int): the short side becomes `size`, the long side int(size * long / short)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), interpolation)


def center_crop(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """torchvision CenterCrop: zero-pad when the crop is larger, offsets int(round(d / 2))."""
    ch, cw = (size, size) if isinstance(size, int) else size
    w, h = img.size
    if cw > w or ch > h:
        left, top = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
        padded = Image.new(img.mode, (max(w, cw), max(h, ch)), 0)
        padded.paste(img, (left, top))
        img = padded
        w, h = img.size
        if (w, h) == (cw, ch):
            return img
    top = int(round((h - ch) / 2.0))  # Python's round (half to even), as torchvision
    left = int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def resize_and_center_crop(
    img: Image.Image,
    image_size: int,
    crop_pct: float = 0.875,
    crop_mode: str = "center",
    interpolation: str = "bicubic",
) -> Image.Image:
    """timm eval geometry, uint8 in and out. center: short side -> floor(size / crop_pct), then crop;
    squash: both sides -> floor(size / crop_pct) (aspect ratio not kept), then crop."""
    if not isinstance(image_size, int):
        raise TypeError("image_size must be an int (square crops only)")
    scale_size = math.floor(image_size / crop_pct)
    interp = pil_interpolation(interpolation)
    if crop_mode == "center":
        img = resize_short_side(img, scale_size, interp)
    elif crop_mode == "squash":
        if img.size != (scale_size, scale_size):
            img = img.resize((scale_size, scale_size), interp)
    else:
        raise ValueError(f"crop_mode must be 'center' or 'squash', got {crop_mode!r}")
    return center_crop(img, image_size)


def eval_transform(
    img,
    image_size: int = 224,
    crop_pct: float = 0.875,
    crop_mode: str = "center",
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    interpolation: str = "bicubic",
) -> np.ndarray:
    """Eval preprocessing: an image (PIL, bytes or uint8 array) -> float32 (image_size, image_size, 3).

    Equal to timm's `create_transform(input_size, crop_pct=, crop_mode=, interpolation=, mean=, std=)`
    with is_training=False; MambaVision uses bicubic and its per-model crop_pct / crop_mode.
    """
    return normalize(eval_crop_uint8(img, image_size, crop_pct, crop_mode, interpolation), mean, std)


def eval_crop_uint8(
    img,
    image_size: int = 224,
    crop_pct: float = 0.875,
    crop_mode: str = "center",
    interpolation: str = "bicubic",
) -> np.ndarray:
    """`eval_transform` before normalisation -> uint8 (image_size, image_size, 3) (what the training
    loop's eval ships to the devices, which normalise with `device_ops.normalize_on_device`)."""
    return np.asarray(resize_and_center_crop(to_pil_rgb(img), image_size, crop_pct, crop_mode, interpolation))


# ---- training ----


@dataclasses.dataclass(frozen=True)
class TrainAugConfig:
    """Training augmentation; the defaults are the official MambaVision recipe (train.py args).

    Each stage can be switched off: random_resized_crop=False (then resize short side + center crop,
    as timm's no_aug), hflip=0, auto_augment=None, re_prob=0. timm's color jitter (0.4 in the
    official args) is not here because timm disables it whenever RandAugment is on.

    resampler: 'cv2' (default) resizes the crop and runs RandAugment's geometric ops and Sharpness
    with OpenCV (`opencv_ops`: ~1.7x less CPU per image, approximate; output statistics beside the
    exact path's in benchmarks/RESULTS.md) and its table-lookup ops on arrays (exact); 'pil' is the
    exact path, pixel-identical to timm's transform. Both make the same random draws, so the same
    seed gives the same crops, flips and ops.
    """

    random_resized_crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "random"  # 'random' = bilinear or bicubic per example; else a PIL filter name
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    re_mode: str = "pixel"  # 'const' (zeros), 'rand' (one normal colour per box), 'pixel' (per pixel)
    re_count: int = 1
    # Approximate, off by default: decode a JPEG at 1/2, 1/4 or 1/8 size in the DCT domain (PIL's
    # draft mode) when its random crop is downscaled by at least that factor, and resample the
    # crop box from the reduced image (see `draft_random_resized_crop`).
    fast_decode: bool = False
    resampler: str = "cv2"

    def __post_init__(self):
        opencv_ops.check_resampler(self.resampler, "TrainAugConfig.resampler")

    @classmethod
    def none(cls) -> TrainAugConfig:
        """Every augmentation off: resize + center crop + normalise (small demos, debugging)."""
        return cls(random_resized_crop=False, hflip=0.0, auto_augment=None, re_prob=0.0)


def random_resized_crop_params(
    width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)
) -> tuple[int, int, int, int]:
    """timm RandomResizedCropAndInterpolation.get_params -> (top, left, h, w): 10 tries of a random
    area fraction and log-uniform aspect ratio, then a center crop clamped to the ratio range."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    img: Image.Image,
    rng: np.random.Generator,
    size: int,
    scale=(0.08, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    interpolation: str = "random",
) -> Image.Image:
    top, left, h, w = random_resized_crop_params(img.size[0], img.size[1], rng, scale, ratio)
    interp = _crop_interpolation(interpolation, rng)
    # crop then resize, as torchvision's resized_crop does for PIL (a `box=` resize differs at edges)
    return img.crop((left, top, left + w, top + h)).resize((size, size), interp)


def _crop_interpolation(interpolation: str, rng: np.random.Generator) -> int:
    if interpolation == "random":
        return _RANDOM_INTERPOLATION[int(rng.integers(0, 2))]
    return pil_interpolation(interpolation)


def draft_random_resized_crop(
    data: bytes,
    rng: np.random.Generator,
    size: int,
    scale=(0.08, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    interpolation: str = "random",
    resampler: str = "pil",
):
    """`random_resized_crop` of encoded bytes, decoding only as much of a JPEG as the crop needs.

    The crop parameters need only the header's size, so they are drawn before decoding (the same
    draws as the exact path). When the crop is downscaled by r >= 2 (r = 2, 4 or 8), the JPEG is
    decoded at 1/r size by libjpeg's DCT scaling (PIL `draft`), up to r^2 fewer pixels to decode
    and resample, and the crop box (fractional there) is resampled from the reduced image:
    approximate (a different anti-aliasing than the exact resize; statistics in
    benchmarks/RESULTS.md). Everything else (smaller crops, other formats) takes the full decode and
    the `resampler`'s crop (resampler 'cv2': a uint8 array from `opencv_ops.resized_crop`).
    """
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    top, left, h, w = random_resized_crop_params(width, height, rng, scale, ratio)
    interp = _crop_interpolation(interpolation, rng)
    r = next((k for k in (8, 4, 2) if min(h, w) >= k * size), 1)
    if r > 1 and img.format == "JPEG" and img.mode == "RGB":
        img.draft("RGB", (width // r, height // r))
        img.load()
        fx, fy = img.size[0] / width, img.size[1] / height
        box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
        return img.resize((size, size), interp, box=box)
    if resampler == "cv2":
        arr = opencv_ops.decode_rgb_array(data)
        return opencv_ops.resized_crop(arr, top, left, h, w, size, interp)
    img.load()
    img = to_rgb_uint8(img)
    return img.crop((left, top, left + w, top + h)).resize((size, size), interp)


def cv2_random_resized_crop(
    img,
    rng: np.random.Generator,
    size: int,
    scale=(0.08, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    interpolation: str = "random",
) -> np.ndarray:
    """`random_resized_crop` with OpenCV's resize (the same draws): encoded bytes (decoded by
    `opencv_ops.decode_rgb_array`), a PIL image or a uint8 array -> uint8 (size, size, 3)."""
    if isinstance(img, (bytes, bytearray, memoryview)):
        arr = opencv_ops.decode_rgb_array(bytes(img))
    else:
        arr = np.asarray(to_pil_rgb(img))
    top, left, h, w = random_resized_crop_params(arr.shape[1], arr.shape[0], rng, scale, ratio)
    interp = _crop_interpolation(interpolation, rng)
    return opencv_ops.resized_crop(arr, top, left, h, w, size, interp)


def erasing_boxes(
    rng: np.random.Generator,
    height: int,
    width: int,
    prob: float = 0.25,
    min_count: int = 1,
    max_count: int = 1,
    min_area: float = 0.02,
    max_area: float = 1.0 / 3.0,
    min_aspect: float = 0.3,
) -> np.ndarray:
    """timm RandomErasing's box draws for one (height, width) image -> int32 (max_count, 4) rows of
    (top, left, h, w); rows of zeros are no box.

    With probability `prob`, 1..max_count boxes of area fraction U(min_area, max_area) / count and
    log-uniform aspect ratio in [min_aspect, 1 / min_aspect]; 10 tries per box. The draws and their
    order are timm's `RandomErasing._erase` (python `random` there, `rng` here).
    """
    boxes = np.zeros((max_count, 4), np.int32)
    if rng.random() > prob:
        return boxes
    area = height * width
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = min_count if min_count == max_count else int(rng.integers(min_count, max_count + 1))
    for i in range(count):
        for _attempt in range(10):
            target_area = rng.uniform(min_area, max_area) * area / count
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                boxes[i] = (top, left, h, w)
                break
    return boxes


def random_erasing(
    x: np.ndarray,
    rng: np.random.Generator,
    prob: float = 0.25,
    mode: str = "pixel",
    min_count: int = 1,
    max_count: int = 1,
    min_area: float = 0.02,
    max_area: float = 1.0 / 3.0,
    min_aspect: float = 0.3,
) -> np.ndarray:
    """timm RandomErasing on one normalised HWC float image (modified in place and returned).

    The boxes of `erasing_boxes`, filled in order with N(0, 1) noise per pixel ('pixel'), per box
    colour ('rand') or zeros ('const'). The training loop does the same on the device
    (`device_ops.erase_on_device`), as timm's prefetcher does.
    """
    if mode not in ERASE_MODES:
        raise ValueError(f"random erasing mode must be 'pixel', 'rand' or 'const', got {mode!r}")
    img_h, img_w, chan = x.shape
    for top, left, h, w in erasing_boxes(
        rng, img_h, img_w, prob, min_count, max_count, min_area, max_area, min_aspect
    ):
        if h == 0:
            continue
        if mode == "pixel":
            fill = rng.standard_normal((h, w, chan), dtype=np.float32)
        elif mode == "rand":
            fill = rng.standard_normal((1, 1, chan), dtype=np.float32)
        else:
            fill = np.float32(0.0)
        x[top : top + h, left : left + w, :] = fill
    return x


def train_augment(
    img,
    rng: np.random.Generator,
    image_size: int,
    config: TrainAugConfig = TrainAugConfig(),
    mean=IMAGENET_DEFAULT_MEAN,
) -> np.ndarray:
    """The uint8 part of the training augmentation -> uint8 (image_size, image_size, 3).

    timm order: RandomResizedCrop -> hflip -> RandAugment (what timm's loader ships with
    use_prefetcher=True; normalisation and random erasing follow on the device). `mean` is only
    RandAugment's fill colour. With config.resampler 'cv2' the image is a uint8 array from the crop
    on (PIL only inside RandAugment's pixel ops).
    """
    if config.random_resized_crop and config.fast_decode and isinstance(img, (bytes, bytearray)):
        img = draft_random_resized_crop(
            bytes(img), rng, image_size, config.scale, config.ratio, config.interpolation, config.resampler
        )
    elif config.random_resized_crop and config.resampler == "cv2":
        img = cv2_random_resized_crop(img, rng, image_size, config.scale, config.ratio, config.interpolation)
    elif config.random_resized_crop:
        img = random_resized_crop(
            to_pil_rgb(img), rng, image_size, config.scale, config.ratio, config.interpolation
        )
    else:
        img = to_pil_rgb(img)
        interp = "bicubic" if config.interpolation == "random" else config.interpolation
        img = resize_and_center_crop(img, image_size, 1.0, "center", interp)
    if config.hflip > 0 and rng.random() < config.hflip:
        if isinstance(img, np.ndarray):
            img = opencv_ops.hflip(img)
        else:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if config.auto_augment:
        # timm's RandAugment hparams: fill with the mean colour; translate_const from the image size;
        # geometric ops pick their filter at random unless a fixed training interpolation is set.
        fixed = None if config.interpolation == "random" else pil_interpolation(config.interpolation)
        ra = _rand_augment(config.auto_augment, tuple(mean), image_size, fixed, config.resampler)
        img = ra(img, rng)
    return np.asarray(img)  # uint8 RGB; a copy only when the last step was a PIL one


def train_transform(
    img,
    rng: np.random.Generator,
    image_size: int,
    config: TrainAugConfig = TrainAugConfig(),
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
) -> np.ndarray:
    """Training augmentation for one image, all on the host -> float32 (image_size, image_size, 3).

    timm order: RandomResizedCrop -> hflip -> RandAugment -> ToTensor + Normalize -> RandomErasing.
    Every random draw comes from `rng`, so (seed, example index) fixes the output. The training
    loop uses `train_augment` + `erasing_boxes` instead and normalises / erases on the device.
    """
    x = normalize(train_augment(img, rng, image_size, config, mean), mean, std)
    if config.re_prob > 0:
        x = random_erasing(x, rng, config.re_prob, config.re_mode, max_count=config.re_count)
    return x


_RA_CACHE: dict = {}


def _rand_augment(config_str, mean, image_size, interpolation, resampler="pil"):
    key = (config_str, mean, image_size, interpolation, resampler)
    if key not in _RA_CACHE:
        fill = tuple(min(255, round(255 * m)) for m in mean)
        _RA_CACHE[key] = rand_augment_transform(
            config_str,
            fill=fill,
            interpolation=interpolation,
            translate_const=int(image_size * 0.45),
            resampler=resampler,
        )
    return _RA_CACHE[key]
