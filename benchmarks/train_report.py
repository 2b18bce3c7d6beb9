"""What bounds a real training run: `python train.py` on ImageNet-size JPEGs, beside its parts.

Made for a GPU host (an H100 / H200 with 16 CPU cores; `benchmarks/gpu_train.sh` runs it there in
under 8 minutes), and runs anywhere at a small size (`--images 48 --batch 8 --steps 6 --image_size 64`
on a CPU). Stages, each with its own time limit:

1. a class-folder of `--images` ImageNet-size JPEGs made from the sample photographs that ship with
   scikit-learn and scikit-image (`input_pipeline.make_jpegs`), and its TFDS data set
   (`python -m mambavision_jax.data.make_folder_dataset`);
2. the input pipeline alone: `make_train_iterator` as train.py builds it (the config's augmentation,
   default worker / thread counts, uint8 batches), img/s over `--pipeline_batches` batches;
3. the bare step: the jitted train step train.py runs (the config's optimizer, EMA, mesa, mixup),
   on one fixed uint8 batch already on the devices, img/s;
4. the loop: `python train.py --config CONFIG` with the data set and the overrides (`--dtype`,
   `--batch`, `--steps`; eval and checkpoint only at the end), its img/s as it logs it (the first,
   compiling, log window left out);
5. with `--profile`, when the loop reaches less than 95% of the slower of (2) and (3): a short
   in-process run of the same config under `jax.profiler.trace` (TensorBoard / Perfetto files in
   OUT/profile) to see where the loop waits.

Prints a table (img/s of each, loop / min(pipeline, step)) naming the bound, and writes OUT/report.json.

    python benchmarks/train_report.py --out /tmp/report                        # GPU settings
    python benchmarks/train_report.py --out /tmp/r --images 48 --batch 8 --steps 6 --image_size 64 \\
        --pipeline_batches 3 --dtype float32                                    # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # input_pipeline's JPEG maker
DATA_NAME = "report_photos"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_config(path: str, a):
    """The config file's get_config() with this run's overrides, as train.py would apply them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for field, value in overrides(a).items():
        node = c
        *parents, leaf = field.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def overrides(a) -> dict:
    """The config fields this report sets (also passed to train.py as --config.FIELD=VALUE)."""
    return {
        "data.name": DATA_NAME,
        "data.dir": a.data_dir,
        "data.image_size": a.image_size,
        "batch_size": a.batch,
        "total_steps": a.steps,
        "model.dtype": a.dtype,
        "log_every_steps": a.log_every,
        "eval_every_steps": a.steps,  # eval and checkpoint once, at the end, outside the timing
        "checkpoint_every_steps": a.steps,
    }


def make_data(a) -> None:
    from input_pipeline import make_jpegs, write_folder

    if os.path.isdir(os.path.join(a.data_dir, DATA_NAME)):
        log(f"data set {DATA_NAME} already in {a.data_dir}")
        return
    t0 = time.perf_counter()
    src = os.path.join(a.out, "jpegs")
    write_folder(make_jpegs(a.images), src, num_classes=a.classes)
    log(f"{a.images} JPEGs in {src} ({time.perf_counter() - t0:.0f} s)")
    cmd = [
        sys.executable,
        "-m",
        "mambavision_jax.data.make_folder_dataset",
        "--src",
        src,
        "--name",
        DATA_NAME,
    ]
    cmd += ["--data_dir", a.data_dir, "--val_fraction", "0.1", "--num_workers", str(min(os.cpu_count(), 16))]
    rc = subprocess.run(cmd, timeout=a.stage_timeout).returncode
    if rc:
        raise SystemExit(f"make_folder_dataset failed (exit {rc}): its message is above")
    log(f"TFDS data set {DATA_NAME} built ({time.perf_counter() - t0:.0f} s)")


def pipeline_img_per_s(a) -> tuple[float, dict]:
    """img/s of the training input pipeline alone (no model), as train.py configures it."""
    from mambavision_jax import data as mvdata
    from mambavision_jax.data.pipeline import resolve_workers
    from mambavision_jax.models.registry import pretrained_cfg
    from mambavision_jax.train.loop import train_augment_config

    c = load_config(a.config, a)
    cfg = pretrained_cfg(c.model.name)
    it = mvdata.make_train_iterator(
        c.data.name,
        global_batch_size=c.batch_size,
        image_size=c.data.image_size,
        data_dir=c.data.dir,
        seed=c.seed,
        augment=train_augment_config(c),
        mean=cfg.mean,
        std=cfg.std,
        num_workers=c.data.num_workers,
        num_threads=c.data.num_threads,
        normalize=False,
    )
    workers, threads = resolve_workers(c.data.num_workers, c.data.num_threads)
    try:
        for _ in range(2):  # worker start-up and the first reads
            next(it)
        t0 = time.perf_counter()
        for _ in range(a.pipeline_batches):
            next(it)
        ips = a.pipeline_batches * c.batch_size / (time.perf_counter() - t0)
    finally:
        if hasattr(it, "close"):
            it.close()
    return ips, {"workers": workers, "threads": threads}


