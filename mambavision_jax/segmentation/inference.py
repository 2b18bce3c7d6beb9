"""Whole-image and sliding-window inference as mmseg's test mode does it.

The test pipeline resizes an image to fit `config.test_scale` = (long, short) keeping its
aspect ratio (mmcv's `Resize(scale=(2048, 512), keep_ratio=True)`: OpenCV bilinear on the 8-bit
image), normalises it, runs the model on the whole image ("whole", the official configs' mode)
or on `crop_size` crops every `stride` pixels averaged where they overlap ("slide"), and
resizes the logits back to the original image (bilinear, align_corners=False).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax.errors import UserError
from mambavision_jax.segmentation.layers import resize_bilinear
from mambavision_jax.train.config import SEG_TEST_MODES as MODES


@cache
def ade20k_metainfo() -> tuple[tuple[str, ...], np.ndarray]:
    """ADE20K's 150 class names and their (150, 3) uint8 palette (mmseg's ADE20KDataset)."""
    data = json.loads(resources.files("mambavision_jax.segmentation").joinpath("ade20k.json").read_text())
    return tuple(data["classes"]), np.asarray(data["palette"], np.uint8)


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's rescale_size with keep_ratio: the largest (h, w) with the long edge <= max(scale)
    and the short edge <= min(scale), rounded half up."""
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(h, w), short_max / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An 8-bit (H, W, 3) image at `size` = (h, w), as mmcv.imresize (cv2 INTER_LINEAR)."""
    import cv2

    if image.shape[:2] == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """(H, W, 3) 0-255 RGB -> float32 (x - mean) / std."""
    return (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@nnx.jit
def _logits(model, x):
    return model(x)


def slide_windows(
    h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """mmseg's slide_inference grid: (y1, y2, x1, x2) per crop; the last row / column is shifted
    back to end at the border, and an image smaller than the crop is one crop of its size."""
    (hc, wc), (hs, ws) = crop, stride
    rows = max(h - hc + hs - 1, 0) // hs + 1
    cols = max(w - wc + ws - 1, 0) // ws + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * hs + hc, h), min(c * ws + wc, w)
            out.append((max(y2 - hc, 0), y2, max(x2 - wc, 0), x2))
    return out


def slide_logits(model, x: jax.Array) -> jax.Array:
    """mmseg's `slide_inference` on normalised images (B, H, W, 3): each crop's logits (at the
    crop size), summed into place and divided by the number of crops covering each pixel."""
    b, h, w, _ = x.shape
    boxes = slide_windows(h, w, model.config.crop_size, model.config.stride)
    crops = jnp.concatenate([x[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])  # all one size
    logits = _logits(model, crops).reshape(len(boxes), b, *crops.shape[1:3], -1)
    preds = jnp.zeros((b, h, w, logits.shape[-1]), jnp.float32)
    count = np.zeros((h, w, 1), np.float32)
    for (y1, y2, x1, x2), crop in zip(boxes, logits):
        preds = preds.at[:, y1:y2, x1:x2].add(crop)
        count[y1:y2, x1:x2] += 1
    return preds / jnp.asarray(count)


def segment_image(model, image: np.ndarray, *, mode: str = "whole") -> np.ndarray:
    """Logits (H, W, classes) float32 of one 8-bit RGB image at its own size, as the official test
    mode computes them (see the module docstring). `model`: a UperNet in eval mode."""
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise UserError(f"expected an 8-bit RGB image (H, W, 3) uint8, got {image.shape} {image.dtype}")
    cfg = model.config
    h, w = image.shape[:2]
    size = rescale_size(h, w, cfg.test_scale)
    if min(size) < 32:
        raise UserError(
            f"image {w}x{h} is too small: at the test scale it is {size[1]}x{size[0]}, under 32 px"
        )
    x = jnp.asarray(normalize(resize_image(image, size), cfg.mean, cfg.std))[None]
    logits = _logits(model, x) if mode == "whole" else slide_logits(model, x)
    return np.asarray(resize_bilinear(logits, (h, w))[0])


def segment_labels(model, image: np.ndarray, *, mode: str = "whole") -> np.ndarray:
    """Class indices (H, W) uint8 (int32 above 256 classes) of one 8-bit RGB image."""
    labels = segment_image(model, image, mode=mode).argmax(-1)
    return labels.astype(np.uint8 if model.num_classes <= 256 else np.int32)
