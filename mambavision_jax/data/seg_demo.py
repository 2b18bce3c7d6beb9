"""The embedded segmentation demo set `mv_seg_digits`: scikit-learn's handwritten digits pasted onto
coloured backgrounds, with per-pixel labels (0 = background, 1 + d = digit d's strokes).

No network: the digits ship inside scikit-learn. 64x64 RGB images, one or two digits each (32 to
52 px, random colours and places, the second on top), on a two-colour gradient with noise.
Training images take their digits from the digits' train split and test images from their test
split (`digits.digits_split`), so no digit drawing is in both. Stored as a segmentation data set of
this package (`seg_datasets`): PNG images and label maps, built on first use (~2 s).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mambavision_jax.data.digits import _build_lock, digits_split
from mambavision_jax.data.image_io import encode_png
from mambavision_jax.data.seg_datasets import build_seg_dataset

SEG_DIGITS_NAME = "mv_seg_digits"
SEG_DIGITS_CLASSES = ["background"] + [str(d) for d in range(10)]
SEG_DIGITS_SIZE = 64
SEG_DIGITS_SPLITS = {"train": 1200, "test": 200}
SEG_DIGITS_VERSION = "1.2.0"  # 1.2.0: larger, thicker digits (32-52 px, strokes at > 0.3), one or two
_SEEDS = {"train": 0, "test": 1}


def _render(rs: np.random.RandomState, digits: np.ndarray, targets: np.ndarray, size: int):
    """One image (uint8 (size, size, 3)) and its label map (uint8 (size, size))."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    angle = rs.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    c0, c1 = rs.uniform(0, 255, 3), rs.uniform(0, 255, 3)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None] + rs.normal(0, 8, (size, size, 3))
    label = np.zeros((size, size), np.uint8)
    for _ in range(rs.randint(1, 3)):
        i = rs.randint(len(digits))
        s = rs.randint(32, 53)
        grey = Image.fromarray(np.uint8(np.rint(digits[i] * (255.0 / 16.0))), "L")
        m = np.asarray(grey.resize((s, s), Image.Resampling.BILINEAR), np.float64) / 255.0
        y, x = rs.randint(0, size - s + 1), rs.randint(0, size - s + 1)
        background = img[y : y + s, x : x + s].mean(axis=(0, 1))
        colour = rs.uniform(0, 255, 3)
        while np.abs(colour - background).max() < 90:  # keep the strokes visible
            colour = rs.uniform(0, 255, 3)
        patch = img[y : y + s, x : x + s]
        img[y : y + s, x : x + s] = patch * (1 - m[..., None]) + colour * m[..., None]
        label[y : y + s, x : x + s][m > 0.3] = 1 + int(targets[i])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


def _examples(split: str):
    from sklearn.datasets import load_digits

    def gen():
        digits = load_digits()
        index = digits_split()[0 if split == "train" else 1]
        rs = np.random.RandomState(_SEEDS[split])
        for n in range(SEG_DIGITS_SPLITS[split]):
            img, label = _render(rs, digits.images[index], digits.target[index], SEG_DIGITS_SIZE)
            key = f"{split}_{n:05d}"
            yield (
                key,
                {
                    "image": encode_png(Image.fromarray(img, "RGB")),
                    "segmentation": encode_png(Image.fromarray(label, "L")),
                    "file_name": key + ".png",
                },
            )

    return gen


def build_seg_digits(data_dir: str | None = None) -> str:
    """Prepare `mv_seg_digits` in `data_dir` (TFDS default if None) unless it is there; returns its
    folder."""
    data_dir = os.fspath(data_dir or tfds.core.constants.DATA_DIR)
    with _build_lock(data_dir, SEG_DIGITS_NAME):
        return build_seg_dataset(
            SEG_DIGITS_NAME,
            {split: _examples(split) for split in SEG_DIGITS_SPLITS},
            SEG_DIGITS_CLASSES,
            reduce_zero_label=False,
            data_dir=data_dir,
            description="scikit-learn digits pasted on coloured backgrounds; labels 0 background, 1 + digit.",
            version=SEG_DIGITS_VERSION,
        )
