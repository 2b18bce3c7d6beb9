"""`python -m mambavision_jax.data.make_folder_dataset` run as a user would: every refusal is one
`error:` line with exit code 2, no traceback, and leaves every file (the source images and the
data set already built) as it was; symlink loops and duplicates are taken once or refused; a failed
or SIGKILLed --overwrite leaves the previous data set readable."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from cli_run import assert_user_error, popen_cli, run_cli, tree_hashes
from PIL import Image

MAKE = "mambavision_jax.data.make_folder_dataset"


def _png(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _junk(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")


def _images(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    for c, n in per_class.items():
        for i in range(n):
            _png(root / c / f"{i}.png", seed + 1000 * len(c) + i)
    return root


def _read(data_dir: Path, name: str) -> dict[str, list[tuple[str, int]]]:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(data_dir / name / "1.0.0"))
    return {
        split: [
            (r["file_name"].decode(), int(r["label"]))
            for r in tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
        ]
        for split in builder.info.splits
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Source folders for every refusal, and a data set `kept` already built from `good`."""
    from mambavision_jax.data import build_folder_dataset

    root = tmp_path_factory.mktemp("dataset_cli")
    _images(root / "good", {"cat": 6, "dog": 6})
    _images(root / "small", {"cat": 3, "dog": 4})  # < 6 files: round(n * 0.1) == 0 validation
    _images(root / "empty_class", {"cat": 6})
    (root / "empty_class" / "dog").mkdir()
    for c in ("cat", "dog"):
        for i in range(8):
            _junk(root / "all_corrupt" / c / f"{i}.jpg")
    _images(root / "one_class_corrupt", {"cat": 8})
    for i in range(8):
        _junk(root / "one_class_corrupt" / "dog" / f"{i}.jpg")
    _images(root / "shared", {"cat": 6, "dog": 6})
    os.symlink("../cat/0.png", root / "shared" / "dog" / "also_a_cat.png")
    _images(root / "leak" / "train", {"cat": 3, "dog": 3})
    _images(root / "leak" / "val", {"cat": 1, "dog": 1}, seed=50)
    os.link(root / "leak" / "train" / "cat" / "0.png", root / "leak" / "val" / "cat" / "hard_link.png")
    _images(root / "no_val" / "train", {"cat": 3})
    (root / "no_val" / "val" / "cat").mkdir(parents=True)
    (root / "loose").mkdir()
    _png(root / "loose" / "a.png", 1)
    build_folder_dataset(str(root / "good"), "kept", str(root / "tfds"))
    (root / "tfds" / "half_built" / "1.0.0").mkdir(parents=True)
    (root / "a_file").write_text("not a folder\n")
    return root


REFUSALS = [
    # (arguments, words the error line must contain)
    (["--src", "missing", "--name", "x"], ["missing", "does not exist"]),
    (["--src", "a_file", "--name", "x"], ["a_file", "not a folder"]),
    (["--src", "good", "--name", "x", "--data_dir", "a_file"], ["--data_dir", "not a folder"]),
    (["--src", "loose", "--name", "x", "--data_dir", "tfds"], ["no class sub-folders"]),
    (["--src", "good", "--name", "x", "--val_fraction", "1"], ["--val_fraction", "< 1"]),
    (["--src", "good", "--name", "x", "--val_fraction", "-0.1"], ["--val_fraction", ">= 0"]),
    (["--src", "good", "--name", "x", "--val_fraction", "nan"], ["--val_fraction", "number"]),
    (["--src", "good", "--name", "x", "--seed", "-1"], ["--seed", ">= 0"]),
    (["--src", "good", "--name", "x", "--num_workers", "-2"], ["--num_workers", ">= 0"]),
    (["--src", "good", "--name", "x", "--num_workers", "100000"], ["--num_workers", "<= 256"]),
    (["--src", "good", "--name", "Bad-Name"], ["snake_case", "Bad-Name"]),
    (["--src", "good", "--name", "mnist"], ["mnist", "TFDS dataset name"]),
    (["--src", "good", "--name", "x", "--version", "1.0"], ["version", "x.y.z"]),
    (["--src", "small", "--name", "x", "--data_dir", "tfds"], ["validation split would be empty", "6 files"]),
    (
        ["--src", "good", "--name", "x", "--data_dir", "tfds", "--val_fraction", "0.95"],
        ["all of them would go to validation"],
    ),
    (["--src", "empty_class", "--name", "x", "--data_dir", "tfds"], ["no files", "dog"]),
    (["--src", "all_corrupt", "--name", "x", "--data_dir", "tfds"], ["no", "readable image"]),
    (["--src", "one_class_corrupt", "--name", "x", "--data_dir", "tfds"], ["no readable image", "dog"]),
    (["--src", "shared", "--name", "x", "--data_dir", "tfds"], ["same image", "cat/0.png", "also_a_cat.png"]),
    (["--src", "leak", "--name", "x", "--data_dir", "tfds"], ["same image", "hard_link.png"]),
    (["--src", "no_val", "--name", "x", "--data_dir", "tfds"], ["validation split would be empty"]),
    (
        ["--src", "good", "--name", "half_built", "--data_dir", "tfds"],
        ["not a complete data set", "--overwrite"],
    ),
    # an --overwrite whose new source fails keeps the old data set
    (["--src", "all_corrupt", "--name", "kept", "--data_dir", "tfds", "--overwrite"], ["readable image"]),
    (["--src", "one_class_corrupt", "--name", "kept", "--data_dir", "tfds", "--overwrite"], ["dog"]),
]


