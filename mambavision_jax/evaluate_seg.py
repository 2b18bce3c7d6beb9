"""mIoU, mAcc and aAcc of a segmenter (mmseg's IoUMetric) on a segmentation data set or on a
folder pair of images and label maps, in mmseg's whole mode, with a per-class table.

    python -m mambavision_jax.evaluate_seg --weights runs/seg_demo --tfds mv_seg_digits --data_dir runs/tfds
    python -m mambavision_jax.evaluate_seg --weights runs/seg_tiny \\
        --folder ADEChallengeData2016/images/validation ADEChallengeData2016/annotations/validation

Each image is resized to fit the model's test scale keeping its aspect ratio ((2048, 512) for the
512x512 ADE20K models), the logits resized back to the label map's size (bilinear,
align_corners=False), argmax, and the per-class areas summed over the set (`segmentation.metrics`,
ignore index 255). Label maps of a --folder are read as ADE20K's (reduce_zero_label: 0 is "other"
and ignored, k is class k - 1) unless --no_reduce_zero_label; a --tfds data set says its own.
TFDS's `scene_parse150` is refused: its annotations are instance maps, not the 150-class labels
(see `data.seg_datasets`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from mambavision_jax import cli

__all__ = ["load_segmenter", "evaluate_segmenter", "main"]


def load_segmenter(weights: str, which: str = "best", dtype: str = "float32"):
    """A UperNet (eval mode) from any segmenter's weights `weights.resolve` knows: a segmentation
    training run (its workdir; checkpoint `which`: 'best', 'latest' or a step), an official mmseg
    .pth, a segmenter's orbax folder, a hub id / short name. Classification weights are refused."""
    from mambavision_jax import weights as weights_lib

    return weights_lib.load_segmenter(weights, checkpoint=which, dtype=dtype, needed_by="evaluate_seg")


