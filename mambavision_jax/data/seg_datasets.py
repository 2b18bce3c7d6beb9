"""Semantic segmentation data sets as TFDS array_record data sets (read with `tfds.data_source`,
no TensorFlow), built from a folder in the ADEChallengeData2016 layout or generated (the demo).

Every data set built here has the features {"image": the image file's bytes as they are (JPEG or
PNG), "segmentation": the label map's PNG bytes as they are (one channel of class indices, 255 =
ignore), "file_name"}, and a `seg_dataset.json` beside its files: {"classes": [...],
"reduce_zero_label": bool}. Images and labels are decoded when read (`seg_transforms.decode_image`
/ `load_label`), as mmseg reads the files, so training and evaluation see mmseg's pixels.

ADEChallengeData2016 (the official configs' data, mmseg's ADE20KDataset):
  ROOT/images/training/*.jpg, ROOT/annotations/training/*.png (same stems; 20,210 images),
  ROOT/images/validation/*.jpg, ROOT/annotations/validation/*.png (2,000),
label 0 = "other" (ignored through reduce_zero_label), 1..150 the classes. Splits: "train" and
"validation".

TFDS's own `scene_parse150` is NOT the 150-class benchmark: its builder reads ChallengeData2017's
`annotations_instance` (RGB PNGs of the instance-segmentation challenge: R = one of 100 object
categories, G = instance id) and names the validation images "test". `open_seg_source` refuses it
and says how to build the real one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid

import tensorflow_datasets as tfds
from etils import epath

from mambavision_jax.data.sources import get_builder
from mambavision_jax.data.tfds_base import LocalBuilder
from mambavision_jax.errors import UserError
from mambavision_jax.paths import is_remote, swap_dir_into_place

SEG_META_FILE = "seg_dataset.json"
ADE_SPLITS = {"train": "training", "validation": "validation"}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")

__all__ = [
    "SEG_META_FILE",
    "SegDatasetInfo",
    "seg_features",
    "ade_folder_pairs",
    "build_seg_dataset",
    "ade20k_classes",
    "build_ade_dataset",
    "seg_dataset_info",
    "open_seg_source",
]


@dataclasses.dataclass(frozen=True)
class SegDatasetInfo:
    """What the trainer and evaluate_seg need of a segmentation data set (DatasetSummary's fields,
    and its class names and label convention)."""

    name: str
    num_classes: int
    splits: dict[str, int]  # split name -> number of examples
    data_dir: str
    classes: list[str]
    reduce_zero_label: bool  # ADE20K: label 0 is "other" (ignored), k -> class k - 1


def seg_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "segmentation": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "file_name": tfds.features.Text(),
        }
    )


# ------------------------------------------------------------------ ADEChallengeData2016 folders
def ade_folder_pairs(images_dir: str, annotations_dir: str) -> list[tuple[str, str]]:
    """(image, label map) path pairs of one split folder pair, matched by file stem, sorted (mmseg's
    BaseSegDataset: every image needs its .png label map). An image without a label map, or a
    label map without an image, is an error naming it."""
    for d in (images_dir, annotations_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d} is not a folder" if os.path.exists(d) else f"{d} does not exist")
    images = {
        os.path.splitext(f)[0]: os.path.join(images_dir, f)
        for f in os.listdir(images_dir)
        if f.lower().endswith(_IMAGE_EXTS) and not f.startswith(".")
    }
    labels = {
        os.path.splitext(f)[0]: os.path.join(annotations_dir, f)
        for f in os.listdir(annotations_dir)
        if f.lower().endswith(".png") and not f.startswith(".")
    }
    if not images:
        raise UserError(f"{images_dir} holds no .jpg / .png images")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise UserError(
            f"{len(missing)} image(s) in {images_dir} have no label map in {annotations_dir} "
            f"(e.g. {missing[0]}.png)"
        )
    extra = sorted(set(labels) - set(images))
    if extra:
        raise UserError(
            f"{len(extra)} label map(s) in {annotations_dir} have no image in {images_dir} (e.g. {extra[0]}.png)"
        )
    return [(images[k], labels[k]) for k in sorted(images)]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _check_label(data: bytes, path: str) -> None:
    from mambavision_jax.data.seg_transforms import decode_label

    try:
        decode_label(data)
    except Exception as e:  # noqa: BLE001 - named in the one-line error
        raise UserError(f"{path}: not a one-channel label map ({e})") from None


# ------------------------------------------------------------------ builder
def _builder_class(ds_name: str, version: str, description: str, splits: dict):
    """A TFDS builder for `splits` ({split: iterable of (key, {"image": bytes, "segmentation": bytes,
    "file_name": str})}); not registered: read back by name from its files."""

    class SegmentationDataset(LocalBuilder, skip_registration=True):
        name = ds_name
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=description,
                features=seg_features(),
                supervised_keys=("image", "segmentation"),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(examples) for split, examples in splits.items()}

        def _generate_examples(self, examples):
            yield from examples()

    return SegmentationDataset


def build_seg_dataset(
    name: str,
    splits: dict,
    classes: list[str],
    reduce_zero_label: bool,
    data_dir: str | None = None,
    description: str = "",
    version: str = "1.0.0",
    overwrite: bool = False,
) -> str:
    """Write DATA_DIR/name/version from `splits` ({split: callable returning an iterable of (key,
    example)}) with its `seg_dataset.json`; returns the data set's folder. An existing complete
    one is kept unless `overwrite`; a new one is built beside it and swapped in when complete."""
    data_dir = os.fspath(data_dir or tfds.core.constants.DATA_DIR)
    cls = _builder_class(name, version, description, splits)
    final = os.path.join(data_dir, name, version)
    existing = cls(data_dir=data_dir, file_format="array_record")
    if existing.is_prepared() and os.path.exists(os.path.join(final, SEG_META_FILE)) and not overwrite:
        return final
    os.makedirs(data_dir, exist_ok=True)
    build_root = os.path.join(data_dir, f".{name}-{version}.build-{uuid.uuid4().hex[:8]}")
    try:
        builder = cls(data_dir=build_root, file_format="array_record")
        builder.download_and_prepare()
        meta = {"classes": list(classes), "reduce_zero_label": bool(reduce_zero_label)}
        (epath.Path(builder.data_dir) / SEG_META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        swap_dir_into_place(os.path.join(build_root, name, version), final)
    finally:
        shutil.rmtree(build_root, ignore_errors=True)
    return final


def ade20k_classes() -> list[str]:
    """The 150 ADE20K SceneParsing class names in label order (mmseg's ADE20KDataset.METAINFO),
    shipped as mambavision_jax/ade20k_classes.txt."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "ade20k_classes.txt")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def build_ade_dataset(
    root: str,
    classes: list[str] | None = None,
    name: str = "ade20k",
    data_dir: str | None = None,
    overwrite: bool = False,
) -> str:
    """ADEChallengeData2016 at `root` -> the TFDS data set `name` (splits "train", "validation"),
    files stored byte for byte, reduce_zero_label=True. `classes`: the class names (default
    ADE20K's 150)."""
    classes = ade20k_classes() if classes is None else classes
    plan = {
        split: ade_folder_pairs(os.path.join(root, "images", sub), os.path.join(root, "annotations", sub))
        for split, sub in ADE_SPLITS.items()
    }

    def examples(pairs):
        def gen():
            for image_path, label_path in pairs:
                label = _read(label_path)
                _check_label(label, label_path)
                rel = os.path.relpath(image_path, root)
                yield rel, {"image": _read(image_path), "segmentation": label, "file_name": rel}

        return gen

    return build_seg_dataset(
        name,
        {split: examples(pairs) for split, pairs in plan.items()},
        classes,
        reduce_zero_label=True,
        data_dir=data_dir,
        description=f"ADEChallengeData2016 (SceneParsing, 150 classes) from {root}.",
        overwrite=overwrite,
    )


