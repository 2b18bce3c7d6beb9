"""OpenCV versions of the training augmentation's costly steps: the fast (approximate) resampler.

`TrainAugConfig(resampler="cv2")` (the default) runs the crop's resize and RandAugment's ops here,
on uint8 HWC arrays, instead of in PIL (Color stays PIL's); the random draws and the
decoding are what the exact path does. OpenCV's resampling is 3-5x cheaper than PIL's but not
pixel-identical:

- resize: a crop shrunk less than 2x is prefiltered (a Gaussian of the variance PIL's anti-aliasing
  adds) and resized bilinearly, one shrunk more uses INTER_AREA (pixel-area averaging), an axis
  that grows bilinear or bicubic as drawn (OpenCV's bicubic uses a = -0.75, PIL's a = -0.5);
- affine ops: `cv2.warpAffine` in float32 with PIL's matrix moved to OpenCV's pixel-centre
  convention, PIL's edge rule, truncation to uint8 and fill colour: bilinear gives PIL's pixels
  (up to OpenCV's 5-bit sub-pixel positions), bicubic differs by OpenCV's kernel (a = -0.75);
- Sharpness: PIL's SMOOTH kernel (border pixels kept) blended with the image as `Image.blend` does,
  up to the rounding of the 3x3 filter.

The table-lookup ops (`LUT_OPS`: AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd,
Brightness, Contrast) are exact: the same tables as PIL's, applied with `cv2.LUT` without a round trip
through a PIL image.

benchmarks/input_pipeline.py --resampler_stats compares the two paths' outputs with the same
draws (statistics in benchmarks/RESULTS.md). `decode_rgb_array` is exact: for baseline RGB JPEGs it
calls OpenCV's libjpeg-turbo, which gives PIL's pixels at lower cost, and PIL for everything else.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image

from mambavision_jax.data.image_io import to_rgb_uint8

RESAMPLERS = ("cv2", "pil")  # the fast, approximate path; the exact one (timm's pixels)

_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0  # PIL's ImageFilter.SMOOTH


@functools.cache
def _cv2():
    """OpenCV, imported on first use with one thread per call: the pipeline's parallelism is its
    grain workers / threads, which OpenCV's own thread pool would oversubscribe."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def check_resampler(value: str, field: str = "resampler") -> str:
    if value not in RESAMPLERS:
        raise ValueError(
            f"{field} must be one of {RESAMPLERS} ('cv2': fast, approximate; 'pil': exact, "
            f"timm's pixels), got {value!r}"
        )
    return value


def _flag(resample: int) -> int:
    cv2 = _cv2()
    return {
        Image.Resampling.NEAREST: cv2.INTER_NEAREST,
        Image.Resampling.BILINEAR: cv2.INTER_LINEAR,
        Image.Resampling.BICUBIC: cv2.INTER_CUBIC,
        Image.Resampling.BOX: cv2.INTER_AREA,
        Image.Resampling.HAMMING: cv2.INTER_LINEAR,
        Image.Resampling.LANCZOS: cv2.INTER_LANCZOS4,
    }[resample]


