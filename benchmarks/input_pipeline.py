"""CPU cost of the training input pipeline: the project's official recipe beside timm's loader.

Both sides run the official MambaVision training transform on the same JPEGs (real photographs from
scikit-learn's and scikit-image's sample images, cropped and resized to ImageNet sizes):
RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3), interpolation 'random') -> hflip 0.5 ->
RandAugment 'rand-m9-mstd0.5-inc1' -> uint8, with the normalisation and random erasing (0.25,
'pixel') left to the accelerator, as timm's `use_prefetcher=True` loader does it (uint8 tensors,
`fast_collate`, `PrefetchLoader` on the GPU). timm: `create_transform(is_training=True, ...)` with the
official arguments in a torch DataLoader; the project: `make_train_iterator(normalize=False)` (grain)
over the same JPEGs packaged as a TFDS data set, with its default resampler (`resampler="cv2"`,
OpenCV, approximate) and its exact one (`"pil"`, timm's pixels). Runs alternate (default, exact,
timm, default, ...), in one process, per core (no workers, one thread) and with N worker processes;
the CPU time of the whole process tree is measured (psutil), so a shared, noisy machine changes
wall time more than the ratio.

    pip install -e ".[bench,torch]" timm   # scikit-image, psutil: benchmark-only dependencies
    python benchmarks/input_pipeline.py --workers 2 --rounds 3

Prints a table (ms of CPU per image, images per second, ratio = timm's CPU time per image over the
project's) and a per-op breakdown of one core's work. `--resampler_stats` compares the default
resampler's outputs with the exact path's (same draws); `--decode_stats` does the same for
`fast_decode`; `--demo` times the demo's training loop against its bare step.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import types

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OFFICIAL = dict(
    scale=(0.08, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    hflip=0.5,
    auto_augment="rand-m9-mstd0.5-inc1",
    interpolation="random",
    re_prob=0.25,
    re_mode="pixel",
    re_count=1,
)


# ---- data: ImageNet-size JPEGs from the photos that ship with scikit-learn / scikit-image ----


def _source_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)  # china.jpg, flower.jpg (427 x 640)
    try:
        import skimage.data as sk
    except ImportError:
        sys.exit(
            "benchmarks/input_pipeline.py needs scikit-image for its photographs: pip install scikit-image"
        )
    for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"):
        try:
            img = getattr(sk, name)() if name != "motorcycle_left" else sk.stereo_motorcycle()[0]
        except Exception:
            continue
        if img.ndim == 3 and img.shape[-1] == 3:
            photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return photos


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n JPEGs of ImageNet-typical size (~380-500 x 340-480 px, quality 85-90): random crops of
    the sample photos, resized."""
    rng = np.random.default_rng(seed)
    photos = _source_photos()
    out = []
    for i in range(n):
        src = Image.fromarray(photos[i % len(photos)])
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = (int(rng.integers(380, 501)), int(rng.integers(340, 481)))
        img = src.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(85, 91)))
        out.append(buf.getvalue())
    return out


def write_folder(jpegs: list[bytes], root: str, num_classes: int = 4) -> None:
    for i, data in enumerate(jpegs):
        d = os.path.join(root, f"class_{i % num_classes}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:05d}.jpg"), "wb") as f:
            f.write(data)


# ---- the two per-image transforms ----


def _timm():
    # The PyPI torchvision may be a CUDA build whose fake-op registrations fail beside a CPU torch.
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    import timm.data

    return timm.data


def _patch_timm_posterize() -> None:
    """Pillow >= 13 refuses ImageOps.posterize(img, 0) (PosterizeIncreasing at magnitude >= 10,
    which mstd 0.5 reaches); older Pillow returned a black image, as the project's port does."""
    from PIL import ImageOps
    from timm.data import auto_augment as aa

    def posterize(img, bits_to_keep, **__):
        if bits_to_keep >= 8:
            return img
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)
        return ImageOps.posterize(img, bits_to_keep)

    for name, fn in list(aa.NAME_TO_OP.items()):
        if fn is aa.posterize:
            aa.NAME_TO_OP[name] = posterize


