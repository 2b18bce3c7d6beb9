"""Top-k classes of images with a MambaVision checkpoint.

    python -m mambavision_jax.predict cat.jpg dog.png --weights mambavision_tiny_1k.pth.tar
    python -m mambavision_jax.predict *.jpg --weights W --topk 3 --json

Each image is read robustly (`mambavision_jax.images.load_image`: grayscale, palette, CMYK, 16-bit,
transparent images composited on white, EXIF orientation applied) and preprocessed with the
variant's official eval transform. Class names: the ImageNet-1k names shipped with the package for
1000-class models, the id2label of a Hugging Face config.json beside the weights, a --labels file
(one name per line), or else the class indices.

Python: `predict(model, images)` -> for each image a list of (class_index, name, probability).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["imagenet_class_names", "imagenet_synsets", "class_names_for", "predict", "main"]


@functools.cache
def _imagenet_table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("mambavision_jax").joinpath("imagenet_classes.txt").read_text("utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line.strip()]
    if len(rows) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(rows)} rows, expected 1000")
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (sorted: n01440764 ... n15075141)."""
    return list(_imagenet_table()[0])


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (WordNet lemmas, as timm's
    imagenet_synset_to_lemma.txt: 0 'tench, Tinca tinca', 281 'tabby, tabby cat', ...)."""
    return list(_imagenet_table()[1])


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One class name per line (blank lines ignored); a 'synset<TAB>name' line gives the name."""
    lines = [line.rstrip("\n") for line in Path(path).read_text("utf-8").splitlines()]
    return [line.split("\t", 1)[-1].strip() for line in lines if line.strip()]


def class_names_for(num_classes: int, *, labels: Sequence[str] | str | os.PathLike | None = None,
                    hf_config: dict[str, Any] | None = None) -> list[str] | None:
    """Names for the model's outputs: an explicit list / labels file, else a Hugging Face config's
    id2label, else the ImageNet names for 1000 classes, else None (print indices)."""
    if labels is not None:
        names = read_labels_file(labels) if isinstance(labels, (str, os.PathLike)) else list(labels)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} labels given for a model with {num_classes} classes")
        return names
    id2label = (hf_config or {}).get("id2label")
    if isinstance(id2label, dict) and len(id2label) == num_classes:
        try:
            return [str(id2label.get(str(i), id2label.get(i))) for i in range(num_classes)]
        except (TypeError, ValueError):
            pass
    if num_classes == 1000:
        return imagenet_class_names()
    return None


def _as_pil(image, alpha):
    from PIL import Image

    from mambavision_jax.images import load_image, to_rgb
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, alpha=alpha)
    if isinstance(image, Image.Image):
        return to_rgb(image, alpha)
    return image  # uint8 array or encoded bytes: eval_transform reads them


def predict(model, images: Sequence[Any], *, topk: int = 5, labels=None, preprocessing=None,
            batch_size: int = 32, alpha="white", runner=None) -> list[list[tuple[int, str, float]]]:
    """For each image (a file path, PIL image, uint8 HxWx3 array or encoded bytes), the `topk`
    classes as (class_index, name, probability), most likely first.

    preprocessing: a `mambavision_jax.evaluate.Preprocessing` (default: the model's official eval
    transform). labels: class names (list or file; default: ImageNet names for 1000 classes, else
    the index as a string). alpha: how transparent images are flattened (see images.load_image).
    """
    from mambavision_jax.evaluate import Runner, resolve_preprocessing

    pre = preprocessing or resolve_preprocessing(model)
    runner = runner or Runner(model, topk=topk)
    names = class_names_for(runner.num_classes, labels=labels) if runner.num_classes else None
    out: list[list[tuple[int, str, float]]] = []
    for s in range(0, len(images), batch_size):
        chunk = images[s:s + batch_size]
        x = np.stack([pre(_as_pil(img, alpha)) for img in chunk])
        probs, idx = runner.topk_probs(x)
        for p_row, i_row in zip(probs, idx):
            out.append([(int(i), names[int(i)] if names else str(int(i)), float(p))
                        for p, i in zip(p_row[:topk], i_row[:topk])])
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mambavision_jax.predict",
        description="Top-k classes and probabilities of images with a MambaVision checkpoint.",
        epilog="example: python -m mambavision_jax.predict cat.jpg --weights mambavision_tiny_1k.pth.tar")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (JPEG, PNG, WebP, BMP, TIFF, GIF, ...)")
    p.add_argument("--weights", required=True,
                   help="checkpoint: official .pth.tar, .safetensors, Hugging Face model folder, or "
                        "an orbax folder from mambavision_jax.convert")
    p.add_argument("--model", default=None,
                   help="variant name, e.g. mamba_vision_T (default: inferred from the weights)")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--labels", default=None,
                   help="class-name file, one name per line in class-index order (default: ImageNet "
                        "names for 1000-class models, a config.json's id2label, else indices)")
    p.add_argument("--image_size", type=int, default=None, help="crop size (default: the variant's)")
    p.add_argument("--crop_pct", type=float, default=None, help="crop fraction (default: the variant's)")
    p.add_argument("--crop_mode", choices=("center", "squash"), default=None,
                   help="center (keep aspect) or squash (default: the variant's)")
    p.add_argument("--alpha", default="white", choices=("white", "black", "drop"),
                   help="transparent images: composite on white / black, or drop the alpha channel "
                        "(default white)")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="compute dtype (default float32)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's state_dict_ema")
    p.add_argument("--json", action="store_true",
                   help="print JSON: [{image, predictions: [{index, label, prob}]}] instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from mambavision_jax import xla_cpu
    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    args = _parser().parse_args(argv)
    from mambavision_jax.evaluate import Runner, load_model, resolve_preprocessing, weights_config
    from mambavision_jax.images import ImageReadError

    model = load_model(args.weights, args.model, dtype=args.dtype, use_ema=args.ema)
    hf = weights_config(args.weights)
    pre = resolve_preprocessing(model, image_size=args.image_size, crop_pct=args.crop_pct,
                                crop_mode=args.crop_mode, hf_config=hf)
    names = class_names_for(model.num_classes, labels=args.labels, hf_config=hf)
    runner = Runner(model, topk=args.topk)
    try:
        results = predict(model, args.images, topk=args.topk, labels=names, preprocessing=pre,
                          batch_size=args.batch_size, alpha=args.alpha, runner=runner)
    except ImageReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"image": os.fspath(img),
                           "predictions": [{"index": i, "label": n, "prob": p} for i, n, p in preds]}
                          for img, preds in zip(args.images, results)], indent=2))
        return 0
    for img, preds in zip(args.images, results):
        print(img)
        for rank, (i, n, p) in enumerate(preds, 1):
            label = n if n != str(i) else ""
            print(f"  {rank}. {100 * p:6.2f}%  {i:>5}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
