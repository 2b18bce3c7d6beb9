"""Throughput of MambaVision in JAX against the official PyTorch model (and timm baselines).

  python benchmarks/throughput.py                              # mamba_vision_T, batch 8, 224, f32
  python benchmarks/throughput.py --torch                      # + the official PyTorch model
  python benchmarks/throughput.py --torch --torch-scan ref,loop    # ... with both stand-in scans
  python benchmarks/throughput.py --torch --timm --modes eval,train --repeats 20
  python benchmarks/throughput.py --batch 256 --dtype bfloat16 --timm --timeout 150   # a GPU
  python benchmarks/throughput.py --model mamba_vision_B --batch 128 --dtype bfloat16 --torch

Every framework (and every model) runs in its own subprocess, so thread pools and allocators do
not fight; the PyTorch side uses as many threads as this process may use cores. Each step is
timed on its own after --warmup steps (the first of which compiles), with `block_until_ready`
(JAX) or `torch.cuda.synchronize` (CUDA) before the clock stops; the table reports the median of
--repeats timed steps (and min..max of the img/s in the JSON output).

JAX: eval is `jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))` on a model in eval mode;
train is one jitted step (forward, softmax cross-entropy, backward, optax SGD with momentum 0.9)
on a model in train mode (BatchNorm batch statistics, DropPath on), with the parameters, the
optimizer state and the BatchNorm/RNG state donated.
PyTorch: eval under `torch.inference_mode()`; train is zero_grad + cross-entropy + backward +
SGD(momentum 0.9) step; channels_last; bf16 through `torch.autocast` (CPU or CUDA). The official
model needs `mamba_ssm` for its scan: where it is missing (always on a CPU) a pure-PyTorch scan
stands in, and the table's note says which (--torch-scan): `ref`, mamba_ssm's own
`selective_scan_ref` (what the official package computes without its CUDA kernel), or `loop`, a
faster loop written here (the stronger baseline). The JAX worker calls
`mambavision_jax.xla_cpu.use_eigen_convolutions()` before JAX starts, as the package's entry points do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TIMM_MODELS = {"swin_t": "swin_tiny_patch4_window7_224", "convnext_t": "convnext_tiny"}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def time_steps(run, a, sync=lambda: None) -> list[float]:
    """Seconds per call of `run()` for --repeats calls after --warmup untimed ones; `sync` waits
    for the device (CUDA) on both sides of each call. JAX's `run` blocks on its own results."""
    times = []
    for i in range(a.warmup + a.repeats):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    return times


def summarize(times_s, batch):
    med = statistics.median(times_s)
    return dict(
        ms=med * 1e3,
        img_s=batch / med,
        img_s_min=batch / max(times_s),
        img_s_max=batch / min(times_s),
        n=len(times_s),
    )


# ----------------------------------------------------------------------------------------- JAX


def run_jax(a) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    sys.path.insert(0, ROOT)
    import mambavision_jax as mvj

    mvj.xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    dev = jax.devices()[0]
    device = cpu_name() if dev.platform == "cpu" else getattr(dev, "device_kind", dev.platform)
    dtype = jnp.dtype(a.dtype)
    overrides = {} if a.scan_impl == "auto" else {"scan_impl": a.scan_impl}
    if a.attn_impl != "auto":
        overrides["attn_impl"] = a.attn_impl
    model = mvj.create_model(a.model, dtype=dtype, rngs=nnx.Rngs(0), **overrides)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((a.batch, a.resolution, a.resolution, 3)), dtype)
    y = jnp.asarray(rng.integers(0, model.num_classes, (a.batch,)), jnp.int32)
    from mambavision_jax.ops import default_impl

    scan = a.scan_impl if a.scan_impl != "auto" else default_impl()
    from mambavision_jax.ops import resolve_attn_impl

    head_dim = model.stage_dims[2] // model.config.num_heads[2]
    attn = resolve_attn_impl(a.attn_impl, dtype, head_dim)
    common = dict(
        device=device,
        framework=f"jax {jax.__version__}",
        model=a.model,
        batch=a.batch,
        resolution=a.resolution,
        dtype=a.dtype,
        note=f"scan={scan}, attention={attn}",
    )
    rows = []

    if "eval" in a.modes:
        model.eval()
        graphdef, state = nnx.split(model)

        @jax.jit
        def eval_step(state, x):
            return nnx.merge(graphdef, state)(x)

        def run():
            jax.block_until_ready(eval_step(state, x))

        rows.append(dict(common, mode="eval", **summarize(time_steps(run, a), a.batch)))

    if "train" in a.modes:
        model.train()
        tx = optax.sgd(1e-3, momentum=0.9)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        opt_state = tx.init(params)

        def train_step(params, rest, opt_state, x, y):
            def loss_fn(p):
                m = nnx.merge(graphdef, p, rest, copy=True)
                logits = m(x)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
                return loss, nnx.state(m, nnx.Not(nnx.Param))

            (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_rest, opt_state, loss

        train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))
        carry = [params, rest, opt_state]

        def run():
            p, r, o, loss = train_step(*carry, x, y)
            jax.block_until_ready((p, r, o, loss))
            carry[:] = [p, r, o]

        rows.append(dict(common, mode="train", **summarize(time_steps(run, a), a.batch)))
    return rows


