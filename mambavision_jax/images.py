"""Robust image reading for prediction and folder evaluation: any file PIL can decode -> 8-bit RGB.

`load_image(path)` handles
  - grayscale ("1", "L"), palette ("P", with or without transparency), CMYK / YCbCr / LAB / HSV:
    converted to RGB with PIL's conversions;
  - alpha ("RGBA", "LA", "PA", palette transparency): composited on white by default
    (`alpha="white"`; any (r, g, b) colour works), or dropped (`alpha="drop"`: what torchvision's /
    timm's loader and this package's dataset builder do, so use it to reproduce their numbers);
  - 16-bit and 32-bit integer images ("I;16*", "I") and float images ("F"): scaled to 0..255 as
    `mambavision_jax.data.image_io.to_rgb_uint8` does (65535 -> 255, i.e. / 257, rounded), not
    clipped as `Image.convert` would;
  - EXIF orientation (`exif_transpose=True`, the default): the pixels are rotated / flipped as a
    viewer shows them. The official ImageNet evaluation ignores EXIF, so `evaluate` turns it off;
  - huge images: PIL's own decompression-bomb check is replaced by `max_pixels` (default
    `DEFAULT_MAX_PIXELS`, 2x PIL's warning threshold, i.e. where PIL raises). A JPEG above it is
    decoded at a reduced scale with `Image.draft` (1/2, 1/4 or 1/8, done by the decoder, so the
    full image is never in memory) when that brings it under the limit; any other image above the
    limit raises `ImageTooLargeError`. `max_pixels=None` removes the limit;
  - animated / multi-page files: the first frame.

Every failure (missing file, not an image, truncated or corrupt data, too large) raises
`ImageReadError` (an OSError) whose message names the file.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mambavision_jax.errors import UserError
from mambavision_jax.paths import is_remote

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "ImageTooLargeError",
    "IMAGE_EXTENSIONS",
    "check_image_paths",
    "load_image",
    "to_rgb",
    "is_image_file",
]

# PIL warns above Image.MAX_IMAGE_PIXELS (89,478,485 by default) and raises above twice that.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

# What folder evaluation picks up (lower case); other files in class folders are ignored.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".jfif",
    ".jpe",
    ".ico",
    ".tga",
)

_WHITE = (255, 255, 255)
_PIL_LIMIT_LOCK = threading.Lock()


class ImageReadError(OSError):
    """The file could not be read as an image; the message names the file and the reason."""


class ImageTooLargeError(ImageReadError):
    """The image has more pixels than the allowed limit."""


def check_image_paths(paths, *, folder_hint: str = "") -> None:
    """Refuse, before any work, image arguments of a command that cannot be read: a URL (images
    are read from a local disk), a folder (`folder_hint` says what reads folders), a missing file."""
    for img in paths:
        if is_remote(img):
            raise UserError(f"{img}: images are read from a local disk; copy them there first")
        if Path(img).is_dir():
            raise IsADirectoryError(f"{img} is a folder, not an image file{folder_hint}")
        if not Path(img).is_file():
            raise FileNotFoundError(f"{img}: no such image file")


def is_image_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


@contextlib.contextmanager
def _pil_bomb_check_off():
    """PIL checks decompression bombs against a module global when it opens a file; our own check
    (`max_pixels`) replaces it, so switch PIL's off while the header is read."""
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


@contextlib.contextmanager
def _truncated_ok():
    with _PIL_LIMIT_LOCK:
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old


def _background(alpha) -> tuple[int, int, int] | None:
    if alpha == "drop":
        return None
    if alpha == "white":
        return _WHITE
    if alpha == "black":
        return (0, 0, 0)
    if isinstance(alpha, (tuple, list)) and len(alpha) == 3:
        return tuple(int(c) for c in alpha)
    raise ValueError(f"alpha must be 'white', 'black', 'drop' or an (r, g, b) colour, got {alpha!r}")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )


def to_rgb(img: Image.Image, alpha="white") -> Image.Image:
    """Any PIL image -> 8-bit RGB (see the module doc for each mode and `alpha`)."""
    from mambavision_jax.data.image_io import to_rgb_uint8  # the dataset builder's conversion

    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    background = _background(alpha)
    if _has_alpha(img):
        if background is None:  # drop: what torchvision / the dataset builder do
            return img.convert("RGB")
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return to_rgb_uint8(img)


def _draft_scale(img: Image.Image, max_pixels: int) -> Image.Image | None:
    """Ask the JPEG decoder for the largest 1/2, 1/4 or 1/8 scale under max_pixels (None: no scale
    is small enough, or not a JPEG)."""
    if img.format != "JPEG":
        return None
    w, h = img.size
    for scale in (2, 4, 8):
        dw, dh = -(-w // scale), -(-h // scale)  # the decoder rounds up
        if dw * dh <= max_pixels:
            img.draft("RGB" if img.mode in ("RGB", "YCbCr") else img.mode, (dw, dh))
            return img if img.size[0] * img.size[1] <= max_pixels else None
    return None


def load_image(
    path: str | os.PathLike,
    *,
    alpha="white",
    exif_transpose: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_truncated: bool = False,
) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image (fully decoded).

    alpha: 'white' (default) / 'black' / (r, g, b): composite transparent pixels on that colour;
        'drop': discard the alpha channel (torchvision's ImageFolder / timm behaviour).
    exif_transpose: apply the EXIF orientation tag (default True).
    max_pixels: refuse (or, for JPEG, decode downscaled) images with more pixels; None: no limit.
    allow_truncated: decode truncated files, filling the missing part with grey, instead of failing.
    Raises ImageReadError (an OSError) naming the file on any failure.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")
    try:
        # PIL does not own (nor close, nor destroy) an image opened from a file object: the
        # decoded pixels outlive the `with`.
        with open(path, "rb") as f:
            with _pil_bomb_check_off():
                img = Image.open(f)
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels and _draft_scale(img, max_pixels) is None:
                raise ImageTooLargeError(
                    f"{path}: {w}x{h} = {w * h:,} pixels is above the limit of {max_pixels:,} "
                    f"(a decompression-bomb guard); to read it, raise the limit (--max_pixels N, 0 for "
                    f"none, on the command line; max_pixels=N or None in Python) or downscale the file"
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if allow_truncated:
                with _truncated_ok():
                    img.load()
            else:
                img.load()  # decode now: truncated / corrupt data fails here, with the file named
            if exif_transpose:
                img = ImageOps.exif_transpose(img) or img
            return to_rgb(img, alpha)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from e