def timm_transform(image_size: int = 224):
    td = _timm()
    _patch_timm_posterize()
    return td.create_transform(
        image_size,
        is_training=True,
        use_prefetcher=True,
        scale=OFFICIAL["scale"],
        ratio=OFFICIAL["ratio"],
        hflip=OFFICIAL["hflip"],
        vflip=0.0,
        color_jitter=0.4,
        auto_augment=OFFICIAL["auto_augment"],
        interpolation=OFFICIAL["interpolation"],
        re_prob=OFFICIAL["re_prob"],
        re_mode=OFFICIAL["re_mode"],
        re_count=OFFICIAL["re_count"],
        mean=td.IMAGENET_DEFAULT_MEAN,
        std=td.IMAGENET_DEFAULT_STD,
    )


def timm_decode(data: bytes) -> Image.Image:
    """timm's ImageDataset reader: PIL open + convert('RGB')."""
    return Image.open(io.BytesIO(data)).convert("RGB")


RESAMPLERS = ("cv2", "pil")  # the project's default (fast, approximate) and its exact path
LABEL = {"cv2": "project (default, cv2)", "pil": "project exact (pil)"}


def ours_augment(resampler: str = "cv2"):
    from mambavision_jax.data.transforms import TrainAugConfig

    return TrainAugConfig(**OFFICIAL, resampler=resampler)


def ours_example(data: bytes, rng: np.random.Generator, aug, image_size: int = 224):
    """One example of `make_train_iterator(normalize=False)`: what a grain worker computes."""
    from mambavision_jax.data.transforms import erasing_boxes, train_augment

    return train_augment(data, rng, image_size, aug), erasing_boxes(
        rng, image_size, image_size, aug.re_prob, max_count=aug.re_count
    )


# ---- per core ----


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def per_core_ours(jpegs, seed: int, resampler: str = "cv2") -> float:
    aug = ours_augment(resampler)
    t0 = time.process_time()
    for i, data in enumerate(jpegs):
        ours_example(data, np.random.default_rng([seed, i]), aug)
    return (time.process_time() - t0) / len(jpegs)


def per_core_timm(jpegs, transform, seed: int) -> float:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    t0 = time.process_time()
    for data in jpegs:
        transform(timm_decode(data))
    return (time.process_time() - t0) / len(jpegs)


# ---- with worker processes ----


def _tree_cpu(proc) -> float:
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except Exception:
            pass
    return total


def _measure(it, num_batches: int, batch: int, warmup: int = 1, settle: float = 1.5):
    """(CPU s of the process tree per image, img/s) over `num_batches` batches in steady state.

    The workers' read-ahead buffers are full when the CPU clock starts and again when it stops
    (`settle` seconds of waiting), so the CPU counted is the work of the batches taken, not of
    filling buffers, whatever the loader's read-ahead depth. img/s is wall-clock over the second
    half of the batches, once the buffers filled while waiting have been drained."""
    import psutil

    proc = psutil.Process()
    for _ in range(warmup):  # start-up (every worker's imports and first batch) is not measured
        next(it)
    time.sleep(settle)
    c0 = _tree_cpu(proc)
    half = num_batches // 2
    for i in range(num_batches):
        if i == half:
            t0 = time.perf_counter()
        next(it)
    wall = time.perf_counter() - t0
    time.sleep(settle)
    cpu = _tree_cpu(proc) - c0
    return cpu / (num_batches * batch), (num_batches - half) * batch / wall


def workers_ours(name, data_dir, workers, threads, batch, num_batches, seed, resampler="cv2"):
    from mambavision_jax.data import make_train_iterator

    it = make_train_iterator(
        name,
        data_dir=data_dir,
        global_batch_size=batch,
        image_size=224,
        seed=seed,
        augment=ours_augment(resampler),
        process_index=0,
        process_count=1,
        num_workers=workers,
        num_threads=threads,
        normalize=False,
    )
    try:
        return _measure(it, num_batches, batch, warmup=workers + 1)
    finally:
        if hasattr(it, "close"):
            it.close()