@pytest.mark.parametrize("args,needles", REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_refusal_is_one_line_and_changes_nothing(ws, args, needles):
    before = tree_hashes(ws)
    result = run_cli(MAKE, *args, cwd=ws)
    assert_user_error(result, *needles)
    assert tree_hashes(ws) == before
    assert len(_read(ws / "tfds", "kept")["train"]) == 10


def test_symlink_loop_and_duplicate_names_count_each_file_once(tmp_path):
    src = _images(tmp_path / "src", {"class_a": 6, "class_b": 6, "class_c": 6, "class_d": 6})
    os.symlink("..", src / "class_d" / "loop")  # would re-list every class, forever
    os.symlink("0.png", src / "class_d" / "zero_again.png")  # one file, two names
    os.symlink(".", src / "class_c" / "self")
    result = run_cli(MAKE, "--src", src, "--name", "loopy", "--data_dir", tmp_path / "tfds")
    assert result.returncode == 0, result.stderr
    splits = _read(tmp_path / "tfds", "loopy")
    names = [n for items in splits.values() for n, _ in items]
    assert len(names) == len(set(names)) == 24
    assert not {n for n, _ in splits["train"]} & {n for n, _ in splits["validation"]}
    assert {label for _, label in splits["validation"]} == {0, 1, 2, 3}
    assert not any("loop" in n or "self" in n or "zero_again" in n for n in names)


def test_overwrite_replaces_the_data_set_and_leaves_no_build_folder(tmp_path):
    data_dir = tmp_path / "tfds"
    src = _images(tmp_path / "src", {"cat": 6, "dog": 6})
    assert run_cli(MAKE, "--src", src, "--name", "pets", "--data_dir", data_dir).returncode == 0
    _images(src, {"bird": 10}, seed=7)
    result = run_cli(MAKE, "--src", src, "--name", "pets", "--data_dir", data_dir, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert f"pets: 3 classes in {data_dir / 'pets' / '1.0.0'}" in result.stdout
    splits = _read(data_dir, "pets")
    assert sum(map(len, splits.values())) == 22
    assert sorted(os.listdir(data_dir)) == ["pets"]


def test_sigkill_during_overwrite_leaves_the_old_data_set(tmp_path):
    """Kill the rebuild once TFDS writes its first array_record file in the build folder: the
    previous data set must be byte for byte as it was, and readable."""
    data_dir = tmp_path / "tfds"
    src = _images(tmp_path / "src", {"cat": 6, "dog": 6})
    assert run_cli(MAKE, "--src", src, "--name", "pets", "--data_dir", data_dir).returncode == 0
    before = tree_hashes(data_dir / "pets")
    big = tmp_path / "big"
    for c in ("a", "b"):
        for i in range(150):
            _png(big / c / f"{i}.png", i, size=96)
    proc = popen_cli(MAKE, "--src", big, "--name", "pets", "--data_dir", data_dir, "--overwrite")
    killed = False
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        builds = [p for p in data_dir.iterdir() if p.name.startswith(".pets-1.0.0.build-")]
        if builds and any("array_record" in f for _, _, files in os.walk(builds[0]) for f in files):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert killed, "the rebuild finished before its first array_record file was seen"
    assert tree_hashes(data_dir / "pets") == before
    assert sum(map(len, _read(data_dir, "pets").values())) == 12
    shutil.rmtree(big)
