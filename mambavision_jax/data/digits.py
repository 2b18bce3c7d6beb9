"""The embedded default data set: scikit-learn's handwritten digits as a TFDS dataset `mv_digits`.

1797 8x8 grey images (values 0..16), 10 classes, shipped inside scikit-learn, so a training run works
with no download. They are stored like any other image data set (RGB PNG bytes in array_record
files) so the demo exercises the same input pipeline as ImageNet. Building needs no network and no
TensorFlow: the builder yields PNG bytes, which TFDS stores as they are.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mambavision_jax.data.image_io import encode_png
from mambavision_jax.data.tfds_base import LocalBuilder

DIGITS_NAME = "mv_digits"
# 8x8 upsampled (bilinear) to 32x32: MambaVision's total stride is 32, so stage 4 still sees 1x1.
DIGITS_IMAGE_SIZE = 32
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices into `load_digits()` of the train and test splits: stratified 80/20, fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    train, test = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return np.sort(train), np.sort(test)


def digit_png(image_8x8: np.ndarray) -> bytes:
    """One sklearn digit (floats 0..16) -> 32x32 RGB PNG bytes."""
    grey = np.clip(np.rint(np.asarray(image_8x8, np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    img = Image.fromarray(grey, "L").resize((DIGITS_IMAGE_SIZE,) * 2, Image.Resampling.BILINEAR)
    return encode_png(img.convert("RGB"))


class MvDigits(LocalBuilder):
    """scikit-learn handwritten digits, 32x32 RGB, splits 'train' (1437) and 'test' (360)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "sklearn load_digits, 8x8 -> 32x32 bilinear, grey -> RGB PNG, "
        "stratified 80/20 split (random_state 0)."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: `dataset_info_from_configs` reads metadata files from a package dir.
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn handwritten digits (UCI optdigits test set), upsampled to 32x32 RGB.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE, 3), encoding_format="png"
                    ),
                    "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships with scikit-learn
        train, test = digits_split()
        return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        digits = load_digits()
        for i in indices:
            yield int(i), {"image": digit_png(digits.images[i]), "label": int(digits.target[i])}


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str = DIGITS_NAME):
    """Serialise concurrent first builds of data set `name` (e.g. two JAX processes on one machine
    sharing a data dir)."""
    os.makedirs(data_dir, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(os.path.join(data_dir, f".{name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_digits(data_dir: str | None = None) -> str:
    """Prepare `mv_digits` in `data_dir` (TFDS default dir if None) unless it is there; returns its
    directory. Takes ~1 s the first time."""
    data_dir = os.fspath(data_dir or tfds.core.constants.DATA_DIR)
    builder = MvDigits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        with _build_lock(data_dir):
            builder = MvDigits(data_dir=data_dir, file_format="array_record")
            if not builder.is_prepared():  # another process may have finished while we waited
                builder.download_and_prepare()
    return os.fspath(builder.data_dir)
