"""A folder of class sub-folders of images -> a TFDS dataset (array_record) with train/validation.

Layouts:
  SRC/<class>/**/<image>                 split per class by `val_fraction` (seeded, stratified)
  SRC/train/<class>/**, SRC/val/<class>/** (or validation/): those two splits as given
Class ids are the sorted class-folder names (as torchvision's ImageFolder and TFDS's ImageNet).
Every file is decoded once while building: unreadable ones are skipped and counted, not fatal.
Baseline RGB JPEGs are stored byte for byte; every other image (grey, RGBA, palette, CMYK, 16-bit,
other formats) is converted to 8-bit RGB and stored as lossless PNG.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import multiprocessing
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mambavision_jax.data.image_io import encode_png, to_rgb_uint8
from mambavision_jax.data.tfds_base import LocalBuilder

_SPLIT_DIRS = ({"train", "val"}, {"train", "validation"})
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass
class FolderBuildReport:
    name: str
    dataset_dir: str
    classes: list[str]
    num_examples: dict[str, int]  # split -> examples written
    skipped: list[tuple[str, str]]  # (path, reason)
    already_prepared: bool = False

    def summary(self) -> str:
        lines = [f"{self.name}: {len(self.classes)} classes in {self.dataset_dir}"]
        if self.already_prepared:
            lines.append("  already prepared; nothing rebuilt (pass --overwrite to rebuild)")
        lines += [f"  {split}: {n} examples" for split, n in self.num_examples.items()]
        lines.append(f"  skipped (not a readable image): {len(self.skipped)}")
        lines += [f"    {path}: {reason}" for path, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"    ... {len(self.skipped) - 20} more: see "
                         f"{self.dataset_dir}/make_folder_report.json")
        return "\n".join(lines)


def _list_files(root: str) -> list[str]:
    """Every regular file under root (recursively), sorted; hidden folders (.git, .ipynb_checkpoints)
    are not entered since they hold copies or metadata, not samples."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in filenames]
    return sorted(out)


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def plan_splits(src: str, val_fraction: float = 0.1, seed: int = 0):
    """-> (classes, {split: [(path, label)]}, loose files outside class folders)."""
    top = _class_dirs(src)
    loose = [os.path.join(src, f) for f in sorted(os.listdir(src))
             if os.path.isfile(os.path.join(src, f))]
    if set(top) in _SPLIT_DIRS:
        val_dir = "val" if "val" in top else "validation"
        classes = _class_dirs(os.path.join(src, "train"))
        extra = sorted(set(_class_dirs(os.path.join(src, val_dir))) - set(classes))
        if extra:
            raise ValueError(f"{val_dir}/ has classes that train/ lacks: {extra[:10]}")
        splits = {}
        for split, d in (("train", "train"), ("validation", val_dir)):
            splits[split] = [(p, label) for label, c in enumerate(classes)
                             for p in _list_files(os.path.join(src, d, c))]
            loose += [os.path.join(src, d, f) for f in sorted(os.listdir(os.path.join(src, d)))
                      if os.path.isfile(os.path.join(src, d, f))]
        return classes, splits, loose
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    classes = top
    rng = np.random.default_rng(seed)
    splits = {"train": [], "validation": []}
    for label, c in enumerate(classes):
        files = _list_files(os.path.join(src, c))
        order = rng.permutation(len(files))
        n_val = int(round(len(files) * val_fraction))
        splits["validation"] += [(files[i], label) for i in sorted(order[:n_val])]
        splits["train"] += [(files[i], label) for i in sorted(order[n_val:])]
    if val_fraction == 0:
        del splits["validation"]
    return classes, splits, loose