def bare_step_img_per_s(c, steps: int) -> float:
    """img/s of train.py's jitted train step for config `c` alone (`loop.build_train_program`), on
    one fixed uint8 batch on the devices."""
    import jax

    from mambavision_jax import data as mvdata
    from mambavision_jax.train import sharding as shd
    from mambavision_jax.train.loop import build_train_program

    info = mvdata.dataset_info(c.data.name, c.data.dir)
    mesh = shd.make_mesh(c.mesh.data, c.mesh.fsdp)
    program = build_train_program(c, mesh, info.num_classes, info.splits[c.data.train_split] // c.batch_size)
    step, state = program.step, program.state
    rng = np.random.default_rng(0)
    size = c.data.image_size
    batch = shd.global_batch(
        {
            "image": rng.integers(0, 256, (c.batch_size, size, size, 3), np.uint8),
            "label": rng.integers(0, info.num_classes, c.batch_size, np.int32),
        },
        mesh,
    )
    for _ in range(3):  # compile, then two steps to settle
        state, m = step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    return steps * c.batch_size / (time.perf_counter() - t0)


def loop_img_per_s(a) -> tuple[float, list[float]]:
    """img/s that `python train.py` logs, its first (compiling) log window left out."""
    workdir = os.path.join(a.out, "run")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", a.config, "--workdir", workdir]
    cmd += [f"--config.{k}={v}" for k, v in overrides(a).items()]
    log(" ".join(cmd))
    with open(os.path.join(a.out, "train.log"), "w") as f:
        rc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, timeout=a.stage_timeout, cwd=ROOT
        ).returncode
    if rc:
        raise SystemExit(f"train.py failed (exit {rc}); its log: {f.name}")
    ips = logged_img_per_s(workdir)
    if len(ips) < 2:
        raise SystemExit(f"train.py logged {len(ips)} windows; raise --steps / lower --log_every")
    return float(np.median(ips[1:])), ips


def logged_img_per_s(workdir: str) -> list[float]:
    """The img/s of every train log window of a run, from its metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["img_per_s"] for r in rows if "img_per_s" in r]


def profile_loop(a) -> str:
    """A short in-process run of the same config under jax.profiler.trace."""
    import jax

    from mambavision_jax.train.loop import train_and_evaluate

    c = load_config(a.config, a)
    c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = min(a.steps, 4 * a.log_every)
    trace_dir = os.path.join(a.out, "profile")
    with jax.profiler.trace(trace_dir):
        train_and_evaluate(c, os.path.join(a.out, "profile_run"))
    return trace_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the data, the run, logs and report.json")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.py"))
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--steps", type=int, default=300, help="train.py steps")
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--pipeline_batches", type=int, default=20)
    p.add_argument("--bare_steps", type=int, default=30)
    p.add_argument("--profile", action="store_true", help="profile the loop if it falls short")
    p.add_argument("--stage_timeout", type=float, default=300, help="seconds per subprocess stage")
    a = p.parse_args(argv)
    if not os.path.isfile(a.config):
        p.error(f"--config {a.config}: no such file")
    if min(a.images, a.classes, a.batch, a.steps, a.log_every, a.pipeline_batches, a.bare_steps) < 1:
        p.error(
            "--images, --classes, --batch, --steps, --log_every, --pipeline_batches, --bare_steps must be >= 1"
        )
    a.out = os.path.abspath(a.out)
    a.config = os.path.abspath(a.config)
    a.data_dir = os.path.join(a.out, "tfds")
    os.makedirs(a.out, exist_ok=True)

    from mambavision_jax import xla_cpu

    xla_cpu.use_eigen_convolutions()
    import jax

    dev = jax.devices()[0]
    log(f"{len(jax.devices())} x {dev.device_kind} ({dev.platform}), {os.cpu_count()} CPU cores")
    make_data(a)
    pipe, workers = pipeline_img_per_s(a)
    log(
        f"input pipeline alone: {pipe:.0f} img/s ({workers['workers']} workers x {workers['threads']} threads)"
    )
    step = bare_step_img_per_s(load_config(a.config, a), a.bare_steps)
    log(f"bare train step: {step:.0f} img/s")
    loop, windows = loop_img_per_s(a)
    log(f"train.py loop: {loop:.0f} img/s (windows: {', '.join(f'{v:.0f}' for v in windows)})")

    bound = "input pipeline" if pipe < step else "train step"
    ratio = loop / min(pipe, step)
    report = {
        "device": f"{len(jax.devices())} x {dev.device_kind}",
        "cpu_cores": os.cpu_count(),
        "config": os.path.relpath(a.config, ROOT),
        "overrides": overrides(a),
        "pipeline_img_per_s": pipe,
        **workers,
        "bare_step_img_per_s": step,
        "loop_img_per_s": loop,
        "loop_windows_img_per_s": windows,
        "bound": bound,
        "loop_over_bound": ratio,
    }
    if a.profile and ratio < 0.95:
        report["profile"] = profile_loop(a)
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(
        f"\n| {report['device']}, {os.cpu_count()} cores, batch {a.batch}, {a.dtype}, {a.image_size} px | img/s |"
    )
    print("|---|---|")
    print(
        f"| input pipeline alone ({workers['workers']} workers x {workers['threads']} threads) | {pipe:.0f} |"
    )
    print(f"| bare train step | {step:.0f} |")
    print(f"| train.py loop (data included) | {loop:.0f} |")
    print(f"\nbound: the {bound}; loop / min(pipeline, step) = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
