"""Semantic segmentation of images with a UperNet checkpoint (official ADE20K models).

    python -m mambavision_jax.segment photo.jpg --weights nvidia/mamba_vision_160k_ade20k-512x512_tiny --out seg/

Per image, in --out: `<name>.png`, the class index of every pixel as a palette PNG (viewers show
the ADE20K colours; np.asarray(PIL.Image.open(...)) gives the indices), and `<name>_overlay.jpg`,
the photo with the class colours and a legend of the classes present. Existing files are
replaced only with --overwrite; nothing is written before every check has passed.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from mambavision_jax import cli
from mambavision_jax.images import DEFAULT_MAX_PIXELS, check_image_paths
from mambavision_jax.paths import is_remote


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.segment",
        description="Per-pixel ADE20K classes of images with a MambaVision UperNet checkpoint: a "
        "palette PNG of the labels and an overlay JPEG with a legend, per image.",
        epilog="example: python -m mambavision_jax.segment photo.jpg --weights "
        "nvidia/mamba_vision_160k_ade20k-512x512_tiny --out seg/",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument(
        "--weights",
        required=True,
        help="an official mmseg checkpoint (.pth), a hub id (nvidia/mamba_vision_160k_ade20k-512x512_tiny, "
        "..._small, ..._base, nvidia/mamba_vision_160k_ade20k-640x640_l3_21k) or short name (tiny, small, "
        "base, l3), an orbax folder written by mambavision_jax.segmentation.checkpoint.save_checkpoint, "
        "or a segmentation training run's workdir (--checkpoint)",
    )
    cli.add_checkpoint_argument(p, best="best validation mIoU")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    cli.add_seg_mode_argument(p)
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="compute dtype"
    )
    p.add_argument(
        "--max_pixels",
        type=cli.non_negative_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels (a decompression-bomb guard); 0: no limit (default {DEFAULT_MAX_PIXELS:,})",
    )
    return p


def _outputs(images: Sequence[str], out: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """(<name>.png, <name>_overlay.jpg) per image, after refusing what cannot be written."""
    check_image_paths(images)
    if is_remote(out):
        raise cli.UserError(f"--out {out}: write to a local folder")
    if out.exists() and not out.is_dir():
        raise cli.UserError(f"--out {out} is a file, not a folder")
    if not out.absolute().parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {out.absolute().parent} does not exist")
    stems: dict[str, str] = {}
    pairs = []
    for img in images:
        stem = Path(img).stem
        if stem in stems:
            raise cli.UserError(f"{img} and {stems[stem]} would both be written as {stem}.png; rename one")
        stems[stem] = img
        pair = (out / f"{stem}.png", out / f"{stem}_overlay.jpg")
        existing = [p for p in pair if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
        pairs.append(pair)
    return pairs


def _encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _run_class_names(spec, num_classes: int) -> tuple[str, ...] | None:
    """The class names of the data set a segmentation training run trained on (its config.json's
    data.name / data.dir), when that data set is still there and has `num_classes` classes."""
    from mambavision_jax.data.seg_datasets import seg_dataset_info
    from mambavision_jax.train.checkpoint import is_training_run, run_data_config

    try:
        if not is_training_run(spec):
            return None
        data = run_data_config(spec)
        classes = seg_dataset_info(data["name"], data["dir"]).classes
    except Exception:  # noqa: BLE001 - no names is a fine answer: the legend shows indices
        return None
    return tuple(classes) if len(classes) == num_classes else None


def main(argv: Sequence[str] | None = None) -> int:
    from mambavision_jax import xla_cpu

    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    args = _parser().parse_args(argv)
    out = Path(args.out)
    pairs = _outputs(args.images, out, args.overwrite)

    import numpy as np

    from mambavision_jax import weights
    from mambavision_jax.images import load_image
    from mambavision_jax.paths import atomic_write_bytes
    from mambavision_jax.segmentation.inference import ade20k_metainfo, segment_labels
    from mambavision_jax.segmentation.visualize import overlay_image, palette_image

    model = weights.load_segmenter(
        args.weights, checkpoint=args.checkpoint, dtype=args.dtype, needed_by="segment"
    )
    if model.num_classes > 256:
        raise cli.UserError(
            f"--weights {args.weights}: {model.num_classes} classes do not fit a palette PNG (256)"
        )
    names, palette = ade20k_metainfo()
    if model.num_classes != len(names):  # another data set: its class names where the run says them
        names = _run_class_names(args.weights, model.num_classes) or tuple(map(str, range(model.num_classes)))
    out.mkdir(exist_ok=True)
    for img_path, (png, jpg) in zip(args.images, pairs):
        image = np.asarray(load_image(img_path, max_pixels=args.max_pixels or None))
        labels = segment_labels(model, image, mode=args.mode)
        atomic_write_bytes(png, _encode(palette_image(labels, palette), "PNG"))
        atomic_write_bytes(jpg, _encode(overlay_image(image, labels, palette, names), "JPEG", quality=90))
        present = np.bincount(labels.ravel(), minlength=model.num_classes)
        top = ", ".join(f"{names[i]} {100 * present[i] / labels.size:.0f}%" for i in np.argsort(-present)[:3])
        print(f"{img_path}: {png.name}, {jpg.name} ({top})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
