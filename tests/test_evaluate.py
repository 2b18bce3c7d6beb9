"""evaluate: the TFDS path, the folder path and direct model calls agree exactly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import mambavision_jax as mvj
from mambavision_jax import evaluate as ev
from mambavision_jax.data.transforms import eval_transform
from mambavision_jax.images import load_image

SIZE = 64
NUM_CLASSES = 10  # 3 class folders: random weights still give a non-trivial top-1 / top-5


@pytest.fixture(scope="module")
def model():
    m = mvj.create_model("mamba_vision_T", depths=(1, 1, 2, 1), num_classes=NUM_CLASSES)
    m.eval()
    return m


def _img(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """SRC/train/<class>/ and SRC/val/<class>/ with assorted formats and modes."""
    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for split, n in (("train", 1), ("val", 3)):
        for c, cls in enumerate(("ant", "bee", "cat")):
            d = src / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = _img(rng, 40 + 9 * i + c, 70 - 5 * i)
                kind = (c * n + i) % 4
                if kind == 0:
                    Image.fromarray(arr).save(d / f"{i}.jpg", quality=92)
                elif kind == 1:
                    Image.fromarray(arr).convert("L").save(d / f"{i}.png")
                elif kind == 2:
                    rgba = np.concatenate(
                        [arr, rng.integers(0, 256, arr.shape[:2] + (1,), dtype=np.uint8)], -1
                    )
                    Image.fromarray(rgba, "RGBA").save(d / f"{i}.png")
                else:
                    Image.fromarray(arr).save(d / f"{i}.png")
    (src / "val" / "cat" / "notes.txt").write_text("not an image")  # ignored by extension
    return src


def _direct(model, paths, labels, pre):
    """Top-1 / top-5 / loss computed by calling the model on each preprocessed image."""
    x = np.stack([pre(load_image(p, alpha="drop", exif_transpose=False)) for p in paths])
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
    labels = np.asarray(labels)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return {
        "top1": 100 * np.mean(top5[:, 0] == labels),
        "top5": 100 * np.mean((top5 == labels[:, None]).any(1)),
        "loss": float(-logp[np.arange(len(labels)), labels].mean()),
        "n": len(labels),
    }


def test_evaluate_tfds_folder_and_direct_agree(model, image_tree, tmp_path):
    from mambavision_jax.data import build_folder_dataset, make_eval_iterator

    pre = ev.resolve_preprocessing(model, image_size=SIZE, crop_pct=0.875)
    paths, labels, classes = ev.folder_examples(image_tree / "val", num_classes=NUM_CLASSES)
    assert classes == ["ant", "bee", "cat"] and len(paths) == 9 and sorted(set(labels)) == [0, 1, 2]
    want = _direct(model, paths, labels, pre)
    assert 0 < want["top1"] < 100 or 0 < want["top5"] < 100  # the comparison is not vacuous

    # TFDS: a dataset built from the same folder with the data package's folder builder.
    data_dir = tmp_path / "tfds"
    report = build_folder_dataset(str(image_tree), "mv_eval_test", str(data_dir))
    assert report.num_examples["validation"] == 9
    it = make_eval_iterator(
        "mv_eval_test",
        global_batch_size=4,
        image_size=SIZE,
        crop_pct=0.875,
        data_dir=str(data_dir),
        split="validation",
        process_index=0,
        process_count=1,
    )
    runner = ev.Runner(model)  # one compiled program for both evaluations
    got = ev.evaluate(runner, it, num_batches=3, progress=False)  # 4 + 4 + 1 (padded, masked)
    assert got["n"] == 9
    assert got["top1"] == pytest.approx(want["top1"]) and got["top5"] == pytest.approx(want["top5"])
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)

    # Folder: no TFDS, same numbers.
    batches = ev.folder_batches(paths, labels, 4, pre, num_workers=2)
    got_folder = ev.evaluate(runner, batches, progress=False)
    for k in ("top1", "top5", "n"):
        assert got_folder[k] == pytest.approx(want[k])
    assert got_folder["loss"] == pytest.approx(want["loss"], rel=1e-5)

    model.train()  # the runner evaluates an eval-mode copy; the caller's model keeps its mode
    try:
        ev.Runner(model)
        assert model.levels[0].blocks[0].norm1.use_running_average is False
    finally:
        model.eval()


def test_evaluate_cli_folder_json(model, image_tree, tmp_path):
    weights = tmp_path / "w" / "model.safetensors"
    mvj.save_torch_checkpoint(model, weights)  # + config.json: the reduced depths are inferred
    bad = image_tree / "val" / "bee" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out.json"
    try:
        with pytest.raises(OSError, match="broken.jpg"):
            ev.main(
                [
                    "--weights",
                    str(weights),
                    "--folder",
                    str(image_tree / "val"),
                    "--image_size",
                    str(SIZE),
                    "--no_progress",
                ]
            )
        assert (
            ev.main(
                [
                    "--weights",
                    str(weights),
                    "--folder",
                    str(image_tree / "val"),
                    "--image_size",
                    str(SIZE),
                    "--crop_pct",
                    "0.875",
                    "--batch_size",
                    "4",
                    "--skip_unreadable",
                    "--json",
                    str(out),
                    "--no_progress",
                ]
            )
            == 0
        )
    finally:
        bad.unlink()
    summary = json.loads(out.read_text())
    pre = ev.resolve_preprocessing(model, image_size=SIZE, crop_pct=0.875)
    paths, labels, _ = ev.folder_examples(image_tree / "val")
    want = _direct(model, paths, labels, pre)
    assert summary["n"] == 9 and summary["top1"] == pytest.approx(want["top1"])
    assert summary["top5"] == pytest.approx(want["top5"])
    assert summary["model"] == "mamba_vision_T" and summary["weights"] == str(weights)
    assert summary["seconds"] > 0 and summary["images_per_sec"] > 0
    assert (
        summary["preprocessing"]["image_size"] == SIZE and summary["preprocessing"]["crop_mode"] == "center"
    )
    assert [s["path"] for s in summary["skipped"]] == [str(bad)]


def test_preprocessing_defaults_follow_the_variant():
    for name, size, pct, mode in (
        ("mamba_vision_T", 224, 1.0, "center"),
        ("mamba_vision_S", 224, 0.93, "center"),
        ("mamba_vision_L3_512_21k", 512, 0.93, "squash"),
    ):
        pre = ev.resolve_preprocessing(type("M", (), {"pretrained_cfg": mvj.pretrained_cfg(name)})())
        assert (pre.image_size, pre.crop_pct, pre.crop_mode, pre.interpolation) == (
            size,
            pct,
            mode,
            "bicubic",
        )
    pre = ev.resolve_preprocessing(None, image_size=96, crop_mode="squash", hf_config={"crop_pct": 0.9})
    assert (pre.image_size, pre.crop_pct, pre.crop_mode) == (96, 0.9, "squash")
    rng = np.random.default_rng(1)
    arr = _img(rng, 50, 80)
    np.testing.assert_array_equal(pre(arr), eval_transform(arr, 96, 0.9, "squash"))


def test_folder_imagenet_synsets_map_to_imagenet_indices(tmp_path):
    for syn in ("n01443537", "n02123045"):  # goldfish (1), tabby (281)
        (tmp_path / syn).mkdir()
        Image.new("RGB", (40, 40)).save(tmp_path / syn / "a.png")
    _, labels, _ = ev.folder_examples(tmp_path, num_classes=1000)
    assert labels == [1, 281]
    _, labels, _ = ev.folder_examples(tmp_path, num_classes=1000, label_map="sorted")
    assert labels == [0, 1]


def test_evaluate_help_lists_every_argument(capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for arg in (
        "--weights",
        "--model",
        "--tfds",
        "--folder",
        "--split",
        "--data_dir",
        "--batch_size",
        "--image_size",
        "--crop_pct",
        "--crop_mode",
        "--json",
    ):
        assert arg in text


@pytest.mark.slow
def test_evaluate_shards_over_two_devices(tmp_path, image_tree):
    """A fresh process with 2 CPU devices: the batch is split over both, results unchanged."""
    import subprocess
    import sys

    code = f"""
