"""Top-1 / top-5 of a checkpoint on a TFDS split or a folder of class sub-folders.

    python -m mambavision_jax.evaluate --weights mambavision_tiny_1k.pth.tar \\
        --tfds imagenet2012 --split validation --data_dir ~/tensorflow_datasets --json out.json
    python -m mambavision_jax.evaluate --weights W --folder /data/imagenet/val

Preprocessing is the variant's official eval transform (its pretrained_cfg: image size, crop_pct,
crop_mode, bicubic, ImageNet mean / std; a Hugging Face config.json beside the weights wins), as
timm's validate.py applies it. Batches are sharded over the local devices (a 1-D mesh, axis
"batch"); the last batch is padded and masked, so every image counts exactly once.

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
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mambavision_jax.ops import under_kernel_mesh

__all__ = ["Preprocessing", "resolve_preprocessing", "weights_config", "load_model", "Runner",
           "evaluate", "folder_examples", "folder_batches", "main"]

BATCH_AXIS = "batch"


# ----------------------------------------------------------------------------- preprocessing
@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The eval transform: bicubic resize (short side to floor(image_size / crop_pct) for 'center',
    both sides for 'squash'), center crop to image_size, normalise with mean / std."""
    image_size: int = 224
    crop_pct: float = 1.0
    crop_mode: str = "center"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    def __call__(self, img) -> np.ndarray:
        """A PIL image / encoded bytes / uint8 array -> float32 (image_size, image_size, 3)."""
        from mambavision_jax.data.transforms import eval_transform
        return eval_transform(img, self.image_size, self.crop_pct, self.crop_mode, self.mean,
                              self.std, self.interpolation)


def weights_config(weights: str | os.PathLike | None) -> dict[str, Any] | None:
    """The Hugging Face config.json that goes with `weights` (a model folder, or a .safetensors file
    with config.json beside it), or None."""
    if weights is None:
        return None
    p = Path(weights)
    cfg = p / "config.json" if p.is_dir() else (p.parent / "config.json" if p.suffix == ".safetensors" else None)
    if cfg is None or not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None


def resolve_preprocessing(model=None, *, image_size: int | None = None, crop_pct: float | None = None,
                          crop_mode: str | None = None, hf_config: dict | None = None) -> Preprocessing:
    """The model's official eval preprocessing (from `model.pretrained_cfg`, set by create_model /
    load_checkpoint), then the fields of a Hugging Face config (crop_pct, crop_mode, mean, std), then
    the explicit arguments, each overriding the one before."""
    cfg = getattr(model, "pretrained_cfg", None)
    kw: dict[str, Any] = {}
    if cfg is not None:
        kw = dict(image_size=int(cfg.input_size[-1]), crop_pct=float(cfg.crop_pct), crop_mode=cfg.crop_mode,
                  mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation)
    for key in ("crop_pct", "crop_mode", "mean", "std"):
        if hf_config and hf_config.get(key) is not None:
            kw[key] = tuple(hf_config[key]) if key in ("mean", "std") else hf_config[key]
    for key, val in (("image_size", image_size), ("crop_pct", crop_pct), ("crop_mode", crop_mode)):
        if val is not None:
            kw[key] = val
    pre = Preprocessing(**kw)
    if pre.crop_mode not in ("center", "squash"):
        raise ValueError(f"crop_mode must be 'center' or 'squash', got {pre.crop_mode!r}")
    if not 0 < pre.crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {pre.crop_pct}")
    return pre


def load_model(weights, model_name: str | None = None, *, dtype: str = "float32",
               use_ema: bool = False, scan_impl: str | None = None):
    """`mambavision_jax.convert.load_checkpoint` with CLI-friendly arguments; the model is in eval mode."""
    from mambavision_jax.convert.api import load_checkpoint

    kwargs: dict[str, Any] = {}
    if use_ema:
        kwargs["use_ema"] = True
    if scan_impl and scan_impl != "auto":
        kwargs["scan_impl"] = scan_impl
    model = load_checkpoint(weights, model_name, dtype=jnp.dtype(dtype), **kwargs)
    model.eval()
    return model


# ----------------------------------------------------------------------------- running the model
def _local_mesh(devices=None) -> Mesh:
    devices = list(devices or jax.local_devices())
    return Mesh(np.array(devices), (BATCH_AXIS,), axis_types=(AxisType.Auto,))


