"""RandAugment with timm's semantics (`timm/data/auto_augment.py`, timm 1.0.x), on PIL images.

Ported so the official recipe `rand-m9-mstd0.5-inc1` runs without torch. The ops and the
magnitude -> argument maps are timm's, line for line (tests/test_preprocess.py checks every op
against timm's own functions). The one change: randomness comes from an explicit
`np.random.Generator` (seeded per example by the pipeline) instead of the global `random` /
`np.random` state, so a data stream is reproducible and resumable; the distributions are timm's.
`resampler="cv2"` swaps the costly ops (geometric, Sharpness) for approximate OpenCV versions and
runs the table-lookup ops on arrays (exact).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mambavision_jax.data import opencv_ops

_LEVEL_DENOM = 10.0  # the 'Mx' magnitude scale: level / 10 is the fraction of an op's range
_FILL = (128, 128, 128)
_BILINEAR, _BICUBIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC
_RANDOM_INTERPOLATION = (_BILINEAR, _BICUBIC)

# timm's op sets. 'inc1' selects the increasing one: every op gets stronger as the magnitude grows.
RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


# ---- ops (timm's functions; geometric ones take the resample filter and fill colour) ----


# PIL's affine matrix (output pixel -> input point) of each shear / translate op, from its argument
# and the image's (width, height); shared by the PIL ops and their OpenCV versions.
_AFFINE_MATRIX = {
    "ShearX": lambda factor, w, h: (1, factor, 0, 0, 1, 0),
    "ShearY": lambda factor, w, h: (1, 0, 0, factor, 1, 0),
    "TranslateX": lambda pixels, w, h: (1, 0, pixels, 0, 1, 0),
    "TranslateY": lambda pixels, w, h: (1, 0, 0, 0, 1, pixels),
    "TranslateXRel": lambda pct, w, h: (1, 0, pct * w, 0, 1, 0),
    "TranslateYRel": lambda pct, w, h: (1, 0, 0, 0, 1, pct * h),
}


def _affine_op(name):
    def op(img, arg, resample, fill):
        matrix = _AFFINE_MATRIX[name](arg, *img.size)
        return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)

    return op


def _rotate(img, degrees, resample, fill):
    return img.rotate(degrees, resample=resample, fillcolor=fill)


def _solarize_add(img, add, thresh=128):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    if img.mode in ("L", "RGB"):
        return img.point(lut * 3 if img.mode == "RGB" else lut)
    return img


def _posterize(img, bits_to_keep):
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        # Keeping 0 bits: older Pillow returned a black image (mask 0), which is what timm produced in
        # the official runs; Pillow 13 raises instead (PosterizeIncreasing at magnitude 10).
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


_GEOMETRIC = {"Rotate": _rotate, **{name: _affine_op(name) for name in _AFFINE_MATRIX}}
_PIXEL = {
    "AutoContrast": lambda img: ImageOps.autocontrast(img),
    "Equalize": lambda img: ImageOps.equalize(img),
    "Invert": lambda img: ImageOps.invert(img),
    "Posterize": _posterize,
    "PosterizeIncreasing": _posterize,
    "PosterizeOriginal": _posterize,
    "Solarize": lambda img, t: ImageOps.solarize(img, t),
    "SolarizeIncreasing": lambda img, t: ImageOps.solarize(img, t),
    "SolarizeAdd": _solarize_add,
    "Color": lambda img, f: ImageEnhance.Color(img).enhance(f),
    "ColorIncreasing": lambda img, f: ImageEnhance.Color(img).enhance(f),
    "Contrast": lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    "ContrastIncreasing": lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    "Brightness": lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    "BrightnessIncreasing": lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    "Sharpness": lambda img, f: ImageEnhance.Sharpness(img).enhance(f),
    "SharpnessIncreasing": lambda img, f: ImageEnhance.Sharpness(img).enhance(f),
}
OP_NAMES = tuple(_GEOMETRIC) + tuple(_PIXEL)
# Ops whose argument timm negates with probability 1/2 (`_randomly_negate`).
SIGNED_OPS = frozenset(
    {
        "Rotate",
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "TranslateXRel",
        "TranslateYRel",
        "ColorIncreasing",
        "ContrastIncreasing",
        "BrightnessIncreasing",
        "SharpnessIncreasing",
    }
)


def op_args(name: str, magnitude: float, negate: bool = False, hparams: dict | None = None) -> tuple:
    """timm's LEVEL_TO_ARG[name](magnitude) with the random sign made explicit."""
    hparams = hparams or {}
    level = magnitude / _LEVEL_DENOM
    sign = -1.0 if negate else 1.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (sign * level * 30.0,)
    if name in ("ShearX", "ShearY"):
        return (sign * level * 0.3,)
    if name in ("TranslateX", "TranslateY"):
        return (sign * level * float(hparams.get("translate_const", 250)),)
    if name in ("TranslateXRel", "TranslateYRel"):
        return (sign * level * hparams.get("translate_pct", 0.45),)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (level * 1.8 + 0.1,)
    if name.endswith("Increasing") and not name.startswith(("Posterize", "Solarize")):
        return (max(0.1, 1.0 + sign * level * 0.9),)  # 1.0 = no change; keep the factor >= 0.1
    if name == "Posterize":
        return (int(level * 4),)
    if name == "PosterizeIncreasing":
        return (4 - int(level * 4),)
    if name == "PosterizeOriginal":
        return (int(level * 4) + 4,)
    if name == "Solarize":
        return (min(256, int(level * 256)),)
    if name == "SolarizeIncreasing":
        return (256 - min(256, int(level * 256)),)
    if name == "SolarizeAdd":
        return (min(128, int(level * 110)),)
    raise KeyError(f"unknown RandAugment op {name!r}")


