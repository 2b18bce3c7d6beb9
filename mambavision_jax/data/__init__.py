"""Data layer: TFDS sources, grain pipelines, augmentation, eval preprocessing, dataset builders.

Images are float32 NHWC normalised with the model's mean / std, or (normalize=False, the training
loop) uint8 NHWC normalised on the devices by `mambavision_jax.data.device_ops` (not imported here:
the host side needs no jax); labels int32.
"""

from mambavision_jax.data.digits import DIGITS_NAME, MvDigits, build_digits
from mambavision_jax.data.folder import FolderBuildReport, build_folder_dataset
from mambavision_jax.data.pipeline import (
    eval_num_batches,
    make_eval_iterator,
    make_train_iterator,
    resolve_workers,
    shard_bounds,
)
from mambavision_jax.data.rand_augment import RandAugment, rand_augment_transform
from mambavision_jax.data.sources import (
    DatasetNotPreparedError,
    DatasetSummary,
    dataset_info,
    default_eval_split,
    open_source,
)
from mambavision_jax.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    TrainAugConfig,
    erasing_boxes,
    eval_crop_uint8,
    eval_transform,
    random_erasing,
    random_resized_crop,
    train_augment,
    train_transform,
)

__all__ = [
    "DIGITS_NAME",
    "MvDigits",
    "build_digits",
    "FolderBuildReport",
    "build_folder_dataset",
    "make_train_iterator",
    "make_eval_iterator",
    "eval_num_batches",
    "resolve_workers",
    "shard_bounds",
    "RandAugment",
    "rand_augment_transform",
    "DatasetNotPreparedError",
    "DatasetSummary",
    "dataset_info",
    "default_eval_split",
    "open_source",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "TrainAugConfig",
    "eval_transform",
    "train_transform",
    "random_erasing",
    "random_resized_crop",
    "train_augment",
    "erasing_boxes",
    "eval_crop_uint8",
]
