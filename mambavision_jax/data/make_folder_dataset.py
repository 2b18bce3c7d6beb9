"""python -m mambavision_jax.data.make_folder_dataset --src DIR --name NAME --data_dir D

Turns a folder of class sub-folders of images into a TFDS dataset (array_record files, readable
with tfds.data_source and no TensorFlow) with 'train' and 'validation' splits. Unreadable files
are skipped and listed at the end.

Refused with one `error:` line, before anything is written: a missing --src, a bad --name /
--version / --val_fraction, class folders with no files, a split that would be empty (e.g. classes
of fewer than 5 images at --val_fraction 0.1), the same image under two class folders (or in train/
and val/), and, after decoding, a split or class with no readable image. The new data set is built
beside the old one and swapped in only when complete: a failed or interrupted --overwrite leaves
the previous data set as it was. Symbolic links are followed, each real file taken once.
"""

from __future__ import annotations

import argparse
import sys

from mambavision_jax import cli


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.data.make_folder_dataset",
        description=__doc__.split("\n\n", 1)[1],
        epilog="Layouts: SRC/<class>/<images> (split by --val_fraction), or SRC/train/<class>/... with "
        "SRC/val/<class>/... (or validation/), used as given. Class ids are the sorted folder "
        "names. Read it back by name: tfds.data_source(NAME, split=..., data_dir=D) or "
        "mambavision_jax.data.make_train_iterator(NAME, data_dir=D, ...).",
    )
    p.add_argument(
        "--src",
        required=True,
        help="folder holding one sub-folder of images per class (searched recursively), "
        "or train/ and val/ folders that each hold such class sub-folders",
    )
    p.add_argument(
        "--name", required=True, help="dataset name, snake_case (e.g. my_flowers); not an existing TFDS name"
    )
    p.add_argument(
        "--data_dir",
        default=None,
        help="TFDS data dir to write DATA_DIR/NAME/VERSION into "
        "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    p.add_argument(
        "--val_fraction",
        type=cli.float_range(0, 1, max_inclusive=False),
        default=0.1,
        help="fraction of each class held out as the 'validation' split (stratified, "
        "seeded; default 0.1); 0 writes only 'train'; ignored for the train/ + val/ "
        "layout",
    )
    p.add_argument(
        "--seed",
        type=cli.non_negative_int,
        default=0,
        help="seed of the train/validation assignment (default 0)",
    )
    p.add_argument(
        "--num_workers",
        type=cli.int_range(0, 256),
        default=0,
        help="processes that decode and convert images in parallel (default 0: all in this process)",
    )
    p.add_argument("--version", default="1.0.0", help="dataset version x.y.z to write (default 1.0.0)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild even if DATA_DIR/NAME/VERSION is already prepared (the old one is "
        "replaced only once the new build is complete)",
    )
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from mambavision_jax.data.folder import build_folder_dataset  # TFDS import: after --help

    if not sys.stderr.isatty():  # a log file gets the summary, not thousands of progress-bar frames
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    report = build_folder_dataset(
        args.src,
        args.name,
        args.data_dir,
        args.val_fraction,
        args.seed,
        args.num_workers,
        args.version,
        args.overwrite,
    )
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
