"""Pictures of a segmentation: the labels as a palette PNG, and the image overlaid with class
colours beside a legend of the classes present (largest first)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mambavision_jax.errors import UserError


def palette_image(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Mode "P" image: pixel value = class index, the file's palette = the class colours (a
    viewer shows colours, a reader gets the indices back with np.asarray(Image.open(...)))."""
    if labels.max(initial=0) > 255:
        raise UserError("a palette PNG holds at most 256 classes")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = palette[:256]
    img.putpalette(flat.reshape(-1).tolist())
    return img


def overlay_image(
    image: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    class_names,
    *,
    alpha: float = 0.5,
    max_legend: int = 20,
) -> Image.Image:
    """The RGB image blended with the class colours (`alpha` of colour), with a legend column of
    the classes present, by share of pixels (at most `max_legend`, the rest counted)."""
    colours = palette[labels % len(palette)].astype(np.float32)
    blend = (image.astype(np.float32) * (1 - alpha) + colours * alpha).round().astype(np.uint8)
    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    h, w = labels.shape
    font = ImageFont.load_default()
    row = 16
    shown = order[:max_legend]
    legend_w = 200
    canvas = Image.new("RGB", (w + legend_w, max(h, row * (len(shown) + 2))), (255, 255, 255))
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, j in enumerate(shown):
        cls, share = int(ids[j]), counts[j] / labels.size
        y = 4 + k * row
        draw.rectangle([w + 6, y, w + 18, y + 12], fill=tuple(int(c) for c in palette[cls % len(palette)]))
        name = class_names[cls] if cls < len(class_names) else str(cls)
        draw.text((w + 24, y), f"{name} {100 * share:.1f}%", fill=(0, 0, 0), font=font)
    if len(order) > len(shown):
        draw.text(
            (w + 6, 4 + len(shown) * row), f"+ {len(order) - len(shown)} more", fill=(0, 0, 0), font=font
        )
    return canvas