# ------------------------------------------------------------------------------------- PyTorch


def run_torch(a, which: str) -> list[dict]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(num_cores())
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cudnn.benchmark = True  # the baselines' best convolution algorithms
    dev = torch.device("cuda" if cuda else "cpu")
    device = torch.cuda.get_device_name(0) if cuda else cpu_name()
    note = ""
    if which == "official":
        try:
            import mamba_ssm.ops.selective_scan_interface  # noqa: F401

            note = "scan=mamba_ssm (CUDA)"
        except Exception:  # CPU, or no CUDA build: a pure-PyTorch scan stands in
            note = None
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from official import build_official, official_module

        model = build_official(a.model, seed=0, randomize=False)
        if note is None:
            if a.torch_scans[0] == "loop":
                official_module().selective_scan_fn = selective_scan_loop
                note = "scan=pure-torch loop (--torch-scan loop)"
            else:
                note = "scan=mamba_ssm selective_scan_ref (--torch-scan ref)"
        name = a.model
    else:
        import types

        sys.modules.setdefault(
            "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
        )
        import timm

        name = TIMM_MODELS[which]
        size = {"img_size": a.resolution} if which == "swin_t" else {}  # Swin fixes its input size
        model = timm.create_model(name, pretrained=False, **size)
    model = model.to(dev).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.resolution, a.resolution, generator=g)
    x = x.to(dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (a.batch,), generator=g).to(dev)
    bf16 = a.dtype == "bfloat16"
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    common = dict(
        device=device,
        framework=f"torch {torch.__version__.split('+')[0]}",
        model=name,
        batch=a.batch,
        resolution=a.resolution,
        dtype=a.dtype,
        note=("autocast bf16; " if bf16 else "") + note,
    )
    rows = []

    if "eval" in a.modes:
        model.eval()

        def eval_step():
            with torch.inference_mode(), autocast():
                model(x)

        rows.append(dict(common, mode="eval", **summarize(time_steps(eval_step, a, sync), a.batch)))

    if "train" in a.modes:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def train_step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()

        rows.append(dict(common, mode="train", **summarize(time_steps(train_step, a, sync), a.batch)))
    return rows


