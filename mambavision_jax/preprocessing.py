"""A model's eval preprocessing: the variant's official transform (its pretrained cfg: image size,
crop_pct, crop_mode, interpolation, mean / std), as timm's validate.py applies it, with what the
weights say (a Hugging Face config.json, a training run's data config; see `weights.load`) and
explicit arguments on top."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mambavision_jax.errors import UserError
from mambavision_jax.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Preprocessing", "resolve_preprocessing"]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The eval transform: bicubic resize (short side to floor(image_size / crop_pct) for 'center',
    both sides for 'squash'), center crop to image_size, normalise with mean / std."""

    image_size: int = 224
    crop_pct: float = 1.0
    crop_mode: str = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __call__(self, img) -> np.ndarray:
        """A PIL image / encoded bytes / uint8 array -> float32 (image_size, image_size, 3)."""
        from mambavision_jax.data.transforms import eval_transform

        return eval_transform(
            img, self.image_size, self.crop_pct, self.crop_mode, self.mean, self.std, self.interpolation
        )


def resolve_preprocessing(
    model=None,
    *,
    image_size: int | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    hf_config: dict | None = None,
    hints: dict | None = None,
) -> Preprocessing:
    """The model's official eval preprocessing (from `model.pretrained_cfg`: its variant's), then
    the fields of a Hugging Face config (crop_pct, crop_mode, mean, std), then what the weights say
    (`hints`, from `weights.load`: a config.json's fields, a training run's data config), then the
    explicit arguments, each overriding the one before. A value out of range is a UserError."""
    cfg = getattr(model, "pretrained_cfg", None)
    kw: dict[str, Any] = {}
    if cfg is not None:
        kw = dict(
            image_size=int(cfg.input_size[-1]),
            crop_pct=float(cfg.crop_pct),
            crop_mode=cfg.crop_mode,
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            interpolation=cfg.interpolation,
        )
    for key in ("crop_pct", "crop_mode", "mean", "std"):
        if hf_config and hf_config.get(key) is not None:
            kw[key] = tuple(hf_config[key]) if key in ("mean", "std") else hf_config[key]
    for key, val in (hints or {}).items():
        if val is not None:
            kw[key] = tuple(val) if key in ("mean", "std") else val
    for key, val in (("image_size", image_size), ("crop_pct", crop_pct), ("crop_mode", crop_mode)):
        if val is not None:
            kw[key] = val
    pre = Preprocessing(**kw)
    if pre.crop_mode not in ("center", "squash"):
        raise UserError(f"crop_mode must be 'center' or 'squash', got {pre.crop_mode!r}")
    if not 0 < pre.crop_pct <= 1.0:
        raise UserError(f"crop_pct must be in (0, 1], got {pre.crop_pct}")
    if int(pre.image_size) < 1:
        raise UserError(f"image_size must be >= 1, got {pre.image_size}")
    return pre