def load_image_bytes(path: str) -> tuple[bytes | None, str]:
    """-> (bytes to store, '') or (None, why it was skipped)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        img = Image.open(io.BytesIO(data))
        img.load()  # full decode: truncated files fail here
        if img.format == "JPEG" and img.mode == "RGB":
            return data, ""
        return encode_png(to_rgb_uint8(img)), ""
    except Image.UnidentifiedImageError:
        return None, "not an image PIL can read"
    except Exception as e:  # any decoder failure means 'not a usable image'
        return None, f"{type(e).__name__}: {e}"[:200]


def _load_many(paths: list[str]) -> list[tuple[bytes | None, str]]:
    return [load_image_bytes(p) for p in paths]


def _load_parallel(paths: list[str], num_workers: int, chunk: int = 32):
    """load_image_bytes over paths in worker processes, in order, with a bounded number of chunks in
    flight (so a slow writer cannot make decoded images pile up in memory). A crashing worker raises
    BrokenProcessPool instead of being respawned forever, as multiprocessing.Pool would."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold JAX threads
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as ex:
        pending = collections.deque()
        for i in range(0, len(paths), chunk):
            pending.append(ex.submit(_load_many, paths[i:i + chunk]))
            if len(pending) >= 4 * num_workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _builder_class(ds_name: str, version: str, classes: list[str], splits: dict, src: str,
                   skipped: list, num_workers: int):
    # A builder per call, not registered: the dataset name is chosen at run time, and reading it back
    # needs no class (tfds finds DATA_DIR/name/version from the files).
    class FolderImageDataset(LocalBuilder, skip_registration=True):
        name = ds_name
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"Images from {src} (make_folder_dataset).",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=classes),
                    "file_name": tfds.features.Text(),
                }),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(items) for split, items in splits.items()}

        def _generate_examples(self, items):
            paths = [p for p, _ in items]
            loaded = (_load_parallel(paths, num_workers) if num_workers > 0
                      else map(load_image_bytes, paths))
            yield from self._examples(items, loaded)

        def _examples(self, items, loaded):
            for (path, label), (data, reason) in zip(items, loaded):
                if data is None:
                    skipped.append((path, reason))
                    continue
                rel = os.path.relpath(path, src)
                yield rel, {"image": data, "label": label, "file_name": rel}

    return FolderImageDataset


def build_folder_dataset(src: str, name: str, data_dir: str | None = None, val_fraction: float = 0.1,
                         seed: int = 0, num_workers: int = 0, version: str = "1.0.0",
                         overwrite: bool = False) -> FolderBuildReport:
    """Build DATA_DIR/name/version from the images under `src`; returns what was written and skipped."""
    if not _NAME_RE.match(name):
        raise ValueError(f"dataset name must be snake_case ([a-z][a-z0-9_]*), got {name!r}")
    if name in tfds.list_builders(with_community_datasets=False):
        raise ValueError(f"{name!r} is a TFDS dataset name; choose another (e.g. my_{name})")
    if not os.path.isdir(src):
        raise FileNotFoundError(f"--src {src!r} is not a folder")
    data_dir = os.fspath(data_dir or tfds.core.constants.DATA_DIR)
    classes, splits, loose = plan_splits(src, val_fraction, seed)
    if not classes:
        raise ValueError(f"{src} has no class sub-folders")
    skipped = [(p, "not inside a class folder") for p in loose]
    builder = _builder_class(name, version, classes, splits, src, skipped, num_workers)(
        data_dir=data_dir, file_format="array_record")
    if builder.is_prepared() and not overwrite:
        return FolderBuildReport(name, os.fspath(builder.data_dir), classes,
                                 {k: int(v.num_examples) for k, v in builder.info.splits.items()},
                                 [], already_prepared=True)
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite else None
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(download_mode=mode) if mode else None)
    counts = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
    if sum(counts.values()) == 0:
        raise ValueError(f"no readable images under {src} ({len(skipped)} files skipped)")
    report = FolderBuildReport(name, os.fspath(builder.data_dir), classes, counts, skipped)
    with open(os.path.join(report.dataset_dir, "make_folder_report.json"), "w") as f:
        json.dump({"src": os.path.abspath(src), "classes": classes, "num_examples": counts,
                   "val_fraction": val_fraction, "seed": seed, "skipped": skipped}, f, indent=1)
    return report
