"""Opening a prepared TFDS dataset as a random-access source (array_record, no TensorFlow).

Never downloads or prepares anything except the embedded digits set: a missing dataset raises
`DatasetNotPreparedError` with the command that prepares it.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from mambavision_jax.data.digits import DIGITS_NAME, build_digits
from mambavision_jax.errors import UserError
from mambavision_jax.paths import as_path, is_remote

_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset is not prepared (in a random-access format) in the data dir."""


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    name: str
    num_classes: int
    splits: dict[str, int]  # split name -> number of examples
    data_dir: str  # the prepared dataset's directory (name/version)


def _resolve_data_dir(data_dir) -> str:
    """The data dir as TFDS takes it: a local path (absolute, `~` expanded) or a URL as given."""
    return os.fspath(as_path(data_dir) if data_dir else tfds.core.constants.DATA_DIR)


def prepare_instructions(name: str, data_dir=None) -> str:
    """How to prepare `name` in `data_dir`, for error messages."""
    d = _resolve_data_dir(data_dir)
    base = name.split(":")[0].split("/")[0]
    folder = (
        f"  python -m mambavision_jax.data.make_folder_dataset --src IMAGE_DIR --name {base} "
        f"--data_dir {d}\n  (IMAGE_DIR holds one sub-folder of images per class, or train/ and "
        f"val/ folders that each hold class sub-folders; no TensorFlow needed)"
    )
    if base == "imagenet2012":
        return (
            f"Prepare ImageNet-1k once, either with TFDS (its ImageNet builder needs TensorFlow, e.g. "
            f"in a separate environment; copy the result to {d}):\n"
            f"  tfds build imagenet2012 --manual_dir DIR_WITH_ILSVRC2012_img_train.tar_AND_"
            f"ILSVRC2012_img_val.tar --data_dir {d} --file_format array_record\n"
            f"or, from an extracted copy with class folders (train/nXXXXXXXX/*.JPEG, val/nXXXXXXXX/"
            f"*.JPEG; the labels are the sorted synset folders, as in TFDS and torchvision):\n{folder}"
        )
    if base in tfds.list_builders(with_community_datasets=False):
        return (
            f"Prepare it once as array_record (this may download it):\n"
            f"  tfds build {base} --data_dir {d} --file_format array_record\n"
            f"or, from a folder of images:\n{folder}"
        )
    return f"Build it from a folder of images:\n{folder}"


def get_builder(name: str, data_dir=None) -> tfds.core.DatasetBuilder:
    """The prepared builder of `name` (digits are built on first use); raises DatasetNotPreparedError."""
    if name.split(":")[0] == DIGITS_NAME:
        build_digits(data_dir)
    try:
        builder = tfds.builder(name, data_dir=_resolve_data_dir(data_dir) if data_dir else None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetNotPreparedError(
            f"Dataset {name!r} is neither a TFDS dataset nor prepared in {_resolve_data_dir(data_dir)}.\n"
            + prepare_instructions(name, data_dir)
        ) from None
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"Dataset {name!r} is not prepared in {_resolve_data_dir(data_dir)}.\n"
            + prepare_instructions(name, data_dir)
        )
    formats = [f.value for f in builder.info.available_file_formats()] or [builder.info.file_format.value]
    if not any(f in _RANDOM_ACCESS_FORMATS for f in formats):
        raise DatasetNotPreparedError(
            f"Dataset {name!r} in {builder.data_dir} is stored as {formats}; the grain pipeline needs "
            f"random access (array_record). Convert it (reading TFRecord files needs TensorFlow):\n"
            f"  tfds convert_format --dataset_version_dir {builder.data_dir} --out_file_format array_record\n"
            f"or prepare it again.\n" + prepare_instructions(name, data_dir)
        )
    return builder


def open_source(name: str, split: str, data_dir=None, image_key: str = "image"):
    """Random-access source of `split` (any TFDS split string, e.g. 'train[:10%]'). The image stays
    encoded (bytes): decoding happens in the transform, inside grain's threads or worker processes.

    ArrayRecord reads local files only: a data set in a bucket is copied to each host's local disk
    (or the bucket mounted with gcsfuse) and that local path given as the data dir."""
    if data_dir and is_remote(data_dir):
        raise UserError(
            f"data dir {data_dir}: ArrayRecord files are read from a local file system only; "
            f"copy the prepared data set to each host's local disk (gcloud storage cp -r "
            f"{os.fspath(data_dir).rstrip('/')}/{name.split(':')[0]} LOCAL_DIR/) or mount the "
            f"bucket with gcsfuse, and pass that local directory"
        )
    builder = get_builder(name, data_dir)
    return builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})


def dataset_info(name: str, data_dir=None, label_key: str = "label") -> DatasetSummary:
    """Class count and split sizes (for steps per epoch, the classifier head, eval batch counts)."""
    builder = get_builder(name, data_dir)
    info = builder.info
    return DatasetSummary(
        name=name,
        num_classes=int(info.features[label_key].num_classes),
        splits={k: int(v.num_examples) for k, v in info.splits.items()},
        data_dir=os.fspath(builder.data_dir),
    )


def default_eval_split(name: str, data_dir=None) -> str:
    """'validation' if the dataset has it (ImageNet, folder datasets), else 'test' (digits)."""
    splits = dataset_info(name, data_dir).splits
    for split in ("validation", "test"):
        if split in splits:
            return split
    raise UserError(f"dataset {name!r} has no validation or test split (splits: {sorted(splits)})")
