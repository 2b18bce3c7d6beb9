"""Segmentation data sets: an ADEChallengeData2016 folder -> TFDS (files kept byte for byte, read
back as mmseg reads them), the command's refusals, and TFDS's scene_parse150 refused."""

import os

import numpy as np
import pytest
from cli_run import run_cli
from PIL import Image

from mambavision_jax.data import seg_datasets as sd
from mambavision_jax.data.seg_transforms import decode_image, load_label


def _fake_ade(root, counts=(("training", 3), ("validation", 2))):
    rs = np.random.RandomState(0)
    for split, n in counts:
        os.makedirs(root / "images" / split)
        os.makedirs(root / "annotations" / split)
        for i in range(n):
            h, w = 40 + 7 * i, 52 - 3 * i
            Image.fromarray(rs.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(
                root / "images" / split / f"ADE_{split}_{i:08d}.jpg", quality=90
            )
            Image.fromarray(rs.randint(0, 151, (h, w)).astype(np.uint8)).save(
                root / "annotations" / split / f"ADE_{split}_{i:08d}.png"
            )
    return root


def test_ade_folder_becomes_a_tfds_dataset_read_as_mmseg_reads(tmp_path):
    root = _fake_ade(tmp_path / "ADEChallengeData2016")
    data_dir = tmp_path / "tfds"
    sd.build_ade_dataset(str(root), name="ade_tiny", data_dir=str(data_dir))
    info = sd.seg_dataset_info("ade_tiny", str(data_dir))
    assert info.splits == {"train": 3, "validation": 2} and info.num_classes == 150
    assert info.reduce_zero_label and info.classes[0] == "wall"
    src = sd.open_seg_source("ade_tiny", "validation", str(data_dir))
    for i in range(2):
        rec = src[i]
        name = os.path.basename(
            rec["file_name"].decode() if isinstance(rec["file_name"], bytes) else rec["file_name"]
        )
        stem = os.path.splitext(name)[0]
        assert rec["image"] == (root / "images" / "validation" / name).read_bytes()
        label_file = root / "annotations" / "validation" / f"{stem}.png"
        assert rec["segmentation"] == label_file.read_bytes()
        raw = np.asarray(Image.open(label_file))
        label = load_label(rec["segmentation"], info.reduce_zero_label)
        np.testing.assert_array_equal(label, np.where(raw == 0, 255, raw.astype(np.int64) - 1))
        assert decode_image(rec["image"]).shape == raw.shape + (3,)


def test_make_seg_dataset_refuses_unpaired_files_before_writing(tmp_path):
    root = _fake_ade(tmp_path / "ADE")
    os.remove(next((root / "annotations" / "validation").iterdir()))
    data_dir = tmp_path / "tfds"
    proc = run_cli("mambavision_jax.data.make_seg_dataset", "--ade", root, "--data_dir", data_dir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no label map" in last, last
    assert not data_dir.exists()


def test_scene_parse150_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="instance-segmentation annotations"):
        sd.seg_dataset_info("scene_parse150")
