"""Inference latency of one MambaVision on this machine: onnxruntime, JAX (jit) and the official
PyTorch model, side by side in one process.

  python benchmarks/latency.py                                # mamba_vision_T, 224, batch 1 and 32
  python benchmarks/latency.py --batches 1,8 --repeats 20 --torch-scan ref

All three run the same weights (the JAX model's random init, copied into the official model and
baked into the ONNX file, which is exported with a dynamic batch, scan as an ONNX Loop). Each
round times one call of every backend in turn, the order rotating from round to round, so a
noisy neighbour slows all of them alike; the table gives the median (and min) over --repeats
rounds after --warmup untimed ones (the first compiles). The outputs are checked against each
other before timing. onnxruntime's worker threads are told not to spin between calls (they
would steal the cores from the next backend); each backend uses every core this process may use.
The official model's scan needs mamba_ssm's CUDA kernel; on a CPU a pure-PyTorch scan stands in
(--torch-scan: `loop`, the faster one from benchmarks/throughput.py, or `ref`, mamba_ssm's own
selective_scan_ref).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def build_backends(a, tmp: str):
    import mambavision_jax as mvj

    mvj.xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    import jax
    import numpy as np
    import onnxruntime as ort
    import torch
    from flax import nnx
    from throughput import cpu_name, num_cores, selective_scan_loop

    from mambavision_jax import export as ex

    cores = num_cores()
    model = mvj.create_model(a.model, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    jax_fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))

    t = time.perf_counter()
    path = ex.export_onnx(
        model, os.path.join(tmp, "model.onnx"), batch_size=None, image_size=a.resolution, check=False
    )
    print(f"ONNX export: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cores
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from official import build_official, official_module

    torch.set_num_threads(cores)
    tm = build_official(a.model, randomize=False)
    if a.torch_scan == "loop":
        official_module().selective_scan_fn = selective_scan_loop
    sd = {k: torch.from_numpy(np.array(v)) for k, v in mvj.to_torch_state_dict(model).items()}
    missing, unexpected = tm.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    tm.eval()

    def run_jax(x):
        return np.asarray(jax.block_until_ready(jax_fn(state, x)))

    def run_ort(x):
        return sess.run(None, {"images": x})[0]

    def run_torch(x):
        with torch.inference_mode():
            return tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()

    info = {
        "cpu": cpu_name(),
        "cores": cores,
        "jax": jax.__version__,
        "ort": ort.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    return {
        f"onnxruntime {ort.__version__}": run_ort,
        f"jax {jax.__version__} (jit)": run_jax,
        f"torch {info['torch']} official model ({a.torch_scan} scan)": run_torch,
    }, info


def measure(backends, batch: int, a) -> dict[str, list[float]]:
    import numpy as np

    x = np.random.default_rng(batch).standard_normal((batch, a.resolution, a.resolution, 3), dtype=np.float32)
    outs = {}
    for name, fn in backends.items():
        for _ in range(a.warmup):
            outs[name] = fn(x)
    ref = next(iter(outs.values()))
    for name, out in outs.items():
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        print(f"batch {batch}: {name}: max rel diff vs {next(iter(outs))}: {err:.1e}", file=sys.stderr)
        if err > 1e-3:
            raise SystemExit(f"{name} disagrees with the others ({err:.2e}): not timing it")
    times: dict[str, list[float]] = {n: [] for n in backends}
    names = list(backends)
    for r in range(a.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            backends[name](x)
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mamba_vision_T")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per backend first")
    p.add_argument("--torch-scan", choices=("loop", "ref"), default="loop")
    a = p.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        backends, info = build_backends(a, tmp)
        results = {b: measure(backends, b, a) for b in batches}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{a.model} at {a.resolution}, float32, {info['cpu']}, {info['cores']} cores; median (min) ms "
        f"per call over {a.repeats} alternating rounds after {a.warmup} warm-up calls; "
        f"1-min load average at the end: {load:.1f}"
    )
    cols = ["backend"] + [f"batch {b}: ms" for b in batches] + [f"batch {b}: img/s" for b in batches]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name in backends:
        ms = [
            f"{statistics.median(results[b][name]) * 1e3:.1f} ({min(results[b][name]) * 1e3:.1f})"
            for b in batches
        ]
        ips = [f"{b / statistics.median(results[b][name]):.1f}" for b in batches]
        print("| " + " | ".join([name, *ms, *ips]) + " |")


if __name__ == "__main__":
    main()
