"""Decoding any stored image to 8-bit RGB, and PNG encoding.

One conversion is shared by the dataset builders and the input pipeline, so an image reads the same
way when it is stored and when it is trained on. Plain `Image.convert("RGB")` is what torchvision's
ImageFolder does and is kept for every mode except the high-bit-depth ones, where PIL clips values
above 255 instead of scaling them (a 16-bit PNG would come out nearly white).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb_uint8(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB PIL image.

    Grayscale, palette, CMYK, YCbCr and alpha modes go through `convert("RGB")` (alpha is dropped,
    as torchvision's loader does); 16-bit and 32-bit integer images are scaled from 0..65535 to
    0..255; float images are taken as 0..1 when their maximum is <= 1, else as 0..255.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I":
        arr = np.asarray(img).astype(np.float64)
        # A 32-bit 'I' image holding 8-bit values (e.g. a converted L image) must not be darkened.
        if img.mode in _SIXTEEN_BIT_MODES or arr.max(initial=0) > 255:
            arr = arr / 257.0  # 65535 / 257 = 255 exactly
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes -> fully decoded 8-bit RGB PIL image (raises on corrupt data)."""
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now: truncated / corrupt files fail here, not later in a transform
    return to_rgb_uint8(img)


def to_pil_rgb(img) -> Image.Image:
    """A PIL image, encoded bytes, or a uint8 array (H, W), (H, W, 1), (H, W, 3), (H, W, 4) -> RGB PIL."""
    if isinstance(img, Image.Image):
        return to_rgb_uint8(img)
    if isinstance(img, (bytes, bytearray, memoryview)):
        return decode_rgb(bytes(img))
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB")
    raise ValueError(f"cannot read an image of shape {arr.shape}")


def encode_png(img: Image.Image) -> bytes:
    """Lossless PNG bytes; a fixed compression level keeps the bytes reproducible."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
