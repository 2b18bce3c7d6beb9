"""python -m mambavision_jax.data.make_seg_dataset --ade ADEChallengeData2016 --name ade20k --data_dir D

Turns an ADE20K SceneParsing folder (ADEChallengeData2016: images/{training,validation}/*.jpg and
annotations/{training,validation}/*.png, as mmseg's ADE20KDataset reads it) into a TFDS data set
(array_record, no TensorFlow) with splits "train" and "validation", the files stored byte for byte,
for `train.py --config configs/seg_*_ade20k.py` and `python -m mambavision_jax.evaluate_seg --tfds`.
Labels keep ADE20K's values (0 = other, 1..150); readers apply reduce_zero_label, as mmseg does.
(TFDS's own scene_parse150 holds instance annotations, not these labels.)

Refused with one `error:` line before anything is written: a missing folder, an image without its
label map or a label map without its image, a bad --name; a label map that is not one channel is
named when it is read. The data set is built beside an existing one and swapped in when complete.
"""

from __future__ import annotations

import os
import re
import sys

from mambavision_jax import cli

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _parser():
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.data.make_seg_dataset",
        description=__doc__.split("\n\n", 1)[1].split("\n\n", 1)[0],
    )
    p.add_argument("--ade", required=True, metavar="ROOT", help="the ADEChallengeData2016 folder")
    p.add_argument("--name", default="ade20k", help="data set name, snake_case (default ade20k)")
    p.add_argument(
        "--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing data set of that name")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not _NAME_RE.match(args.name) or args.name == "scene_parse150":
        raise cli.UserError(f"--name must be snake_case and not a TFDS data set name, got {args.name!r}")
    if not os.path.isdir(args.ade):
        raise FileNotFoundError(f"--ade {args.ade}: no such folder")
    from mambavision_jax.data.seg_datasets import ade_folder_pairs, build_ade_dataset

    for sub in ("training", "validation"):  # checked before anything is written
        ade_folder_pairs(os.path.join(args.ade, "images", sub), os.path.join(args.ade, "annotations", sub))
    if not sys.stderr.isatty():
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    path = build_ade_dataset(args.ade, name=args.name, data_dir=args.data_dir, overwrite=args.overwrite)
    print(f"{args.name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