# ------------------------------------------------------------------ reading
_SCENE_PARSE150 = (
    "TFDS's scene_parse150 holds the instance-segmentation annotations of ChallengeData2017 "
    "(annotations_instance: R = one of 100 object categories, G = instance id), not the 150-class "
    "semantic label maps of ADE20K SceneParsing; build the benchmark from ADEChallengeData2016 "
    "instead: python -m mambavision_jax.data.make_seg_dataset --ade ADEChallengeData2016 --name ade20k "
    "--data_dir DIR"
)


def _meta(name: str, data_dir) -> tuple[object, dict]:
    if name.split(":")[0].split("/")[0] == "scene_parse150":
        raise UserError(_SCENE_PARSE150)
    builder = get_builder(name, data_dir)
    path = epath.Path(builder.data_dir) / SEG_META_FILE
    if "segmentation" not in builder.info.features or not path.exists():
        raise UserError(
            f"{name} in {builder.data_dir} is not a segmentation data set of this package (no "
            f"'segmentation' feature or {SEG_META_FILE}); build one with "
            f"python -m mambavision_jax.data.make_seg_dataset"
        )
    return builder, json.loads(path.read_text())


def seg_dataset_info(name: str, data_dir=None) -> SegDatasetInfo:
    """Split sizes, classes and reduce_zero_label of a prepared segmentation data set."""
    builder, meta = _meta(name, data_dir)
    return SegDatasetInfo(
        name=name,
        num_classes=len(meta["classes"]),
        splits={k: int(v.num_examples) for k, v in builder.info.splits.items()},
        data_dir=os.fspath(builder.data_dir),
        classes=list(meta["classes"]),
        reduce_zero_label=bool(meta["reduce_zero_label"]),
    )


def open_seg_source(name: str, split: str, data_dir=None):
    """Random-access source of `split`; records {"image": bytes, "segmentation": bytes, ...}
    (decoded in the transforms)."""
    from mambavision_jax.data.sources import open_source

    _meta(name, data_dir)
    skip = tfds.decode.SkipDecoding()
    if data_dir and is_remote(data_dir):
        return open_source(name, split, data_dir)  # refuses, saying how to copy it to a local disk
    builder = get_builder(name, data_dir)
    return builder.as_data_source(split=split, decoders={"image": skip, "segmentation": skip})
