"""A folder of class sub-folders of images -> a TFDS dataset (array_record) with train/validation.

Layouts:
  SRC/<class>/**/<image>                 split per class by `val_fraction` (seeded, stratified)
  SRC/train/<class>/**, SRC/val/<class>/** (or validation/): those two splits as given
Class ids are the sorted class-folder names (as torchvision's ImageFolder and TFDS's ImageNet).
Every file is decoded once while building: unreadable ones are skipped and counted, not fatal.
Baseline RGB JPEGs are stored byte for byte; every other image (grey, RGBA, palette, CMYK, 16-bit,
other formats) is converted to 8-bit RGB and stored as lossless PNG.

Symbolic links are followed, but every real file is taken once: a folder reached a second time
(a link back to an ancestor such as `ln -s .. loop`, or two links to one folder) is not entered
again, and a file reached under two names in one class counts once. The same file under two class
folders (or in both train/ and val/) is refused with both paths named: it would be one example with
two labels, or a validation example the model trained on.

The data set is built in a hidden folder beside DATA_DIR/NAME and swapped in only once complete,
so a failed or interrupted build (unreadable source, an empty split, a kill) leaves the previous
DATA_DIR/NAME/VERSION as it was (a kill may leave a hidden DATA_DIR/.NAME-VERSION.build-* folder,
safe to delete).
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
from etils import epath
from PIL import Image

from mambavision_jax.data.image_folder import class_dirs, walk_files
from mambavision_jax.data.image_io import encode_png, to_rgb_uint8
from mambavision_jax.data.tfds_base import LocalBuilder
from mambavision_jax.errors import UserError
from mambavision_jax.paths import atomic_dir

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
            lines.append(
                f"    ... {len(self.skipped) - 20} more: see {self.dataset_dir}/make_folder_report.json"
            )
        return "\n".join(lines)


def class_files(root: str, classes: list[str], owners: dict | None = None) -> list[list[str]]:
    """The files of each class folder root/<class>, each real file once; the same file in two class
    folders is refused (a UserError naming both paths). Pass one `owners` dict to several calls to
    also refuse a file shared between them (e.g. train/ and val/)."""
    owners = {} if owners is None else owners
    out = []
    for c in classes:
        files = []
        for path, key in walk_files(os.path.join(root, c)):
            if key is not None:
                first = owners.setdefault(key, path)
                if first != path:
                    raise UserError(
                        f"the same image is in two places: {first} and {path} (one file, linked "
                        f"twice); as one example under two labels, or in both training and "
                        f"validation, it would leak between them. Keep one of the two"
                    )
            files.append(path)
        out.append(files)
    return out


def _min_files_for_validation(val_fraction: float) -> int:
    n = 1
    while round(n * val_fraction) < 1:
        n += 1
    return n


def plan_splits(src: str, val_fraction: float = 0.1, seed: int = 0):
    """-> (classes, {split: [(path, label)]}, loose files outside class folders)."""
    top = class_dirs(src)
    loose = [os.path.join(src, f) for f in sorted(os.listdir(src)) if os.path.isfile(os.path.join(src, f))]
    if set(top) in _SPLIT_DIRS:
        val_dir = "val" if "val" in top else "validation"
        classes = class_dirs(os.path.join(src, "train"))
        extra = sorted(set(class_dirs(os.path.join(src, val_dir))) - set(classes))
        if extra:
            raise UserError(f"{val_dir}/ has classes that train/ lacks: {extra[:10]}")
        splits, owners = {}, {}
        for split, d in (("train", "train"), ("validation", val_dir)):
            per_class = class_files(os.path.join(src, d), classes, owners)
            empty = [c for c, files in zip(classes, per_class) if not files]
            if split == "train" and empty:
                raise UserError(
                    f"class folder(s) with no files in {os.path.join(src, d)}: {empty[:10]}; "
                    f"add images or remove the folder(s)"
                )
            splits[split] = [(p, label) for label, files in enumerate(per_class) for p in files]
            loose += [
                os.path.join(src, d, f)
                for f in sorted(os.listdir(os.path.join(src, d)))
                if os.path.isfile(os.path.join(src, d, f))
            ]
        if not splits["validation"]:
            raise UserError(
                f"{os.path.join(src, val_dir)} holds no files: the validation split would be "
                f"empty. Add images, or put all class folders directly under {src} to "
                f"split them by --val_fraction"
            )
        return classes, splits, loose
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    classes = top
    if not classes:
        raise UserError(
            f"{src} has no class sub-folders (expected SRC/<class>/<images>, or "
            f"SRC/train/<class>/... with SRC/val/<class>/...)"
        )
    rng = np.random.default_rng(seed)
    splits = {"train": [], "validation": []}
    per_class = class_files(src, classes)
    empty = [c for c, files in zip(classes, per_class) if not files]
    if empty:
        raise UserError(
            f"class folder(s) with no files in {src}: {empty[:10]}; add images or remove the folder(s)"
        )
    for label, files in enumerate(per_class):
        order = rng.permutation(len(files))
        n_val = int(round(len(files) * val_fraction))
        splits["validation"] += [(files[i], label) for i in sorted(order[:n_val])]
        splits["train"] += [(files[i], label) for i in sorted(order[n_val:])]
        if n_val == len(files):
            raise UserError(
                f"class {classes[label]!r} has {len(files)} file(s): at val_fraction "
                f"{val_fraction} all of them would go to validation and none to train. "
                f"Add images or lower --val_fraction"
            )
    if val_fraction == 0:
        del splits["validation"]
    elif not splits["validation"]:
        need = _min_files_for_validation(val_fraction)
        raise UserError(
            f"the validation split would be empty: at --val_fraction {val_fraction} a class "
            f"needs at least {need} files to give one to validation, and the largest has "
            f"{max(len(f) for f in per_class)}. Pass a larger --val_fraction, or 0 to "
            f"write only 'train'"
        )
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
            pending.append(ex.submit(_load_many, paths[i : i + chunk]))
            if len(pending) >= 4 * num_workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _builder_class(
    ds_name: str, version: str, classes: list[str], splits: dict, src: str, skipped: list, num_workers: int
):
    # A builder per call, not registered: the dataset name is chosen at run time, and reading it back
    # needs no class (tfds finds DATA_DIR/name/version from the files).
    class FolderImageDataset(LocalBuilder, skip_registration=True):
        name = ds_name
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"Images from {src} (make_folder_dataset).",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(names=classes),
                        "file_name": tfds.features.Text(),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        # TFDS's own lines would name the hidden build folder; the command prints the final one.
        def _log_download_bytes(self):
            n = sum(len(items) for items in splits.values())
            print(f"Building {ds_name} {version} from {n} files under {src} ...", flush=True)

        def _log_download_done(self):
            pass

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(items) for split, items in splits.items()}

        def _generate_examples(self, items):
            paths = [p for p, _ in items]
            loaded = _load_parallel(paths, num_workers) if num_workers > 0 else map(load_image_bytes, paths)
            yield from self._examples(items, loaded)

        def _examples(self, items, loaded):
            n = 0
            for (path, label), (data, reason) in zip(items, loaded):
                if data is None:
                    skipped.append((path, reason))
                    continue
                rel = os.path.relpath(path, src)
                n += 1
                yield rel, {"image": data, "label": label, "file_name": rel}
            if items and not n:  # said here: TFDS would only say "No examples were yielded"
                split = "validation" if items is splits.get("validation") else "train"
                raise UserError(
                    f"none of the {len(items)} files planned for the {split} split is a "
                    f"readable image (e.g. {items[0][0]}: {skipped[-1][1]})"
                )

    return FolderImageDataset


def build_folder_dataset(
    src: str,
    name: str,
    data_dir: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    num_workers: int = 0,
    version: str = "1.0.0",
    overwrite: bool = False,
) -> FolderBuildReport:
    """Build DATA_DIR/name/version from the images under `src`; returns what was written and skipped.
    An existing DATA_DIR/name/version is kept unless `overwrite`, and then replaced only by a
    complete new build (see the module doc)."""
    if not _NAME_RE.match(name):
        raise UserError(f"dataset name must be snake_case ([a-z][a-z0-9_]*), got {name!r}")
    if not _VERSION_RE.match(version):
        raise UserError(f"version must be x.y.z (e.g. 1.0.0), got {version!r}")
    if not os.path.isdir(src):
        raise FileNotFoundError(
            f"--src {src!r} is not a folder" if os.path.exists(src) else f"--src {src!r} does not exist"
        )
    data_dir = os.fspath(data_dir or tfds.core.constants.DATA_DIR)
    if "://" not in data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise NotADirectoryError(f"--data_dir {data_dir!r} is a file, not a folder")
    if name in tfds.list_builders(with_community_datasets=False):
        raise UserError(f"{name!r} is a TFDS dataset name; choose another (e.g. my_{name})")
    classes, splits, loose = plan_splits(src, val_fraction, seed)
    skipped = [(p, "not inside a class folder") for p in loose]
    builder_class = _builder_class(name, version, classes, splits, src, skipped, num_workers)
    final = os.path.join(data_dir, name, version)
    existing = builder_class(data_dir=data_dir, file_format="array_record")
    if existing.is_prepared() and not overwrite:
        return FolderBuildReport(
            name,
            os.fspath(existing.data_dir),
            classes,
            {k: int(v.num_examples) for k, v in existing.info.splits.items()},
            [],
            already_prepared=True,
        )
    remote = "://" in data_dir
    if (epath.Path(final).exists() if remote else os.path.lexists(final)) and not overwrite:
        raise FileExistsError(
            f"{final} exists but is not a complete data set (an interrupted build by "
            f"another tool?); pass --overwrite to replace it"
        )

    def build(builder) -> FolderBuildReport:
        builder.download_and_prepare()
        counts = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
        _check_every_class_has_examples(classes, splits, skipped)
        (epath.Path(builder.data_dir) / "make_folder_report.json").write_text(
            json.dumps(
                {
                    "src": os.path.abspath(src),
                    "classes": classes,
                    "num_examples": counts,
                    "val_fraction": val_fraction,
                    "seed": seed,
                    "skipped": skipped,
                },
                indent=1,
            )
        )
        return FolderBuildReport(name, final, classes, counts, skipped)

    if remote:  # an object store has no rename: build in place, and only where nothing is replaced
        if epath.Path(final).exists():
            raise UserError(
                f"{final}: a data set on an object store cannot be replaced atomically; "
                f"delete it first, or build on a local disk and copy it over"
            )
        return build(existing)
    os.makedirs(data_dir, exist_ok=True)
    # built under DATA_DIR/.NAME-VERSION.build-*/NAME/VERSION (TFDS's own layout), then swapped in
    with atomic_dir(
        final,
        replace=True,
        content=os.path.join(name, version),
        tmp_dir=data_dir,
        tmp_prefix=f".{name}-{version}.build-",
    ) as build_root:
        return build(builder_class(data_dir=os.fspath(build_root), file_format="array_record"))


_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def _check_every_class_has_examples(classes, splits, skipped) -> None:
    why = dict(skipped)
    readable = collections.Counter(
        label for items in splits.values() for path, label in items if path not in why
    )
    empty = [label for label in range(len(classes)) if not readable[label]]
    if empty:
        path = next(p for items in splits.values() for p, label in items if label == empty[0])
        raise UserError(
            f"class folder(s) with no readable image: {[classes[i] for i in empty[:10]]} "
            f"(e.g. {path}: {why[path]}). Fix or remove them"
        )
