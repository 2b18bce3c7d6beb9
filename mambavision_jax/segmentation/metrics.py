"""mmseg's IoU metric (`mmseg.evaluation.IoUMetric`, iou_metrics=['mIoU']): per-class areas summed
over a data set, then aAcc, mIoU and mAcc. Used by the training run's evaluator and by
`python -m mambavision_jax.evaluate_seg` alike.

Per image, `intersect_and_union` counts, over the pixels whose label is not `ignore_index`, the
pixels of each class in the intersection of prediction and label, in the prediction, in the label,
and in their union (mmseg's `intersect_and_union`, whose `torch.histc(bins=num_classes, min=0,
max=num_classes - 1)` drops values outside [0, num_classes)). `summarize` turns the sums into
mmseg's numbers (`total_area_to_metrics` + `compute_metrics`): aAcc = intersect / label pixels over
all classes, IoU_c = intersect_c / union_c, Acc_c = intersect_c / label_c; mIoU and mAcc are the
nanmeans over classes (a class absent from both prediction and labels is NaN and left out), all
in percent. Counts are int64 here; mmseg sums float32 histograms, which round above 2**24 pixels
per class (a large data set), so its aAcc can differ from the exact one in the last digits.

`reduce_zero_label` (ADE20K) is applied to the labels when they are loaded, as mmseg's
LoadAnnotations does: 0 ("other") -> 255 (ignored), k -> k - 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IGNORE_INDEX = 255
AREA_KEYS = ("intersect", "union", "pred", "label")

__all__ = [
    "IGNORE_INDEX",
    "AREA_KEYS",
    "reduce_zero_label",
    "intersect_and_union",
    "intersect_and_union_jax",
    "SegMetrics",
    "summarize",
    "class_table",
]


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg LoadAnnotations(reduce_zero_label=True) on a uint8 label map: 0 -> 255, k -> k - 1
    (255 stays 255)."""
    label = np.asarray(label, np.uint8).copy()
    label[label == 0] = 255
    label = label - 1
    label[label == 254] = 255
    return label


def _areas(intersect, pred, label) -> dict[str, np.ndarray]:
    return {"intersect": intersect, "union": pred + label - intersect, "pred": pred, "label": label}


def intersect_and_union(
    pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> dict[str, np.ndarray]:
    """{"intersect", "union", "pred", "label"}: int64 (num_classes,) pixel counts of one image (or
    any number of images: the arrays may have any matching shape). numpy."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    label = np.asarray(label).reshape(-1).astype(np.int64)
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]

    def hist(x):
        x = x[(x >= 0) & (x < num_classes)]
        return np.bincount(x, minlength=num_classes).astype(np.int64)

    return _areas(hist(pred[pred == label]), hist(pred), hist(label))


def intersect_and_union_jax(pred, label, num_classes: int, ignore_index: int = IGNORE_INDEX, mask=None):
    """`intersect_and_union` under jit: int32 (num_classes,) counts of `pred` / `label` (any matching
    shape, e.g. (B, H, W)); `mask` (broadcastable, bool) drops pixels too (padding). int32 holds
    up to 2**31 pixels per call; sum the calls on the host in int64."""
    import jax.numpy as jnp

    pred = pred.astype(jnp.int32)
    label = label.astype(jnp.int32)
    keep = label != ignore_index
    if mask is not None:
        keep = keep & jnp.broadcast_to(mask, keep.shape)

    def hist(x, where):
        where = where & (x >= 0) & (x < num_classes)
        return jnp.bincount(
            jnp.where(where, x, 0).reshape(-1), where.reshape(-1).astype(jnp.int32), length=num_classes
        )

    pred_area = hist(pred, keep)
    return _areas(hist(pred, keep & (pred == label)), pred_area, hist(label, keep))


@dataclasses.dataclass
class SegMetrics:
    """Running sums of the four per-class areas (int64), over images or batches."""

    num_classes: int
    areas: dict[str, np.ndarray] = dataclasses.field(default=None)

    def __post_init__(self):
        if self.areas is None:
            self.areas = {k: np.zeros(self.num_classes, np.int64) for k in AREA_KEYS}

    def add(self, areas) -> None:
        for k in AREA_KEYS:
            self.areas[k] += np.asarray(areas[k]).astype(np.int64)

    def summary(self) -> dict[str, float]:
        return summarize(self.areas)


def _per_class(areas) -> dict[str, np.ndarray]:
    intersect, union, label = (np.asarray(areas[k], np.float64) for k in ("intersect", "union", "label"))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"IoU": intersect / union, "Acc": intersect / label}


def summarize(areas) -> dict[str, float]:
    """{"aAcc", "mIoU", "mAcc"} in percent, unrounded (mmseg prints them rounded to 2 decimals);
    NaN where nothing was counted."""
    per = _per_class(areas)
    label_total = float(np.sum(areas["label"]))

    def nanmean(x):
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")

    return {
        "aAcc": 100.0 * float(np.sum(areas["intersect"])) / label_total if label_total else float("nan"),
        "mIoU": 100.0 * nanmean(per["IoU"]),
        "mAcc": 100.0 * nanmean(per["Acc"]),
    }


def class_table(areas, class_names) -> list[dict]:
    """Per class: {"class", "IoU", "Acc" (percent, NaN where undefined), "pixels" (label area)}, in
    class order (mmseg's per-class table)."""
    per = _per_class(areas)
    return [
        {
            "class": str(name),
            "IoU": 100.0 * float(per["IoU"][i]),
            "Acc": 100.0 * float(per["Acc"][i]),
            "pixels": int(areas["label"][i]),
        }
        for i, name in enumerate(class_names)
    ]
