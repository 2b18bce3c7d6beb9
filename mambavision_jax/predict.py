"""Top-k classes of images with a MambaVision checkpoint.

    python -m mambavision_jax.predict cat.jpg dog.png --weights mambavision_tiny_1k.pth.tar
    python -m mambavision_jax.predict *.jpg --weights W --topk 3 --json
    python -m mambavision_jax.predict cat.jpg --weights runs/finetune   # a training run

Each image is read robustly (`mambavision_jax.images.load_image`: grayscale, palette, CMYK, 16-bit,
transparent images composited on white, EXIF orientation applied) and preprocessed with the
variant's official eval transform. Class names (`mambavision_jax.labels`): the ImageNet-1k names
shipped with the package for 1000-class models, the id2label of a Hugging Face config.json beside
the weights, a --labels file (one name per line), or else the class indices.

Python: `predict(model, images)` -> for each image a list of (class_index, name, probability).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mambavision_jax import cli
from mambavision_jax.errors import UserError
from mambavision_jax.images import DEFAULT_MAX_PIXELS, check_image_paths

# Re-exported: the class-name helpers lived here before mambavision_jax.labels.
from mambavision_jax.labels import (
    class_names_for,
    imagenet_class_names,
    imagenet_synsets,
    read_labels_file,
)

__all__ = [
    "class_names_for",
    "imagenet_class_names",
    "imagenet_synsets",
    "main",
    "predict",
    "read_labels_file",
]


def _as_pil(image, alpha, max_pixels):
    from PIL import Image

    from mambavision_jax.images import load_image, to_rgb

    if isinstance(image, (str, os.PathLike)):
        return load_image(image, alpha=alpha, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        return to_rgb(image, alpha)
    return image  # uint8 array or encoded bytes: eval_transform reads them


def predict(
    model,
    images: Sequence[Any],
    *,
    topk: int = 5,
    labels=None,
    preprocessing=None,
    batch_size: int = 32,
    alpha="white",
    runner=None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[list[tuple[int, str, float]]]:
    """For each image (a file path, PIL image, uint8 HxWx3 array or encoded bytes), the `topk`
    classes as (class_index, name, probability), most likely first.

    preprocessing: a `mambavision_jax.preprocessing.Preprocessing` (default: the model's official eval
    transform). labels: class names (list or file; default: ImageNet names for 1000 classes, else
    the index as a string). alpha: how transparent images are flattened (see images.load_image).
    max_pixels: the decompression-bomb limit for image files (None: no limit).
    Raises NonFiniteOutputError if the model's outputs are NaN or infinite (its weights cannot be
    right), rather than returning NaN probabilities.
    """
    from mambavision_jax.preprocessing import resolve_preprocessing
    from mambavision_jax.runner import NonFiniteOutputError, Runner

    if int(topk) < 1 or int(batch_size) < 1:
        raise UserError(f"topk and batch_size must be >= 1, got topk={topk}, batch_size={batch_size}")
    pre = preprocessing or resolve_preprocessing(model)
    runner = runner or Runner(model, topk=topk)
    names = class_names_for(runner.num_classes, labels=labels) if runner.num_classes else None
    out: list[list[tuple[int, str, float]]] = []
    for s in range(0, len(images), batch_size):
        chunk = images[s : s + batch_size]
        x = np.stack([pre(_as_pil(img, alpha, max_pixels)) for img in chunk])
        probs, idx = runner.topk_probs(x)
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():
            first = chunk[int(np.argmax(bad))]
            what = (
                os.fspath(first)
                if isinstance(first, (str, os.PathLike))
                else f"image {s + int(np.argmax(bad))}"
            )
            raise NonFiniteOutputError(
                f"the model's outputs for {what} are NaN or infinite: its weights "
                f"cannot be right (check the checkpoint)"
            )
        for p_row, i_row in zip(probs, idx):
            out.append(
                [
                    (int(i), names[int(i)] if names else str(int(i)), float(p))
                    for p, i in zip(p_row[:topk], i_row[:topk])
                ]
            )
    return out


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.predict",
        description="Top-k classes and probabilities of images with a MambaVision checkpoint.",
        epilog="example: python -m mambavision_jax.predict cat.jpg --weights mambavision_tiny_1k.pth.tar",
    )
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, BMP, TIFF, GIF, ...)"
    )
    cli.add_weights_arguments(p)
    p.add_argument(
        "--topk",
        type=cli.positive_int,
        default=5,
        help="classes to show per image, at most the model's classes (default 5, or all "
        "classes of a model with fewer)",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="class-name file, one name per line in class-index order (default: ImageNet "
        "names for 1000-class models, a config.json's id2label, else indices)",
    )
    cli.add_preprocessing_arguments(p)
    p.add_argument(
        "--alpha",
        default="white",
        choices=("white", "black", "drop"),
        help="transparent images: composite on white / black, or drop the alpha channel (default white)",
    )
    cli.add_max_pixels_argument(p)
    p.add_argument(
        "--batch_size", type=cli.positive_int, default=32, help="images per forward pass (default 32)"
    )
    cli.add_dtype_argument(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON: [{image, predictions: [{index, label, prob}]}] instead of a table",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from mambavision_jax.runner import NonFiniteOutputError, Runner

    args = _parser().parse_args(argv)
    cli.check_weights_argument(args.weights)
    check_image_paths(args.images, folder_hint=" (evaluate --folder reads folders)")
    if args.labels is not None and not Path(args.labels).is_file():
        raise FileNotFoundError(f"--labels {args.labels}: no such file")
    labels = read_labels_file(args.labels) if args.labels is not None else None

    source, (model, pre) = cli.load_weights(args, command="predict")  # a hub id: resolved once
    if args.topk > model.num_classes:
        raise cli.UserError(f"--topk {args.topk} is more than the model's {model.num_classes} classes")
    hf = source.hf_config()
    try:
        names = class_names_for(model.num_classes, labels=labels, hf_config=hf)
    except UserError as e:
        raise cli.UserError(f"--labels {args.labels}: {e}") from None
    runner = Runner(model, topk=args.topk)
    try:
        results = predict(
            model,
            args.images,
            topk=args.topk,
            labels=names,
            preprocessing=pre,
            batch_size=args.batch_size,
            alpha=args.alpha,
            runner=runner,
            max_pixels=args.max_pixels or None,
        )
    except NonFiniteOutputError as e:
        raise NonFiniteOutputError(f"--weights {args.weights}: {e}") from None
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "image": os.fspath(img),
                        "predictions": [{"index": i, "label": n, "prob": p} for i, n, p in preds],
                    }
                    for img, preds in zip(args.images, results)
                ],
                indent=2,
            )
        )
        return 0
    for img, preds in zip(args.images, results):
        print(img)
        for rank, (i, n, p) in enumerate(preds, 1):
            label = n if n != str(i) else ""
            print(f"  {rank}. {100 * p:6.2f}%  {i:>5}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