def decode_rgb_array(data: bytes) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, 3), the pixels of `image_io.decode_rgb`.

    Baseline RGB (YCbCr) JPEGs are decoded by OpenCV (the same libjpeg-turbo decoder, without the
    EXIF rotation that PIL does not apply either); CMYK / grayscale JPEGs and other formats by PIL.
    """
    img = Image.open(io.BytesIO(data))  # reads the header only
    if img.format == "JPEG" and img.mode == "RGB":
        cv2 = _cv2()
        arr = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
        )
        if arr is not None and arr.shape[:2] == (img.size[1], img.size[0]):
            return arr
    img.load()
    return np.asarray(to_rgb_uint8(img))


def as_array(img) -> np.ndarray:
    return img if isinstance(img, np.ndarray) else np.asarray(img)


def hflip(arr: np.ndarray) -> np.ndarray:
    """Left-right mirror into a new contiguous array (exact; 30x cheaper than numpy's copy of a
    reversed view)."""
    return _cv2().flip(arr, 1)


def resized_crop(
    arr: np.ndarray, top: int, left: int, h: int, w: int, size: int, resample: int
) -> np.ndarray:
    """arr[top:top+h, left:left+w] resized to (size, size), anti-aliased where it shrinks as PIL's
    resize is: shrunk < 2x, a Gaussian prefilter then bilinear; shrunk more, INTER_AREA along that
    axis; grown, the drawn filter (bilinear / bicubic)."""
    cv2 = _cv2()
    crop = arr[top : top + h, left : left + w]
    if (h, w) == (size, size):
        return np.ascontiguousarray(crop)
    sy, sx = h / size, w / size
    if 1 <= sy < 2 and 1 <= sx < 2:
        # PIL's triangle filter of half-width s (source pixels) has variance s^2 / 6; bilinear
        # sampling adds about 1 / 6, the prefilter the rest (half the cost of INTER_AREA).
        # INTER_LINEAR_EXACT rounds to nearest (INTER_LINEAR's fixed point darkens by ~0.1 level).
        gy, gx = math.sqrt((sy * sy - 1) / 6), math.sqrt((sx * sx - 1) / 6)
        if max(gy, gx) > 0.05:
            crop = cv2.GaussianBlur(crop, (3, 3), sigmaX=max(gx, 1e-3), sigmaY=max(gy, 1e-3))
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR_EXACT)
    if sy >= 1 and sx >= 1:
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    if sy > 1:  # taller than the output but narrower: shrink the height first
        crop = cv2.resize(crop, (w, size), interpolation=cv2.INTER_AREA)
    elif sx > 1:
        crop = cv2.resize(crop, (size, h), interpolation=cv2.INTER_AREA)
    flag = cv2.INTER_LINEAR_EXACT if resample == Image.Resampling.BILINEAR else _flag(resample)
    return cv2.resize(crop, (size, size), interpolation=flag)


# ---- RandAugment's table-lookup ops: PIL's tables, pixel for pixel (ImageOps, ImageEnhance) ----

_LEVELS = np.arange(256)


def _apply_lut(arr: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """lut (256,) for every channel, or (256, C) one column per channel."""
    lut = np.asarray(lut).astype(np.uint8)
    if lut.ndim == 2:
        lut = np.ascontiguousarray(lut).reshape(1, 256, lut.shape[1])
    return _cv2().LUT(arr, lut)


def autocontrast(arr: np.ndarray) -> np.ndarray:
    """`ImageOps.autocontrast(img)`: each channel's [min, max] stretched to [0, 255]."""
    cv2, luts = _cv2(), []
    for channel in cv2.split(arr):
        lo, hi = (int(v) for v in cv2.minMaxLoc(channel)[:2])
        if hi <= lo:
            luts.append(_LEVELS)
        else:
            scale = 255.0 / (hi - lo)
            luts.append(np.clip((_LEVELS * scale + -lo * scale).astype(np.int64), 0, 255))
    return _apply_lut(arr, np.stack(luts, 1))


