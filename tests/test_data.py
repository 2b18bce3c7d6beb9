"""Dataset builders (digits, folders), TFDS sources and the grain train / eval pipelines."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mambavision_jax.data import (
    DatasetNotPreparedError,
    TrainAugConfig,
    dataset_info,
    eval_num_batches,
    eval_transform,
    make_eval_iterator,
    make_train_iterator,
    shard_bounds,
)
from mambavision_jax.data.digits import digits_split
from mambavision_jax.data.make_folder_dataset import main as make_folder_main

NONE = TrainAugConfig.none()


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(batches_a, batches_b):
    return all(
        a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        for a, b in zip(batches_a, batches_b, strict=True)
    )


def test_digits_dataset_reads_with_tfds_data_source(digits_dir):
    files = os.listdir(os.path.join(digits_dir, "mv_digits", "1.0.0"))
    assert any(".array_record" in f for f in files)
    train = tfds.data_source("mv_digits", split="train", data_dir=digits_dir, download=False)
    test = tfds.data_source("mv_digits", split="test", data_dir=digits_dir, download=False)
    assert (len(train), len(test)) == (1437, 360)
    ex = test[0]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert np.array_equal(ex["image"][..., 0], ex["image"][..., 2])  # grey stored as RGB
    counts = np.bincount([int(test[i]["label"]) for i in range(len(test))], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    tr, te = digits_split()
    assert not set(tr) & set(te) and len(tr) + len(te) == 1797
    assert np.array_equal(tr, digits_split()[0])  # fixed seed
    info = dataset_info("mv_digits", digits_dir)
    assert info.num_classes == 10 and info.splits == {"train": 1437, "test": 360}
    assert "tensorflow" not in sys.modules


def test_train_iterator_shapes_and_reproducibility(digits_dir):
    kw = dict(data_dir=digits_dir, global_batch_size=8, image_size=32, process_index=0, process_count=1)
    a = _take(make_train_iterator("mv_digits", seed=1, **kw), 3)  # official augmentation
    assert a[0]["image"].shape == (8, 32, 32, 3) and a[0]["image"].dtype == np.float32
    assert a[0]["label"].shape == (8,) and a[0]["label"].dtype == np.int32
    assert set(a[0]) == {"image", "label"}
    assert _same(a, _take(make_train_iterator("mv_digits", seed=1, num_threads=1, **kw), 3))
    assert not _same(a, _take(make_train_iterator("mv_digits", seed=2, **kw), 3))


def test_train_shards_are_disjoint_and_epochs_complete(digits_dir):
    per_host = {}
    for pi in (0, 1):
        it = make_train_iterator(
            "mv_digits",
            data_dir=digits_dir,
            global_batch_size=16,
            image_size=32,
            augment=NONE,
            process_index=pi,
            process_count=2,
            with_index=True,
        )
        start, end = shard_bounds(1437, pi, 2, drop_remainder=True)
        n_batches = (end - start) // 8
        idx = np.concatenate([b["index"] for b in _take(it, n_batches)])
        assert len(set(idx)) == idx.size  # no repeats inside an epoch
        assert idx.min() >= start and idx.max() < end
        per_host[pi] = set(idx.tolist())
    assert not per_host[0] & per_host[1]
    assert len(per_host[0]) == len(per_host[1]) == 712  # 718 per shard, 6 left by drop_remainder


def test_train_iterator_resumes_from_state(digits_dir):
    kw = dict(
        data_dir=digits_dir, global_batch_size=8, image_size=32, seed=3, process_index=0, process_count=1
    )
    it = make_train_iterator("mv_digits", **kw)
    _take(it, 2)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    expected = _take(it, 3)
    resumed = make_train_iterator("mv_digits", **kw)
    resumed.set_state(state)
    assert _same(expected, _take(resumed, 3))


def _worker_kw(digits_dir):
    return dict(
        data_dir=digits_dir, global_batch_size=8, image_size=32, seed=4, process_index=0, process_count=1
    )


def test_train_iterator_with_worker_processes(digits_dir):
    ref = _take(make_train_iterator("mv_digits", **_worker_kw(digits_dir)), 3)
    it = make_train_iterator("mv_digits", num_workers=1, **_worker_kw(digits_dir))
    try:
        got = _take(it, 3)
        assert isinstance(it.get_state(), dict)
    finally:
        it.close()
    assert _same(ref, got)  # batches do not depend on the worker count


@pytest.mark.slow  # two worker start-ups (~8 s)
def test_train_iterator_with_worker_processes_resumes(digits_dir):
    ref = _take(make_train_iterator("mv_digits", **_worker_kw(digits_dir)), 4)
    it = make_train_iterator("mv_digits", num_workers=1, **_worker_kw(digits_dir))
    try:
        _take(it, 2)
        state = it.get_state()
    finally:
        it.close()
    resumed = make_train_iterator("mv_digits", num_workers=1, **_worker_kw(digits_dir))
    try:
        resumed.set_state(state)
        assert _same(ref[2:], _take(resumed, 2))
    finally:
        resumed.close()


def test_eval_iterator_counts_every_example_once(digits_dir):
    n, hosts, gbs = 360, 3, 27 * 3  # 120 per host, batch 27 -> 5 batches, 15 pads per host
    seen = []
    for pi in range(hosts):
        batches = list(
            make_eval_iterator(
                "mv_digits",
                data_dir=digits_dir,
                global_batch_size=gbs,
                image_size=32,
                crop_pct=1.0,
                process_index=pi,
                process_count=hosts,
                with_index=True,
            )
        )
        assert len(batches) == eval_num_batches(n, gbs, hosts) == 5
        for b in batches:
            assert b["image"].shape == (27, 32, 32, 3) and b["mask"].dtype == np.bool_
            assert (b["index"][~b["mask"]] == -1).all() and not b["image"][~b["mask"]].any()
            seen += b["index"][b["mask"]].tolist()
    assert sorted(seen) == list(range(n))
    # the images are the eval transform of the stored ones, in order
    first = next(
        make_eval_iterator(
            "mv_digits",
            data_dir=digits_dir,
            global_batch_size=4,
            image_size=32,
            crop_pct=1.0,
            process_index=0,
            process_count=1,
        )
    )
    src = tfds.data_source("mv_digits", split="test", data_dir=digits_dir, download=False)
    for i in range(4):
        np.testing.assert_array_equal(first["image"][i], eval_transform(src[i]["image"], 32, 1.0))
        assert first["label"][i] == src[i]["label"]


def _save(path, img: Image.Image, fmt: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format=fmt)


def _image_folder(root):
    r = np.random.default_rng(0)
    rgb = lambda: Image.fromarray(r.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    for i in range(6):
        _save(f"{root}/cat/c{i}.jpg", rgb(), "JPEG")
        _save(f"{root}/dog/d{i}.png", rgb(), "PNG")
    _save(f"{root}/cat/grey.png", Image.fromarray(np.full((20, 30), 77, np.uint8)), "PNG")
    _save(f"{root}/cat/rgba.png", Image.fromarray(np.full((20, 30, 4), 200, np.uint8)), "PNG")
    sixteen = np.full((20, 30), 65535, np.uint16)
    sixteen[:, :10] = 32896  # 32896 / 257 = 128
    _save(f"{root}/dog/deep/sixteen.png", Image.fromarray(sixteen), "PNG")  # nested folder
    _save(f"{root}/dog/cmyk.jpg", Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG")
    with open(f"{root}/dog/corrupt.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    buf = io.BytesIO()
    rgb().save(buf, format="JPEG")
    with open(f"{root}/cat/truncated.jpg", "wb") as f:
        f.write(buf.getvalue()[:200])
    with open(f"{root}/cat/notes.txt", "w") as f:
        f.write("not an image")
    with open(f"{root}/README", "w") as f:
        f.write("outside any class folder")


def test_make_folder_dataset(tmp_path, capsys):
    src, data_dir = str(tmp_path / "images"), str(tmp_path / "tfds")
    _image_folder(src)
    assert (
        make_folder_main(
            ["--src", src, "--name", "my_pets", "--data_dir", data_dir, "--val_fraction", "0.25"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "skipped (not a readable image): 4" in out
    for bad in ("corrupt.jpg", "truncated.jpg", "notes.txt", "README"):
        assert bad in out
    train = tfds.data_source("my_pets", split="train", data_dir=data_dir, download=False)
    val = tfds.data_source("my_pets", split="validation", data_dir=data_dir, download=False)
    # 8 readable images per class; 25% of each class's files (readable or not) planned as validation
    assert len(train) + len(val) == 16 and len(val) == 4
    records = {r["file_name"].decode(): r for r in [*train, *val]}
    for name, r in records.items():
        assert r["image"].ndim == 3 and r["image"].shape[-1] == 3 and r["image"].dtype == np.uint8
        assert r["label"] == (0 if name.startswith("cat") else 1)
    assert (records["cat/grey.png"]["image"] == 77).all()
    assert (records["cat/rgba.png"]["image"] == 200).all()
    s = records[os.path.join("dog", "deep", "sixteen.png")]["image"]
    assert (s[:, :10] == 128).all() and (s[:, 10:] == 255).all()
    cmyk = records["dog/cmyk.jpg"]["image"].astype(int)  # cyan-free magenta+yellow = red-ish
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60
    # the training pipeline reads it by name; a second run reuses it
    batch = next(
        make_train_iterator(
            "my_pets", data_dir=data_dir, global_batch_size=4, image_size=24, process_index=0, process_count=1
        )
    )
    assert batch["image"].shape == (4, 24, 24, 3)
    assert make_folder_main(["--src", src, "--name", "my_pets", "--data_dir", data_dir]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_make_folder_dataset_train_val_layout(tmp_path, capsys):
    src, data_dir = tmp_path / "imgs", str(tmp_path / "tfds")
    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _save(f"{src}/{split}/{c}/{i}.png", Image.new("RGB", (9, 7), (i, 0, 0)), "PNG")
    make_folder_main(["--src", str(src), "--name", "split_set", "--data_dir", data_dir])
    assert dataset_info("split_set", data_dir).splits == {"train": 6, "validation": 4}
    assert "skipped (not a readable image): 0" in capsys.readouterr().out


def test_make_folder_dataset_help(capsys):
    with pytest.raises(SystemExit) as e:
        make_folder_main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--src", "--name", "--data_dir", "--val_fraction", "--num_workers", "--overwrite"):
        assert flag in text


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
    empty = str(tmp_path / "empty")
    with pytest.raises(DatasetNotPreparedError) as e:
        make_train_iterator(
            "imagenet2012",
            data_dir=empty,
            global_batch_size=8,
            image_size=224,
            process_index=0,
            process_count=1,
        )
    msg = str(e.value)
    assert "tfds build imagenet2012" in msg and "--manual_dir" in msg
    assert "make_folder_dataset" in msg and empty in msg
    with pytest.raises(DatasetNotPreparedError, match="make_folder_dataset"):
        make_eval_iterator(
            "no_such_dataset_xyz",
            data_dir=empty,
            global_batch_size=8,
            image_size=224,
            split="validation",
            process_index=0,
            process_count=1,
        )
    assert not os.path.exists(os.path.join(empty, "downloads"))  # nothing was fetched


def test_shard_bounds_and_batch_counts():
    for n, p in ((10, 3), (360, 7), (5, 8)):
        even = [shard_bounds(n, i, p, True) for i in range(p)]
        assert all(e - s == n // p for s, e in even)
        full = [shard_bounds(n, i, p, False) for i in range(p)]
        assert full[0][0] == 0 and full[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(full, full[1:]))
    assert eval_num_batches(50_000, 1024, 4) == 49  # 12,500 per host / 256 per host, rounded up
    with pytest.raises(ValueError):
        make_train_iterator(
            "mv_digits", global_batch_size=10, image_size=32, process_index=0, process_count=3
        )


# ---- uint8 batches, normalised (and erased) on the device ----


def _device_normalize(images):
    from mambavision_jax.data.device_ops import normalize_on_device
    from mambavision_jax.data.transforms import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
    )

    return np.asarray(normalize_on_device(images, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))


def _box_mask(boxes, size):
    mask = np.zeros((len(boxes), size, size), bool)
    for i, per_example in enumerate(boxes):
        for top, left, h, w in per_example:
            mask[i, top : top + h, left : left + w] = True
    return mask


def test_uint8_train_batches_equal_the_float_pipeline(digits_dir):
    kw = dict(
        data_dir=digits_dir, global_batch_size=16, image_size=32, seed=5, process_index=0, process_count=1
    )
    aug = TrainAugConfig(scale=(0.3, 1.0), re_prob=0.5)  # official ops; more boxes to compare
    floats = _take(make_train_iterator("mv_digits", augment=aug, **kw), 3)
    uint8s = _take(make_train_iterator("mv_digits", augment=aug, normalize=False, **kw), 3)
    n_boxes = 0
    for f, u in zip(floats, uint8s, strict=True):
        assert set(u) == {"image", "label", "erase"} and u["image"].dtype == np.uint8
        assert u["erase"].shape == (16, 1, 4) and u["erase"].dtype == np.int32
        np.testing.assert_array_equal(f["label"], u["label"])
        x = _device_normalize(u["image"])
        boxes = _box_mask(u["erase"], 32)
        n_boxes += int(u["erase"][:, 0, 2].astype(bool).sum())
        # outside the erasing boxes: the same pixels, normalised on the device (float32 rounding)
        np.testing.assert_allclose(x[~boxes], f["image"][~boxes], rtol=1e-6, atol=1e-6)
        # inside: the float pipeline filled exactly these boxes with noise
        assert not np.isclose(x[boxes], f["image"][boxes], atol=1e-6).all(-1).any()
    assert n_boxes >= 12  # ~24 of 48 examples erased at re_prob 0.5


def test_uint8_train_batches_without_erasing(digits_dir):
    kw = dict(
        data_dir=digits_dir,
        global_batch_size=8,
        image_size=32,
        seed=6,
        process_index=0,
        process_count=1,
        augment=TrainAugConfig(re_prob=0.0),
    )
    f = next(make_train_iterator("mv_digits", **kw))
    u = next(make_train_iterator("mv_digits", normalize=False, **kw))
    assert set(u) == {"image", "label"}
    np.testing.assert_allclose(_device_normalize(u["image"]), f["image"], rtol=1e-6, atol=1e-6)


def test_uint8_eval_batches_equal_the_float_pipeline(digits_dir):
    kw = dict(
        data_dir=digits_dir,
        global_batch_size=7 * 3,
        image_size=32,
        crop_pct=0.875,
        process_index=2,
        process_count=3,
    )
    floats = list(make_eval_iterator("mv_digits", **kw))
    uint8s = list(make_eval_iterator("mv_digits", normalize=False, **kw))
    assert len(floats) == len(uint8s) == eval_num_batches(360, 21, 3)
    for f, u in zip(floats, uint8s, strict=True):
        assert u["image"].dtype == np.uint8
        np.testing.assert_array_equal(f["mask"], u["mask"])
        m = u["mask"]
        np.testing.assert_allclose(_device_normalize(u["image"][m]), f["image"][m], rtol=1e-6, atol=1e-6)
        assert not u["image"][~m].any()


def test_device_prefetch_state_is_the_consumed_position(digits_dir):
    import jax

    from mambavision_jax.data.device_ops import DevicePrefetch

    kw = dict(
        data_dir=digits_dir,
        global_batch_size=8,
        image_size=32,
        seed=7,
        process_index=0,
        process_count=1,
        normalize=False,
    )
    ref = _take(make_train_iterator("mv_digits", **kw), 5)
    it = DevicePrefetch(make_train_iterator("mv_digits", **kw), jax.device_put, size=2)
    got = _take(it, 2)
    assert isinstance(got[0]["image"], jax.Array)
    state = json.loads(json.dumps(it.get_state()))  # 2 consumed, 2 more in flight
    assert _same(ref[:2], jax.device_get(got))
    resumed = DevicePrefetch(make_train_iterator("mv_digits", **kw), jax.device_put, size=2)
    resumed.set_state(state)
    assert _same(ref[2:], jax.device_get(_take(resumed, 3)))
    with pytest.raises(StopIteration):  # a finite iterator ends after its buffered batches
        list_it = DevicePrefetch(iter(ref[:3]), lambda b: b, size=2)
        assert len(_take(list_it, 3)) == 3
        next(list_it)


def test_worker_and_thread_defaults_follow_the_core_count():
    from mambavision_jax.data.pipeline import (
        default_num_threads,
        default_num_workers,
        resolve_workers,
    )

    assert default_num_workers(1) == default_num_workers(2) == 0
    assert default_num_workers(16) == 15
    assert default_num_threads(15, 16) == 2 and default_num_threads(0, 2) == 2
    assert default_num_threads(0, 64) == 16
    assert resolve_workers(3, 1) == (3, 1)
    workers, threads = resolve_workers(-1, -1)
    assert workers == default_num_workers() and threads == default_num_threads(workers)
    for bad in ((-2, 1), (0, 0), (0, -3)):
        with pytest.raises(ValueError, match="num_workers"):
            resolve_workers(*bad)


@pytest.mark.slow  # three compilations of the train step (~1-2 min on 2 cores)
def test_train_step_normalises_and_erases_uint8_batches_independently_of_the_mesh():
    """The jitted train step on uint8 images + erasing boxes: the same losses on one device and on
    a 4 x 2 mesh (the erasing noise is keyed by seed, step and example, not by the device), and
    the erasing changes the loss."""
    import jax

    sys.path.insert(0, os.path.dirname(__file__))
    from mambavision_jax.data.transforms import erasing_boxes
    from mambavision_jax.train import sharding as shd
    from mambavision_jax.train.optim import make_optimizer
    from mambavision_jax.train.schedule import make_schedule
    from mambavision_jax.train.state import create_train_state, graphdefs
    from mambavision_jax.train.steps import make_train_step

    from small_train_config import get_config

    assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    c = get_config()
    c.mesa.weight, c.mixup.prob, c.model.drop_path_rate = 0.0, 0.0, 0.0
    rs = np.random.default_rng(0)
    boxes = np.stack([erasing_boxes(rs, 32, 32, 1.0) for _ in range(16)])
    batches = [
        {
            "image": rs.integers(0, 256, (16, 32, 32, 3), np.uint8),
            "label": rs.integers(0, 10, 16).astype(np.int32),
            "erase": boxes,
        }
        for _ in range(2)
    ]

    def losses(mesh, batches):
        schedule = make_schedule(c, 4)
        tx = make_optimizer(c, 4, schedule=schedule)
        train_gd, eval_gd = graphdefs(c, 10, 1)
        state, shardings = create_train_state(c, 10, 1, tx, mesh)
        step = jax.jit(
            make_train_step(c, train_gd, eval_gd, tx, schedule, 10, 4, 1),
            in_shardings=(shardings, shd.batch_sharding(mesh)),
        )
        out = []
        for b in batches:
            state, m = step(state, shd.global_batch(b, mesh))
            out.append(float(m["loss"]))
        return out

    one = losses(shd.make_mesh(1, 1, jax.devices()[:1]), batches)
    np.testing.assert_allclose(losses(shd.make_mesh(4, 2), batches), one, rtol=2e-5)
    plain = losses(
        shd.make_mesh(1, 1, jax.devices()[:1]), [{k: b[k] for k in ("image", "label")} for b in batches]
    )
    assert not np.allclose(plain[0], one[0], rtol=1e-4)
