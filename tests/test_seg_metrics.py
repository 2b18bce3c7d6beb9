"""The segmentation metric against mmseg's own IoUMetric (mmsegmentation 1.2.2) on random label
maps: per-class areas, aAcc / mIoU / mAcc, the ignore index and reduce_zero_label."""

import importlib

import numpy as np
import pytest
from official_seg import _install_seg_shims

from mambavision_jax.segmentation import metrics as segm

_install_seg_shims()  # mmcv-lite beside mmseg: a stub mmcv._ext (tests/official_seg.py)
mmseg_module = importlib.import_module


def _random_maps(rs, num_classes, shapes):
    """Predictions and labels with out-of-range predictions, ignored pixels and absent classes."""
    out = []
    for h, w in shapes:
        label = rs.randint(0, num_classes - 2, size=(h, w)).astype(
            np.uint8
        )  # the last 2 classes absent from the labels
        label[rs.rand(h, w) < 0.15] = 255
        pred = np.where(rs.rand(h, w) < 0.6, label, rs.randint(0, num_classes, size=(h, w))).astype(np.int64)
        pred[label == 255] = rs.randint(0, num_classes, size=int((label == 255).sum()))
        pred[pred == num_classes - 2] = num_classes + 3  # class n-2 nowhere; out-of-range predictions
        out.append((pred, label))
    # a class only predicted, never labelled: IoU 0, Acc NaN
    out[0][0][0, :3] = num_classes - 1
    return out


def test_metric_matches_mmseg_iou_metric():
    torch = pytest.importorskip("torch")  # a reference package: conftest fails the run if missing
    IoUMetric = mmseg_module("mmseg.evaluation.metrics").IoUMetric
    rs = np.random.RandomState(0)
    num_classes = 7
    maps = _random_maps(rs, num_classes, [(13, 17), (32, 9), (5, 40)])

    ref = IoUMetric(iou_metrics=["mIoU"])
    ref.dataset_meta = {"classes": [f"c{i}" for i in range(num_classes)]}
    ours = segm.SegMetrics(num_classes)
    for pred, label in maps:
        sample = {
            "pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
            "gt_sem_seg": {"data": torch.from_numpy(label.astype(np.int64))[None]},
        }
        ref.process({}, [sample])
        ours.add(segm.intersect_and_union(pred, label, num_classes))
    ref_areas = [sum(r[i] for r in ref.results).numpy() for i in range(4)]
    for key, want in zip(segm.AREA_KEYS, ref_areas):
        np.testing.assert_array_equal(ours.areas[key], want.astype(np.int64), err_msg=key)
    per_class = IoUMetric.total_area_to_metrics(*[torch.from_numpy(a) for a in ref_areas], ["mIoU"])
    table = segm.class_table(ours.areas, ref.dataset_meta["classes"])
    np.testing.assert_allclose([r["IoU"] for r in table], per_class["IoU"] * 100, rtol=1e-6)
    np.testing.assert_allclose([r["Acc"] for r in table], per_class["Acc"] * 100, rtol=1e-6)
    assert np.isnan(table[-1]["Acc"]) and table[-1]["IoU"] == 0  # predicted, never labelled
    assert np.isnan(table[-2]["IoU"])  # neither: left out of the means
    want = ref.compute_metrics(ref.results)
    got = ours.summary()
    for key in ("aAcc", "mIoU", "mAcc"):
        assert round(got[key], 2) == pytest.approx(float(want[key]), abs=1e-4), key  # mmseg: float32


def test_jax_areas_equal_numpy_areas():
    import jax
    import jax.numpy as jnp

    rs = np.random.RandomState(1)
    (pred, label), (pred2, label2) = _random_maps(rs, 5, [(11, 13), (11, 13)])
    preds, labels = np.stack([pred, pred2]), np.stack([label, label2])
    mask = np.ones((2, 1, 1), bool)
    mask[1] = False  # a padding example counts nothing
    got = jax.jit(lambda p, l, m: segm.intersect_and_union_jax(p, l, 5, mask=m))(
        jnp.asarray(preds), jnp.asarray(labels), jnp.asarray(mask)
    )
    want = segm.intersect_and_union(pred, label, 5)
    for key in segm.AREA_KEYS:
        np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=key)


def test_reduce_zero_label_matches_mmseg_load_annotations(tmp_path):
    from PIL import Image

    load = mmseg_module("mmseg.datasets.transforms").LoadAnnotations
    label = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(label).save(tmp_path / "a.png")
    results = {"seg_map_path": str(tmp_path / "a.png"), "reduce_zero_label": True, "seg_fields": []}
    want = load(reduce_zero_label=True)(results)["gt_seg_map"]
    np.testing.assert_array_equal(segm.reduce_zero_label(label), want)
