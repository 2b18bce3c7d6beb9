"""Top-1 / top-5 of a checkpoint on a TFDS split or a folder of class sub-folders.

    python -m mambavision_jax.evaluate --weights mambavision_tiny_1k.pth.tar \\
        --tfds imagenet2012 --split validation --data_dir ~/tensorflow_datasets --json out.json
    python -m mambavision_jax.evaluate --weights W --folder /data/imagenet/val
    python -m mambavision_jax.evaluate --weights runs/demo --tfds mv_digits   # a training run

The weights are read by `mambavision_jax.weights` and preprocessed with the variant's official eval
transform (`mambavision_jax.preprocessing`), with what the weights say on top. Batches are
sharded over the local devices; the last batch is padded and masked, so every image counts
exactly once. The metrics are `mambavision_jax.metrics.classification_metrics`, as in training.

Python: `evaluate(model, batches)` takes any iterable of {"image", "label"[, "mask"]} batches.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mambavision_jax import cli
from mambavision_jax.data.image_folder import folder_examples
from mambavision_jax.metrics import summarize
from mambavision_jax.paths import is_remote
from mambavision_jax.preprocessing import Preprocessing, resolve_preprocessing
from mambavision_jax.runner import NonFiniteOutputError, Runner

# Preprocessing, Runner, folder_examples are re-exported: they lived here before.
__all__ = [
    "Preprocessing",
    "Runner",
    "evaluate",
    "folder_batches",
    "folder_examples",
    "main",
    "resolve_preprocessing",
]


def _sum_over_processes(totals: dict[str, float]) -> dict[str, float]:
    if jax.process_count() == 1:
        return totals
    from jax.experimental import multihost_utils

    keys = sorted(totals)
    g = multihost_utils.process_allgather(np.array([totals[k] for k in keys], np.float64))
    return dict(zip(keys, np.asarray(g).reshape(-1, len(keys)).sum(0).tolist()))


def evaluate(
    model,
    batches: Iterable[dict[str, Any]],
    *,
    num_batches: int | None = None,
    mesh=None,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (in %) and the mean cross-entropy of `model` over `batches`.

    model: an NNX model or a `Runner`. batches: an iterable of dicts with "image" (B, H, W, 3)
    float32, preprocessed and normalised, "label" (B,) int, and optionally "mask" (B,) bool (False:
    padding, not counted), e.g. `mambavision_jax.data.make_eval_iterator(...)` or
    `folder_batches(...)`. Batches may differ in size. The model is run in eval mode (on a copy:
    the caller's model keeps its mode), jitted once, with the batch sharded over `mesh` (default:
    all local devices). In a multi-process run each process passes its own batches and the counts
    are summed over processes.

    Returns {"top1", "top5" (top-num_classes for a model with fewer classes), "loss", "n",
    "seconds" (all of it: reading, preprocessing, compiling), "warmup_seconds" (until the first
    batch was done, compilation included), "images_per_sec" (after the first batch, so without
    compilation; reading and preprocessing included)}. Raises NonFiniteOutputError when the model's
    outputs are NaN or infinite (its weights cannot be right).
    """
    runner = model if isinstance(model, Runner) else Runner(model, mesh)
    totals = {"correct1": 0.0, "correct5": 0.0, "loss_sum": 0.0, "count": 0.0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_batches, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter()
    warm = None  # (time, images) when the first batch was done: compilation and warm-up end there
    pending = None  # keep one batch in flight: dispatch the next before reading back the last
    try:
        for i, batch in enumerate(batches):
            if num_batches is not None and i >= num_batches:
                break
            labels = np.asarray(batch["label"])
            if runner.num_classes and labels.size and int(labels.max()) >= runner.num_classes:
                raise ValueError(
                    f"label {int(labels.max())} is out of range for a model with {runner.num_classes} classes"
                )
            out = runner.dispatch_metrics(batch)
            if pending is not None:
                _accumulate(totals, pending)
            pending = out
            if warm is None:
                _accumulate(totals, pending)
                pending = None
                warm = (time.perf_counter(), totals["count"])
            if bar is not None:
                bar.update(1)
                if totals["count"]:
                    bar.set_postfix(top1=f"{100 * totals['correct1'] / totals['count']:.2f}")
        if pending is not None:
            _accumulate(totals, pending)
    finally:
        if bar is not None:
            bar.close()
    end = time.perf_counter()
    seconds = end - start
    if warm is not None and totals["count"] > warm[1] and end > warm[0]:
        images_per_sec = (totals["count"] - warm[1]) / (end - warm[0])
    else:
        images_per_sec = totals["count"] / seconds if seconds > 0 else float("nan")
    totals = _sum_over_processes(totals)
    if not math.isfinite(totals["loss_sum"]):
        raise NonFiniteOutputError(
            "the model's outputs are NaN or infinite: its weights cannot be right (check the checkpoint)"
        )
    return {
        **summarize(totals),
        "n": int(round(totals["count"])),
        "seconds": seconds,
        "warmup_seconds": (warm[0] - start) if warm else 0.0,
        "images_per_sec": images_per_sec * jax.process_count(),
    }


def _accumulate(totals, out):
    for k, v in out.items():
        totals[k] += float(v)


# ----------------------------------------------------------------------------- folder input
def folder_batches(
    paths: Sequence[str],
    labels: Sequence[int],
    batch_size: int,
    preprocess: Preprocessing,
    *,
    num_workers: int | None = None,
    skip_unreadable: bool = False,
    skipped: list | None = None,
    max_pixels: int | None = None,
) -> Iterator[dict]:
    """Batches {"image", "label", "mask"} of the files, read and preprocessed by a thread pool,
    one batch ahead. Images are read as the official evaluation and the TFDS folder builder read
    them (alpha dropped, EXIF orientation ignored). The last batch is padded (mask False). An
    unreadable file raises ImageReadError, or with skip_unreadable is masked out and its
    (path, reason) appended to `skipped`. max_pixels: the decompression-bomb limit of
    `images.load_image` (default: its default; 0: no limit)."""
    from mambavision_jax.images import DEFAULT_MAX_PIXELS, ImageReadError, load_image

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None)

    size = preprocess.image_size
    workers = num_workers or min(8, (os.cpu_count() or 1) + 2)

    def one(path):
        try:
            return preprocess(load_image(path, alpha="drop", exif_transpose=False, max_pixels=limit)), None
        except ImageReadError as e:
            if not skip_unreadable:
                raise
            return np.zeros((size, size, 3), np.float32), str(e)

    batch_size = max(1, min(batch_size, len(paths)))  # a small folder: one batch of its size
    starts = range(0, len(paths), batch_size)

    def submit(pool, s):
        return [pool.submit(one, p) for p in paths[s : s + batch_size]]

    with cf.ThreadPoolExecutor(workers) as pool:
        ahead = submit(pool, 0) if len(paths) else []
        for s in starts:
            futures, ahead = ahead, (submit(pool, s + batch_size) if s + batch_size < len(paths) else [])
            results = [f.result() for f in futures]
            images = np.zeros((batch_size, size, size, 3), np.float32)
            mask = np.zeros((batch_size,), bool)
            lab = np.zeros((batch_size,), np.int32)
            for j, (img, err) in enumerate(results):
                images[j] = img
                lab[j] = labels[s + j]
                mask[j] = err is None
                if err is not None and skipped is not None:
                    skipped.append((paths[s + j], err))
            yield {"image": images, "label": lab, "mask": mask}


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    from mambavision_jax.ops import SCAN_IMPLS

    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.evaluate",
        description="Top-1 / top-5 accuracy of a MambaVision checkpoint with the variant's official "
        "eval preprocessing, on a prepared TFDS split or a folder of class sub-folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m mambavision_jax.evaluate --weights mambavision_tiny_1k.pth.tar \\\n"
        "      --tfds imagenet2012 --split validation --data_dir ~/tensorflow_datasets\n"
        "  python -m mambavision_jax.evaluate --weights nvidia_MambaVision-T-1K/ --folder val/ "
        "--json t.json\n"
        "  python -m mambavision_jax.evaluate --weights runs/demo --tfds mv_digits   "
        "# a training run's best checkpoint\n"
        "A folder dataset can be made a TFDS dataset once with\n"
        "  python -m mambavision_jax.data.make_folder_dataset --src DIR --name NAME --data_dir D",
    )
    cli.add_weights_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--tfds",
        metavar="NAME",
        help="a TFDS dataset prepared as array_record in --data_dir, e.g. imagenet2012 "
        "or a dataset made by mambavision_jax.data.make_folder_dataset",
    )
    src.add_argument(
        "--folder",
        metavar="DIR",
        help="a folder of class sub-folders of images (e.g. ImageNet val/n01440764/*.JPEG); needs no TFDS",
    )
    p.add_argument(
        "--split",
        default=None,
        help="TFDS split, any split string such as 'validation' or 'validation[:1000]' "
        "(default: 'validation', else 'test')",
    )
    p.add_argument(
        "--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    p.add_argument(
        "--batch_size",
        type=cli.positive_int,
        default=64,
        help="global batch size, split over the local devices (default 64)",
    )
    cli.add_preprocessing_arguments(p)
    p.add_argument(
        "--label_map",
        choices=("auto", "sorted", "imagenet"),
        default="auto",
        help="--folder only: how folder names become labels: sorted names -> 0..K-1, or "
        "ImageNet synset ids -> their ImageNet index; auto picks imagenet when every "
        "folder is a synset and the model has 1000 classes (default auto)",
    )
    p.add_argument(
        "--skip_unreadable",
        action="store_true",
        help="--folder only: leave out files that cannot be decoded (listed in the JSON) instead of stopping",
    )
    cli.add_max_pixels_argument(p, what="--folder only: ")
    p.add_argument(
        "--num_workers",
        type=cli.non_negative_int,
        default=0,
        help="TFDS: grain worker processes for preprocessing (default 0: threads only); "
        "folder: reader threads (default: min(8, cores + 2))",
    )
    cli.add_dtype_argument(p)
    p.add_argument(
        "--scan_impl",
        default="auto",
        choices=("auto", *SCAN_IMPLS),
        help="selective-scan implementation (default auto: the backend's best)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        help="also write the summary (top1, top5, n, model, weights, seconds, img/s, "
        "preprocessing) as JSON to FILE ('-' for stdout)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from mambavision_jax.images import ImageReadError
    from mambavision_jax.paths import check_output

    args = _parser().parse_args(argv)
    cli.check_weights_argument(args.weights)
    if args.folder is not None and is_remote(args.folder):
        raise cli.UserError(
            f"--folder {args.folder}: image folders are read from a local disk; copy it there or "
            f"mount the bucket with gcsfuse"
        )
    if args.folder is not None and not Path(args.folder).is_dir():
        raise FileNotFoundError(f"--folder {args.folder}: no such folder")
    if args.json and args.json != "-":  # before the evaluation: a refusal costs nothing
        check_output(args.json, flag="--json", overwrite=True, parent_must_exist=True)
    scan = {"scan_impl": args.scan_impl} if args.scan_impl != "auto" else {}
    _, (model, pre) = cli.load_weights(args, command="evaluate", **scan)
    skipped: list = []
    if args.folder:
        paths, labels, classes = folder_examples(
            args.folder, num_classes=model.num_classes, label_map=args.label_map
        )
        batches = folder_batches(
            paths,
            labels,
            args.batch_size,
            pre,
            num_workers=args.num_workers or None,
            max_pixels=args.max_pixels,
            skip_unreadable=args.skip_unreadable,
            skipped=skipped,
        )
        num_batches = math.ceil(len(paths) / args.batch_size)
        source = {"folder": os.path.abspath(args.folder), "classes": len(classes)}
    else:
        from mambavision_jax.data import eval_num_batches, make_eval_iterator
        from mambavision_jax.data.sources import default_eval_split, open_source

        split = args.split or default_eval_split(args.tfds, args.data_dir)
        n_examples = len(open_source(args.tfds, split, args.data_dir))
        batches = make_eval_iterator(
            args.tfds,
            global_batch_size=args.batch_size,
            image_size=pre.image_size,
            crop_pct=pre.crop_pct,
            crop_mode=pre.crop_mode,
            interpolation=pre.interpolation,
            data_dir=args.data_dir,
            split=split,
            mean=pre.mean,
            std=pre.std,
            num_workers=args.num_workers,
        )
        num_batches = eval_num_batches(n_examples, args.batch_size, jax.process_count())
        source = {"tfds": args.tfds, "split": split, "data_dir": args.data_dir}
    runner = Runner(model)
    try:
        result = evaluate(runner, batches, num_batches=num_batches, progress=not args.no_progress)
    except ImageReadError as e:
        raise ImageReadError(f"{e}; pass --skip_unreadable to leave unreadable files out") from e
    summary = {
        "top1": result["top1"],
        "top5": result["top5"],
        "n": result["n"],
        "model": getattr(model, "name", None),
        "weights": os.fspath(args.weights),
        **({"checkpoint": model.checkpoint_info} if hasattr(model, "checkpoint_info") else {}),
        "seconds": result["seconds"],
        "images_per_sec": result["images_per_sec"],
        "warmup_seconds": result["warmup_seconds"],
        "loss": result["loss"],
        **source,
        "preprocessing": dataclasses.asdict(pre),
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "devices": [str(d) for d in runner.mesh.devices.flat],
    }
    if skipped:
        summary["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
    print(
        f"{summary['model']}  {summary['weights']}\n"
        f"  top-1 {summary['top1']:.3f}%  top-5 {summary['top5']:.3f}%  on {summary['n']} images  "
        f"({summary['seconds']:.1f} s, {summary['images_per_sec']:.1f} img/s after the first batch)"
        + (f"  skipped {len(skipped)} unreadable files" if skipped else "")
    )
    if args.json:
        text = json.dumps(summary, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            from mambavision_jax.paths import atomic_write_text

            atomic_write_text(args.json, text)  # checked before the evaluation
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