class _JpegDataset:
    def __init__(self, jpegs, transform):
        self.jpegs, self.transform = jpegs, transform

    def __len__(self):
        return len(self.jpegs)

    def __getitem__(self, i):
        return self.transform(timm_decode(self.jpegs[i])), i % 4


def workers_timm(jpegs, transform, workers, batch, num_batches, seed):
    import torch
    from timm.data.loader import fast_collate

    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        _JpegDataset(jpegs, transform),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=fast_collate,
        drop_last=True,
        persistent_workers=workers > 0,
    )

    def forever():
        while True:
            yield from loader

    it = forever()
    try:
        return _measure(it, num_batches, batch, warmup=workers + 1)
    finally:
        it.close()  # the loader and its persistent workers go with the last reference


# ---- one core's time per op ----


def breakdown_ours(jpegs, seed: int = 0, resampler: str = "cv2") -> dict[str, float]:
    """ms per image of each stage of `train_augment` (+ the erasing boxes), on one core."""
    from mambavision_jax.data import opencv_ops
    from mambavision_jax.data.image_io import to_pil_rgb
    from mambavision_jax.data.rand_augment import RandAugment
    from mambavision_jax.data.transforms import (
        _crop_interpolation,
        _rand_augment,
        erasing_boxes,
        random_resized_crop,
        random_resized_crop_params,
    )

    aug = ours_augment(resampler)
    ra: RandAugment = _rand_augment(aug.auto_augment, (0.485, 0.456, 0.406), 224, None, resampler)
    t = dict.fromkeys(("decode", "crop+resize", "flip", "RandAugment", "to uint8", "erase boxes"), 0.0)
    for i, data in enumerate(jpegs):
        rng = np.random.default_rng([seed, i])
        c = time.process_time()
        img = opencv_ops.decode_rgb_array(data) if resampler == "cv2" else to_pil_rgb(data)
        t["decode"] += time.process_time() - c
        c = time.process_time()
        if resampler == "cv2":
            top, left, h, w = random_resized_crop_params(
                img.shape[1], img.shape[0], rng, aug.scale, aug.ratio
            )
            interp = _crop_interpolation(aug.interpolation, rng)
            img = opencv_ops.resized_crop(img, top, left, h, w, 224, interp)
        else:
            img = random_resized_crop(img, rng, 224, aug.scale, aug.ratio, aug.interpolation)
        t["crop+resize"] += time.process_time() - c
        c = time.process_time()
        if rng.random() < aug.hflip:
            if resampler == "cv2":
                img = opencv_ops.hflip(img)
            else:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        t["flip"] += time.process_time() - c
        c = time.process_time()
        img = ra(img, rng)
        t["RandAugment"] += time.process_time() - c
        c = time.process_time()
        np.asarray(img)
        t["to uint8"] += time.process_time() - c
        c = time.process_time()
        erasing_boxes(rng, 224, 224, aug.re_prob)
        t["erase boxes"] += time.process_time() - c
    return {k: 1e3 * v / len(jpegs) for k, v in t.items()}


def breakdown_timm(jpegs, transform) -> dict[str, float]:
    names = ["decode", "crop+resize", "flip", "RandAugment", "to uint8"]
    t = dict.fromkeys(names, 0.0)
    ops = list(transform.transforms)
    assert len(ops) == 4, ops
    for data in jpegs:
        c = time.process_time()
        img = timm_decode(data)
        t["decode"] += time.process_time() - c
        for name, op in zip(names[1:], ops, strict=True):
            c = time.process_time()
            img = op(img)
            t[name] += time.process_time() - c
    return {k: 1e3 * v / len(jpegs) for k, v in t.items()}


# ---- the approximate fast decode (TrainAugConfig.fast_decode) beside the exact path ----