def apply_op(
    img,
    name: str,
    magnitude: float,
    *,
    negate: bool = False,
    resample=_BICUBIC,
    fill=_FILL,
    hparams: dict | None = None,
    resampler: str = "pil",
):
    """Apply one op at a fixed magnitude and sign (deterministic; for tests and reuse).

    resampler 'pil': timm's op on a PIL image. 'cv2': the geometric ops and Sharpness run with
    OpenCV on a uint8 array (`opencv_ops`, approximate), the table-lookup ops on the array too
    (`opencv_ops.LUT_OPS`, exact), Color with PIL; `img` may then be a PIL image or a
    uint8 HWC array, and so may the result (np.asarray gives its pixels).
    """
    args = op_args(name, magnitude, negate, hparams)
    if resampler == "cv2" and name in opencv_ops.LUT_OPS:
        return opencv_ops.LUT_OPS[name](opencv_ops.as_array(img), *args)
    if resampler == "cv2" and (name in _GEOMETRIC or name.startswith("Sharpness")):
        arr = opencv_ops.as_array(img)
        if name == "Rotate":
            return opencv_ops.rotate(arr, *args, resample, fill)
        if name in _GEOMETRIC:
            matrix = _AFFINE_MATRIX[name](*args, arr.shape[1], arr.shape[0])
            return opencv_ops.affine(arr, matrix, resample, fill)
        return opencv_ops.sharpness(arr, *args)
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    if name in _GEOMETRIC:
        return _GEOMETRIC[name](img, *args, resample=resample, fill=tuple(fill))
    return _PIXEL[name](img, *args)


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """`num_layers` ops drawn uniformly with replacement, each applied with probability `prob`.

    magnitude_std > 0 draws the magnitude per op from N(magnitude, std) (inf: uniform in
    [0, magnitude]), clipped to [0, magnitude_max or 10], as timm's AugmentOp does.
    interpolation None = bilinear or bicubic at random per geometric op (timm's default when the
    training interpolation is 'random'). resampler 'cv2': the approximate OpenCV geometric ops and
    Sharpness and the exact array versions of the table-lookup ops (`apply_op`), with the same
    random draws as 'pil' (timm's pixels).
    """

    ops: tuple[str, ...] = RAND_TRANSFORMS
    num_layers: int = 2
    magnitude: float = 10.0
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float | None = None
    fill: tuple[int, int, int] = _FILL
    interpolation: int | None = None
    translate_const: int = 250
    translate_pct: float = 0.45
    resampler: str = "pil"

    def __post_init__(self):
        opencv_ops.check_resampler(self.resampler)

    def __call__(self, img, rng: np.random.Generator):
        hparams = {"translate_const": self.translate_const, "translate_pct": self.translate_pct}
        for k in rng.integers(0, len(self.ops), size=self.num_layers):
            name = self.ops[int(k)]
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            magnitude = self.magnitude
            if self.magnitude_std == float("inf"):
                magnitude = rng.uniform(0.0, magnitude)
            elif self.magnitude_std > 0:
                magnitude = rng.normal(magnitude, self.magnitude_std)
            magnitude = max(0.0, min(magnitude, self.magnitude_max or _LEVEL_DENOM))
            negate = bool(rng.random() > 0.5) if name in SIGNED_OPS else False
            resample = self.interpolation
            if name in _GEOMETRIC and resample is None:
                resample = _RANDOM_INTERPOLATION[int(rng.integers(0, 2))]
            img = apply_op(
                img,
                name,
                magnitude,
                negate=negate,
                resample=resample,
                fill=self.fill,
                hparams=hparams,
                resampler=self.resampler,
            )
        return img


def rand_augment_transform(
    config_str: str,
    *,
    fill=_FILL,
    interpolation: int | None = None,
    translate_const: int = 250,
    resampler: str = "pil",
) -> RandAugment:
    """Parse a timm RandAugment string, e.g. 'rand-m9-mstd0.5-inc1' (official MambaVision).

    Sections (timm): m = magnitude, n = number of ops, p = per-op probability, mstd = magnitude
    noise std (> 100 means uniform), mmax = magnitude upper bound, inc = increasing op set.
    timm's weighted op sets ('t' section) are not ported.
    """
    parts = config_str.split("-")
    if parts[0] != "rand":
        raise ValueError(f"not a RandAugment config: {config_str!r}")
    kw: dict = {}
    increasing = False
    for c in parts[1:]:
        if c.startswith("t"):
            raise NotImplementedError(f"weighted RandAugment op sets ({c!r}) are not ported")
        cs = re.split(r"(\d.*)", c)
        if len(cs) < 2:
            continue
        key, val = cs[:2]
        if key == "mstd":
            kw["magnitude_std"] = float("inf") if float(val) > 100 else float(val)
        elif key == "mmax":
            kw["magnitude_max"] = int(val)
        elif key == "inc":
            increasing = bool(int(val))
        elif key == "m":
            kw["magnitude"] = float(int(val))
        elif key == "n":
            kw["num_layers"] = int(val)
        elif key == "p":
            kw["prob"] = float(val)
        else:
            raise ValueError(f"unknown RandAugment config section {c!r} in {config_str!r}")
    ops = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
    return RandAugment(
        ops=ops,
        fill=tuple(fill),
        interpolation=interpolation,
        translate_const=translate_const,
        resampler=resampler,
        **kw,
    )