def selective_scan_loop(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """`mamba_ssm`'s selective_scan_fn contract ((b, d, l) layout, real A, B/C (b, n, l)) in plain
    PyTorch, written for speed: the discretisation is vectorised and the recurrence is one
    addcmul per token over `unbind` views (the reference's per-token indexing and einsum cost
    O(L^2) memory traffic in its backward pass). Same math as `selective_scan_ref`."""
    import torch
    import torch.nn.functional as F

    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    dA = torch.exp(delta.transpose(1, 2).unsqueeze(-1) * A.float())  # (b, l, d, n)
    dBu = (delta * u).transpose(1, 2).unsqueeze(-1) * B.float().transpose(1, 2).unsqueeze(2)
    h = torch.zeros_like(dA[:, 0])
    hs = []
    for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
        h = torch.addcmul(dBu_t, dA_t, h)
        hs.append(h)
    y = torch.einsum("bldn,bnl->bdl", torch.stack(hs, 1), C.float())
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


# ---------------------------------------------------------------------------------------- main


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="mamba_vision_T", help="any MambaVision variant name")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--modes", default="eval,train", help="comma-separated: eval,train")
    p.add_argument("--repeats", type=int, default=10, help="timed steps; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation included)")
    p.add_argument("--torch", action="store_true", help="also the official PyTorch model")
    p.add_argument(
        "--timm", action="store_true", help="also timm's Swin-T and ConvNeXt-T (PyTorch, pretrained=False)"
    )
    p.add_argument(
        "--torch-scan",
        default="loop",
        help="where mamba_ssm's CUDA kernel is missing (any CPU), the official model's scan;\n"
        "comma-separated to time several (one official row each, the first is the\n"
        "'vs official' baseline):\n"
        "loop = a fast pure-PyTorch loop written here (default, the stronger baseline);\n"
        "ref = mamba_ssm's own selective_scan_ref, as tests/official.py installs it",
    )
    p.add_argument("--no-jax", action="store_true", help="skip this project's JAX model")
    p.add_argument(
        "--scan-impl",
        default="auto",
        help="selective_scan impl for the JAX model (auto, sequential, associative, ...)",
    )
    p.add_argument(
        "--attn-impl", default="auto", help="window attention for the JAX model (auto, xla, cudnn, bhnd)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds each framework's worker may run before it is stopped",
    )
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # jax | official | swin_t | convnext_t
    a = p.parse_args(argv)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    a.torch_scans = [t.strip() for t in a.torch_scan.split(",") if t.strip()]
    if not a.torch_scans or set(a.torch_scans) - {"loop", "ref"}:
        p.error(f"--torch-scan: expected loop and/or ref, got {a.torch_scan!r}")
    bad = set(a.modes) - {"eval", "train"}
    if bad:
        p.error(f"unknown mode(s) {sorted(bad)}")
    return a


def spawn(worker: str, argv: list[str], timeout: float | None = None) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", worker]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"[{worker}] stopped after {timeout:.0f} s (--timeout)", file=sys.stderr)
        return []
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        print(f"[{worker}] failed with exit code {proc.returncode}", file=sys.stderr)
        return []
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("ROWS "):
            return json.loads(line[5:])
    sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    return []


def print_table(rows: list[dict]) -> None:
    base = {}
    for r in rows:  # the first official row of each mode (the first --torch-scan)
        if r["framework"].startswith("torch") and r["model"].startswith("mamba_vision"):
            base.setdefault(r["mode"], r)
    swin = {r["mode"]: r for r in rows if r["model"] == TIMM_MODELS["swin_t"]}
    cols = [
        "device",
        "framework",
        "variant",
        "batch",
        "res",
        "dtype",
        "mode",
        "img/s",
        "ms/step",
        "vs official",
        "vs Swin-T",
        "note",
    ]
    table = []
    ratio = lambda r, b: f"{r['img_s'] / b['img_s']:.2f}x" if b else "-"  # noqa: E731
    for r in rows:
        table.append(
            [
                r["device"],
                r["framework"],
                r["model"],
                str(r["batch"]),
                str(r["resolution"]),
                r["dtype"],
                r["mode"],
                f"{r['img_s']:.1f}",
                f"{r['ms']:.1f}",
                ratio(r, base.get(r["mode"])),
                ratio(r, swin.get(r["mode"])),
                r["note"],
            ]
        )
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(cols))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for t in table:
        print(line(t))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.worker:
        rows = run_jax(a) if a.worker == "jax" else run_torch(a, a.worker)
        print("ROWS " + json.dumps(rows))
        return
    passthrough = [s for s in argv if s not in ("--torch", "--timm", "--no-jax")]
    for opt in ("--timeout", "--torch-scan"):  # set per worker below / enforced here
        if opt in passthrough:
            i = passthrough.index(opt)
            del passthrough[i : i + 2]
    workers = [] if a.no_jax else [("jax", [])]
    workers += [("official", ["--torch-scan", t]) for t in (a.torch_scans if a.torch else [])]
    workers += [(w, []) for w in (TIMM_MODELS if a.timm else [])]
    rows = []
    for w, extra in workers:
        print(f"running {w} {' '.join(extra)}...", file=sys.stderr, flush=True)
        rows += spawn(w, passthrough + extra, a.timeout)
    print(
        f"{a.repeats} timed steps after {a.warmup} warm-up steps, median; {num_cores()} cores "
        f"visible; 'vs official' / 'vs Swin-T' = img/s over the official PyTorch MambaVision's / timm "
        f"Swin-T's img/s in the same mode"
    )
    print_table(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