def make_large_jpegs(n: int, seed: int = 1) -> list[bytes]:
    """n JPEGs at the sample photos' native resolution (no upscaling: every pixel is real detail),
    random 60-100% windows of the larger ones (hubble_deep_field 1000 x 872, retina 1411 x 1411,
    stereo_motorcycle 741 x 500, 512-640 px others), quality 85-90."""
    rng = np.random.default_rng(seed)
    photos = [p for p in _source_photos() if min(p.shape[:2]) >= 400]
    try:
        import skimage.data as sk

        for name in ("hubble_deep_field", "retina", "immunohistochemistry"):
            try:
                photos.append(np.ascontiguousarray(getattr(sk, name)()[..., :3]))
            except Exception:
                pass
    except ImportError:
        pass
    out = []
    for i in range(n):
        src = Image.fromarray(photos[i % len(photos)])
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        buf = io.BytesIO()
        src.crop((left, top, left + cw, top + ch)).save(buf, format="JPEG", quality=int(rng.integers(85, 91)))
        out.append(buf.getvalue())
    return out


def decode_stats(jpegs: list[bytes], draws: int = 4, size: int = 224) -> dict:
    """Exact RandomResizedCrop (full decode, crop, resize) vs `draft_random_resized_crop` with the
    same random draws: how often the reduced decode applies, CPU ms per image of each, and the
    output statistics (per-channel mean and variance, histogram total-variation distance) over all
    crops, and the mean absolute difference / PSNR over the reduced ones."""
    from mambavision_jax.data.image_io import decode_rgb
    from mambavision_jax.data.transforms import (
        draft_random_resized_crop,
        random_resized_crop,
        random_resized_crop_params,
    )

    exact, fast, diffs = [], [], []
    t_exact = t_fast = 0.0
    reduced = 0
    for i, data in enumerate(jpegs):
        for d in range(draws):
            seed = [i, d]
            c = time.process_time()
            a = np.asarray(random_resized_crop(decode_rgb(data), np.random.default_rng(seed), size))
            t_exact += time.process_time() - c
            c = time.process_time()
            b = np.asarray(draft_random_resized_crop(data, np.random.default_rng(seed), size))
            t_fast += time.process_time() - c
            width, height = Image.open(io.BytesIO(data)).size
            _, _, h, w = random_resized_crop_params(width, height, np.random.default_rng(seed))
            if min(h, w) >= 2 * size:
                reduced += 1
                diffs.append(np.abs(a.astype(np.float64) - b.astype(np.float64)))
            exact.append(a)
            fast.append(b)
    exact, fast = np.stack(exact).reshape(-1, 3), np.stack(fast).reshape(-1, 3)
    hist = lambda x, c: np.bincount(x[:, c], minlength=256) / len(x)
    tv = [0.5 * np.abs(hist(exact, c) - hist(fast, c)).sum() for c in range(3)]
    n = len(jpegs) * draws
    out = {
        "crops": n,
        "reduced": reduced,
        "ms_exact": 1e3 * t_exact / n,
        "ms_fast": 1e3 * t_fast / n,
        "mean_exact": exact.mean(0),
        "mean_fast": fast.mean(0),
        "var_exact": exact.var(0),
        "var_fast": fast.var(0),
        "hist_tv": np.array(tv),
    }
    if diffs:
        mad = np.mean([x.mean() for x in diffs])
        mse = np.mean([(x**2).mean() for x in diffs])
        out.update(mad_reduced=mad, psnr_reduced=10 * np.log10(255.0**2 / mse))
    return out


def print_decode_stats(label: str, r: dict) -> None:
    f3 = lambda v: "(" + ", ".join(f"{x:.2f}" for x in v) + ")"
    print(
        f"\n{label}: {r['crops']} crops, {r['reduced']} ({100 * r['reduced'] / r['crops']:.0f}%) decoded "
        f"reduced; decode+crop+resize CPU ms/img exact {r['ms_exact']:.3f}, fast {r['ms_fast']:.3f} "
        f"({r['ms_exact'] / r['ms_fast']:.2f}x)"
    )
    print("| path | mean R, G, B | variance R, G, B |\n|---|---|---|")
    print(f"| exact | {f3(r['mean_exact'])} | {f3(r['var_exact'])} |")
    print(f"| fast_decode | {f3(r['mean_fast'])} | {f3(r['var_fast'])} |")
    print(f"histogram total-variation distance (R, G, B): {f3(r['hist_tv'] * 100)} %")
    if "mad_reduced" in r:
        print(
            f"reduced crops only: mean |exact - fast| {r['mad_reduced']:.2f} / 255, "
            f"PSNR {r['psnr_reduced']:.1f} dB"
        )