def _eval_copy(model):
    """A copy in eval mode that shares the arrays: the caller's model keeps its train/eval mode."""
    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, state)
    m.eval()
    return m


_PROGRAMS: list = []  # [(graphdef, k, mesh, programs)], most recent last


def _programs(graphdef, k: int, mesh: Mesh):
    """The jitted programs of one architecture, shared by every Runner of it (a second Runner of
    the same model, e.g. after reloading weights, reuses the compiled code). Looked up with ==:
    equal NNX graphdefs do not always hash equal."""
    for i, (g, kk, mm, progs) in enumerate(_PROGRAMS):
        if kk == k and mm == mesh and g == graphdef:
            _PROGRAMS.append(_PROGRAMS.pop(i))
            return progs
    progs = _make_programs(graphdef, k, mesh)
    _PROGRAMS.append((graphdef, k, mesh, progs))
    del _PROGRAMS[:-8]
    return progs


def _make_programs(graphdef, k: int, mesh: Mesh):
    rep, bat = NamedSharding(mesh, P()), NamedSharding(mesh, P(BATCH_AXIS))

    def logits_fn(state, images):
        return nnx.merge(graphdef, state)(images).astype(jnp.float32)

    def metrics_fn(state, images, labels, mask):
        logits = logits_fn(state, images)
        top = jax.lax.top_k(logits, k)[1]
        hit = top == labels[:, None]
        m = mask.astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, jnp.clip(labels, 0, logits.shape[-1] - 1)[:, None], 1)[:, 0]
        return {"correct1": jnp.sum(hit[:, 0] * m), "correctk": jnp.sum(jnp.any(hit, 1) * m),
                "count": jnp.sum(m), "nll": jnp.sum(nll * m)}

    def probs_fn(state, images):
        probs = jax.nn.softmax(logits_fn(state, images), axis=-1)
        return jax.lax.top_k(probs, k)

    per_device = lambda fn: under_kernel_mesh(fn, mesh, (BATCH_AXIS,))  # noqa: E731 - Pallas scans
    return (jax.jit(per_device(logits_fn), in_shardings=(rep, bat), out_shardings=bat),
            jax.jit(per_device(metrics_fn), in_shardings=(rep, bat, bat, bat), out_shardings=rep),
            jax.jit(per_device(probs_fn), in_shardings=(rep, bat), out_shardings=bat))