def equalize(arr: np.ndarray) -> np.ndarray:
    """`ImageOps.equalize(img)`: each channel's histogram equalised with PIL's integer steps."""
    cv2, luts = _cv2(), []
    for c in range(arr.shape[2]):
        hist = cv2.calcHist([arr], [c], None, [256], [0, 256]).ravel().astype(np.int64)
        used = hist[hist > 0]
        step = (int(used.sum()) - int(used[-1])) // 255 if len(used) > 1 else 0
        if not step:
            luts.append(_LEVELS)
        else:
            below = np.concatenate([[0], np.cumsum(hist)[:-1]])  # pixels darker than each level
            luts.append(np.minimum((step // 2 + below) // step, 255))
    return _apply_lut(arr, np.stack(luts, 1))


def invert(arr: np.ndarray) -> np.ndarray:
    return _cv2().bitwise_not(arr)


def posterize(arr: np.ndarray, bits: int) -> np.ndarray:
    """Keep the top `bits` bits; 0 bits gives black, as `rand_augment._posterize`."""
    if bits >= 8:
        return arr
    if bits <= 0:
        return np.zeros_like(arr)
    return _apply_lut(arr, _LEVELS & ~(2 ** (8 - bits) - 1))


def solarize(arr: np.ndarray, threshold: int) -> np.ndarray:
    return _apply_lut(arr, np.where(_LEVELS < threshold, _LEVELS, 255 - _LEVELS))


def solarize_add(arr: np.ndarray, add: int, threshold: int = 128) -> np.ndarray:
    return _apply_lut(arr, np.where(_LEVELS < threshold, np.minimum(255, _LEVELS + add), _LEVELS))


def _blend_table(base: int, factor: float) -> np.ndarray:
    """`Image.blend` of a constant image `base` and the image, per level: base + factor * (level -
    base) in C float, truncated and clipped to 0..255, as PIL computes it."""
    return np.clip(np.float32(base) + np.float32(factor) * (_LEVELS - base).astype(np.float32), 0, 255)


def brightness(arr: np.ndarray, factor: float) -> np.ndarray:
    """`ImageEnhance.Brightness(img).enhance(factor)`: the image blended with black."""
    return _apply_lut(arr, _blend_table(0, factor))


def contrast(arr: np.ndarray, factor: float) -> np.ndarray:
    """`ImageEnhance.Contrast(img).enhance(factor)`: the image blended with the grey of its mean
    luma (PIL's own RGB -> L conversion, rounded as ImageStat's mean is)."""
    luma = np.asarray(Image.fromarray(arr).convert("L"))
    mean = int(int(luma.sum(dtype=np.int64)) / luma.size + 0.5)
    return _apply_lut(arr, _blend_table(mean, factor))


LUT_OPS = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
    "Posterize": posterize,
    "PosterizeIncreasing": posterize,
    "PosterizeOriginal": posterize,
    "Solarize": solarize,
    "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add,
    "Brightness": brightness,
    "BrightnessIncreasing": brightness,
    "Contrast": contrast,
    "ContrastIncreasing": contrast,
}


def affine(arr: np.ndarray, matrix, resample: int, fill) -> np.ndarray:
    """PIL `img.transform(size, AFFINE, matrix, resample, fillcolor=fill)` with OpenCV.

    PIL maps output pixel (x, y) to input point matrix @ (x + 0.5, y + 0.5, 1) and samples there
    with pixel centres at +0.5; OpenCV's inverse map uses integer centres, hence the shifted offset.
    """
    a, b, c, d, e, f = matrix
    m = np.array(
        [[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]],
        np.float64,
    )
    cv2 = _cv2()
    size = (arr.shape[1], arr.shape[0])
    flags = cv2.WARP_INVERSE_MAP
    # PIL interpolates any point inside the image with its edge pixels repeated, and fills points
    # outside: a replicated-border warp, then the fill where a nearest-neighbour warp of a mask of
    # ones lands outside (OpenCV's constant border would blend the fill into the edge pixels).
    # In float32, clamped and truncated to uint8 as PIL's filters do (rounding instead would make
    # every warped image ~0.4 levels brighter than PIL's); bilinear then gives PIL's pixels.
    out = cv2.warpAffine(
        arr.astype(np.float32), m, size, flags=_flag(resample) | flags, borderMode=cv2.BORDER_REPLICATE
    )
    out = np.clip(out, 0, 255, out=out).astype(np.uint8)
    inside = cv2.warpAffine(
        np.ones(arr.shape[:2], np.uint8),
        m,
        size,
        flags=cv2.INTER_NEAREST | flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return cv2.copyTo(out, inside, _fill_image(arr.shape, tuple(int(v) for v in fill)).copy())


@functools.lru_cache(maxsize=16)
def _fill_image(shape: tuple[int, ...], fill: tuple[int, ...]) -> np.ndarray:
    img = np.empty(shape, np.uint8)
    img[:] = np.asarray(fill, np.uint8)
    img.flags.writeable = False
    return img


def rotation_matrix(width: int, height: int, degrees: float) -> tuple[float, ...]:
    """The affine matrix of PIL's `Image.rotate(degrees)` (centre of the image, no expansion)."""
    angle = -math.radians(degrees)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    cx, cy = width / 2, height / 2
    return (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)


def rotate(arr: np.ndarray, degrees: float, resample: int, fill) -> np.ndarray:
    if degrees % 360.0 == 0:
        return arr.copy()
    return affine(arr, rotation_matrix(arr.shape[1], arr.shape[0], degrees), resample, fill)


def sharpness(arr: np.ndarray, factor: float) -> np.ndarray:
    """`ImageEnhance.Sharpness(img).enhance(factor)`: blend of PIL's SMOOTH-filtered image (its
    one-pixel border left unfiltered, as PIL's 3x3 filter does) and the image."""
    cv2 = _cv2()
    smooth = cv2.filter2D(arr, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = arr[0], arr[-1], arr[:, 0], arr[:, -1]
    # Image.blend truncates smooth + factor * (img - smooth) towards zero: round(v - 0.499) is
    # floor(v), and keeps v where v is a whole number (where the two images agree)
    return cv2.addWeighted(arr, factor, smooth, 1.0 - factor, -0.499)