def evaluate_segmenter(
    model, examples, *, num_classes: int | None = None, mesh=None, progress: bool = False, mode: str = "whole"
):
    """(SegMetrics of `model` over `examples` (`data.seg_pipeline.seg_eval_examples`), images,
    seconds); mode: "whole" (the official test mode) or "slide" (`segmentation.inference`)."""
    from mambavision_jax.mesh import local_mesh
    from mambavision_jax.segmentation.train_task import SegEvaluator
    from mambavision_jax.train.state import split_model

    mesh = mesh if mesh is not None else local_mesh()
    model.eval()
    gd, params, stats, rest = split_model(model)
    evaluator = SegEvaluator(
        gd, mesh, num_classes=num_classes or model.num_classes, seg_config=model.config, mode=mode
    )
    count = [0]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="eval", unit="img", dynamic_ncols=True, file=sys.stderr)

    def tick(ex, areas):
        count[0] += 1
        if bar is not None:
            bar.update(1)

    start = time.perf_counter()
    try:
        sums = evaluator.areas(params, stats, rest, examples, progress=tick)
    finally:
        if bar is not None:
            bar.close()
    return sums, count[0], time.perf_counter() - start


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.evaluate_seg",
        description="mIoU / mAcc / aAcc (mmseg's IoUMetric; whole-mode inference, or --mode slide) of a segmentation "
        "checkpoint on a TFDS segmentation data set or a folder of images and label maps.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m mambavision_jax.evaluate_seg --weights runs/seg_demo --tfds mv_seg_digits "
        "--data_dir runs/tfds\n"
        "  python -m mambavision_jax.evaluate_seg --weights runs/seg_tiny --folder "
        "ADE/images/validation ADE/annotations/validation --json ade.json\n"
        "An ADEChallengeData2016 folder becomes a TFDS data set with\n"
        "  python -m mambavision_jax.data.make_seg_dataset --ade ADEChallengeData2016 --name ade20k --data_dir D",
    )
    p.add_argument(
        "--weights",
        required=True,
        help="a segmentation training run's workdir, an official mmseg .pth, an orbax folder of "
        "segmentation.checkpoint.save_checkpoint, or a hub id / short name (tiny, small, base, l3)",
    )
    cli.add_checkpoint_argument(p, best="best validation mIoU")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--tfds", metavar="NAME", help="a segmentation data set of this package (make_seg_dataset)"
    )
    src.add_argument(
        "--folder",
        nargs=2,
        metavar=("IMAGES", "ANNOTATIONS"),
        help="a folder of images and a folder of .png label maps with the same file stems",
    )
    p.add_argument("--split", default=None, help="--tfds split (default: validation, else test)")
    p.add_argument("--data_dir", default=None, help="--tfds data dir (default: TFDS's)")
    rz = p.add_mutually_exclusive_group()
    rz.add_argument(
        "--reduce_zero_label",
        dest="reduce_zero_label",
        action="store_const",
        const=True,
        default=None,
        help="label 0 is 'other' (ignored) and k is class k - 1, as ADE20K (default for --folder)",
    )
    rz.add_argument(
        "--no_reduce_zero_label",
        dest="reduce_zero_label",
        action="store_const",
        const=False,
        help="label values are the classes (255 ignored)",
    )
    p.add_argument(
        "--max_images", type=cli.non_negative_int, default=0, help="evaluate the first N images only (0: all)"
    )
    cli.add_seg_mode_argument(p)
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (default float32)"
    )
    p.add_argument(
        "--json", metavar="FILE", default=None, help="also write the results as JSON ('-': stdout)"
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _class_names(num_classes: int, tfds_classes=None) -> list[str]:
    if tfds_classes is not None and len(tfds_classes) == num_classes:
        return list(tfds_classes)
    return [f"class {i}" for i in range(num_classes)]


def _table(rows) -> str:
    width = max(len("class"), *(len(r["class"]) for r in rows))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}  {'pixels':>12}"]
    for r in rows:
        iou = "nan" if r["IoU"] != r["IoU"] else f"{r['IoU']:.2f}"
        acc = "nan" if r["Acc"] != r["Acc"] else f"{r['Acc']:.2f}"
        lines.append(f"{r['class']:<{width}}  {iou:>6}  {acc:>6}  {r['pixels']:>12,}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from mambavision_jax import xla_cpu

    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    args = _parser().parse_args(argv)
    from mambavision_jax.paths import check_output

    cli.check_weights_argument(args.weights, task="segmentation")
    if args.json and args.json != "-":
        check_output(args.json, flag="--json", overwrite=True, parent_must_exist=True)
    if args.tfds and args.reduce_zero_label is not None:
        raise cli.UserError("--reduce_zero_label / --no_reduce_zero_label: a --tfds data set says its own")

    from mambavision_jax.data.seg_pipeline import FolderSegSource, seg_eval_examples

    classes = None
    if args.folder:
        from mambavision_jax.data.seg_datasets import ade_folder_pairs

        source = FolderSegSource(ade_folder_pairs(*args.folder))
        reduce_zero = True if args.reduce_zero_label is None else args.reduce_zero_label
        where = {"folder": [os.path.abspath(f) for f in args.folder], "reduce_zero_label": reduce_zero}
    else:
        from mambavision_jax.data.seg_datasets import open_seg_source, seg_dataset_info

        info = seg_dataset_info(args.tfds, args.data_dir)
        split = args.split or ("validation" if "validation" in info.splits else "test")
        if split not in info.splits:
            raise cli.UserError(f"--split {split}: {args.tfds} has splits {sorted(info.splits)}")
        source = open_seg_source(args.tfds, split, args.data_dir)
        reduce_zero, classes = info.reduce_zero_label, info.classes
        where = {
            "tfds": args.tfds,
            "split": split,
            "data_dir": args.data_dir,
            "reduce_zero_label": reduce_zero,
        }

    model = load_segmenter(args.weights, args.checkpoint, args.dtype)
    if classes is not None and len(classes) != model.num_classes:
        raise cli.UserError(
            f"{args.tfds} has {len(classes)} classes but the model has {model.num_classes} outputs"
        )
    examples = seg_eval_examples(
        source,
        test_scale=model.config.test_scale,
        reduce_zero_label=reduce_zero,
        max_examples=args.max_images,
    )
    sums, n, seconds = evaluate_segmenter(model, examples, progress=not args.no_progress, mode=args.mode)
    if not sums.areas["label"].sum():
        raise cli.UserError("no labelled pixel in the evaluated images (all 255 / ignored)")
    summary = sums.summary()
    from mambavision_jax.segmentation.metrics import class_table

    rows = class_table(sums.areas, _class_names(model.num_classes, classes))
    print(_table(rows))
    print(
        f"{model.config.name or 'segmenter'}  {args.weights}\n"
        f"  mIoU {summary['mIoU']:.2f}  mAcc {summary['mAcc']:.2f}  aAcc {summary['aAcc']:.2f}  "
        f"on {n} images ({seconds:.1f} s)"
    )
    if args.json:
        result = {
            **summary,
            "n": n,
            "seconds": seconds,
            "weights": os.fspath(args.weights),
            **({"checkpoint": model.checkpoint_info} if hasattr(model, "checkpoint_info") else {}),
            **where,
            "test_scale": list(model.config.test_scale),
            "mode": args.mode,
            "dtype": args.dtype,
            "per_class": rows,
        }
        text = json.dumps(result, indent=2, allow_nan=True) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            from mambavision_jax.paths import atomic_write_text

            atomic_write_text(args.json, text)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