import os, json, numpy as np, jax
assert jax.local_device_count() == 2
import mambavision_jax as mvj
from mambavision_jax import evaluate as ev
m = mvj.create_model("mamba_vision_T", depths=(1, 1, 2, 1), num_classes={NUM_CLASSES}); m.eval()
pre = ev.resolve_preprocessing(m, image_size={SIZE})
paths, labels, _ = ev.folder_examples({str(image_tree / "val")!r})
r = ev.Runner(m)
assert r.n_dev == 2
res = ev.evaluate(r, ev.folder_batches(paths, labels, 3, pre), progress=False)
x = np.stack([pre(ev_img) for ev_img in [__import__('mambavision_jax.images', fromlist=['x']).load_image(p, alpha='drop', exif_transpose=False) for p in paths]])
logits = np.asarray(m(x))
assert res["n"] == 9 and abs(res["top1"] - 100 * np.mean(logits.argmax(1) == np.array(labels))) < 1e-6
print("OK")
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_classification_metrics_masks_padding_and_matches_numpy():
    from mambavision_jax.metrics import classification_metrics, summarize

    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 8)).astype(np.float32)
    labels = np.array([0, 3, 7, 1, 2, 5], np.int32)
    mask = np.array([1, 1, 1, 1, 0, 0], bool)  # the last two are padding
    got = {k: float(v) for k, v in classification_metrics(logits, labels, mask).items()}
    order = np.argsort(-logits, 1)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    keep = mask.nonzero()[0]
    assert got["count"] == 4
    assert got["correct1"] == np.sum(order[keep, 0] == labels[keep])
    assert got["correct5"] == np.sum((order[keep, :5] == labels[keep, None]).any(1))
    assert got["loss_sum"] == pytest.approx(-logp[keep, labels[keep]].sum(), rel=1e-5)
    assert summarize(got)["top1"] == pytest.approx(100 * got["correct1"] / 4)
    # Fewer classes than 5: top-5 is top-num_classes, i.e. always right.
    few = classification_metrics(logits[:, :3], np.array([0, 1, 2, 0, 1, 2]), None)
    assert float(few["correct5"]) == 6 and float(few["count"]) == 6
