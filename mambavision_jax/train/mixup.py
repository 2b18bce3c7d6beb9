"""On-device Mixup / CutMix with timm's ``mode='batch'`` semantics (jittable, NHWC).

The official run (``mixup 0.8, cutmix 1.0, mixup_prob 1.0, mixup_switch_prob 0.5,
mixup_mode batch, smoothing 0.1``, ``correct_lam=True`` default) mixes per batch:

* ``_params_per_batch``: with probability ``prob`` mix at all; then cutmix with probability
  ``switch_prob`` (lam ~ Beta(cutmix_alpha)), else mixup (lam ~ Beta(mixup_alpha)).
* every image ``i`` is paired with image ``B-1-i`` (``x.flip(0)``).
* mixup: ``x * lam + x.flip(0) * (1 - lam)``.
* cutmix (`rand_bbox`): ``cut = int(H * sqrt(1 - lam))``, a uniform integer centre, the box clipped
  to the image, and (``correct_lam``) ``lam = 1 - box_area / (H * W)``; pixels inside the box come
  from the flipped batch.
* targets (`mixup_target`): ``lam * smooth(y) + (1 - lam) * smooth(y).flip(0)`` with
  ``off = smoothing / num_classes``, ``on = 1 - smoothing + off``.

With the default prefetcher the official loader uses `FastCollateMixup`, which does the same on the
uint8 images before normalisation and rounds mixup results with ``rint``; `apply_mix` does exactly
that when given integer images. On float (normalised) images mixing commutes with the per-channel
affine normalisation, so the only difference is that rounding. Note also that each official
process (GPU) mixes its own local batch of 128 with its own lam: ``num_groups`` reproduces that.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "MixParams",
    "smooth_labels",
    "mixup_target",
    "sample_mix_params",
    "apply_mix",
    "cutmix_box",
    "mixup_cutmix",
]


class MixParams(NamedTuple):
    lam: jax.Array  # float32 (): lam used for the targets (box-corrected for cutmix)
    use_cutmix: jax.Array  # bool ()
    box: jax.Array  # int32 (4,): yl, yh, xl, xh (half-open); empty unless cutmix


def smooth_labels(labels, num_classes: int, smoothing: float = 0.1):
    """timm `mixup_target`'s smoothed one-hot: ``off = s / C``, ``on = 1 - s + off`` (float32)."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return onehot * jnp.float32(on - off) + jnp.float32(off)


def mixup_target(labels, num_classes: int, lam, smoothing: float = 0.1):
    """``y * lam + y.flip(0) * (1 - lam)`` with ``y = smooth_labels(labels)`` (timm)."""
    y = smooth_labels(labels, num_classes, smoothing)
    lam = jnp.asarray(lam, jnp.float32)
    return y * lam + y[::-1] * (1.0 - lam)