class Runner:
    """The model jitted once over a 1-D mesh of the local devices: the batch is split over the
    devices, the weights are replicated. Batches are padded to a multiple of the device count (and
    to the largest batch seen, so the last, smaller batch reuses the compiled program)."""

    def __init__(self, model, mesh: Mesh | None = None, topk: int = 5):
        self.mesh = mesh or _local_mesh()
        self.n_dev = self.mesh.devices.size
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(BATCH_AXIS))
        graphdef, state = nnx.split(_eval_copy(model))
        self.state = jax.device_put(state, self.replicated)
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.requested_topk = topk  # a model with fewer classes scores top-num_classes
        self.topk = max(1, min(topk, self.num_classes or topk))
        self._logits, self._metrics, self._probs = _programs(graphdef, self.topk, self.mesh)
        self._padded = 0

    def _pad_to(self, n: int) -> int:
        size = max(self._padded, -(-n // self.n_dev) * self.n_dev)
        self._padded = size
        return size

    def _put(self, x: np.ndarray, size: int) -> jax.Array:
        x = np.asarray(x)
        if x.shape[0] < size:
            x = np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)])
        return jax.device_put(x, self.batch_sharding)

    def metrics(self, images, labels, mask=None) -> dict[str, float]:
        n = len(images)
        size = self._pad_to(n)
        mask = np.ones((n,), bool) if mask is None else np.asarray(mask, bool)
        out = self._metrics(self.state, self._put(images, size),
                            self._put(np.asarray(labels, np.int32), size), self._put(mask, size))
        return {k: float(v) for k, v in out.items()}

    def logits(self, images) -> np.ndarray:
        n = len(images)
        return np.asarray(self._logits(self.state, self._put(images, self._pad_to(n))))[:n]

    def topk_probs(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, class indices), each (n, topk), best first."""
        n = len(images)
        p, i = self._probs(self.state, self._put(images, self._pad_to(n)))
        return np.asarray(p)[:n], np.asarray(i)[:n]


def _sum_over_processes(totals: dict[str, float]) -> dict[str, float]:
    if jax.process_count() == 1:
        return totals
    from jax.experimental import multihost_utils
    keys = sorted(totals)
    g = multihost_utils.process_allgather(np.array([totals[k] for k in keys], np.float64))
    return dict(zip(keys, np.asarray(g).reshape(-1, len(keys)).sum(0).tolist()))


def evaluate(model, batches: Iterable[dict[str, Any]], *, num_batches: int | None = None,
             mesh: Mesh | None = None, topk: int = 5, progress: bool = True,
             desc: str = "eval") -> dict[str, Any]:
    """Top-1 / top-k accuracy (in %) of `model` over `batches`.

    batches: an iterable of dicts with "image" (B, H, W, 3) float32, preprocessed and normalised,
    "label" (B,) int, and optionally "mask" (B,) bool (False: padding, not counted), e.g.
    `mambavision_jax.data.make_eval_iterator(...)` or `folder_batches(...)`. Batches may differ in
    size. The model is run in eval mode (on a copy: the caller's model keeps its mode), jitted once,
    with the batch sharded over `mesh` (default: all local devices). In a multi-process run each
    process passes its own batches and the counts are summed over processes.

    Returns {"top1", "top5" (f"top{topk}"; top-num_classes for a model with fewer classes), "loss"
    (mean cross-entropy), "n", "seconds" (all of it: reading, preprocessing, compiling),
    "warmup_seconds" (until the first batch was done, compilation included), "images_per_sec"
    (after the first batch, so without compilation; reading and preprocessing included)}.
    """
    runner = model if isinstance(model, Runner) else Runner(model, mesh, topk)
    totals = {"correct1": 0.0, "correctk": 0.0, "count": 0.0, "nll": 0.0}
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
                raise ValueError(f"label {int(labels.max())} is out of range for a model with "
                                 f"{runner.num_classes} classes")
            out = runner._metrics(runner.state, *_device_batch(runner, batch))
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
    n = int(round(totals["count"]))
    return {
        "top1": 100.0 * totals["correct1"] / n if n else float("nan"),
        f"top{runner.requested_topk}": 100.0 * totals["correctk"] / n if n else float("nan"),
        "loss": totals["nll"] / n if n else float("nan"),
        "n": n,
        "seconds": seconds,
        "warmup_seconds": (warm[0] - start) if warm else 0.0,
        "images_per_sec": images_per_sec * jax.process_count(),
    }


def _device_batch(runner: Runner, batch) -> tuple:
    images = np.asarray(batch["image"])
    n = images.shape[0]
    size = runner._pad_to(n)
    mask = np.asarray(batch["mask"], bool) if "mask" in batch else np.ones((n,), bool)
    return (runner._put(images, size), runner._put(np.asarray(batch["label"], np.int32), size),
            runner._put(mask, size))


def _accumulate(totals, out):
    for k, v in out.items():
        totals[k] += float(v)


# ----------------------------------------------------------------------------- folder input
def folder_examples(root: str | os.PathLike, *, num_classes: int | None = None,
                    label_map: str = "auto") -> tuple[list[str], list[int], list[str]]:
    """(image paths, labels, class names) of ROOT/<class>/**/<image>.

    label_map: 'sorted': the sorted class-folder names are labels 0..K-1 (torchvision's
    ImageFolder); 'imagenet': the folders are ImageNet-1k synset ids (n01440764, ...) and each gets
    its ImageNet index, so a subset of the 1000 classes is scored against the right logits; 'auto'
    (default): 'imagenet' when num_classes == 1000 and every folder is an ImageNet synset, else
    'sorted'. (For the full ImageNet val folder both give the same labels.)
    """
    from mambavision_jax.images import is_image_file

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--folder {root} is not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected ROOT/<class>/<images>)")
    if label_map not in ("auto", "sorted", "imagenet"):
        raise ValueError(f"label_map must be 'auto', 'sorted' or 'imagenet', got {label_map!r}")
    if label_map != "sorted":
        from mambavision_jax.predict import imagenet_synsets
        index = {s: i for i, s in enumerate(imagenet_synsets())}
        all_synsets = all(c in index for c in classes)
        if label_map == "imagenet" and not all_synsets:
            bad = [c for c in classes if c not in index][:5]
            raise ValueError(f"label_map='imagenet' but these folders are not ImageNet-1k synsets: {bad}")
        label_map = "imagenet" if (all_synsets and (label_map == "imagenet" or num_classes == 1000)) else "sorted"
    label_of = ({c: index[c] for c in classes} if label_map == "imagenet"
                else {c: i for i, c in enumerate(classes)})
    paths, labels = [], []
    for c in classes:
        for dirpath, dirnames, filenames in os.walk(root / c, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if is_image_file(f) and not f.startswith("."):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(label_of[c])
    if not paths:
        raise ValueError(f"no image files under {root}/<class>/ (extensions: jpg, png, ...)")
    if num_classes and max(labels) >= num_classes:
        raise ValueError(f"{root} has {len(classes)} classes but the model has {num_classes} outputs")
    return paths, labels, classes


def folder_batches(paths: Sequence[str], labels: Sequence[int], batch_size: int,
                   preprocess: Preprocessing, *, num_workers: int | None = None,
                   skip_unreadable: bool = False, skipped: list | None = None) -> Iterator[dict]:
    """Batches {"image", "label", "mask"} of the files, read and preprocessed by a thread pool,
    one batch ahead. Images are read as the official evaluation and the TFDS folder builder read
    them (alpha dropped, EXIF orientation ignored). The last batch is padded (mask False). An
    unreadable file raises ImageReadError, or with skip_unreadable is masked out and its
    (path, reason) appended to `skipped`."""
    from mambavision_jax.images import ImageReadError, load_image

    size = preprocess.image_size
    workers = num_workers or min(8, (os.cpu_count() or 1) + 2)

    def one(path):
        try:
            return preprocess(load_image(path, alpha="drop", exif_transpose=False)), None
        except ImageReadError as e:
            if not skip_unreadable:
                raise
            return np.zeros((size, size, 3), np.float32), str(e)

    batch_size = max(1, min(batch_size, len(paths)))  # a small folder: one batch of its size
    starts = range(0, len(paths), batch_size)

    def submit(pool, s):
        return [pool.submit(one, p) for p in paths[s:s + batch_size]]

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
    p = argparse.ArgumentParser(
        prog="python -m mambavision_jax.evaluate",
        description="Top-1 / top-5 accuracy of a MambaVision checkpoint with the variant's official "
                    "eval preprocessing, on a prepared TFDS split or a folder of class sub-folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m mambavision_jax.evaluate --weights mambavision_tiny_1k.pth.tar \\\n"
               "      --tfds imagenet2012 --split validation --data_dir ~/tensorflow_datasets\n"
               "  python -m mambavision_jax.evaluate --weights nvidia_MambaVision-T-1K/ --folder val/ "
               "--json t.json\n"
               "A folder dataset can be made a TFDS dataset once with\n"
               "  python -m mambavision_jax.data.make_folder_dataset --src DIR --name NAME --data_dir D")
    p.add_argument("--weights", required=True,
                   help="checkpoint: official .pth.tar, .safetensors, Hugging Face model folder "
                        "(config.json + model.safetensors), or an orbax folder from "
                        "mambavision_jax.convert")
    p.add_argument("--model", default=None,
                   help="variant name, e.g. mamba_vision_T (default: inferred from the weights or "
                        "config.json; needed where the weights are ambiguous, e.g. L2 vs L2_512_21k)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tfds", metavar="NAME",
                     help="a TFDS dataset prepared as array_record in --data_dir, e.g. imagenet2012 "
                          "or a dataset made by mambavision_jax.data.make_folder_dataset")
    src.add_argument("--folder", metavar="DIR",
                     help="a folder of class sub-folders of images (e.g. ImageNet val/n01440764/"
                          "*.JPEG); needs no TFDS")
    p.add_argument("--split", default=None,
                   help="TFDS split, any split string such as 'validation' or 'validation[:1000]' "
                        "(default: 'validation', else 'test')")
    p.add_argument("--data_dir", default=None,
                   help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--batch_size", type=int, default=64,
                   help="global batch size, split over the local devices (default 64)")
    p.add_argument("--image_size", type=int, default=None,
                   help="crop size (default: the variant's, e.g. 224; 512 for the *_512_21k models)")
    p.add_argument("--crop_pct", type=float, default=None,
                   help="resize to floor(image_size / crop_pct) before the center crop (default: the "
                        "variant's, e.g. 1.0 for T, 0.98 T2, 0.93 S)")
    p.add_argument("--crop_mode", choices=("center", "squash"), default=None,
                   help="'center': resize the short side, keep the aspect ratio; 'squash': resize "
                        "both sides (default: the variant's)")
    p.add_argument("--label_map", choices=("auto", "sorted", "imagenet"), default="auto",
                   help="--folder only: how folder names become labels: sorted names -> 0..K-1, or "
                        "ImageNet synset ids -> their ImageNet index; auto picks imagenet when every "
                        "folder is a synset and the model has 1000 classes (default auto)")
    p.add_argument("--skip_unreadable", action="store_true",
                   help="--folder only: leave out files that cannot be decoded (listed in the JSON) "
                        "instead of stopping")
    p.add_argument("--num_workers", type=int, default=0,
                   help="TFDS: grain worker processes for preprocessing (default 0: threads only); "
                        "folder: reader threads (default: min(8, cores + 2))")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="compute dtype of the model (default float32, as the reported numbers)")
    p.add_argument("--ema", action="store_true",
                   help="use the checkpoint's state_dict_ema (official .pth.tar)")
    p.add_argument("--scan_impl", default="auto",
                   help="selective-scan implementation: auto, sequential, associative, pallas_gpu, "
                        "pallas_tpu (default auto)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write the summary (top1, top5, n, model, weights, seconds, img/s, "
                        "preprocessing) as JSON to FILE ('-' for stdout)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from mambavision_jax import xla_cpu
    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    args = _parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("--batch_size must be >= 1")
    model = load_model(args.weights, args.model, dtype=args.dtype, use_ema=args.ema,
                       scan_impl=args.scan_impl)
    pre = resolve_preprocessing(model, image_size=args.image_size, crop_pct=args.crop_pct,
                                crop_mode=args.crop_mode, hf_config=weights_config(args.weights))
    runner = Runner(model)
    skipped: list = []
    if args.folder:
        paths, labels, classes = folder_examples(args.folder, num_classes=model.num_classes,
                                                 label_map=args.label_map)
        batches = folder_batches(paths, labels, args.batch_size, pre,
                                 num_workers=args.num_workers or None,
                                 skip_unreadable=args.skip_unreadable, skipped=skipped)
        num_batches = math.ceil(len(paths) / args.batch_size)
        source = {"folder": os.path.abspath(args.folder), "classes": len(classes)}
    else:
        from mambavision_jax.data import eval_num_batches, make_eval_iterator
        from mambavision_jax.data.sources import default_eval_split, open_source
        split = args.split or default_eval_split(args.tfds, args.data_dir)
        n_examples = len(open_source(args.tfds, split, args.data_dir))
        batches = make_eval_iterator(
            args.tfds, global_batch_size=args.batch_size, image_size=pre.image_size,
            crop_pct=pre.crop_pct, crop_mode=pre.crop_mode, interpolation=pre.interpolation,
            data_dir=args.data_dir, split=split, mean=pre.mean, std=pre.std,
            num_workers=args.num_workers)
        num_batches = eval_num_batches(n_examples, args.batch_size, jax.process_count())
        source = {"tfds": args.tfds, "split": split, "data_dir": args.data_dir}
    result = evaluate(runner, batches, num_batches=num_batches, progress=not args.no_progress)
    summary = {
        "top1": result["top1"], "top5": result["top5"], "n": result["n"],
        "model": getattr(model, "name", None), "weights": os.fspath(args.weights),
        "seconds": result["seconds"], "images_per_sec": result["images_per_sec"],
        "warmup_seconds": result["warmup_seconds"],
        "loss": result["loss"], **source,
        "preprocessing": dataclasses.asdict(pre), "batch_size": args.batch_size,
        "dtype": args.dtype, "devices": [str(d) for d in runner.mesh.devices.flat],
    }
    if skipped:
        summary["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
    print(f"{summary['model']}  {summary['weights']}\n"
          f"  top-1 {summary['top1']:.3f}%  top-5 {summary['top5']:.3f}%  on {summary['n']} images  "
          f"({summary['seconds']:.1f} s, {summary['images_per_sec']:.1f} img/s after the first batch)"
          + (f"  skipped {len(skipped)} unreadable files" if skipped else ""))
    if args.json:
        text = json.dumps(summary, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