# ---- the default OpenCV resampler (TrainAugConfig.resampler="cv2") beside the exact path ----


def _laplacian_var(x: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: the image's high-frequency energy (sharpness)."""
    x = x.astype(np.float32)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float(lap.var())


def resampler_stats(jpegs: list[bytes], draws: int = 4, size: int = 224) -> dict:
    """`train_augment` (crop, flip, RandAugment -> uint8) with resampler 'pil' (exact) and 'cv2'
    (default), the same random draws for both: CPU ms per image of each, output statistics over all
    images (per-channel mean and variance, histogram total-variation distance, Laplacian variance)
    and image-by-image mean |exact - fast| and PSNR; for the whole transform and for the crop alone."""
    import dataclasses

    from mambavision_jax.data.transforms import train_augment

    out = {}
    stages = (("crop, flip, RandAugment", {}), ("crop + resize only", dict(auto_augment=None, hflip=0.0)))
    for stage, extra in stages:
        imgs = {"pil": [], "cv2": []}
        t = dict.fromkeys(imgs, 0.0)
        augs = {r: dataclasses.replace(ours_augment(r), **extra) for r in imgs}
        for i, data in enumerate(jpegs):
            for d in range(draws):
                for r in imgs:
                    c = time.process_time()
                    imgs[r].append(train_augment(data, np.random.default_rng([i, d]), size, augs[r]))
                    t[r] += time.process_time() - c
        exact, fast = np.stack(imgs["pil"]), np.stack(imgs["cv2"])
        diff = np.abs(exact.astype(np.float32) - fast.astype(np.float32))
        flat_e, flat_f = exact.reshape(-1, 3), fast.reshape(-1, 3)
        hist = lambda x, c: np.bincount(x[:, c], minlength=256) / len(x)
        n = len(exact)
        out[stage] = {
            "images": n,
            "ms": {r: 1e3 * t[r] / n for r in t},
            "mean": {"pil": flat_e.mean(0), "cv2": flat_f.mean(0)},
            "var": {"pil": flat_e.var(0), "cv2": flat_f.var(0)},
            "lap": {
                "pil": np.mean([_laplacian_var(x) for x in exact]),
                "cv2": np.mean([_laplacian_var(x) for x in fast]),
            },
            "hist_tv": np.array([0.5 * np.abs(hist(flat_e, c) - hist(flat_f, c)).sum() for c in range(3)]),
            "mad": float(diff.mean()),
            "psnr": float(10 * np.log10(255.0**2 / (diff**2).mean())),
            "identical_images": int(sum(np.array_equal(a, b) for a, b in zip(exact, fast))),
        }
    return out


def print_resampler_stats(label: str, stats: dict) -> None:
    f = lambda v, k=2: ", ".join(f"{x:.{k}f}" for x in v)
    print(f"\n{label}: the exact path (pil) vs the default (cv2), the same random draws")
    print(
        "| transform | path | CPU ms/img | mean R, G, B | variance R, G, B | Laplacian variance | "
        "histogram TV R, G, B (%) | mean abs diff (0..255) | PSNR dB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for stage, r in stats.items():
        for p in ("pil", "cv2"):
            tail = (
                f"{f(100 * r['hist_tv'], 3)} | {r['mad']:.2f} | {r['psnr']:.1f} |"
                if p == "cv2"
                else "- | - | - |"
            )
            print(
                f"| {stage} ({r['images']} images) | {p} | {r['ms'][p]:.2f} | {f(r['mean'][p])} | "
                f"{f(r['var'][p], 1)} | {r['lap'][p]:.1f} | {tail}"
            )


# ---- the demo: the training loop's img/s (data included) vs the bare jitted step's ----


def _demo_config(steps: int):
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "configs", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.total_steps = steps
    c.eval_every_steps = c.checkpoint_every_steps = 10**6  # only the final ones, after the timing
    return c


def demo_loop(workdir: str, steps: int, data_dir: str) -> float:
    """img/s that `python train.py --config configs/demo.py` logs, after the first (compiling) log."""
    from train_report import logged_img_per_s

    from mambavision_jax.train.loop import train_and_evaluate

    c = _demo_config(steps)
    c.data.dir = data_dir
    train_and_evaluate(c, workdir)
    ips = logged_img_per_s(workdir)
    if len(ips) < 2:  # the first window holds the compile
        raise SystemExit(f"--demo_steps {steps}: give at least 2 x the demo's {c.log_every_steps} log steps")
    return float(np.mean(ips[1:]))


def demo_bare_step(steps: int, data_dir: str) -> float:
    """img/s of the demo's jitted train_step alone, on one fixed uint8 batch already on the devices
    (built by train/loop.py's `build_train_program`, as the loop builds it)."""
    from train_report import bare_step_img_per_s

    c = _demo_config(steps)
    c.data.dir = data_dir
    return bare_step_img_per_s(c, steps)


def demo_report(rounds: int, steps: int) -> None:
    from mambavision_jax import data as mvdata

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "tfds")
        mvdata.build_digits(data_dir)
        loop, bare = [], []
        for r in range(rounds):
            loop.append(demo_loop(os.path.join(tmp, f"run{r}"), steps, data_dir))
            bare.append(demo_bare_step(steps, data_dir))
    print(f"\ndemo (configs/demo.py, batch 64, 64 px), alternating, {rounds} rounds:")
    print(
        f"loop img/s {np.median(loop):.1f} (runs: {', '.join(f'{v:.0f}' for v in loop)}), bare step "
        f"img/s {np.median(bare):.1f} (runs: {', '.join(f'{v:.0f}' for v in bare)}), loop / step "
        f"{np.median(loop) / np.median(bare):.3f}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_images", type=int, default=256)
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes (both loaders)")
    p.add_argument("--threads", type=int, default=-1, help="grain threads per worker (-1: auto)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--copies",
        type=int,
        default=16,
        help="records per JPEG in the worker runs' data sets: grain's index shuffle costs ~0.1 ms "
        "per element over 256 records, ~0.005 ms over 4096 or more (ImageNet: 1.28M)",
    )
    p.add_argument("--batches", type=int, default=12, help="measured batches per worker run")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    p.add_argument("--skip_workers", action="store_true")
    p.add_argument(
        "--demo",
        action="store_true",
        help="only the demo's loop img/s vs its bare step img/s (--rounds, --demo_steps)",
    )
    p.add_argument("--demo_steps", type=int, default=60)
    p.add_argument(
        "--resampler_stats",
        action="store_true",
        help="only the default cv2 resampler's output statistics and cost beside the exact (pil) path",
    )
    p.add_argument(
        "--decode_stats",
        action="store_true",
        help="only TrainAugConfig.fast_decode's statistics and cost beside the exact path",
    )
    args = p.parse_args(argv)
    if args.demo:
        demo_report(args.rounds, args.demo_steps)
        return 0
    if args.resampler_stats:
        print_resampler_stats("ImageNet-size JPEGs", resampler_stats(make_jpegs(args.num_images)))
        print_resampler_stats(
            "large JPEGs (native resolution)", resampler_stats(make_large_jpegs(args.num_images))
        )
        return 0
    if args.decode_stats:
        print_decode_stats("ImageNet-size JPEGs", decode_stats(make_jpegs(args.num_images)))
        print_decode_stats("large JPEGs (native resolution)", decode_stats(make_large_jpegs(args.num_images)))
        return 0

    import torch

    torch.set_num_threads(1)
    jpegs = make_jpegs(args.num_images)
    sizes = [Image.open(io.BytesIO(d)).size for d in jpegs]
    print(
        f"{len(jpegs)} JPEGs, mean {np.mean([s[0] for s in sizes]):.0f} x {np.mean([s[1] for s in sizes]):.0f} "
        f"px, {np.mean([len(d) for d in jpegs]) / 1024:.0f} KB; {os.cpu_count()} CPU cores"
    )
    transform = timm_transform()

    rows = {}
    workers, threads = 0, 1
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "tfds")
        if not args.skip_workers:
            from mambavision_jax.data.folder import build_folder_dataset
            from mambavision_jax.data.pipeline import resolve_workers

            workers, threads = resolve_workers(args.workers, args.threads)
            write_folder(jpegs * args.copies, os.path.join(tmp, "src"))
            build_folder_dataset(os.path.join(tmp, "src"), "bench_jpegs", data_dir, val_fraction=0.0)
        # Every measurement once per round, in turn: drift in the machine's load hits all alike.
        pc = {k: [] for k in (*RESAMPLERS, "timm")}
        w = {k: [] for k in (*RESAMPLERS, "timm")}
        for r in range(args.rounds):
            for res in RESAMPLERS:
                pc[res].append(per_core_ours(jpegs, r, res))
            pc["timm"].append(per_core_timm(jpegs, transform, r))
            if not args.skip_workers:
                for res in RESAMPLERS:
                    w[res].append(
                        workers_ours(
                            "bench_jpegs", data_dir, workers, threads, args.batch, args.batches, r, res
                        )
                    )
                w["timm"].append(
                    workers_timm(jpegs * args.copies, transform, workers, args.batch, args.batches, r)
                )
    # setting -> {side: (CPU s per image, img/s)}
    rows["per core (0 workers, 1 thread)"] = {k: (np.median(v), 1 / np.median(v)) for k, v in pc.items()}
    if not args.skip_workers:
        rows[f"{workers} workers (grain: {threads} threads each)"] = {
            k: (np.median([x[0] for x in v]), np.median([x[1] for x in v])) for k, v in w.items()
        }
    fmt = lambda v: "/".join(f"{1e3 * x:.2f}" for x in v)
    print(
        "per round, CPU ms/img default (cv2) / exact (pil) / timm: per core "
        + ", ".join(fmt(x) for x in zip(pc["cv2"], pc["pil"], pc["timm"]))
        + (
            "; workers "
            + ", ".join(fmt(x) for x in zip(*[[y[0] for y in w[k]] for k in ("cv2", "pil", "timm")]))
            if w["timm"]
            else ""
        )
    )

    print(
        "\n| setting | project default (cv2) CPU ms/img | project exact (pil) CPU ms/img | timm CPU ms/img "
        "| img/s default / exact / timm | ratio timm / default | ratio timm / exact |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, v in rows.items():
        ms = {k: 1e3 * v[k][0] for k in v}
        print(
            f"| {label} | {ms['cv2']:.2f} | {ms['pil']:.2f} | {ms['timm']:.2f} | "
            f"{v['cv2'][1]:.0f} / {v['pil'][1]:.0f} / {v['timm'][1]:.0f} | "
            f"{ms['timm'] / ms['cv2']:.2f}x | {ms['timm'] / ms['pil']:.2f}x |"
        )

    bo = {r: breakdown_ours(jpegs, resampler=r) for r in RESAMPLERS}
    bt = breakdown_timm(jpegs, transform)
    print(
        "\nper op, one core (ms per image):\n\n| op | project default (cv2) | project exact (pil) | timm |"
        "\n|---|---|---|---|"
    )
    for k in bo["cv2"]:
        print(f"| {k} | {bo['cv2'][k]:.3f} | {bo['pil'][k]:.3f} | {bt.get(k, float('nan')):.3f} |")
    print(
        f"| total | {sum(bo['cv2'].values()):.3f} | {sum(bo['pil'].values()):.3f} | {sum(bt.values()):.3f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