def cutmix_box(lam, cy, cx, height: int, width: int):
    """The CutMix box of area ~(1 - lam) centred at (cy, cx), clipped to the image: timm's
    `rand_bbox` (margin 0) with the centre given; returns int32 yl, yh, xl, xh."""
    ratio = jnp.sqrt(jnp.maximum(1.0 - lam, 0.0))
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)  # int(img_h * ratio)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    yl = jnp.clip(cy - cut_h // 2, 0, height)
    yh = jnp.clip(cy + (cut_h + 1) // 2, 0, height)
    xl = jnp.clip(cx - cut_w // 2, 0, width)
    xh = jnp.clip(cx + (cut_w + 1) // 2, 0, width)
    return yl, yh, xl, xh


def _beta_symmetric(key, alpha):
    """Beta(alpha, alpha) as G1 / (G1 + G2), G ~ Gamma(alpha), drawn in log space like
    `jax.random.beta` but with ONE (2,)-shaped loggamma call instead of two (half the compile)."""
    lg = jax.random.loggamma(key, jnp.broadcast_to(alpha, (2,)).astype(jnp.float32), (2,))
    m = jnp.max(lg)
    ga, gb = jnp.exp(lg[0] - m), jnp.exp(lg[1] - m)
    return (ga / (ga + gb)).astype(jnp.float32)


def sample_mix_params(
    key,
    height: int,
    width: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    correct_lam: bool = True,
) -> MixParams:
    """timm `Mixup._params_per_batch` + `cutmix_bbox_and_lam` (no ``cutmix_minmax``)."""
    if not (mixup_alpha > 0 or cutmix_alpha > 0):
        raise ValueError("one of mixup_alpha > 0 or cutmix_alpha > 0 is required")
    k_prob, k_switch, k_beta, k_cy, k_cx = jax.random.split(key, 5)
    apply = jax.random.uniform(k_prob) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    # timm draws one Beta(a, a) with a = cutmix_alpha or mixup_alpha; a traced alpha keeps it to a
    # single gamma sampler in the compiled graph (its rejection loops dominate compile time).
    alpha = jnp.where(use_cutmix, jnp.float32(cutmix_alpha), jnp.float32(mixup_alpha))
    lam = _beta_symmetric(k_beta, alpha)
    lam = jnp.where(apply, lam, jnp.float32(1.0))
    use_cutmix = jnp.logical_and(apply, use_cutmix)

    cy = jax.random.randint(k_cy, (), 0, height)
    cx = jax.random.randint(k_cx, (), 0, width)
    yl, yh, xl, xh = cutmix_box(lam, cy, cx, height, width)
    box = jnp.stack([yl, yh, xl, xh]).astype(jnp.int32)
    if correct_lam:
        area = ((yh - yl) * (xh - xl)).astype(jnp.float32)
        lam_box = 1.0 - area / jnp.float32(height * width)
        lam = jnp.where(use_cutmix, lam_box, lam)
    box = jnp.where(use_cutmix, box, jnp.zeros_like(box))
    return MixParams(lam=lam.astype(jnp.float32), use_cutmix=use_cutmix, box=box)


def apply_mix(images, labels, params: MixParams, num_classes: int, label_smoothing: float = 0.1):
    """Mix a batch (NHWC) with given parameters; returns ``(mixed, soft_targets)``.

    Float images: ``x * lam + x[::-1] * (1 - lam)`` (timm `Mixup`). Integer (uint8) images: mixed
    in float32, ``rint``-ed and cast back (timm `FastCollateMixup`). CutMix copies the box from
    ``x[::-1]`` in either case.
    """
    h, w = images.shape[1], images.shape[2]
    flipped = images[::-1]
    lam = params.lam
    if jnp.issubdtype(images.dtype, jnp.integer):
        mixed = images.astype(jnp.float32) * lam + flipped.astype(jnp.float32) * (1.0 - lam)
        mixed = jnp.rint(mixed).astype(images.dtype)
    else:
        lam_x = lam.astype(images.dtype)
        mixed = images * lam_x + flipped * (1 - lam_x)
    yl, yh, xl, xh = params.box[0], params.box[1], params.box[2], params.box[3]
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
    cut = jnp.where(inside[None, :, :, None], flipped, images)
    out = jnp.where(params.use_cutmix, cut, mixed)
    targets = mixup_target(labels, num_classes, lam, label_smoothing)
    return out, targets


def mixup_cutmix(
    key,
    images,
    labels,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    label_smoothing: float = 0.1,
    correct_lam: bool = True,
    num_groups: int = 1,
):
    """timm ``Mixup(mode='batch')`` on device: ``(key, images NHWC, int labels) -> (mixed, targets)``.

    ``num_groups > 1`` splits the batch into that many contiguous groups, each mixed on its own
    (own lam / box / flip) with ``jax.random.split(key, num_groups)``: the official run's
    per-GPU mixing when the groups are the per-device shards. Under jit, ``num_classes``, the
    alphas, ``label_smoothing``, ``correct_lam`` and ``num_groups`` must be static; ``prob`` and
    ``switch_prob`` may be traced.
    """
    b, h, w = images.shape[0], images.shape[1], images.shape[2]

    def one(k, x, y):
        p = sample_mix_params(k, h, w, mixup_alpha, cutmix_alpha, prob, switch_prob, correct_lam)
        return apply_mix(x, y, p, num_classes, label_smoothing)

    if num_groups == 1:
        return one(key, images, labels)
    if b % num_groups:
        raise ValueError(f"batch {b} is not divisible by num_groups={num_groups}")
    g = num_groups
    xs = images.reshape((g, b // g) + images.shape[1:])
    ys = labels.reshape((g, b // g) + labels.shape[1:])
    mixed, targets = jax.vmap(one)(jax.random.split(key, g), xs, ys)
    return mixed.reshape(images.shape), targets.reshape((b, num_classes))
